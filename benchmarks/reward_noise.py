"""Reward noise with and without reward denoising, on the same short GC-RL schedule.

Measures, for ``RewardDenoising(strategy=none)`` ("off") vs ``strategy=self_correction`` ("on"),
each run from ``configs/quickstart.yaml`` with callbacks LabelBalancing, RewardDenoising,
RewardNoise (after the denoiser, so it measures the rewards that training sees) and Evaluation:

- noise: the mean over rounds of ``rollout/critique_reward_noise``, the reward-weighted share of
  rewarded critiques whose analysis is wrong by the task's step oracle;
- crit_acc / gen_acc: the Evaluation callback's ``*_after`` values (held-out sets);
- seconds: wall time of the whole ``sorl fit`` (start-up and both evaluations included).

Seeds 0 1 2 and 30 rounds by default, the variant order alternating per seed. Prints a table
(mean ± sample std over seeds) and, as its last line, one JSON object; writes
``benchmarks/results/reward_noise[-quick].{json,md,png}``.

    python benchmarks/reward_noise.py [--quick] [--seeds 0 1 2] [--rounds 30]

``--quick``: one seed, 8 rounds (a few minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import (
    QUICKSTART,
    add_schedule_args,
    callbacks_override,
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

VARIANTS = {"off": "none", "on": "self_correction"}  # label -> RewardDenoising strategy
METRICS = ("noise", "crit_acc", "gen_acc", "seconds")
NOISE_TAG = "rollout/critique_reward_noise"
EXTRA_TAGS = ("rollout/critique_reward", "denoise/refinement_accuracy", "denoise/rewards_changed")


def callbacks(strategy: str, seed: int) -> list[dict[str, Any]]:
    # The callbacks' own seeds follow the run's, so that seeds vary all of the run's randomness.
    return [
        {"class_path": "sorl.LabelBalancing", "init_args": {"seed": seed}},
        {"class_path": "sorl.RewardDenoising", "init_args": {"strategy": strategy, "seed": seed}},
        {"class_path": "sorl.RewardNoise"},
        {"class_path": "sorl.Evaluation"},
    ]


def run_variant(label: str, seed: int, rounds: int, workdir: Path) -> dict[str, Any]:
    root = workdir / f"{label}-seed{seed}"
    overrides = [f"--trainer.max_epochs={rounds}", *seed_overrides(seed), callbacks_override(callbacks(VARIANTS[label], seed))]
    run = run_fit(QUICKSTART, overrides, root)
    noise = run.series(NOISE_TAG)
    if len(noise) != rounds:
        raise RuntimeError(f"{NOISE_TAG}: {len(noise)} values for {rounds} rounds")
    return {
        "variant": label,
        "strategy": VARIANTS[label],
        "seed": seed,
        "noise": sum(noise) / len(noise),
        "noise_per_round": noise,
        "crit_acc": run.summary["crit_acc_after"],
        "gen_acc": run.summary["gen_acc_after"],
        # Context for the noise numbers (means over rounds; denoise/* only exist with self_correction).
        **{name.replace("/", "_"): _mean(run.scalars.get(name)) for name in EXTRA_TAGS},
        **run.timing(),
        "summary": run.summary,
    }


def _mean(points: list[tuple[int, float]] | None) -> float | None:
    return sum(v for _, v in points) / len(points) if points else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> metric -> (mean, std) over seeds."""
    return {
        label: {metric: mean_std([r[metric] for r in runs if r["variant"] == label]) for metric in METRICS}
        for label in VARIANTS
    }


def plot(runs: list[dict[str, Any]], stats: dict[str, dict[str, tuple[float, float]]], title: str) -> Any:
    figure, (ax_noise, ax_acc, ax_curve) = plt.subplots(1, 3, figsize=(14, 4))
    labels = list(VARIANTS)
    names = [f"{label}\n({VARIANTS[label]})" for label in labels]
    colors = ["tab:gray", "tab:blue"]
    for ax, metric, ylabel in ((ax_noise, "noise", "critique reward noise"), (ax_acc, "crit_acc", "crit_acc after")):
        means = [stats[label][metric][0] for label in labels]
        stds = [stats[label][metric][1] for label in labels]
        ax.bar(names, means, yerr=stds, capsize=6, color=colors)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1)
        for x, m in enumerate(means):
            ax.text(x, m + 0.02, f"{m:.3f}", ha="center")
    for label, color in zip(labels, colors):
        curves = [r["noise_per_round"] for r in runs if r["variant"] == label]
        for curve in curves:  # per seed, faint
            ax_curve.plot(range(len(curve)), curve, color=color, alpha=0.25, linewidth=1)
        mean_curve = [sum(values) / len(values) for values in zip(*curves)]
        ax_curve.plot(range(len(mean_curve)), mean_curve, color=color, linewidth=2, label=f"{label} ({VARIANTS[label]})")
    ax_curve.set_xlabel("round")
    ax_curve.set_ylabel("critique reward noise")
    ax_curve.set_ylim(0, 1)
    ax_curve.legend()
    figure.suptitle(title)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_schedule_args(parser)
    args = parser.parse_args()
    seeds, rounds = schedule(args)
    name = result_name("reward_noise", args.quick)
    info = machine()

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sorl-reward-noise-") as workdir:
        for seed, label in interleaved(seeds, list(VARIANTS)):
            run = run_variant(label, seed, rounds, Path(workdir))
            runs.append(run)
            print(
                f"seed {seed} {label:>3} ({VARIANTS[label]}): noise {run['noise']:.3f}  crit_acc {run['crit_acc']:.3f}  "
                f"gen_acc {run['gen_acc']:.3f}  {run['seconds']:.0f}s (cpu {run['cpu_seconds']:.0f}s, load {run['load_average']:.1f})",
                flush=True,
            )

    stats = aggregate(runs)
    headers = ["denoising", "critique reward noise", "crit_acc after", "gen_acc after", "seconds"]
    rows = [
        [f"{label} ({VARIANTS[label]})", *(fmt(*stats[label][m], digits=0 if m == "seconds" else 3) for m in METRICS)]
        for label in VARIANTS
    ]
    print(plain_table(headers, rows))

    final = {f"{metric}_{label}": stats[label][metric][0] for metric in METRICS for label in VARIANTS}
    final = {**final, "seeds": seeds, "rounds": rounds}
    title = f"Reward denoising on GC-RL ({QUICKSTART}, {rounds} rounds, seeds {seeds})"
    markdown = "\n\n".join([
        f"# {title}",
        "Mean ± sample std over seeds. Noise: mean over rounds of `rollout/critique_reward_noise` "
        "(share of critique reward, after denoising, going to critiques whose analysis is wrong). "
        "Accuracies: the Evaluation callback's values after training. Seconds: wall time of one `sorl fit`.",
        markdown_table(headers, rows),
        machine_markdown(info),
    ])
    payload = {
        "benchmark": "reward_noise",
        "config": QUICKSTART,
        "seeds": seeds,
        "rounds": rounds,
        "variants": VARIANTS,
        "machine": info,
        "stats": {label: {m: {"mean": s[0], "std": s[1]} for m, s in stats[label].items()} for label in stats},
        "runs": runs,
        "final": final,
    }
    for path in write_results(name, payload, markdown, plot(runs, stats, title)):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
