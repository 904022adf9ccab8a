"""A synthetic, verifiable arithmetic task small enough for a character-level model.

Questions chain integers with ``+``, ``-`` and ``*``, evaluated strictly left to right with no
operator precedence: ``2+3*4`` is ``(2+3)*4 = 20``. The formats (``\\n`` is a newline)::

    answer prompt      Q:12+34-56\\nS:
    response           12+34=46;46-56=-10;A:-10
    critique prompt    Q:12+34-56\\nS:<response>\\nC:
    critique           12+34=46|46 ok;46-56=-10|-11 no;A:-10|-11 no;V:wrong
    refinement prompt  <critique prompt><critique>\\nF:      (target: a correct response)

A critique re-derives each correct step, then after ``|`` copies the result the response wrote at
that step (``?`` when missing or unparseable) and marks ``ok`` or ``no``; the two compared numbers
sit side by side so a tiny model can learn the comparison locally. Its verdict follows only the
final ``A:`` comparison, as the verifier does; the step marks locate the first error. Copied values
are normalised integers (``046`` is copied as ``46``), so the string comparison matches the
verifier's integer comparison.
"""

from __future__ import annotations

import random
import re

from sorl.rewards import MAX_PARSE_CHARS, parse_verdict
from sorl.tasks.base import CritiqueExample, Question

Step = tuple[int, str, int, int]  # a op b = c

_NUM = r"-?\d{1,64}"  # legit values are far shorter; longer numbers are unparseable, not truncated
_STEP_RE = re.compile(rf"({_NUM})([+*-])({_NUM})=({_NUM})")
_ANSWER_RE = re.compile(rf"A:[ \t]{{0,8}}({_NUM})(?!\d)")
_FINAL_RE = re.compile(rf"A:({_NUM})")
_TERM_RE = re.compile(r"\d+|[+*-]")
_FINAL_ONLY_SHARE = 0.2  # share of injected errors where only the final A: value is wrong


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _perturb(value: int, rng: random.Random) -> int:
    """A different integer close to ``value``: a small delta or one changed digit."""
    if rng.random() < 0.5:
        return value + rng.choice([d for d in range(-9, 10) if d])
    digits = str(abs(value))
    i = rng.randrange(len(digits))
    new = rng.choice([d for d in "0123456789" if d != digits[i]])
    magnitude = int(digits[:i] + new + digits[i + 1 :])
    return -magnitude if value < 0 else magnitude


def _format(steps: list[Step], final: int) -> str:
    return "".join(f"{a}{op}{b}={c};" for a, op, b, c in steps) + f"A:{final}"


def _answer(response: str) -> int | None:
    """The value of the last ``A:`` in the response, or None. Reads the response's end, where the
    answer is: a long response keeps its final answer."""
    last = None
    for match in _ANSWER_RE.finditer(response[-MAX_PARSE_CHARS:]):
        last = match.group(1)
    return None if last is None else int(last)


class ArithmeticTask:
    """Left-to-right integer arithmetic with step-by-step solutions and step-aligned critiques.

    Each question has between ``min_operands`` (default: ``num_operands``) and ``num_operands``
    operands drawn uniformly from ``[0, 10**digits - 1]``, joined by operators drawn from ``ops``
    (repeat a character to weight it). Questions are deterministic per ``seed``; eval questions are
    drawn first and every train question differs from every eval question.
    """

    def __init__(
        self,
        num_operands: int = 4,
        digits: int = 1,
        ops: str = "+-*",
        num_train: int = 20000,
        num_eval: int = 200,
        seed: int = 0,
        min_operands: int | None = None,
    ) -> None:
        min_operands = num_operands if min_operands is None else min_operands
        if not 2 <= min_operands <= num_operands:
            raise ValueError(f"need 2 <= min_operands <= num_operands, got {min_operands}, {num_operands}")
        if digits < 1 or not ops or set(ops) - set("+-*"):
            raise ValueError(f"need digits >= 1 and ops made of '+-*', got {digits}, {ops!r}")
        if "*" in ops and digits * num_operands > 60:
            raise ValueError("products could exceed the 64 digits the parsers read")
        capacity = sum((10**digits) ** n * len(set(ops)) ** (n - 1) for n in range(min_operands, num_operands + 1))
        if num_train + num_eval > capacity:
            raise ValueError(f"only {capacity} distinct questions exist, asked for {num_train + num_eval}")
        self.num_operands = num_operands
        self.min_operands = min_operands
        self.digits = digits
        self.ops = ops
        self.num_train = num_train
        self.num_eval = num_eval
        self.seed = seed
        self._train: list[Question] | None = None
        self._eval: list[Question] | None = None
        self._critique_eval: list[CritiqueExample] | None = None

    # ---- questions -------------------------------------------------------------------------------

    def _draw_texts(self, rng: random.Random, count: int, exclude: set[str]) -> list[str]:
        texts: list[str] = []
        seen = set(exclude)
        while len(texts) < count:
            n = rng.randint(self.min_operands, self.num_operands)
            operands = [str(rng.randrange(10**self.digits)) for _ in range(n)]
            text = operands[0] + "".join(rng.choice(self.ops) + x for x in operands[1:])
            if text not in seen:
                seen.add(text)
                texts.append(text)
        return texts

    def _build(self) -> None:
        rng = random.Random(self.seed)
        eval_texts = self._draw_texts(rng, self.num_eval, set())
        train_texts = self._draw_texts(rng, self.num_train, set(eval_texts))
        self._eval = [Question(f"eval-{i}", t, str(self.evaluate(t))) for i, t in enumerate(eval_texts)]
        self._train = [Question(f"train-{i}", t, str(self.evaluate(t))) for i, t in enumerate(train_texts)]

    def train_questions(self) -> list[Question]:
        if self._train is None:
            self._build()
        return self._train

    def eval_questions(self) -> list[Question]:
        if self._eval is None:
            self._build()
        return self._eval

    @staticmethod
    def steps(text: str) -> list[Step]:
        """The correct left-to-right steps of a question text such as ``12+34-56``."""
        terms = _TERM_RE.findall(text)
        acc = int(terms[0])
        out = []
        for op, b in zip(terms[1::2], terms[2::2]):
            c = _apply(acc, op, int(b))
            out.append((acc, op, int(b), c))
            acc = c
        return out

    @classmethod
    def evaluate(cls, text: str) -> int:
        """The value of a question text, strictly left to right."""
        return cls.steps(text)[-1][3]

    # ---- prompts ---------------------------------------------------------------------------------

    def response_prompt(self, question: Question) -> str:
        return f"Q:{question.text}\nS:"

    def critique_prompt(self, question: Question, response: str) -> str:
        return f"{self.response_prompt(question)}{response}\nC:"

    def refinement_prompt(self, question: Question, response: str, critique: str) -> str:
        return f"{self.critique_prompt(question, response)}{critique}\nF:"

    # ---- rewards ---------------------------------------------------------------------------------

    def verify(self, question: Question, response: str) -> float:
        """1 when the last ``A:`` value equals the gold answer as an integer."""
        return 1.0 if _answer(response) == int(question.gold) else 0.0

    def parse_verdict(self, critique: str) -> bool | None:
        """The last ``V:right`` / ``V:wrong``; ``V:rightish`` is no verdict."""
        return parse_verdict(critique, prefix="V:")

    # ---- demonstrations and oracle ---------------------------------------------------------------

    def solution(self, question: Question) -> str:
        """The correct response."""
        steps = self.steps(question.text)
        return _format(steps, steps[-1][3])

    def critique(self, question: Question, response: str) -> str:
        """The correct critique of any response string, malformed ones included."""
        segments = response[:MAX_PARSE_CHARS].split(";")  # steps begin the response; the answer is read from its end
        parts = []
        for j, (a, op, b, c) in enumerate(self.steps(question.text)):
            match = _STEP_RE.fullmatch(segments[j].strip()) if j < len(segments) else None
            wrote = str(int(match.group(4))) if match else "?"
            parts.append(f"{a}{op}{b}={c}|{wrote} {'ok' if wrote == str(c) else 'no'}")
        final = _answer(response)
        wrote = "?" if final is None else str(final)
        right = wrote == question.gold
        parts.append(f"A:{question.gold}|{wrote} {'ok' if right else 'no'}")
        parts.append("V:right" if right else "V:wrong")
        return ";".join(parts)

    def inject_error(self, question: Question, rng: random.Random) -> str:
        """A plausible wrong response: one step's result perturbed and the chain continued from it,
        or (sometimes) correct steps with a wrong final value. Its final answer is never the gold."""
        correct = self.steps(question.text)
        gold = correct[-1][3]
        if rng.random() < _FINAL_ONLY_SHARE:
            return _format(correct, _perturb(gold, rng))
        k = rng.randrange(len(correct))
        steps: list[Step] = []
        acc = correct[0][0]
        for j, (_, op, b, _) in enumerate(correct):
            c = _apply(acc, op, b)
            if j == k:
                c = _perturb(c, rng)
            steps.append((acc, op, b, c))
            acc = c
        if acc == gold:  # a later step erased the error (e.g. *0): break the last step instead
            a, op, b, c = correct[-1]
            steps = correct[:-1] + [(a, op, b, _perturb(c, rng))]
        return _format(steps, steps[-1][3])

    def response_steps_correct(self, question: Question, response: str) -> bool:
        """Every step present and well-formed, chained from the question and the previous result,
        arithmetic right, and the final ``A:`` equal to the last result."""
        if len(response) > MAX_PARSE_CHARS:  # a correct response is far shorter; don't read a prefix
            return False
        correct = self.steps(question.text)
        segments = response.strip().split(";")
        if len(segments) != len(correct) + 1:
            return False
        for segment, step in zip(segments, correct):
            match = _STEP_RE.fullmatch(segment.strip())
            if match is None or (int(match[1]), match[2], int(match[3]), int(match[4])) != step:
                return False
        final = _FINAL_RE.fullmatch(segments[-1].strip())
        return final is not None and int(final[1]) == correct[-1][3]

    def critique_analysis_correct(self, question: Question, response: str, critique: str) -> bool:
        """Whether every re-derived value, copied value, mark and the verdict are right."""
        # plain string equality (no regex), over the whole critique: trailing text makes it wrong
        return critique.strip() == self.critique(question, response)

    def critique_eval_set(self) -> list[CritiqueExample]:
        """Per eval question, the correct solution and one injected error: label-balanced."""
        if self._critique_eval is None:
            rng = random.Random(f"critique-eval-{self.seed}")
            self._critique_eval = []
            for q in self.eval_questions():
                self._critique_eval.append(CritiqueExample(q, self.solution(q), True))
                self._critique_eval.append(CritiqueExample(q, self.inject_error(q, rng), False))
        return self._critique_eval

    def sft_examples(
        self, num: int, seed: int, critique_share: float = 0.5, refinement_share: float = 0.1
    ) -> list[tuple[str, str]]:
        """``(prompt, target)`` demonstrations from train questions, in exact shares and shuffled:
        critiques (half of right responses, half of injected errors), refinements of injected errors
        to the solution, and solutions for the rest."""
        if critique_share < 0 or refinement_share < 0 or critique_share + refinement_share > 1:
            raise ValueError("shares must be non-negative and sum to at most 1")
        rng = random.Random(seed)
        num_critique = round(num * critique_share)
        num_refinement = min(round(num * refinement_share), num - num_critique)
        kinds = ["critique"] * num_critique + ["refinement"] * num_refinement
        kinds += ["solution"] * (num - len(kinds))
        rng.shuffle(kinds)
        train = self.train_questions()
        examples = []
        critiques_made = 0
        for kind in kinds:
            q = rng.choice(train)
            if kind == "solution":
                examples.append((self.response_prompt(q), self.solution(q)))
            elif kind == "critique":
                response = self.solution(q) if critiques_made % 2 == 0 else self.inject_error(q, rng)
                critiques_made += 1
                examples.append((self.critique_prompt(q, response), self.critique(q, response)))
            else:
                wrong = self.inject_error(q, rng)
                examples.append((self.refinement_prompt(q, wrong, self.critique(q, wrong)), self.solution(q)))
        return examples
