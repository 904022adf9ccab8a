"""The paper's main comparison on the embedded task: G-RL vs C-RL vs GC-RL, and GC-RL with static
vs dynamic critique data, at equal training questions.

Every variant runs ``configs/quickstart.yaml`` (32 questions x 8 responses per round; critiques
of 32 cached pairs x 4; one optimizer step per round) for the same number of rounds, so each sees
the same training questions; only the training mode and the critique data differ:

- ``g_rl``: responses only (GRPO); ``c_rl``: critiques only (responses still fill the cache);
- ``gc_rl``: both, the cache refreshed from each round's responses (``critique_data: dynamic``);
- ``gc_rl_static``: both, the cache filled once from the initial policy's responses (``static``).

Measures, on the held-out sets (the Evaluation callback and ``check_val_every_n_epoch``):
``gen_acc`` (greedy pass@1 on 200 questions), ``gen_mean_acc`` (pass@1 averaged over 4 samples at
temperature 1), ``crit_acc`` and ``crit_f1`` (verdicts on the 400-example label-balanced critique
set; positive = the verdict ``wrong``), after training and every ``--eval-every`` rounds (learning
curves against training questions seen).

Seeds 0 1 2 and 30 rounds by default, the variant order alternating per seed. Prints a table
(mean ± sample std over seeds) and, as its last line, one JSON object with keys ``g_rl``, ``c_rl``,
``gc_rl``, ``gc_rl_static``, each holding ``gen_acc``, ``crit_acc``, ``crit_f1``, ``gen_mean_acc``
(means) and ``<metric>_std``; writes ``benchmarks/results/paper_table[-quick].{json,md,png}``.
Each finished run is also kept in ``results/paper_table[-quick]-runs/`` and reused by a later
invocation with the same rounds, so a full table can be built in pieces (``--seeds 0``, then ...).

    python benchmarks/paper_table.py [--quick] [--seeds 0 1 2] [--rounds 30] [--lock /tmp/cpu.lock]

``--quick``: one seed, 8 rounds, evaluation every 4 (a few minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    QUICKSTART,
    RESULTS_DIR,
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
    saved_run,
    run_fit,
    schedule,
    seed_overrides,
    write_results,
)

# label -> (training mode, critique data)
VARIANTS = {
    "g_rl": ("g_rl", "dynamic"),
    "c_rl": ("c_rl", "dynamic"),
    "gc_rl": ("gc_rl", "dynamic"),
    "gc_rl_static": ("gc_rl", "static"),
}
METRICS = ("gen_acc", "gen_mean_acc", "crit_acc", "crit_f1")
QUESTIONS_PER_ROUND = 32  # configs/quickstart.yaml data.questions_per_round
# The paper's Table (Qwen2.5-7B): generation average and critique accuracy, in percent.
PAPER = {"gen_acc": {"g_rl": 56.7, "gc_rl": 59.3}, "crit_acc": {"c_rl": 73.8, "gc_rl": 78.6}}


def overrides(label: str, seed: int, rounds: int, eval_every: int) -> list[str]:
    mode, critique_data = VARIANTS[label]
    callbacks = [
        {"class_path": "sorl.LabelBalancing", "init_args": {"seed": seed}},
        {"class_path": "sorl.Evaluation"},
    ]
    return [
        f"--trainer.max_epochs={rounds}",
        f"--trainer.check_val_every_n_epoch={eval_every}",
        f"--data.init_args.mode={mode}",
        f"--data.init_args.critique_data={critique_data}",
        *seed_overrides(seed),
        callbacks_override(callbacks),
    ]


def curves(run: FitRun, rounds: int, eval_every: int) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(training questions seen, value)]: the eval/* scalars are, in order, the
    evaluation before training, one every ``eval_every`` rounds, and the one after training."""
    at_rounds = [0, *range(eval_every, rounds + 1, eval_every)] + ([rounds] if rounds % eval_every else [])
    result = {}
    for metric in METRICS:
        values = run.series(f"eval/{metric}")
        if len(values) != len(at_rounds):
            raise RuntimeError(f"eval/{metric}: {len(values)} evaluations, expected {len(at_rounds)} (rounds {at_rounds})")
        result[metric] = [(r * QUESTIONS_PER_ROUND, v) for r, v in zip(at_rounds, values)]
    return result


def run_variant(label: str, seed: int, rounds: int, eval_every: int, workdir: Path, lock: str | None) -> dict[str, Any]:
    with cpu_lock(lock) as waited:
        run = run_fit(QUICKSTART, overrides(label, seed, rounds, eval_every), workdir / f"{label}-seed{seed}")
    after = {metric: run.summary[f"{metric}_after"] for metric in METRICS}
    run_curves = curves(run, rounds, eval_every)
    for metric in METRICS:  # the last curve point is the after-fit evaluation the JSON reports
        if not math.isclose(run_curves[metric][-1][1], after[metric], abs_tol=1e-6):
            raise RuntimeError(f"{metric}: last curve point {run_curves[metric][-1]} != {after[metric]} after fit")
    return {
        "variant": label,
        "mode": VARIANTS[label][0],
        "critique_data": VARIANTS[label][1],
        "seed": seed,
        "rounds": rounds,
        "training_questions": rounds * QUESTIONS_PER_ROUND,
        **after,
        "curves": run_curves,
        **run.timing(),
        "lock_wait_seconds": waited,
        "summary": run.summary,
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> metric -> (mean, std) over seeds."""
    return {
        label: {metric: mean_std([r[metric] for r in runs if r["variant"] == label]) for metric in (*METRICS, "seconds")}
        for label in VARIANTS
    }


def plot(runs: list[dict[str, Any]], stats: dict[str, dict[str, tuple[float, float]]], title: str) -> Any:
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = {"g_rl": "tab:gray", "c_rl": "tab:orange", "gc_rl": "tab:blue", "gc_rl_static": "tab:green"}
    labels = list(VARIANTS)
    width = 0.2
    bar_metrics = ("gen_acc", "crit_acc", "crit_f1")
    for index, label in enumerate(labels):
        xs = [m + (index - 1.5) * width for m in range(len(bar_metrics))]
        axes[0].bar(
            xs, [stats[label][m][0] for m in bar_metrics], width, yerr=[stats[label][m][1] for m in bar_metrics],
            capsize=4, color=colors[label], label=label,
        )
    axes[0].set_xticks(range(len(bar_metrics)), bar_metrics)
    axes[0].set_ylim(0, 1)
    axes[0].set_title("after training (mean ± std over seeds)")
    axes[0].legend(fontsize=8)
    for ax, metric in ((axes[1], "gen_acc"), (axes[2], "crit_acc")):
        for label in labels:
            series = [r["curves"][metric] for r in runs if r["variant"] == label]
            xs = [q for q, _ in series[0]]
            mean = [sum(s[i][1] for s in series) / len(series) for i in range(len(xs))]
            ax.plot(xs, mean, marker="o", color=colors[label], label=label)
            for s in series:  # per seed, faint
                ax.plot([q for q, _ in s], [v for _, v in s], color=colors[label], alpha=0.2, linewidth=1)
        ax.set_xlabel("training questions seen")
        ax.set_ylabel(f"{metric} (held-out)")
        ax.set_title(f"{metric} learning curve")
        ax.legend(fontsize=8)
    figure.suptitle(title)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_schedule_args(parser)
    parser.add_argument("--eval-every", type=int, help="rounds between evaluations (default: 10; --quick: 4)")
    add_lock_arg(parser)
    args = parser.parse_args()
    seeds, rounds = schedule(args)
    eval_every = args.eval_every if args.eval_every is not None else (4 if args.quick else 10)
    name = result_name("paper_table", args.quick)
    runs_dir = RESULTS_DIR / f"{name}-runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    info = machine()

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sorl-paper-table-") as workdir:
        for seed, label in interleaved(seeds, list(VARIANTS)):
            record = runs_dir / f"{label}-seed{seed}-rounds{rounds}-every{eval_every}.json"
            run, reused = saved_run(record, lambda: run_variant(label, seed, rounds, eval_every, Path(workdir), args.lock))
            runs.append(run)
            print(
                f"seed {seed} {label:<12} gen_acc {run['gen_acc']:.3f}  gen_mean_acc {run['gen_mean_acc']:.3f}  "
                f"crit_acc {run['crit_acc']:.3f}  crit_f1 {run['crit_f1']:.3f}  {run['seconds']:.0f}s "
                f"(cpu {run['cpu_seconds']:.0f}s, load {run['load_average']:.1f}){reused}",
                flush=True,
            )
    wall = time.perf_counter() - started

    stats = aggregate(runs)
    before = runs[0]["summary"]
    headers = ["variant", "gen_acc (greedy)", "gen_mean_acc (4 samples)", "crit_acc", "crit_f1", "seconds per run"]
    rows = [["initial policy", f"{before['gen_acc_before']:.3f}", f"{before['gen_mean_acc_before']:.3f}",
             f"{before['crit_acc_before']:.3f}", f"{before['crit_f1_before']:.3f}", "-"]]
    rows += [
        [label, *(fmt(*stats[label][m], digits=0 if m == "seconds" else 3) for m in (*METRICS, "seconds"))]
        for label in VARIANTS
    ]
    print(plain_table(headers, rows))

    final: dict[str, Any] = {}
    for label in VARIANTS:
        final[label] = {metric: stats[label][metric][0] for metric in METRICS}
        final[label].update({f"{metric}_std": stats[label][metric][1] for metric in METRICS})
    final = {**final, "seeds": seeds, "rounds": rounds, "training_questions": rounds * QUESTIONS_PER_ROUND}
    title = f"G-RL / C-RL / GC-RL on the embedded task ({rounds} rounds = {rounds * QUESTIONS_PER_ROUND} questions, seeds {seeds})"
    paper_rows = [
        ["generation (gen_acc)", "G-RL 56.7 -> GC-RL 59.3 (+2.6)",
         f"G-RL {stats['g_rl']['gen_acc'][0]:.3f} -> GC-RL {stats['gc_rl']['gen_acc'][0]:.3f} "
         f"({stats['gc_rl']['gen_acc'][0] - stats['g_rl']['gen_acc'][0]:+.3f})"],
        ["critique (crit_acc)", "C-RL 73.8 -> GC-RL 78.6 (+4.8)",
         f"C-RL {stats['c_rl']['crit_acc'][0]:.3f} -> GC-RL {stats['gc_rl']['crit_acc'][0]:.3f} "
         f"({stats['gc_rl']['crit_acc'][0] - stats['c_rl']['crit_acc'][0]:+.3f})"],
    ]
    markdown = "\n\n".join([
        f"# {title}",
        f"`{QUICKSTART}` with `--data.init_args.mode` and `--data.init_args.critique_data` per variant; "
        f"evaluation every {eval_every} rounds. Mean ± sample std over seeds. gen_acc: greedy pass@1 on 200 "
        "held-out questions; gen_mean_acc: pass@1 averaged over 4 samples at temperature 1; crit_acc / crit_f1: "
        "verdicts on the 400-example label-balanced critique set (positive = `wrong`). Seconds: wall time of one "
        "`sorl fit` (both evaluations included).",
        markdown_table(headers, rows),
        "Against the paper (Qwen2.5-7B, percent; here fractions):",
        markdown_table(["comparison", "paper", "here"], paper_rows),
        machine_markdown(info) + f" Wall time of this invocation: {wall:.0f} s.",
    ])
    payload = {
        "benchmark": "paper_table",
        "config": QUICKSTART,
        "seeds": seeds,
        "rounds": rounds,
        "eval_every": eval_every,
        "variants": {label: {"mode": m, "critique_data": c} for label, (m, c) in VARIANTS.items()},
        "paper": PAPER,
        "machine": info,
        "wall_seconds": wall,
        "stats": {label: {m: {"mean": s[0], "std": s[1]} for m, s in stats[label].items()} for label in stats},
        "runs": runs,
        "final": final,
    }
    for path in write_results(name, payload, markdown, plot(runs, stats, title)):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
