"""Generic parsing and rewards for untrusted model text."""

from __future__ import annotations

import re

#: Characters of model text a parser reads: the LAST ones, since a verdict or final answer ends the
#: text (as ``sorl.verify.MAX_RESPONSE_CHARS``). Bounds regex work on untrusted text.
MAX_PARSE_CHARS = 4096


def parse_verdict(text: str, right: str = "right", wrong: str = "wrong", prefix: str = "Verdict:") -> bool | None:
    """The last ``<prefix><right|wrong>`` in ``text``: True for right, False for wrong, None if absent.

    Up to 8 spaces or tabs may follow the prefix. Matching is case-sensitive and the word must end
    at a word boundary, so ``Verdict:rightish`` is no verdict (the match before it, if any, counts).
    Only the last :data:`MAX_PARSE_CHARS` characters are read: the verdict ends a critique, so a long
    critique keeps its final verdict and an early verdict never outvotes a later one.
    """
    pattern = re.escape(prefix) + r"[ \t]{0,8}(" + re.escape(right) + "|" + re.escape(wrong) + r")\b"
    last = None
    for match in re.finditer(pattern, text[-MAX_PARSE_CHARS:]):
        last = match.group(1)
    return None if last is None else last == right


def critique_reward(verdict: bool | None, is_right: bool) -> float:
    """1 when the verdict matches the verifier's label; a missing verdict earns 0."""
    return 1.0 if verdict is not None and verdict == is_right else 0.0


def is_right(reward: float) -> bool:
    """Whether a verifier reward means the response is right (partial credit is not)."""
    return reward >= 1.0
