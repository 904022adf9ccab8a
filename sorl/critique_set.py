"""Builds the balanced critique evaluation set as the paper does, once, and stores it as JSONL.

For each evaluation question, sample ``samples_per_question`` responses from a given model, verify
them, and keep one right and one wrong response (questions where all are right or all wrong are
left out). The file is fixed across runs, so critique accuracy before and after training, and
across methods, is measured on the same pairs::

    python -m sorl.critique_set --config configs/critique_set/smollm2.yaml

A task reads it back with ``MathTask(critique_set=PATH)``.
"""

from __future__ import annotations

import json
from collections import Counter

from sorl.engines.base import RolloutEngine, SamplingParams
from sorl.policy import DType
from sorl.rewards import is_right
from sorl.sampler import model_sampler
from sorl.tasks.base import CritiqueExample, Task
from sorl.tasks.critique_sets import write_critique_set


def build_critique_set(
    task: Task,
    model: str,
    output: str,
    engine: RolloutEngine | None = None,
    samples_per_question: int = 8,
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    dtype: DType = "float32",
    trust_remote_code: bool = False,
    chat_template: bool | None = None,
    system_prompt: str | None = None,
    questions_per_call: int = 16,
    seed: int = 0,
) -> dict[str, dict[str, int]]:
    """Samples responses to ``task.eval_questions()`` from ``model`` and writes one right and one
    wrong response per question to ``output`` (JSONL); returns per-set counts of questions and pairs.

    Args:
        task: gives the evaluation questions, the answer prompt and the verifier.
        model: a local transformers causal-LM folder (or ``.gguf`` file) to sample from.
        output: the JSONL file to write.
        engine: samples the responses; defaults to :class:`~sorl.engines.HFEngine`.
        samples_per_question: responses sampled per question (the paper's k).
        max_new_tokens, temperature, top_p: sampling settings.
        dtype, trust_remote_code: how the model is loaded.
        chat_template, system_prompt: as in :class:`~sorl.data.RolloutDataModule`.
        questions_per_call: prompts per ``generate`` call.
        seed: sampling seed (each call's seed is derived from it, see :func:`~sorl.sampler.derive_seed`).
    """
    if samples_per_question < 2:
        raise ValueError(f"samples_per_question must be >= 2 to find both labels, got {samples_per_question}")
    sampler = model_sampler(model, engine, dtype, trust_remote_code, chat_template, system_prompt, seed)
    sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    questions = task.eval_questions()
    examples: list[CritiqueExample] = []
    asked: Counter[str] = Counter()
    right_responses: Counter[str] = Counter()
    for start in range(0, len(questions), questions_per_call):
        chunk = questions[start : start + questions_per_call]
        completions = sampler.generate([task.response_prompt(q) for q in chunk], samples_per_question, sampling, "critique_set", start)
        for question, group in zip(chunk, completions):
            asked[question.dataset] += 1
            labelled = [(c.text, is_right(task.verify(question, c.text))) for c in group]
            right_responses[question.dataset] += sum(is_right for _, is_right in labelled)
            right = next((text for text, is_right in labelled if is_right), None)
            wrong = next((text for text, is_right in labelled if not is_right), None)
            if right is not None and wrong is not None:
                examples += [CritiqueExample(question, right, True), CritiqueExample(question, wrong, False)]
        print(f"{start + len(chunk)}/{len(questions)} questions, {len(examples) // 2} pairs", flush=True)
    write_critique_set(output, examples)
    pairs = Counter(e.question.dataset for e in examples if e.is_right)
    return {
        dataset: {
            "questions": asked[dataset],
            "pairs": pairs[dataset],
            "right_responses": right_responses[dataset],
            "responses": asked[dataset] * samples_per_question,
        }
        for dataset in asked
    }


def main() -> None:
    from jsonargparse import CLI

    counts = CLI(build_critique_set, as_positional=False)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
