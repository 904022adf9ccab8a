"""Evaluation sampling and metrics, as in the paper.

Generation: greedy pass@1 (``eval/gen_acc``) and the mean accuracy of ``eval_samples`` samples
(``eval/gen_mean_acc``) on held-out questions. Critique: verdict accuracy, precision, recall and F1
on a label-balanced set, where "positive" means the verdict ``wrong`` (an error found), and the
share of ``wrong`` verdicts (``eval/verdict_wrong_share``), which shows a biased critic at a glance.
Both are also reported per evaluation set (``Question.dataset``) and as their mean (``_avg``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, BinaryPrecision, BinaryRecall

from sorl.distributed import reduce, reduce_sums
from sorl.engines.base import SamplingParams
from sorl.rewards import is_right
from sorl.rollout import RolloutContext
from sorl.sampler import Sampler
from sorl.tasks.base import CritiqueExample, Question, Task


def score_generation(
    sampler: Sampler, task: Task, questions: Sequence[Question], sampling: SamplingParams, eval_samples: int, rank: int
) -> dict[str, Any]:
    """Greedy correctness of each question's response and, with ``eval_samples``, the mean over samples."""
    prompt_ids = sampler.encode([task.response_prompt(q) for q in questions])
    greedy = SamplingParams(greedy=True, max_new_tokens=sampling.max_new_tokens)
    item: dict[str, Any] = {"kind": "generation", "datasets": [q.dataset for q in questions], "mean_correct": None}
    outputs = sampler.generate_ids(prompt_ids, 1, greedy, "eval_greedy", rank) if questions else []
    item["correct"] = torch.tensor([is_right(task.verify(q, out[0].text)) for q, out in zip(questions, outputs)], dtype=torch.float32)
    if eval_samples > 0 and questions:
        outputs = sampler.generate_ids(prompt_ids, eval_samples, sampling, "eval_samples", rank)
        item["mean_correct"] = torch.tensor(
            [sum(is_right(task.verify(q, o.text)) for o in out) / eval_samples for q, out in zip(questions, outputs)]
        )
    return item


def score_critiques(
    sampler: Sampler, task: Task, examples: Sequence[CritiqueExample], max_new_tokens: int, rank: int
) -> dict[str, Any]:
    """Greedy verdicts on each example; a critique without a verdict counts as a wrong prediction."""
    prompt_ids = sampler.encode([task.critique_prompt(e.question, e.response) for e in examples])
    greedy = SamplingParams(greedy=True, max_new_tokens=max_new_tokens)
    outputs = sampler.generate_ids(prompt_ids, 1, greedy, "eval_critiques", rank) if examples else []
    verdicts = [task.parse_verdict(out[0].text) for out in outputs]
    return {
        "kind": "critique",
        "datasets": [e.question.dataset for e in examples],
        "target": torch.tensor([not e.is_right for e in examples], dtype=torch.long),  # positive: the response is wrong
        "predicted": torch.tensor([(v is False) if v is not None else e.is_right for v, e in zip(verdicts, examples)], dtype=torch.long),
        "said_wrong": torch.tensor([v is False for v in verdicts], dtype=torch.float32),
        "no_verdict": torch.tensor([v is None for v in verdicts], dtype=torch.float32),
    }


def evaluation_items(context: RolloutContext, world: int, max_questions: int | None, eval_samples: int) -> list[dict[str, Any]]:
    """This rank's scored evaluation: one item of held-out questions and one of critique examples
    (of at most ``max_questions`` each, the critique set kept balanced), even with an empty shard."""
    task, sampler, rank = context.task, context.sampler, context.rank
    questions = list(task.eval_questions())[:max_questions][rank::world]
    examples = balanced_head(task.critique_eval_set(), max_questions)[rank::world]
    return [
        score_generation(sampler, task, questions, context.response_sampling, eval_samples, rank),
        score_critiques(sampler, task, examples, context.critique_sampling.max_new_tokens, rank),
    ]


class EvalMetrics(nn.Module):
    """Accumulates scored evaluation items (see :func:`score_generation`, :func:`score_critiques`);
    ``compute`` reduces over ranks and resets. A module so that the metrics follow the device."""

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.ModuleDict(
            {name: MeanMetric() for name in ("gen_acc", "gen_mean_acc", "verdict_wrong_share", "verdict_parse_failures")}
        )
        self.critique = nn.ModuleDict(
            {"crit_acc": BinaryAccuracy(), "crit_precision": BinaryPrecision(), "crit_recall": BinaryRecall(), "crit_f1": BinaryF1Score()}
        )
        # eval/<metric>/<dataset> -> [sum, count], reduced over ranks by name: a rank's shard need
        # not hold every set
        self.dataset_sums: dict[str, list[float]] = {}

    def update(self, item: dict[str, Any]) -> None:
        device = next(iter(self.means.values())).device
        if item["kind"] == "generation":
            if len(item["correct"]):
                self.means["gen_acc"].update(item["correct"].to(device))
            if item["mean_correct"] is not None:
                self.means["gen_mean_acc"].update(item["mean_correct"].to(device))
            self._add_dataset_sums("gen_acc", item["datasets"], item["correct"].tolist())
            return
        if not len(item["target"]):
            return
        for metric in self.critique.values():
            metric.update(item["predicted"].to(device), item["target"].to(device))
        self.means["verdict_wrong_share"].update(item["said_wrong"].to(device))
        self.means["verdict_parse_failures"].update(item["no_verdict"].to(device))
        self._add_dataset_sums("crit_acc", item["datasets"], (item["predicted"] == item["target"]).float().tolist())

    def _add_dataset_sums(self, metric: str, datasets: list[str], values: list[float]) -> None:
        for dataset, value in zip(datasets, values):
            if dataset:  # tasks without named sets (the arithmetic task) report totals only
                sums = self.dataset_sums.setdefault(f"eval/{metric}/{dataset}", [0.0, 0.0])
                sums[0] += value
                sums[1] += 1

    def compute(self, trainer: Any) -> dict[str, float]:
        """``eval/<metric>`` totals, per set ``eval/<metric>/<dataset>`` and the mean over sets
        ``eval/<metric>_avg`` (the paper's average), synchronised over ranks; then resets."""
        values = {}
        metrics = [*self.means.items(), *self.critique.items()]
        # compute() synchronises over ranks, so every rank calls it or none: a rank whose shard of
        # the evaluation set is empty (fewer items than ranks) adds its zero states.
        counts = reduce(trainer, torch.tensor([float(metric.update_count) for _, metric in metrics]), "sum")
        for (name, metric), count in zip(metrics, counts.tolist()):
            if count > 0:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                    values[f"eval/{name}"] = float(metric.compute())
            metric.reset()
        sums, self.dataset_sums = self.dataset_sums, {}
        per_set = reduce_sums(trainer, sums)
        for metric in ("gen_acc", "crit_acc"):
            means = [value for name, value in per_set.items() if name.startswith(f"eval/{metric}/")]
            if means:
                per_set[f"eval/{metric}_avg"] = sum(means) / len(means)
        return values | per_set


def balanced_head(examples: Sequence[CritiqueExample], cap: int | None) -> list[CritiqueExample]:
    """The first ``cap // 2`` right and ``cap // 2`` wrong examples, in their order (all if ``cap`` is None)."""
    if cap is None:
        return list(examples)
    right = [e for e in examples if e.is_right][: cap // 2]
    wrong = [e for e in examples if not e.is_right][: cap // 2]
    kept = set(map(id, right + wrong))
    return [e for e in examples if id(e) in kept]
