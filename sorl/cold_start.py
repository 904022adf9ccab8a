"""A critique cold start with no teacher model: demonstrations built from the policy itself.

The paper cold-starts the critic on critiques written by a stronger model. Without one, sorl builds
them from the policy's own samples, for any verifiable task that can write its critique format
(:class:`SelfCritiqueTask`, e.g. :class:`~sorl.tasks.reasoning_gym.ReasoningGymTask`):

1. sample ``samples_per_question`` responses per training question and verify them;
2. a verified-correct response (rejection sampling; the shortest one of the question) is a
   **solution** demonstration (the answer prompt -> the solution, in the task's answer format);
3. a question with both a right and a wrong response gives one **balanced pair of critique**
   demonstrations in the "solve it yourself, then compare" format: the critic's working is a
   verified-correct solution, then its answer, the response's answer and the verdict the verifier's
   label gives. The right response critiqued is another right sample when there is one, so the
   critic's working is not a copy of the response;
4. optionally a **refinement** demonstration: (question, wrong response, its critique) -> the
   verified solution.

The output is the JSONL that :class:`~sorl.sft.SFTDataModule` reads (``prompt`` and ``target`` per
line; ``kind``, ``question_id`` and ``label`` are kept for inspection)::

    python -m sorl.cold_start --config configs/smollm2_reasoning_gym_cold_start_data.yaml
    sorl fit --config configs/smollm2_reasoning_gym_cold_start.yaml

Only training questions are used, so evaluation stays held out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from sorl.engines.base import RolloutEngine, SamplingParams
from sorl.policy import DType
from sorl.rewards import is_right as right_reward
from sorl.sampler import model_sampler
from sorl.tasks.base import Question, Task


@runtime_checkable
class SelfCritiqueTask(Task, Protocol):
    def solution_demonstration(self, solution: str) -> str:
        """A verified-correct response written in the task's answer format."""

    def critique_demonstration(self, solution: str, response: str, is_right: bool) -> str:
        """A critique of ``response`` in the format ``critique_prompt`` asks for, whose own working
        is the verified-correct ``solution`` and whose verdict is ``is_right``."""


def demonstrations(task: SelfCritiqueTask, question: Question, labelled: list[tuple[str, bool]], refinement: bool) -> list[dict]:
    """The demonstrations one question's verified samples give (see the module doc), as JSONL rows."""
    right = [text for text, is_right in labelled if is_right]
    wrong = [text for text, is_right in labelled if not is_right]
    if not right:
        return []
    # The shortest right sample: sampled at temperature 1, a small model's longer right answers
    # tend to carry off-topic text that the demonstrations would teach.
    solution = min(right, key=len)
    others = [text for text in right if text is not solution]
    rows = [_row(task.response_prompt(question), task.solution_demonstration(solution), "solution", question, None)]
    if wrong:
        for response, is_right in ((others[0] if others else solution, True), (wrong[0], False)):
            critique = task.critique_demonstration(solution, response, is_right)
            rows.append(_row(task.critique_prompt(question, response), critique, "critique", question, is_right))
        if refinement:
            prompt = task.refinement_prompt(question, wrong[0], rows[-1]["target"])
            rows.append(_row(prompt, task.solution_demonstration(solution), "refinement", question, None))
    return rows


def _row(prompt: str, target: str, kind: str, question: Question, label: bool | None) -> dict:
    return {"prompt": prompt, "target": target, "kind": kind, "question_id": question.id, "label": label}


def build_cold_start(
    task: SelfCritiqueTask,
    model: str,
    output: str,
    engine: RolloutEngine | None = None,
    num_questions: int = 64,
    samples_per_question: int = 8,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    refinement: bool = True,
    dtype: DType = "float32",
    trust_remote_code: bool = False,
    chat_template: bool | None = None,
    system_prompt: str | None = None,
    questions_per_call: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Samples the policy ``model`` on the first ``num_questions`` training questions of ``task``,
    writes the demonstrations to ``output`` (JSONL) and returns counts and yield.

    Args:
        task: verifies responses and writes the demonstration formats.
        model: a local transformers causal-LM folder (or ``.gguf`` file): the policy to cold-start.
        output: the JSONL file to write.
        engine: samples the responses; defaults to :class:`~sorl.engines.HFEngine`.
        num_questions: training questions sampled (fewer if the pool is smaller).
        samples_per_question: responses per question; more finds more right and wrong pairs.
        max_new_tokens, temperature, top_p: sampling settings.
        refinement: also write a refinement demonstration per pair.
        dtype, trust_remote_code: how the model is loaded (bf16 samples faster on CPUs with
            AVX-512 BF16).
        chat_template, system_prompt: as in :class:`~sorl.data.RolloutDataModule`, so that the
            demonstrations are sampled from the prompts RL will use.
        questions_per_call: prompts per ``generate`` call.
        seed: sampling seed (each call's seed is derived from it, see :func:`~sorl.sampler.derive_seed`).
    """
    if samples_per_question < 2:
        raise ValueError(f"samples_per_question must be >= 2 to find both labels, got {samples_per_question}")
    started = time.perf_counter()
    sampler = model_sampler(model, engine, dtype, trust_remote_code, chat_template, system_prompt, seed)
    sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    questions = task.train_questions()[:num_questions]
    rows: list[dict] = []
    right_responses = 0
    for start in range(0, len(questions), questions_per_call):
        chunk = questions[start : start + questions_per_call]
        completions = sampler.generate([task.response_prompt(q) for q in chunk], samples_per_question, sampling, "cold_start", start)
        for question, group in zip(chunk, completions):
            labelled = [(c.text, right_reward(task.verify(question, c.text))) for c in group]
            right_responses += sum(is_right for _, is_right in labelled)
            rows += demonstrations(task, question, labelled, refinement)
        pairs = sum(r["kind"] == "critique" for r in rows) // 2
        print(f"{start + len(chunk)}/{len(questions)} questions, {pairs} pairs", flush=True)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with Path(output).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    minutes = (time.perf_counter() - started) / 60
    kinds = {kind: sum(r["kind"] == kind for r in rows) for kind in ("solution", "critique", "refinement")}
    return {
        "questions": len(questions),
        "responses": len(questions) * samples_per_question,
        "right_responses": right_responses,
        "solutions": kinds["solution"],
        "pairs": kinds["critique"] // 2,
        "refinements": kinds["refinement"],
        "minutes": round(minutes, 2),
        "solutions_per_minute": round(kinds["solution"] / minutes, 2),
        "pairs_per_minute": round(kinds["critique"] / 2 / minutes, 2),
    }


def main() -> None:
    from jsonargparse import CLI

    print(json.dumps(CLI(build_cold_start, as_positional=False)))


if __name__ == "__main__":
    main()
