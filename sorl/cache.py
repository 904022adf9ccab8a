"""The question-response cache that second-order rollouts draw their (question, response) pairs from."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from sorl.tasks.base import CritiqueExample, Question


class CritiqueCache:
    """A bounded cache of labelled (question, response) pairs; the oldest leave first.

    ``static`` (the paper's static critique data) freezes it once it first holds pairs: the
    initial policy's responses are then critiqued for the whole run. Each rank keeps its own.
    """

    def __init__(self, size: int, static: bool = False) -> None:
        self.pairs: deque[CritiqueExample] = deque(maxlen=size)
        self.static = static
        self.frozen = False

    def add(self, candidates: Sequence[CritiqueExample]) -> None:
        if not self.frozen:
            self.pairs.extend(candidates)
            self.frozen = self.static and len(self.pairs) > 0

    def draw(self, count: int, rng: random.Random) -> list[CritiqueExample]:
        """Up to ``count`` distinct pairs, drawn by ``rng``."""
        return rng.sample(list(self.pairs), min(count, len(self.pairs)))

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[CritiqueExample]:
        return iter(self.pairs)

    def state_dict(self) -> dict[str, Any]:
        """Plain data (loadable with ``weights_only``)."""
        pairs = [{"question": asdict(p.question), "response": p.response, "is_right": p.is_right} for p in self.pairs]
        return {"cache": pairs, "cache_frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pairs.clear()
        self.pairs.extend(CritiqueExample(Question(**p["question"]), p["response"], p["is_right"]) for p in state["cache"])
        self.frozen = state["cache_frozen"]
