"""Critique evaluation sets as JSONL: one labelled (question, response) pair per line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sorl.tasks.base import CritiqueExample, Question


def read_critique_set(path: str) -> list[CritiqueExample]:
    """A critique set written by ``python -m sorl.critique_set``: one labelled response per line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no critique set at {path}: build it with python -m sorl.critique_set, or set critique_set: null")
    examples = []
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question = Question(str(row["id"]), row["question"], row["gold"], row["dataset"])
                examples.append(CritiqueExample(question, row["response"], bool(row["is_right"])))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path}:{line_number}: expected id, question, gold, dataset, response, is_right ({error})"
                ) from error
    return examples


def write_critique_set(path: str, examples: Sequence[CritiqueExample]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8") as handle:
        for e in examples:
            row = {
                "dataset": e.question.dataset,
                "id": e.question.id,
                "question": e.question.text,
                "gold": e.question.gold,
                "response": e.response,
                "is_right": e.is_right,
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
