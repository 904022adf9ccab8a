"""What a round is made of: sampled completions (``Sample``) and the round that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sorl.engines.base import Completion
from sorl.tasks.base import CritiqueExample, Question

Kind = Literal["answer", "critique"]


@dataclass
class Sample:
    """One sampled completion with its reward; ``pair`` is the critiqued pair for critiques."""

    kind: Kind
    group: int  # samples of one group share a prompt: advantages are relative within it
    question: Question
    prompt_ids: list[int]
    completion: Completion
    reward: float = 0.0
    advantage: float = 0.0
    pair: CritiqueExample | None = None
    verdict: bool | None = None  # for critiques: True if it judges the response right


@dataclass
class Round:
    """Everything one round produced; rollout callbacks read and change it in place."""

    index: int
    questions: list[Question]
    answers: list[Sample] = field(default_factory=list)
    candidates: list[CritiqueExample] = field(default_factory=list)
    critique_pairs: list[CritiqueExample] = field(default_factory=list)
    critiques: list[Sample] = field(default_factory=list)
    zero_std_groups: set[int] = field(default_factory=set)  # groups whose rewards are all equal
    metrics: dict[str, float] = field(default_factory=dict)  # extra values to log, mean over ranks
