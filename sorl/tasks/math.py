"""MathTask: maths word problems with rule-verified answers (:mod:`sorl.tasks.math_data` reads the
files).

Responses are asked to end with ``\\boxed{...}``; :class:`~sorl.verify.MathVerifier` compares
it with the gold using math-verify under a time bound. Critiques end with ``Verdict: right`` or
``Verdict: wrong``. Prompts are plain text: the DataModule wraps them in the model's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence

from sorl.rewards import parse_verdict
from sorl.tasks.base import CritiqueExample, Question
from sorl.tasks.critique_sets import read_critique_set
from sorl.tasks.math_data import MathDataset
from sorl.tasks.templates import check_template, fill
from sorl.verify import Fallback, MathVerifier

DEFAULT_ANSWER_TEMPLATE = (
    "{question}\n\nSolve the problem step by step. "
    "End your response with the final answer written as \\boxed{ANSWER}."
)
DEFAULT_CRITIQUE_TEMPLATE = (
    "Below are a math problem and a proposed solution. Check the solution step by step. "
    'Then end your critique with "Verdict: right" if its final answer is correct, '
    'or "Verdict: wrong" if it is not.\n\n'
    "Problem:\n{question}\n\nProposed solution:\n{response}"
)
DEFAULT_REFINEMENT_TEMPLATE = (
    "Below are a math problem, a proposed solution and a critique of it.\n\n"
    "Problem:\n{question}\n\nProposed solution:\n{response}\n\nCritique:\n{critique}\n\n"
    "Write a corrected solution step by step. "
    "End it with the final answer written as \\boxed{ANSWER}."
)


class MathTask:
    """Maths questions from files, answers verified by math-verify, critiques ending in a verdict.

    Args:
        train: the training pool (e.g. GSM8K train). Questions whose text is also an evaluation
            question are left out.
        eval: evaluation sets; accuracy is reported per set (``MathDataset.name``) and averaged.
        critique_set: JSONL of the balanced critique evaluation set (``python -m sorl.critique_set``);
            ``None``: no critique evaluation.
        answer_template: holds ``{question}``.
        critique_template: holds ``{question}`` and ``{response}``; never the gold answer.
        refinement_template: holds ``{question}``, ``{response}`` and ``{critique}``.
        verdict_prefix, verdict_right, verdict_wrong: how a critique states its verdict.
        verify_timeout: seconds one verification may take before it scores 0.
        answer_fallback: where the answer is read from when a response has no ``\\boxed{}``:
            ``none`` (only "final answer is $...$"), ``latex`` (bare LaTeX too) or ``last_number``
            (the last plain number; lenient, for small models that do not box their answers).
    """

    def __init__(
        self,
        train: Sequence[MathDataset] = (),
        eval: Sequence[MathDataset] = (),
        critique_set: str | None = None,
        answer_template: str = DEFAULT_ANSWER_TEMPLATE,
        critique_template: str = DEFAULT_CRITIQUE_TEMPLATE,
        refinement_template: str = DEFAULT_REFINEMENT_TEMPLATE,
        verdict_prefix: str = "Verdict:",
        verdict_right: str = "right",
        verdict_wrong: str = "wrong",
        verify_timeout: float = 5.0,
        answer_fallback: Fallback = "none",
    ) -> None:
        check_template("answer_template", answer_template, {"question"}, {"question"})
        check_template("critique_template", critique_template, {"question", "response"}, {"question", "response"})
        check_template(
            "refinement_template", refinement_template, {"question", "response", "critique"}, {"question", "response", "critique"}
        )
        names = [d.name for d in eval]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation sets need distinct names, got {names}")
        self.train = list(train)
        self.eval = list(eval)
        self.critique_set = critique_set
        self.answer_template = answer_template
        self.critique_template = critique_template
        self.refinement_template = refinement_template
        self.verdict_prefix = verdict_prefix
        self.verdict_right = verdict_right
        self.verdict_wrong = verdict_wrong
        self.verifier = MathVerifier(timeout=verify_timeout, fallback=answer_fallback)
        self._train: list[Question] | None = None
        self._eval: list[Question] | None = None
        self._critique_eval: list[CritiqueExample] | None = None

    # ---- questions -------------------------------------------------------------------------------

    def train_questions(self) -> list[Question]:
        if self._train is None:
            held_out = {q.text for q in self.eval_questions()}
            self._train = [q for dataset in self.train for q in dataset.questions() if q.text not in held_out]
        return self._train

    def eval_questions(self) -> list[Question]:
        if self._eval is None:
            self._eval = [q for dataset in self.eval for q in dataset.questions()]
        return self._eval

    def critique_eval_set(self) -> list[CritiqueExample]:
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

    # ---- rewards ---------------------------------------------------------------------------------

    def verify(self, question: Question, response: str) -> float:
        """1 when the response's last ``\\boxed{}`` equals the gold (math-verify, time-bounded)."""
        return self.verifier(question.gold, response)

    def parse_verdict(self, critique: str) -> bool | None:
        """The last ``Verdict: right`` / ``Verdict: wrong``; None when absent."""
        return parse_verdict(critique, self.verdict_right, self.verdict_wrong, self.verdict_prefix)

