"""The Task interface: where questions, prompts, the verifier and the verdict parser live.

A task is any object with these methods; implement it in your own package and name it in YAML by
``class_path``. Model text reaching ``verify`` and ``parse_verdict`` is untrusted input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Question:
    id: str
    text: str  # the question as the model sees it inside a prompt
    gold: str  # the gold final answer, never shown in a critique prompt
    dataset: str = ""  # the evaluation set it belongs to; evaluation reports accuracy per dataset


@dataclass(frozen=True)
class CritiqueExample:
    """A (question, response) pair with the verifier's label, for critique training and evaluation."""

    question: Question
    response: str
    is_right: bool


@runtime_checkable
class Task(Protocol):
    def train_questions(self) -> list[Question]:
        """The training pool; the DataModule draws each round's questions from it."""

    def eval_questions(self) -> list[Question]:
        """Held-out questions for generation accuracy; disjoint from ``train_questions``."""

    def critique_eval_set(self) -> list[CritiqueExample]:
        """A label-balanced critique set whose responses do not come from the trained policy."""

    def response_prompt(self, question: Question) -> str: ...

    def critique_prompt(self, question: Question, response: str) -> str:
        """Holds the question and the response, never the gold answer."""

    def refinement_prompt(self, question: Question, response: str, critique: str) -> str: ...

    def verify(self, question: Question, response: str) -> float:
        """Answer reward in [0, 1]: 1 when the response's final answer is right."""

    def parse_verdict(self, critique: str) -> bool | None:
        """True if the critique judges the response right, False if wrong, None if no verdict."""
