"""The paper's label-balanced critique cache vs an unbalanced one, on the same short GC-RL schedule.

"balanced" runs ``configs/quickstart.yaml`` with callbacks LabelBalancing and Evaluation (from each
question with a right and a wrong response, one of each enters the cache); "unbalanced" with
Evaluation only (every scored pair enters it, so the majority label dominates). Measures, on the
label-balanced critique eval set after training (positive = the verdict ``wrong``):

- crit_acc, crit_f1, verdict_wrong_share: the Evaluation callback's ``*_after`` values;
- crit_precision, crit_recall: the last ``eval/crit_precision`` / ``eval/crit_recall`` in TensorBoard
  (the summary JSON has no such keys), checked against the JSON's crit_acc at the same step;
- right_share_before: the mean over rounds of ``rollout/right_share_before``, the share of right
  responses among the round's scored responses (the natural cache, before any balancing);
- right_share_after: the mean over rounds of ``rollout/right_share_after``, the share of right
  responses among the pairs entering the cache (rounds where none enter log no value).

``--setting`` picks the task (``SETTINGS``): ``default`` is the quickstart's (4 one-digit operands,
as in the cold start; the embedded policy answers about half right, so the natural cache is near
balance), ``weak`` has 4 or 5 operands, where the embedded policy answers 28.5% of the held-out
questions right (greedy) and wrong responses dominate the natural cache; its held-out questions
and critique set are drawn from the same setting.

Seeds 0 1 2 and 30 rounds by default, the variant order alternating per seed. Prints a table
(mean ± sample std over seeds, and the initial policy's values) and, as its last line, one JSON
object ``{"balanced": {...}, "unbalanced": {...}, "initial": {...}, "setting": S, "seeds": [...],
"rounds": N}`` (means and ``*_std``; ``initial``: the policy before training, ``gen_acc`` included);
writes ``benchmarks/results/label_balance[-weak][-quick].{json,md,png}``.

    python benchmarks/label_balance.py [--quick] [--setting default|weak] [--seeds 0 1 2] [--rounds 30] [--lock PATH]

``--quick``: one seed, 8 rounds (a few minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from common import (
    QUICKSTART,
    FitRun,
    add_lock_arg,
    add_schedule_args,
    callbacks_override,
    cpu_lock,
    fmt,
    interleaved,
    machine,
    machine_markdown,
    markdown_table,
    mean_std,
    plain_table,
    plt,
    result_name,
    run_fit,
    schedule,
    seed_overrides,
    write_results,
)

VARIANTS = ("balanced", "unbalanced")
SUMMARY_METRICS = ("crit_acc", "crit_f1", "verdict_wrong_share")  # from the summary JSON
TB_METRICS = ("crit_precision", "crit_recall")  # last value in TensorBoard
METRICS = (
    "crit_acc", "crit_precision", "crit_recall", "crit_f1", "verdict_wrong_share", "right_share_before", "right_share_after",
)  # fmt: skip
INITIAL_METRICS = ("gen_acc", "crit_acc", "crit_precision", "crit_recall", "crit_f1", "verdict_wrong_share")  # *_before
# setting -> the task's overrides on the quickstart config
SETTINGS: dict[str, list[str]] = {
    "default": [],
    # The cold start saw 4 operands only: a fifth makes half of the questions longer than any it
    # learnt, which brings greedy gen_acc from 0.53 to 0.285 (5 operands alone: 0.08, and 17% of
    # critiques without a verdict). Solutions stay within max_response_tokens (at most 45
    # characters), critiques within max_critique_tokens (at most 90).
    "weak": ["--data.init_args.task.init_args.num_operands=5", "--data.init_args.task.init_args.min_operands=4"],
}


def callbacks(variant: str, seed: int) -> list[dict[str, Any]]:
    # LabelBalancing's own seed follows the run's, so that seeds vary all of the run's randomness.
    balancing = [{"class_path": "sorl.LabelBalancing", "init_args": {"seed": seed}}] if variant == "balanced" else []
    return [*balancing, {"class_path": "sorl.Evaluation"}]


def after_metrics(run: FitRun) -> dict[str, float]:
    metrics = {key: run.summary[f"{key}_after"] for key in SUMMARY_METRICS}
    # The last eval/* point in TensorBoard must be the after-fit evaluation the JSON reports.
    if not math.isclose(run.last("eval/crit_acc"), metrics["crit_acc"], abs_tol=1e-6):
        raise RuntimeError(f"last eval/crit_acc {run.last('eval/crit_acc')} != crit_acc_after {metrics['crit_acc']}")
    metrics.update({key: run.last(f"eval/{key}") for key in TB_METRICS})
    return metrics


def run_variant(variant: str, setting: str, seed: int, rounds: int, workdir: Path, lock: str | None) -> dict[str, Any]:
    overrides = [
        f"--trainer.max_epochs={rounds}", *SETTINGS[setting], *seed_overrides(seed), callbacks_override(callbacks(variant, seed)),
    ]  # fmt: skip
    with cpu_lock(lock):
        run = run_fit(QUICKSTART, overrides, workdir / f"{variant}-seed{seed}")
    before = run.series("rollout/right_share_before")  # every round: all scored responses are candidates
    if len(before) != rounds:
        raise RuntimeError(f"rollout/right_share_before: {len(before)} values for {rounds} rounds")
    # Only rounds in which some pair entered the cache log a share after balancing: with a weak
    # policy, a round may have no question with both a right and a wrong response.
    ratios = run.series("rollout/right_share_after")
    return {
        "variant": variant,
        "setting": setting,
        "seed": seed,
        **after_metrics(run),
        "right_share_before": sum(before) / len(before),
        "right_share_after": sum(ratios) / len(ratios),
        "rounds_with_pairs": len(ratios),
        "right_share_per_round": ratios,
        "right_share_before_per_round": before,
        **run.timing(),
        "summary": run.summary,
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """variant -> {metric: mean, metric_std: std} over seeds, plus the wall seconds."""
    result: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        result[variant] = {}
        for metric in (*METRICS, "seconds"):
            mean, std = mean_std([r[metric] for r in runs if r["variant"] == variant])
            result[variant][metric] = mean
            result[variant][f"{metric}_std"] = std
    return result


def plot(stats: dict[str, dict[str, float]], title: str) -> Any:
    figure, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.38
    for offset, (variant, color) in enumerate(zip(VARIANTS, ("tab:blue", "tab:orange"))):
        xs = [i + (offset - 0.5) * width for i in range(len(METRICS))]
        means = [stats[variant][m] for m in METRICS]
        stds = [stats[variant][f"{m}_std"] for m in METRICS]
        ax.bar(xs, means, width, yerr=stds, capsize=4, color=color, label=variant)
        for x, m in zip(xs, means):
            ax.text(x, m + 0.02, f"{m:.2f}", ha="center", fontsize=8)
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle=":")  # a balanced set's right share / chance
    ax.set_xticks(range(len(METRICS)), METRICS, rotation=15, fontsize=9)
    ax.set_ylim(0, 1.1)
    ax.legend()
    ax.set_title(title)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_schedule_args(parser)
    parser.add_argument("--setting", choices=list(SETTINGS), default="default", help="the task setting (see SETTINGS)")
    add_lock_arg(parser)
    args = parser.parse_args()
    seeds, rounds = schedule(args)
    setting = args.setting
    name = result_name("label_balance" if setting == "default" else f"label_balance-{setting}", args.quick)
    info = machine()

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sorl-label-balance-") as workdir:
        for seed, variant in interleaved(seeds, VARIANTS):
            run = run_variant(variant, setting, seed, rounds, Path(workdir), args.lock)
            runs.append(run)
            print(
                f"seed {seed} {variant:>10}: "
                + "  ".join(f"{m} {run[m]:.3f}" for m in METRICS)
                + f"  {run['seconds']:.0f}s (cpu {run['cpu_seconds']:.0f}s, load {run['load_average']:.1f})",
                flush=True,
            )

    stats = aggregate(runs)
    initial = {metric: runs[0]["summary"][f"{metric}_before"] for metric in INITIAL_METRICS}  # same for every run
    headers = ["cache", *METRICS, "seconds"]
    rows = [["initial policy", *(f"{initial[m]:.3f}" if m in initial else "-" for m in METRICS), "-"]]
    rows += [
        [variant, *(fmt(stats[variant][m], stats[variant][f"{m}_std"]) for m in METRICS),
         fmt(stats[variant]["seconds"], stats[variant]["seconds_std"], digits=0)]
        for variant in VARIANTS
    ]
    print(plain_table(headers, rows))

    final = {
        **{variant: {k: v for k, v in stats[variant].items() if not k.startswith("seconds")} for variant in VARIANTS},
        "initial": initial,
        "setting": setting,
        "seeds": seeds,
        "rounds": rounds,
    }
    title = f"Label-balanced vs unbalanced critique cache ({QUICKSTART}, {setting} task, {rounds} rounds, seeds {seeds})"
    markdown = "\n\n".join([
        f"# {title}",
        f"Task overrides: {' '.join(f'`{o}`' for o in SETTINGS[setting]) or 'none'}; the initial policy's greedy "
        f"gen_acc on its held-out questions: {initial['gen_acc']:.3f}.",
        "Mean ± sample std over seeds, on the label-balanced critique eval set after training "
        "(positive = the verdict `wrong`). right_share_before: mean over rounds of the share of right "
        "responses among the round's scored responses (the natural cache); right_share_after: the same "
        "among the pairs entering the cache. Seconds: wall time of one `sorl fit`.",
        markdown_table(headers, rows),
        machine_markdown(info),
        f"Command: `python benchmarks/label_balance.py{' --quick' if args.quick else ''} --setting {setting} "
        f"--seeds {' '.join(map(str, seeds))} --rounds {rounds}`",
    ])
    payload = {
        "benchmark": "label_balance",
        "config": QUICKSTART,
        "setting": setting,
        "task_overrides": SETTINGS[setting],
        "seeds": seeds,
        "rounds": rounds,
        "machine": info,
        "stats": stats,
        "runs": runs,
        "final": final,
    }
    for path in write_results(name, payload, markdown, plot(stats, title)):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
