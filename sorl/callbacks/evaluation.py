"""Evaluation: a baseline before training, and a before/after summary at the end of fit.

The DataModule samples and scores the evaluation items and the LightningModule's validation loop
accumulates the metrics (:mod:`sorl.evaluation`), so ``sorl validate`` and Lightning's
``check_val_every_n_epoch`` work as usual; this callback adds what that loop does not: evaluating the initial policy before the first update, and a summary table plus one
JSON line (``gen_acc_before``, ``gen_acc_after``, ``crit_acc_before``, ``crit_acc_after``, ...).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

DATASET_METRICS = ("gen_acc", "crit_acc")  # also reported per evaluation set (Question.dataset)
SUMMARY_KEYS = ("gen_acc", "gen_mean_acc", "crit_acc", "crit_precision", "crit_recall", "crit_f1", "verdict_wrong_share")


class Evaluation(Callback):
    """Args:
    before_fit: evaluate the initial policy when training starts (logged at step 0).
    after_fit: evaluate once more at the end of fit unless the last epoch just did.
    print_summary: print the before/after table and the JSON line at the end of fit.
    """

    def __init__(self, before_fit: bool = True, after_fit: bool = True, print_summary: bool = True) -> None:
        self.before_fit = before_fit
        self.after_fit = after_fit
        self.print_summary = print_summary
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self._evaluated_at_step = -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.before_fit and not self.before:
            self.before = self.evaluate(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.after = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}
        self._evaluated_at_step = trainer.global_step

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.after_fit and self._evaluated_at_step != trainer.global_step:
            self.after = self.evaluate(trainer, pl_module)
        if self.print_summary and trainer.is_global_zero:
            if trainer.progress_bar_callback is not None:
                # A live (Rich) bar renders its last frame when it stops: stop it first so the
                # JSON line really is the last output. Stopping twice is harmless.
                trainer.progress_bar_callback.teardown(trainer, pl_module, "fit")
            rank_zero_info(summary_table(self.before, self.after))
            print(json.dumps(summary_json(self.before, self.after)), flush=True)

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Runs the module's evaluation over the DataModule's evaluation items outside a loop."""
        with torch.no_grad():
            for index, batch in enumerate(trainer.datamodule.val_dataloader()):
                pl_module.validation_step(batch, index)
        metrics = pl_module.eval_metrics.compute(trainer)
        self._evaluated_at_step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = state_dict["before"]
        self.after = state_dict["after"]


def summary_json(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """``<metric>_before/after`` for the totals, then per evaluation set ``gen_acc_<set>_before``,
    ``crit_acc_<set>_after``, ... and their averages over sets (``gen_acc_avg_before``, ...)."""
    result: dict[str, float | None] = {}
    for key in SUMMARY_KEYS:
        result[f"{key}_before"] = before.get(f"eval/{key}")
        result[f"{key}_after"] = after.get(f"eval/{key}")
    for dataset in [*_datasets(before, after), "avg"]:
        for metric in DATASET_METRICS:
            key = f"eval/{metric}_avg" if dataset == "avg" else f"eval/{metric}/{dataset}"
            if key in before or key in after:
                result[f"{metric}_{dataset}_before"] = before.get(key)
                result[f"{metric}_{dataset}_after"] = after.get(key)
    return result


def summary_table(before: dict[str, float], after: dict[str, float]) -> str:
    lines = [f"{'metric':<22}{'before':>10}{'after':>10}", "-" * 42]
    for key in SUMMARY_KEYS:
        b, a = before.get(f"eval/{key}"), after.get(f"eval/{key}")
        lines.append(f"{key:<22}{_fmt(b):>10}{_fmt(a):>10}")
    datasets = _datasets(before, after)
    if datasets:  # the paper's table: one row per evaluation set, and their average
        lines += ["", f"{'dataset':<22}" + "".join(f"{m + ' ' + w:>18}" for m in DATASET_METRICS for w in ("before", "after"))]
        lines.append("-" * (22 + 18 * 2 * len(DATASET_METRICS)))
        for dataset in [*datasets, "average"]:
            cells = []
            for metric in DATASET_METRICS:
                key = f"eval/{metric}_avg" if dataset == "average" else f"eval/{metric}/{dataset}"
                cells += [_fmt(before.get(key)), _fmt(after.get(key))]
            lines.append(f"{dataset:<22}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def _datasets(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """Evaluation set names in first-seen order, from ``eval/<metric>/<set>`` keys."""
    names: dict[str, None] = {}
    for key in [*before, *after]:
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[1] in DATASET_METRICS:
            names[parts[2]] = None
    return list(names)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
