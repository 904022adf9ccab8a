"""Scores answers with reasoning-gym's own ``score_answer`` in a separate process, under a time and
memory bound (some scorers parse the answer with sympy, which evaluates Python: the bound stops
runaway work, it is not a sandbox)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sorl.verify import SERVER_SLACK, _read_line, _write_all


class ReasoningGymScorer:
    """``score(name, config, seed, size, index, answer)`` with reasoning-gym's ``score_answer`` on
    the regenerated entry, in a server subprocess; a call that runs past ``timeout`` seconds kills
    the server (a fresh one starts on the next call) and scores 0. Safe to call from any thread.

    Args:
        timeout: seconds one score may take.
        startup_timeout: seconds the server may take to import reasoning-gym.
        memory_limit_mb: address-space limit of the server; an allocation beyond it scores 0.
    """

    def __init__(self, timeout: float = 5.0, startup_timeout: float = 120.0, memory_limit_mb: int = 4096) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self.memory_limit_mb = memory_limit_mb
        self.timeouts = 0  # calls that ran past the bound
        self._lock = threading.Lock()
        self._server: subprocess.Popen | None = None

    def score(self, name: str, config: dict[str, Any], seed: int, size: int, index: int, answer: str) -> float:
        request = json.dumps({"name": name, "config": config, "seed": seed, "size": size, "index": index, "answer": answer})
        with self._lock:
            server = self._running_server()
            try:
                _write_all(server.stdin.fileno(), request.encode() + b"\n")
                reply = _read_line(server.stdout.fileno(), self.timeout + SERVER_SLACK)
            except OSError:  # the server died
                reply = None
            if not reply:  # overran (None) or died (b""): stopped, restarted on the next call
                self._stop()
                self.timeouts += 1
                return 0.0
            return float(reply)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _running_server(self) -> subprocess.Popen:
        if self._server is None:
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
            code = f"from sorl.tasks.reasoning_gym_scorer import serve; serve({self.memory_limit_mb!r})"
            self._server = subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
            )
            ready = _read_line(self._server.stdout.fileno(), self.startup_timeout)
            if ready != b"ready\n":
                self._stop()
                raise RuntimeError(f"the reasoning-gym scoring server did not start within {self.startup_timeout} s ({ready!r})")
        return self._server

    def _stop(self) -> None:
        if self._server is not None:
            self._server.kill()
            self._server.wait(timeout=10)
            self._server.stdin.close()
            self._server.stdout.close()
        self._server = None

    def __getstate__(self) -> dict[str, Any]:  # a copy (e.g. in another process) starts its own server
        state = dict(self.__dict__)
        state.update(_lock=None, _server=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        if self.__dict__.get("_server") is not None:
            self._stop()


def serve(memory_limit_mb: int) -> None:
    """The scoring server's loop: one JSON request per stdin line, one score per stdout line."""
    channel = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the reply channel
    sys.stdout = sys.stderr
    limit = memory_limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from sorl.tasks.reasoning_gym import _reasoning_gym

    reasoning_gym = _reasoning_gym()
    datasets: dict[str, Any] = {}
    os.write(channel, b"ready\n")
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            key = json.dumps([request["name"], request["config"], request["seed"], request["size"]], sort_keys=True)
            if key not in datasets:
                datasets[key] = reasoning_gym.create_dataset(
                    request["name"], seed=request["seed"], size=request["size"], **request["config"]
                )
            dataset = datasets[key]
            score = float(dataset.score_answer(request["answer"], dataset[request["index"]]))
        except Exception:  # an answer a scorer chokes on (or MemoryError) scores 0, never stops the server
            score = 0.0
        _write_all(channel, f"{score}\n".encode())
