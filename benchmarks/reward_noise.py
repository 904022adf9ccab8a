"""Reward noise with and without reward denoising, on the same GC-RL schedule.

Each run is ``configs/quickstart.yaml`` with callbacks LabelBalancing, RewardDenoising (one of the
variants below), RewardNoise (after the denoiser, so it measures the rewards that training sees)
and Evaluation. Variants (``--variants``):

- ``off``: ``strategy=none``;
- ``on``: ``self_correction``, ``action=scale``, 2 refinements per critique (the default);
- ``more``: ``self_correction``, ``action=scale``, 4 refinements per critique;
- ``filter``: ``self_correction``, ``action=filter``, 2 refinements, ``keep_share=0.5``: a
  rewarded critique whose refinements are all wrong is left out of training.

Measured per run:

- noise: the mean over rounds of ``rollout/critique_reward_noise``, the reward-weighted share of
  rewarded critiques (among those trained on) whose analysis is wrong by the task's step oracle;
- crit_acc / gen_acc: the Evaluation callback's ``*_after`` values (held-out sets);
- seconds: wall time of the whole ``sorl fit`` (start-up and both evaluations included);
- filtered (``filter`` only): the share of checked (rewarded) critiques left out, over all rounds.

Two studies, with their own results:

- the default study: ``off`` and ``on``, seeds 0 1 2, 30 rounds; writes
  ``benchmarks/results/reward_noise[-quick].{json,md,png}``;
- ``--long``: all four variants, 90 rounds (3x), seeds 0 1 2; writes
  ``benchmarks/results/reward_noise-long[-quick].{json,md,png}``, and keeps each finished run in
  ``results/reward_noise-long[-quick]-runs/``, reused by a later invocation with the same rounds,
  so the study can be run in pieces (``--seeds 0``, ``--variants off on``, ...).

The variant order alternates per seed. Prints a table (mean ± sample std over seeds) and, as its
last line, one JSON object with per variant ``<metric>_<variant>`` and ``<metric>_<variant>_std``
(metrics noise, crit_acc, gen_acc, seconds; filtered for ``filter``), ``variants``, ``seeds`` and
``rounds``. The figure shows noise, crit_acc and gen_acc per variant and the noise per round.
``--lock PATH`` holds an flock on PATH around each run (shared machines).

    python benchmarks/reward_noise.py [--quick] [--long] [--variants off on more filter]
        [--seeds 0 1 2] [--rounds 30] [--lock PATH]

``--quick``: one seed, 8 rounds (a few minutes per variant on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from common import (
    QUICKSTART,
    RESULTS_DIR,
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
    saved_run,
    run_fit,
    schedule,
    seed_overrides,
    write_results,
)

# label -> RewardDenoising init_args (besides the seed)
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"strategy": "none"},
    "on": {"strategy": "self_correction", "action": "scale", "num_refinements": 2},
    "more": {"strategy": "self_correction", "action": "scale", "num_refinements": 4},
    "filter": {"strategy": "self_correction", "action": "filter", "num_refinements": 2, "keep_share": 0.5},
}
DEFAULT_VARIANTS = ("off", "on")
LONG_ROUNDS = 90  # 3x the default study's 30
METRICS = ("noise", "crit_acc", "gen_acc", "seconds")
NOISE_TAG = "rollout/critique_reward_noise"
EXTRA_TAGS = ("rollout/critique_reward", "denoise/refinement_accuracy", "denoise/rewards_changed", "time/denoise")
COLORS = {"off": "tab:gray", "on": "tab:blue", "more": "tab:purple", "filter": "tab:orange"}


def describe(label: str) -> str:
    settings = VARIANTS[label]
    if settings["strategy"] == "none":
        return "none"
    if settings["action"] == "filter":
        return f"filter below {settings['keep_share']:g}, {settings['num_refinements']} refinements"
    return f"scale, {settings['num_refinements']} refinements"


def callbacks(label: str, seed: int) -> list[dict[str, Any]]:
    # The callbacks' own seeds follow the run's, so that seeds vary all of the run's randomness.
    return [
        {"class_path": "sorl.LabelBalancing", "init_args": {"seed": seed}},
        {"class_path": "sorl.RewardDenoising", "init_args": {**VARIANTS[label], "seed": seed}},
        {"class_path": "sorl.RewardNoise"},
        {"class_path": "sorl.Evaluation"},
    ]


def run_variant(label: str, seed: int, rounds: int, workdir: Path, lock: str | None) -> dict[str, Any]:
    root = workdir / f"{label}-seed{seed}"
    overrides = [f"--trainer.max_epochs={rounds}", *seed_overrides(seed), callbacks_override(callbacks(label, seed))]
    with cpu_lock(lock) as waited:
        run = run_fit(QUICKSTART, overrides, root)
    noise = run.series(NOISE_TAG)
    if len(noise) != rounds:
        raise RuntimeError(f"{NOISE_TAG}: {len(noise)} values for {rounds} rounds")
    record = {
        "variant": label,
        "denoising": VARIANTS[label],
        "seed": seed,
        "rounds": rounds,
        "noise": sum(noise) / len(noise),
        "noise_per_round": noise,
        "crit_acc": run.summary["crit_acc_after"],
        "gen_acc": run.summary["gen_acc_after"],
        # Context for the noise numbers (means over rounds; denoise/* only exist with self_correction).
        **{name.replace("/", "_"): _mean(run.scalars.get(name)) for name in EXTRA_TAGS},
        **run.timing(),
        "lock_wait_seconds": waited,
        "summary": run.summary,
    }
    if VARIANTS[label].get("action") == "filter":
        filtered, checked = run.series("denoise/filtered"), run.series("denoise/checked")
        record["filtered_per_round"] = filtered
        record["filtered"] = sum(filtered) / sum(checked) if sum(checked) else 0.0
    return record


def _mean(points: list[tuple[int, float]] | None) -> float | None:
    return sum(v for _, v in points) / len(points) if points else None


def metrics(label: str) -> tuple[str, ...]:
    return METRICS + (("filtered",) if VARIANTS[label].get("action") == "filter" else ())


def aggregate(runs: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> metric -> (mean, std) over seeds."""
    return {
        label: {metric: mean_std([r[metric] for r in runs if r["variant"] == label]) for metric in metrics(label)}
        for label in labels
    }


def plot(runs: list[dict[str, Any]], stats: dict[str, dict[str, tuple[float, float]]], labels: list[str], title: str) -> Any:
    figure, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    names = [f"{label}\n({describe(label)})" for label in labels]
    colors = [COLORS[label] for label in labels]
    bars = (("noise", "critique reward noise"), ("crit_acc", "crit_acc after"), ("gen_acc", "gen_acc after"))
    for ax, (metric, ylabel) in zip(axes, bars):
        means = [stats[label][metric][0] for label in labels]
        stds = [stats[label][metric][1] for label in labels]
        ax.bar(names, means, yerr=stds, capsize=6, color=colors)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        for x, m in enumerate(means):
            ax.text(x, m + 0.02, f"{m:.3f}", ha="center")
    ax_curve = axes[-1]
    for label in labels:
        curves = [r["noise_per_round"] for r in runs if r["variant"] == label]
        for curve in curves:  # per seed, faint
            ax_curve.plot(range(len(curve)), curve, color=COLORS[label], alpha=0.25, linewidth=1)
        mean_curve = [sum(values) / len(values) for values in zip(*curves)]
        ax_curve.plot(range(len(mean_curve)), mean_curve, color=COLORS[label], linewidth=2, label=f"{label} ({describe(label)})")
    ax_curve.set_xlabel("round")
    ax_curve.set_ylabel("critique reward noise")
    ax_curve.set_ylim(0, 1)
    ax_curve.legend(fontsize=7)
    figure.suptitle(title)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_schedule_args(parser)
    parser.add_argument(
        "--long", action="store_true",
        help=f"the long study: {LONG_ROUNDS} rounds, every variant, results reward_noise-long[-quick].*",
    )  # fmt: skip
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: off on; --long: all")
    add_lock_arg(parser)
    args = parser.parse_args()
    if args.long:
        args.full_rounds = LONG_ROUNDS
    seeds, rounds = schedule(args)
    labels = list(args.variants or (VARIANTS if args.long else DEFAULT_VARIANTS))
    name = result_name("reward_noise-long" if args.long else "reward_noise", args.quick)
    runs_dir = RESULTS_DIR / f"{name}-runs" if args.long else None
    if runs_dir is not None:
        runs_dir.mkdir(parents=True, exist_ok=True)
    info = machine()

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sorl-reward-noise-") as workdir:
        for seed, label in interleaved(seeds, labels):
            record = runs_dir / f"{label}-seed{seed}-rounds{rounds}.json" if runs_dir is not None else None
            run, reused = saved_run(record, lambda: run_variant(label, seed, rounds, Path(workdir), args.lock))
            runs.append(run)
            filtered = f"  filtered {run['filtered']:.3f}" if "filtered" in run else ""
            print(
                f"seed {seed} {label:>6} ({describe(label)}): noise {run['noise']:.3f}  crit_acc {run['crit_acc']:.3f}  "
                f"gen_acc {run['gen_acc']:.3f}{filtered}  {run['seconds']:.0f}s (cpu {run['cpu_seconds']:.0f}s, "
                f"load {run['load_average']:.1f}){reused}",
                flush=True,
            )

    stats = aggregate(runs, labels)
    headers = ["denoising", "critique reward noise", "crit_acc after", "gen_acc after", "seconds", "filtered"]
    rows = [
        [f"{label} ({describe(label)})", *(fmt(*stats[label][m], digits=0 if m == "seconds" else 3) for m in METRICS),
         fmt(*stats[label]["filtered"]) if "filtered" in stats[label] else "-"]
        for label in labels
    ]  # fmt: skip
    print(plain_table(headers, rows))

    final: dict[str, Any] = {}
    for label in labels:
        for metric, (mean, std) in stats[label].items():
            final[f"{metric}_{label}"] = mean
            final[f"{metric}_{label}_std"] = std
    final |= {"variants": labels, "seeds": seeds, "rounds": rounds}
    title = f"Reward denoising on GC-RL ({QUICKSTART}, {rounds} rounds, seeds {seeds})"
    command = (
        f"python benchmarks/reward_noise.py{' --quick' if args.quick else ''}{' --long' if args.long else ''} "
        f"--variants {' '.join(labels)} --seeds {' '.join(map(str, seeds))} --rounds {rounds}"
    )
    markdown = "\n\n".join([
        f"# {title}",
        "Mean ± sample std over seeds. Noise: mean over rounds of `rollout/critique_reward_noise` "
        "(share of critique reward, after denoising, going to critiques whose analysis is wrong; "
        "`filter` measures the critiques it keeps). Accuracies: the Evaluation callback's values after "
        "training. Seconds: wall time of one `sorl fit`. Filtered: share of checked (rewarded) critiques "
        "left out of training, over all rounds.",
        markdown_table(headers, rows),
        machine_markdown(info),
        f"Command: `{command}`",
    ])
    payload = {
        "benchmark": "reward_noise",
        "config": QUICKSTART,
        "seeds": seeds,
        "rounds": rounds,
        "variants": {label: VARIANTS[label] for label in labels},
        "machine": info,
        "stats": {label: {m: {"mean": s[0], "std": s[1]} for m, s in stats[label].items()} for label in stats},
        "runs": runs,
        "final": final,
    }
    for path in write_results(name, payload, markdown, plot(runs, stats, labels, title)):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
