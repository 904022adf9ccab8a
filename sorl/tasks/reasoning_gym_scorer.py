"""Scores answers with reasoning-gym's own ``score_answer`` in a separate process, under a time and
memory bound (some scorers parse the answer with sympy, which evaluates Python: the bound stops
runaway work, it is not a sandbox)."""

from __future__ import annotations

import json
import os
import resource
import sys
from typing import Any

from sorl.scoring_server import SERVER_SLACK, ScoringServer, serving_channel, write_all


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
        self.server = ScoringServer(
            f"from sorl.tasks.reasoning_gym_scorer import serve; serve({memory_limit_mb!r})",
            "reasoning-gym scoring server", reply_timeout=timeout + SERVER_SLACK, startup_timeout=startup_timeout,
        )

    def score(self, name: str, config: dict[str, Any], seed: int, size: int, index: int, answer: str) -> float:
        reply = self.server.ask({"name": name, "config": config, "seed": seed, "size": size, "index": index, "answer": answer})
        if reply is None:  # overran or died
            self.timeouts += 1
            return 0.0
        return float(reply)

    def close(self) -> None:
        self.server.close()


def serve(memory_limit_mb: int) -> None:
    """The scoring server's loop: one JSON request per stdin line, one score per stdout line."""
    channel = serving_channel()
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
        write_all(channel, f"{score}\n".encode())
