"""Maths questions with gold answers, from local JSONL files (or ``datasets`` folders).

Each file is a :class:`MathDataset`: its path, the fields holding the question and the gold answer,
and how the gold is written (``answer_format``). Presets cover the formats of the paper's data:

==================  ===============  ================  =========================================
preset              question field   answer field      gold answer
==================  ===============  ================  =========================================
``gsm8k``           ``question``     ``answer``        the text after the last ``####``
``math``            ``problem``      ``answer``        the field as written (Math-500)
``minerva``         ``problem``      ``solution``      the last ``\\boxed{...}`` (nested braces)
``amc``             ``question``     ``answer``        the number (``27.0``)
``olympiadbench``   ``question``     ``final_answer``  a list (or a string holding one), joined
==================  ===============  ================  =========================================
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn

from sorl.tasks.base import Question
from sorl.verify import last_boxed

AnswerFormat = Literal["plain", "gsm8k", "last_boxed", "list"]
Preset = Literal["gsm8k", "math", "minerva", "amc", "olympiadbench"]

# preset -> (question field, answer field, answer format)
_PRESETS: dict[str, tuple[str, str, AnswerFormat]] = {
    "gsm8k": ("question", "answer", "gsm8k"),
    "math": ("problem", "answer", "plain"),
    "minerva": ("problem", "solution", "last_boxed"),
    "amc": ("question", "answer", "plain"),
    "olympiadbench": ("question", "final_answer", "list"),
}

MAX_GOLD_SOURCE_CHARS = 100_000  # a gold field longer than this is not an answer


@dataclass
class MathDataset:
    """One file of maths questions with gold answers.

    Args:
        path: a JSONL file (one JSON object per line), or anything ``datasets`` loads from disk: a
            folder saved with ``save_to_disk``, or a ``.json``/``.csv``/``.parquet`` file.
        name: the name evaluation reports it under; defaults to the file's folder name.
        preset: fills ``question_field``, ``answer_field`` and ``answer_format`` (see module doc).
        question_field, answer_field: the row fields holding the question and the gold answer.
        answer_format: ``plain`` (the field as is), ``gsm8k`` (after the last ``####``),
            ``last_boxed`` (the last ``\\boxed{}``), ``list`` (a list of answers, joined by ``, ``).
        limit: use only the first ``limit`` rows (None: all), counted after ``max_steps``.
        max_steps: keep only rows whose solution takes at most this many steps, counted as
            GSM8K's ``<<48/2=24>>`` calculator annotations in the answer field (an easier slice for
            small models); needs ``answer_format: gsm8k``. None: every row.
        split: the split to take when ``datasets`` returns several.
        bad_rows: a malformed row (not JSON, a missing or non-text field, an empty or overlong
            question, no gold answer) is an ``error`` naming the file and line, or with ``skip``
            is left out, counted and logged.
        max_question_chars: a longer question is malformed (it would not fit a prompt anyway).
    """

    path: str
    name: str | None = None
    preset: Preset | None = None
    question_field: str | None = None
    answer_field: str | None = None
    answer_format: AnswerFormat | None = None
    limit: int | None = None
    max_steps: int | None = None
    split: str = "train"
    bad_rows: Literal["error", "skip"] = "error"
    max_question_chars: int = 8192

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in _PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(_PRESETS)}")
            question_field, answer_field, answer_format = _PRESETS[self.preset]
            self.question_field = self.question_field or question_field
            self.answer_field = self.answer_field or answer_field
            self.answer_format = self.answer_format or answer_format
        self.question_field = self.question_field or "question"
        self.answer_field = self.answer_field or "answer"
        self.answer_format = self.answer_format or "plain"
        if self.answer_format not in ("plain", "gsm8k", "last_boxed", "list"):
            raise ValueError(f"unknown answer_format {self.answer_format!r}")
        if self.name is None:
            self.name = Path(self.path).parent.name if Path(self.path).suffix else Path(self.path).name
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.max_steps is not None and (self.answer_format != "gsm8k" or self.max_steps < 1):
            raise ValueError(
                f"max_steps counts GSM8K's <<...>> calculator steps: it needs answer_format gsm8k and a value >= 1, "
                f"got {self.max_steps} with answer_format {self.answer_format!r}"
            )
        if self.bad_rows not in ("error", "skip"):
            raise ValueError(f"bad_rows must be error or skip, got {self.bad_rows!r}")
        self.skipped_rows: list[str] = []  # "<where>: <why>" of rows left out by bad_rows="skip"

    def rows(self) -> list[tuple[str, Any]]:
        """The raw rows, up to ``limit``, each with where it comes from (``file:line`` for JSONL).
        A line that is not JSON comes back as ``None``, for :meth:`questions` to report."""
        path = Path(self.path)
        if path.suffix == ".jsonl":
            rows: list[tuple[str, Any]] = []
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line_number, line in enumerate(handle, 1):
                    if self.limit is not None and len(rows) >= self.limit:
                        break
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            row = None
                        if self._within_steps(row):
                            rows.append((f"{path}:{line_number}", row))
            return rows
        try:
            import datasets
        except ImportError as error:
            raise ImportError(f"reading {path} needs the datasets package (pip install datasets); JSONL does not") from error
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        else:
            builder = {".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
            if builder is None:
                raise ValueError(f"{path}: expected .jsonl, .json, .csv, .parquet or a saved datasets folder")
            loaded = datasets.load_dataset(builder, data_files=str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if self.split not in loaded:
                raise ValueError(f"{path} has splits {sorted(loaded)}, not {self.split!r}")
            loaded = loaded[self.split]
        if self.max_steps is None:
            count = len(loaded) if self.limit is None else min(self.limit, len(loaded))
            return [(f"{path} row {i}", loaded[i]) for i in range(count)]
        rows = [(f"{path} row {i}", row) for i, row in enumerate(loaded) if self._within_steps(row)]
        return rows if self.limit is None else rows[: self.limit]

    def _within_steps(self, row: Any) -> bool:
        """False for a row that ``max_steps`` leaves out (a malformed row is kept, to be reported)."""
        if self.max_steps is None or not isinstance(row, dict) or not isinstance(row.get(self.answer_field), str):
            return True
        return solution_steps(row[self.answer_field]) <= self.max_steps

    def questions(self) -> list[Question]:
        """Questions with gold answers. A malformed row is an error naming its file and line, or,
        with ``bad_rows="skip"``, left out and counted in ``skipped_rows`` (and logged)."""
        questions = []
        self.skipped_rows = []
        for index, (where, row) in enumerate(self.rows()):
            problem = self._row_problem(row)
            if problem is not None:
                if self.bad_rows == "error":
                    raise ValueError(f"{where}: {problem} (set bad_rows: skip to leave such rows out)")
                self.skipped_rows.append(f"{where}: {problem}")
                continue
            gold = extract_gold(row[self.answer_field], self.answer_format)
            questions.append(Question(f"{self.name}-{index}", row[self.question_field], gold, self.name))
        if self.skipped_rows:
            rank_zero_warn(
                f"{self.path}: skipped {len(self.skipped_rows)} malformed rows, e.g. " + "; ".join(self.skipped_rows[:3])
            )
        return questions

    def _row_problem(self, row: Any) -> str | None:
        """Why a row cannot be used, or None."""
        if not isinstance(row, dict):
            return "not a JSON object"
        if self.question_field not in row or self.answer_field not in row:
            return f"needs fields {self.question_field!r} and {self.answer_field!r}, has {sorted(row)}"
        text = row[self.question_field]
        if not isinstance(text, str) or not text.strip():
            return "empty or non-text question"
        if len(text) > self.max_question_chars:
            return f"question of {len(text)} characters, over max_question_chars={self.max_question_chars}"
        if not extract_gold(row[self.answer_field], self.answer_format):
            return f"no gold answer in {self.answer_field!r} ({self.answer_format})"
        return None


def solution_steps(answer: str) -> int:
    """GSM8K's solution steps: its ``<<expression=result>>`` calculator annotations."""
    return len(re.findall(r"<<[^<>\n]{0,200}>>", answer[:MAX_GOLD_SOURCE_CHARS]))


def extract_gold(value: Any, answer_format: AnswerFormat) -> str | None:
    """The gold answer held by a row's answer field, as LaTeX-or-plain text without ``$``."""
    if answer_format == "list":
        items = _as_list(value)
        if items is None:
            return None
        return ", ".join(_strip_math(str(item)) for item in items if _strip_math(str(item)))
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = str(value)[:MAX_GOLD_SOURCE_CHARS]
    if answer_format == "gsm8k":
        if "####" not in text:
            return None
        text = text.rsplit("####", 1)[1]
        text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    elif answer_format == "last_boxed":
        text = last_boxed(text) or ""
    return _strip_math(text)


def _as_list(value: Any) -> list[Any] | None:
    """A list field, or a string holding a JSON or Python list literal (parsed as data)."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or len(value) > MAX_GOLD_SOURCE_CHARS:
        return None
    for parse in (json.loads, ast.literal_eval):  # literal_eval reads literals only, never runs code
        try:
            parsed = parse(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return parsed if isinstance(parsed, list) else [parsed]
    return [value]


def _strip_math(text: str) -> str:
    """Without ``$`` delimiters and surrounding space or a trailing full stop."""
    return text.replace("$", "").strip().rstrip(".").strip()

