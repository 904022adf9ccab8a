"""Time-bounded maths answer verification with math-verify, for untrusted model text.

math-verify bounds its own work with ``signal.alarm``, which only works on the main thread of the
main interpreter. sorl turns those timeouts off (``parsing_timeout=None``, ``timeout_seconds=None``)
and bounds the work itself, from any thread, with two processes:

- a *server* subprocess (``python -c "from sorl.verify import serve; serve()"``) imports
  math-verify and sympy once (seconds), then forks a *worker* that inherits them;
- each call sends (gold, response) to the server, which hands it to the worker and waits at most
  ``timeout`` seconds. A worker that overruns (sympy simplifying ``9^{9^{9^{9}}}``, say) is killed
  and replaced by a fresh fork in milliseconds, and the call scores 0.

The caller waits ``timeout`` plus a small slack; if even the server does not answer, it is killed
and restarted. Workers also run under an address-space limit, so a huge allocation fails fast.
Only LaTeX extraction is used: math-verify's plain-expression extraction goes through
``sympy.parse_expr``, which evaluates Python code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import signal
import sys
from functools import lru_cache
from typing import Any, Literal

from sorl.scoring_server import SERVER_SLACK, ScoringServer, read_line, serving_channel, write_all

#: Characters of a response the verifier reads: the last ones, since the answer ends the response.
MAX_RESPONSE_CHARS = 4096
#: Characters of a gold answer; longer golds are a data error, reported as such.
MAX_GOLD_CHARS = 1024
_TIMEOUT_REPLY = b"timeout\n"
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")  # 1,234.5: a plain number; math-verify reads the commas

Fallback = Literal["none", "latex", "last_number"]


class MathVerifier:
    """``verify(gold, response) -> 1.0 | 0.0`` with math-verify, each call bounded by ``timeout``
    seconds (plus :data:`SERVER_SLACK` in the worst case), safe to call from any thread.

    Args:
        timeout: seconds one verification may take; past it the worker is killed and it scores 0.
        startup_timeout: seconds the server may take to import math-verify and sympy (first call).
        memory_limit_mb: address-space limit of a worker; an allocation beyond it scores 0.
        fallback: where the answer is read from when the response has no ``\\boxed{}`` (whose last
            one is always the answer): ``none``, only an anchored ``final answer is $...$``;
            ``latex``, also bare LaTeX (``$...$``) anywhere; ``last_number``, the last plain number
            in the text (lenient, for small models that do not box their answers).
        float_rounding, numeric_precision: math-verify's numeric comparison settings.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        startup_timeout: float = 120.0,
        memory_limit_mb: int = 4096,
        fallback: Fallback = "none",
        float_rounding: int = 6,
        numeric_precision: int = 15,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self.memory_limit_mb = memory_limit_mb
        if fallback not in ("none", "latex", "last_number"):
            raise ValueError(f"fallback must be none, latex or last_number, got {fallback!r}")
        self.fallback = fallback
        self.float_rounding = float_rounding
        self.numeric_precision = numeric_precision
        self.timeouts = 0  # calls that ran past the bound
        self.server = ScoringServer(
            f"from sorl.verify import serve; serve({timeout!r}, {memory_limit_mb!r})",
            "math-verify server", reply_timeout=timeout + SERVER_SLACK, startup_timeout=startup_timeout,
        )

    def __call__(self, gold: str, response: str) -> float:
        return self.verify(gold, response)

    def verify(self, gold: str, response: str) -> float:
        """1.0 when the response's final answer equals ``gold`` (LaTeX or plain), else 0.0."""
        if not isinstance(gold, str) or not isinstance(response, str):
            raise TypeError(f"gold and response must be str, got {type(gold).__name__}, {type(response).__name__}")
        if len(gold) > MAX_GOLD_CHARS:
            raise ValueError(f"gold answer of {len(gold)} characters is longer than {MAX_GOLD_CHARS}: {gold[:80]!r}...")
        request = {
            "gold": gold,
            "response": response[-MAX_RESPONSE_CHARS:],
            "fallback": self.fallback,
            "float_rounding": self.float_rounding,
            "numeric_precision": self.numeric_precision,
        }
        reply = self.server.ask(request)
        if reply is None or reply == _TIMEOUT_REPLY:  # the server or its worker overran (or died)
            self.timeouts += 1
            return 0.0
        return float(reply)

    def close(self) -> None:
        """Stops the server and its worker; a later call starts new ones."""
        self.server.close()


# -------------------------------------------------------------------- the server and its worker
def serve(timeout: float, memory_limit_mb: int) -> None:
    """The server's loop: one JSON request per stdin line, one reply per stdout line (a reward,
    or ``timeout``). Runs each request in a forked worker, bounded by ``timeout`` seconds."""
    channel = serving_channel()
    import math_verify  # noqa: F401  (imported before forking so that every worker starts warm)

    # math-verify warns once that its own timeouts are off; sorl's bound replaces them
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    worker = _fork_worker(memory_limit_mb)
    os.write(channel, b"ready\n")
    for line in sys.stdin.buffer:
        pid, request_fd, reply_fd = worker
        reply = None
        try:
            write_all(request_fd, line)
            reply = read_line(reply_fd, timeout)
        except OSError:  # the worker died
            pass
        if not reply:  # overran (None) or died (b""): a fresh fork takes its place
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(request_fd)
            os.close(reply_fd)
            worker = _fork_worker(memory_limit_mb)
            reply = _TIMEOUT_REPLY
        write_all(channel, reply)


def _fork_worker(memory_limit_mb: int) -> tuple[int, int, int]:
    """A forked worker answering requests on its own pipes: (pid, request fd, reply fd)."""
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: never returns
        os.close(request_write)
        os.close(reply_read)
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        requests = os.fdopen(request_read, "rb")
        for line in requests:
            try:
                request = json.loads(line)
                result = verify_answer(
                    request["gold"],
                    request["response"],
                    request["fallback"],
                    request["float_rounding"],
                    request["numeric_precision"],
                )
            except Exception:  # malformed text (or MemoryError) scores 0, never stops the worker
                result = 0.0
            write_all(reply_write, f"{result}\n".encode())
        os._exit(0)
    os.close(request_read)
    os.close(reply_write)
    return pid, request_write, reply_read


def verify_answer(
    gold: str, response: str, fallback: Fallback = "none", float_rounding: int = 6, numeric_precision: int = 15
) -> float:
    """The comparison itself, unbounded: call it through :class:`MathVerifier`, never directly on
    model text in the main process."""
    from math_verify import parse, verify

    boxed = last_boxed(response)
    if boxed is not None:  # math-verify would take the first \boxed{}; the final answer is the last
        response = f"\\boxed{{{boxed}}}"
    elif fallback == "last_number":
        numbers = _NUMBER_RE.findall(response)
        response = f"\\boxed{{{numbers[-1]}}}" if numbers else ""
    target = parse(response, _response_config(fallback == "latex"), parsing_timeout=None)
    if not target:
        return 0.0
    return float(
        verify(
            _parse_gold(gold),
            target,
            float_rounding=float_rounding,
            numeric_precision=numeric_precision,
            timeout_seconds=None,
        )
    )


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` whose braces balance (nested braces allowed)."""
    end = len(text)
    while True:
        start = text.rfind("\\boxed{", 0, end)
        if start < 0:
            return None
        depth = 0
        for position in range(start + len("\\boxed"), len(text)):
            char = text[position]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len("\\boxed{") : position]
        end = start  # unbalanced: try the one before


@lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> list[Any]:
    from math_verify import LatexExtractionConfig, parse

    # A gold is an answer, not a text: boxing it makes math-verify read all of it as LaTeX.
    return parse(f"\\boxed{{{gold}}}", [LatexExtractionConfig(boxed_match_priority=0)], parsing_timeout=None)


@lru_cache(maxsize=2)
def _response_config(bare_latex: bool) -> list[Any]:
    from math_verify import LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=bare_latex)]
