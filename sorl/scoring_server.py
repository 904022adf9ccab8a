"""A Python subprocess that scores untrusted model text, one JSON line in and one line out, under a
time bound: the caller never waits longer than the bound, and a server that overruns or dies is
killed and started afresh on the next request. Shared by :class:`~sorl.verify.MathVerifier` and
:class:`~sorl.tasks.reasoning_gym_scorer.ReasoningGymScorer`, which give it the server's code."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

#: Seconds a caller waits beyond a scorer's own ``timeout`` for the server to reply.
SERVER_SLACK = 2.0

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding sorl/


class ScoringServer:
    """``ask(request) -> reply line | None`` through a server subprocess started on first use.

    A plain subprocess, not multiprocessing: no re-import of the caller's ``__main__``, no copy of
    its threads or model weights. The server runs ``code`` (Python that imports sorl and serves
    stdin to stdout), writes ``ready`` when it can answer, then one reply line per request line.
    ``ask`` returns None when no reply came within ``reply_timeout`` seconds or the server died;
    the server is then killed, and the next request starts a new one. Safe to call from any
    thread (one request at a time on the pipe); a pickled copy starts its own server.

    Args:
        code: the server's Python source (``python -c code``).
        name: what the server is, for the start-up error.
        reply_timeout: seconds to wait for a reply.
        startup_timeout: seconds the server may take to import what it needs.
    """

    def __init__(self, code: str, name: str, reply_timeout: float, startup_timeout: float) -> None:
        self.code = code
        self.name = name
        self.reply_timeout = reply_timeout
        self.startup_timeout = startup_timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def ask(self, request: dict[str, Any]) -> bytes | None:
        with self._lock:
            process = self._running()
            try:
                write_all(process.stdin.fileno(), json.dumps(request).encode() + b"\n")
                reply = read_line(process.stdout.fileno(), self.reply_timeout)
            except OSError:  # the server died
                reply = None
            if not reply:  # overran (None) or died (b""): stopped, restarted on the next request
                self._stop()
                return None
            return reply

    def close(self) -> None:
        """Stops the server; a later request starts a new one."""
        with self._lock:
            self._stop()

    def _running(self) -> subprocess.Popen:
        if self._process is None:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
            self._process = subprocess.Popen(
                [sys.executable, "-c", self.code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env
            )
            ready = read_line(self._process.stdout.fileno(), self.startup_timeout)
            if ready != b"ready\n":
                self._stop()
                raise RuntimeError(f"the {self.name} did not start within {self.startup_timeout} s (got {ready!r})")
        return self._process

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()  # a forked worker of its own sees the pipes close and exits
            self._process.wait(timeout=10)
            self._process.stdin.close()
            self._process.stdout.close()
        self._process = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_lock=None, _process=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        if self.__dict__.get("_process") is not None:
            self._stop()


def serving_channel() -> int:
    """In a server: the file descriptor replies go to. Anything a library prints goes to stderr
    from now on, never into the reply channel."""
    channel = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def read_line(fd: int, timeout: float) -> bytes | None:
    """One line from a pipe: ``b""`` if the writer closed it, None if no full line came in time.
    Replies are short lines, written whole, one per request."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        data += chunk
    return data
