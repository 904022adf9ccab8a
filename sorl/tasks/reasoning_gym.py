"""Procedural tasks from `reasoning-gym <https://github.com/open-thought/reasoning-gym>`_.

Any reasoning-gym dataset, named with its settings in YAML, becomes a sorl task::

    task:
      class_path: sorl.ReasoningGymTask
      init_args:
        dataset: chain_sum
        config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}

Questions come from the library's own generators and answers are scored by the library's own
``dataset.score_answer(answer, entry)``. Training and evaluation questions are generated from
different seeds, then de-duplicated by text, each set within itself and the training pool against
the evaluation set (a small problem space repeats questions; ``chain_sum`` with two one-digit
terms has only 200 distinct ones), so sizes are upper bounds.

Formats (all prompts are plain text; the DataModule wraps them in the model's chat template):

- a response ends with a line ``Answer: <answer>``; the last such line counts (matched without
  regard to case, so ``**Final answer:** 7`` reads as ``7``);
- a critique solves the question itself, then compares (the format the cold start teaches, see
  :mod:`sorl.cold_start`)::

      <its own working>
      My answer: 7
      Response answer: 9
      Verdict: wrong

Model text is untrusted: the answer is read with bounded regexes from the end of the response, cut
to ``max_answer_chars``, and scored in a separate process (:class:`ReasoningGymScorer`) under a time
and memory bound, because some reasoning-gym scorers parse the answer with sympy (``countdown``
runs ``parse_expr``, which evaluates Python): the bound stops runaway work, it is not a sandbox, so
do not train on such datasets with a model you do not trust.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from sorl.rewards import parse_verdict
from sorl.tasks.base import CritiqueExample, Question
from sorl.tasks.critique_sets import read_critique_set
from sorl.tasks.templates import check_template, fill
from sorl.tasks.reasoning_gym_scorer import ReasoningGymScorer

#: Characters of a response the answer is read from: the last ones, since the answer ends it.
MAX_RESPONSE_CHARS = 4096
#: The lines of a critique in the solve-it-yourself format that state its own answer and the response's.
MY_ANSWER_PREFIX, RESPONSE_ANSWER_PREFIX = "My answer:", "Response answer:"
_NUMBER_RE = re.compile(r"-?\d[\d,]{0,64}(?:\.\d{1,32})?")

DEFAULT_ANSWER_TEMPLATE = '{question}\n\nEnd your response with a last line "Answer: <your final answer>".'
DEFAULT_CRITIQUE_TEMPLATE = (
    "Below are a question and a proposed response. Check the response by solving the question yourself.\n\n"
    "Question:\n{question}\n\nProposed response:\n{response}\n\n"
    'First solve the question yourself and write your final answer on a line "My answer: ...". '
    'Then write the proposed response\'s final answer on a line "Response answer: ...". '
    'End with "Verdict: right" if the two answers agree, or "Verdict: wrong" if they do not.'
)
DEFAULT_REFINEMENT_TEMPLATE = (
    "Below are a question, a proposed response and a critique of it.\n\n"
    "Question:\n{question}\n\nProposed response:\n{response}\n\nCritique:\n{critique}\n\n"
    'Write a corrected response. End it with a last line "Answer: <your final answer>".'
)

Fallback = Literal["none", "last_number"]


def _reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError as error:
        raise ImportError("ReasoningGymTask needs reasoning-gym: pip install 'sorl[reasoning]'") from error
    return reasoning_gym


def check_dataset(name: str, config: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming what is wrong when reasoning-gym has no dataset ``name`` or
    ``config`` is not a valid setting of it (an unknown key, a value its ``validate`` refuses)."""
    DATASETS = _reasoning_gym().factory.DATASETS  # name -> (dataset class, config class)
    if name not in DATASETS:
        raise ValueError(f"reasoning-gym has no dataset {name!r}; it has: {', '.join(sorted(DATASETS))}")
    config_class = DATASETS[name][1]
    fields = {f.name for f in dataclasses.fields(config_class)} - {"seed", "size"}
    for key in config:
        if key in ("seed", "size"):
            raise ValueError(f"{name}: set {key!r} with the task's train_/eval_{key} arguments, not in config")
        if key not in fields:
            raise ValueError(f"{name}: unknown config key {key!r}; {config_class.__name__} has: {', '.join(sorted(fields))}")
    try:
        config_class(**config).validate()
    except (AssertionError, TypeError, ValueError) as error:  # validate() asserts; a wrong type fails a comparison
        raise ValueError(f"{name}: invalid config {config}: {str(error) or type(error).__name__}") from error


class ReasoningGymTask:
    """A reasoning-gym dataset as a sorl task (see the module doc for formats and bounds).

    Args:
        dataset: a reasoning-gym dataset name (``chain_sum``, ``basic_arithmetic``, ...).
        config: the dataset's settings, the fields of its config class except ``seed`` and ``size``
            (e.g. ``{min_terms: 2, max_terms: 2}`` for ``chain_sum``); unknown keys are an error.
        train_size, eval_size: questions generated for training and evaluation (upper bounds:
            duplicates and training questions equal to an evaluation question are dropped).
        train_seed, eval_seed: generator seeds. reasoning-gym draws item ``i`` from seed + ``i``,
            so the defaults are far apart and the two index ranges never meet.
        critique_set: JSONL of the balanced critique evaluation set, built with
            ``python -m sorl.critique_set`` on this task; ``None``: ``critique_eval_set()`` is
            empty and no critique accuracy is reported.
        answer_template: holds ``{question}``.
        critique_template: holds ``{question}`` and ``{response}``; never the gold answer.
        refinement_template: holds ``{question}``, ``{response}`` and ``{critique}``.
        answer_prefix: the line prefix that introduces a response's final answer.
        answer_fallback: what a response without an answer line answers: ``none`` (nothing; it
            scores 0) or ``last_number`` (its last number; lenient, for small models).
        max_answer_chars: the answer is cut to this many characters before it is scored.
        partial_credit: pass reasoning-gym's partial scores (e.g. ``7 apples`` for ``7``) through
            as rewards; by default a response is right (1) only when the library scores it 1.
        verdict_prefix, verdict_right, verdict_wrong: how a critique states its verdict.
        verify_timeout: seconds one score may take before it counts 0.
        memory_limit_mb: address-space limit of the scoring process.
    """

    def __init__(
        self,
        dataset: str,
        config: dict[str, Any] | None = None,
        train_size: int = 2000,
        eval_size: int = 100,
        train_seed: int = 0,
        eval_seed: int = 1_000_000_000,
        critique_set: str | None = None,
        answer_template: str = DEFAULT_ANSWER_TEMPLATE,
        critique_template: str = DEFAULT_CRITIQUE_TEMPLATE,
        refinement_template: str = DEFAULT_REFINEMENT_TEMPLATE,
        answer_prefix: str = "Answer:",
        answer_fallback: Fallback = "none",
        max_answer_chars: int = 128,
        partial_credit: bool = False,
        verdict_prefix: str = "Verdict:",
        verdict_right: str = "right",
        verdict_wrong: str = "wrong",
        verify_timeout: float = 5.0,
        memory_limit_mb: int = 4096,
    ) -> None:
        self.config = dict(config or {})
        check_dataset(dataset, self.config)
        for label, value in (("train_size", train_size), ("eval_size", eval_size), ("max_answer_chars", max_answer_chars)):
            if value < 1:
                raise ValueError(f"{label} must be >= 1, got {value}")
        if answer_fallback not in ("none", "last_number"):
            raise ValueError(f"answer_fallback must be none or last_number, got {answer_fallback!r}")
        if not answer_prefix.strip():
            raise ValueError("answer_prefix must not be blank")
        check_template("answer_template", answer_template, {"question"}, {"question"})
        check_template("critique_template", critique_template, {"question", "response"}, {"question", "response"})
        check_template(
            "refinement_template", refinement_template, {"question", "response", "critique"}, {"question", "response", "critique"}
        )
        self.dataset = dataset
        self.train_size, self.eval_size = train_size, eval_size
        self.train_seed, self.eval_seed = train_seed, eval_seed
        self.critique_set = critique_set
        self.answer_template = answer_template
        self.critique_template = critique_template
        self.refinement_template = refinement_template
        self.answer_prefix = answer_prefix
        self.answer_fallback = answer_fallback
        self.max_answer_chars = max_answer_chars
        self.partial_credit = partial_credit
        self.verdict_prefix = verdict_prefix
        self.verdict_right = verdict_right
        self.verdict_wrong = verdict_wrong
        self.scorer = ReasoningGymScorer(timeout=verify_timeout, memory_limit_mb=memory_limit_mb)
        # The last answer line: prefix (any case), up to 8 blanks, then the rest of the line, bounded.
        self._answer_re = re.compile(re.escape(answer_prefix) + r"[ \t]{0,8}([^\n]{0," + str(max_answer_chars) + "})", re.I)
        self._my_answer_re, self._response_answer_re = (
            re.compile(r"^[ \t]{0,8}" + re.escape(prefix) + r"[ \t]{0,8}([^\n]{0," + str(max_answer_chars) + "})", re.I | re.M)
            for prefix in (MY_ANSWER_PREFIX, RESPONSE_ANSWER_PREFIX)
        )
        self._entries: dict[str, dict[str, Any]] = {}  # question id -> reasoning-gym entry (question, answer, metadata)
        self._train: list[Question] | None = None
        self._eval: list[Question] | None = None
        self._critique_eval: list[CritiqueExample] | None = None

    # ---- questions -------------------------------------------------------------------------------

    def _split(self, split: str) -> tuple[int, int]:
        return (self.train_seed, self.train_size) if split == "train" else (self.eval_seed, self.eval_size)

    def _generate(self, split: str, skip: set[str]) -> list[Question]:
        seed, size = self._split(split)
        generated = _reasoning_gym().create_dataset(self.dataset, seed=seed, size=size, **self.config)
        questions, seen = [], set(skip)
        for index in range(size):
            entry = generated[index]
            if entry["question"] in seen:
                continue
            seen.add(entry["question"])
            question = Question(f"{self.dataset}/{split}/{index}", entry["question"], str(entry["answer"]), self.dataset)
            self._entries[question.id] = entry
            questions.append(question)
        return questions

    def train_questions(self) -> list[Question]:
        if self._train is None:
            self._train = self._generate("train", {q.text for q in self.eval_questions()})
        return self._train

    def eval_questions(self) -> list[Question]:
        if self._eval is None:
            self._eval = self._generate("eval", set())
        return self._eval

    def entry(self, question: Question) -> dict[str, Any]:
        """The reasoning-gym entry (question, answer, metadata) behind a question of this task."""
        self.train_questions()  # generates both sets
        if question.id not in self._entries:
            raise KeyError(f"{question.id!r} is not a question of this task ({self.dataset}, {self.config})")
        return self._entries[question.id]

    def critique_eval_set(self) -> list[CritiqueExample]:
        """The balanced set read from ``critique_set``; empty when it is ``None``."""
        if self._critique_eval is None:
            self._critique_eval = [] if self.critique_set is None else read_critique_set(self.critique_set)
        return self._critique_eval

    # ---- prompts ---------------------------------------------------------------------------------

    def response_prompt(self, question: Question) -> str:
        return fill(self.answer_template, question=question.text)

    def critique_prompt(self, question: Question, response: str) -> str:
        return fill(self.critique_template, question=question.text, response=response)

    def refinement_prompt(self, question: Question, response: str, critique: str) -> str:
        return fill(self.refinement_template, question=question.text, response=response, critique=critique)

    # ---- answers and rewards ---------------------------------------------------------------------

    def extract_answer(self, response: str) -> str | None:
        """The response's final answer: the rest of its last answer line (cleaned of markdown and
        LaTeX wrapping), else with ``last_number`` its last number; None when there is none."""
        answer = _last_value(self._answer_re, response) or ""
        if not answer and self.answer_fallback == "last_number":
            numbers = _NUMBER_RE.findall(response[-MAX_RESPONSE_CHARS:])
            answer = numbers[-1] if numbers else ""
        return answer[: self.max_answer_chars] or None

    def verify(self, question: Question, response: str) -> float:
        """reasoning-gym's score of the extracted answer against the question's entry (1 or 0
        unless ``partial_credit``); 0 when there is no answer or scoring overran its bound."""
        answer = self.extract_answer(response)
        return 0.0 if answer is None else self.score_answer(question, answer)

    def score_answer(self, question: Question, answer: str) -> float:
        """:meth:`verify`'s score of an answer already read from a response."""
        split, index = _parse_id(question.id, self.dataset)
        seed, size = self._split(split)
        score = self.scorer.score(self.dataset, self.config, seed, size, index, answer)
        score = min(1.0, max(0.0, score))
        return score if self.partial_credit else float(score >= 1.0)

    def parse_verdict(self, critique: str) -> bool | None:
        """The last ``Verdict: right`` / ``Verdict: wrong``; None when absent."""
        return parse_verdict(critique, self.verdict_right, self.verdict_wrong, self.verdict_prefix)

    def critique_analysis_correct(self, question: Question, response: str, critique: str) -> bool:
        """Whether a critique in the solve-it-yourself format is right throughout: its own answer
        (the last ``My answer:`` line) scores right, the response's answer it states (the last
        ``Response answer:`` line) is the one the response gives (``none`` when it gives none),
        and its verdict is the verifier's label.

        The verdict alone can be right through a wrong analysis: a critic that repeats the
        response's error as its own answer and still says ``wrong`` earns the critique reward.
        :class:`~sorl.callbacks.RewardNoise` measures that noise with this check and
        ``RewardDenoising(strategy="analysis")`` removes it, with no sampling: the critic's own
        answer is verified like any response.
        """
        own, theirs = self.critique_answers(critique)
        if own is None or theirs is None or theirs != (self.extract_answer(response) or "none"):
            return False
        if self.parse_verdict(critique) != (self.verify(question, response) >= 1.0):
            return False
        return self.score_answer(question, own) >= 1.0

    def critique_answers(self, critique: str) -> tuple[str | None, str | None]:
        """The critic's own answer and the response's answer as a solve-it-yourself critique states
        them (its last ``My answer:`` and ``Response answer:`` lines); ``None`` where a line is missing."""
        return _last_value(self._my_answer_re, critique), _last_value(self._response_answer_re, critique)

    # ---- cold-start demonstrations (sorl.cold_start) ---------------------------------------------

    def solution_demonstration(self, solution: str) -> str:
        """A verified solution in the answer format: as written when it ends with an answer line,
        else with ``Answer: <its answer>`` appended."""
        answer = self.extract_answer(solution)
        if answer is None:
            raise ValueError("a solution demonstration needs a solution with an answer")
        matches = list(self._answer_re.finditer(solution[-MAX_RESPONSE_CHARS:]))
        if matches and _clean(matches[-1].group(1)) == answer:
            return solution.strip()
        return f"{solution.strip()}\n{self.answer_prefix} {answer}"

    def critique_demonstration(self, solution: str, response: str, is_right: bool) -> str:
        """A critique in the format ``critique_prompt`` asks for, built from a verified-correct
        ``solution`` of the same question (the critic's own working) and the response's label."""
        own = self.extract_answer(solution)
        if own is None:
            raise ValueError("a critique demonstration needs a solution with an answer")
        working = solution[-MAX_RESPONSE_CHARS:]
        matches = list(self._answer_re.finditer(working))
        if matches:  # the working up to its answer line, which "My answer" replaces
            working = working[: matches[-1].start()]
        theirs = self.extract_answer(response) or "none"
        verdict = self.verdict_right if is_right else self.verdict_wrong
        lines = [working.strip(), f"{MY_ANSWER_PREFIX} {own}", f"{RESPONSE_ANSWER_PREFIX} {theirs}", f"{self.verdict_prefix} {verdict}"]
        return "\n".join(line for line in lines if line)


def _last_value(pattern: re.Pattern[str], text: str) -> str | None:
    """The cleaned value of ``pattern``'s last match in the end of ``text``; None when absent or empty."""
    match = None
    for match in pattern.finditer(text[-MAX_RESPONSE_CHARS:]):
        pass
    return (_clean(match.group(1)) or None) if match is not None else None


def _clean(answer: str) -> str:
    """Without surrounding blanks, markdown emphasis, ``$`` or ``\\boxed{}``, or a final full stop."""
    answer = answer.strip().strip("*_` \t").replace("$", "").strip()
    if answer.startswith("\\boxed{") and answer.endswith("}"):
        answer = answer[len("\\boxed{") : -1].strip()
    return answer.rstrip(".").strip()


def _parse_id(question_id: str, dataset: str) -> tuple[str, int]:
    """(split, index) of an id ``<dataset>/<train|eval>/<index>`` made by this task."""
    parts = question_id.rsplit("/", 2)
    if len(parts) != 3 or parts[0] != dataset or parts[1] not in ("train", "eval") or not parts[2].isdigit():
        raise ValueError(f"question id {question_id!r} was not made by a ReasoningGymTask on {dataset!r}")
    return parts[1], int(parts[2])
