"""Data budgets: G-RL, C-RL and GC-RL on training pools of several sizes, with learning curves
against training questions seen and against training seconds.

The paper's argument for GC-RL is data utilization: more learning from the same questions. Every
variant runs ``configs/quickstart.yaml`` (32 questions x 8 responses per round; critiques of 32
cached pairs x 4; one optimizer step per round) for the same rounds, in one mode (``g_rl``,
``c_rl``, ``gc_rl``) on one training pool:

- ``pool32``, ``pool128``: the task's first 32 or 128 training questions
  (``--data.init_args.task.init_args.num_train N``). A round takes the next 32 questions of a seeded
  permutation of the pool and wraps around, so ``pool32`` is the same 32 questions every round and
  ``pool128`` comes back every 4 rounds. Smaller pools are prefixes of larger ones;
- ``unlimited``: the task's default 20,000 questions, fresh every round (today's behaviour).

The held-out sets are the same for every pool. Each run is evaluated before training, every
``--eval-every`` rounds and after (``check_val_every_n_epoch`` and the Evaluation callback; greedy
only, ``eval_samples: 0``): ``gen_acc`` (greedy pass@1 on 200 held-out questions), ``crit_acc`` and
``crit_f1`` (verdicts on the 400-example label-balanced critique set). Curves are drawn against

- training questions seen: rounds x 32 (equal for every variant after the same rounds);
- training seconds: per round, the rollout phases' own times (``time/response_rollout``,
  ``time/critique_rollout``) plus the update, from the round's ``rollout/round`` value to its
  ``train/loss`` value (their TensorBoard wall times), so evaluation and start-up are left out
  (see ``round_seconds``).

Winners: the variant with the highest mean over seeds at equal questions (after training) and at
equal training seconds (the smallest final training seconds of any run, each run's curve read
there by linear interpolation between its evaluations), for ``gen_acc`` and ``crit_acc``.

Seeds 0 1 2, 20 rounds, evaluation every 5 rounds by default, the variant order alternating per
seed. Prints a table (mean ± sample std over seeds) and, as its last line, one JSON object: per
mode and pool the metrics (means, ``_std``) after training and at equal seconds, the seconds per
round, and ``equal_questions`` / ``equal_seconds`` with each metric's winner and runner-up; writes
``benchmarks/results/data_budget[-quick].{json,md,png}``. Finished runs are kept in
``results/data_budget[-quick]-runs/`` and reused by a later invocation with the same rounds and
evaluation interval, so the study can be run in pieces (``--seeds 0``, ``--modes g_rl``, ...).

    python benchmarks/data_budget.py [--quick] [--seeds 0 1 2] [--rounds 20] [--eval-every 5]
        [--modes g_rl c_rl gc_rl] [--pools 32 128 unlimited] [--lock PATH]

``--quick``: one seed, 8 rounds, evaluation every 4.
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
    read_wall_times,
    result_name,
    saved_run,
    run_fit,
    schedule,
    seed_overrides,
    write_results,
)

MODES = ("g_rl", "c_rl", "gc_rl")
DEFAULT_POOLS: tuple[int | None, ...] = (32, 128, None)  # None: the task's whole pool, fresh questions every round
METRICS = ("gen_acc", "crit_acc", "crit_f1")
WINNER_METRICS = ("gen_acc", "crit_acc")
QUESTIONS_PER_ROUND = 32  # configs/quickstart.yaml data.questions_per_round
Point = tuple[float, float]  # (x, metric value)


def pool_name(pool: int | None) -> str:
    return "unlimited" if pool is None else f"pool{pool}"


def parse_pool(text: str) -> int | None:
    if text == "unlimited":
        return None
    size = int(text)
    if size < QUESTIONS_PER_ROUND:  # a smaller pool would put one question twice into a round
        raise argparse.ArgumentTypeError(f"a pool needs at least {QUESTIONS_PER_ROUND} questions, got {size}")
    return size


def label(mode: str, pool: int | None) -> str:
    return f"{mode}-{pool_name(pool)}"


def overrides(mode: str, pool: int | None, seed: int, rounds: int, eval_every: int) -> list[str]:
    callbacks = [{"class_path": "sorl.LabelBalancing", "init_args": {"seed": seed}}, {"class_path": "sorl.Evaluation"}]
    return [
        f"--trainer.max_epochs={rounds}",
        f"--trainer.check_val_every_n_epoch={eval_every}",
        f"--data.init_args.mode={mode}",
        "--data.init_args.eval_samples=0",  # greedy evaluation only: the curves need gen_acc, not gen_mean_acc
        *([f"--data.init_args.task.init_args.num_train={pool}"] if pool is not None else []),
        *seed_overrides(seed),
        callbacks_override(callbacks),
    ]


def eval_rounds(rounds: int, eval_every: int) -> list[int]:
    """Rounds trained at each evaluation: before training, every ``eval_every`` rounds, and after."""
    return [0, *range(eval_every, rounds + 1, eval_every)] + ([rounds] if rounds % eval_every else [])


def round_seconds(run: FitRun, wall_times: dict[str, list[float]], mode: str, rounds: int) -> list[float]:
    """Training seconds of each round: its rollouts (their own timers) plus its update, which
    starts once the round's ``rollout/round`` value is logged (the rollouts are done) and ends
    when its ``train/loss`` value is (after the optimizer step). An evaluation that ends in
    between does not count: Lightning loads round 0's data before the evaluation before training,
    so round 0's update starts when that evaluation's values are logged. Later evaluations run
    after a round's ``train/loss`` and before the next round's rollouts."""
    rollouts = run.series("time/response_rollout")
    critiques = run.series("time/critique_rollout") if mode != "g_rl" else [0.0] * rounds
    rolled, stepped, evaluated = wall_times["rollout/round"], wall_times["train/loss"], wall_times["eval/gen_acc"]
    for name, values in (("time/response_rollout", rollouts), ("time/critique_rollout", critiques),
                         ("rollout/round", rolled), ("train/loss", stepped)):  # fmt: skip
        if len(values) != rounds:  # one optimizer step per round in the quickstart schedule
            raise RuntimeError(f"{name}: {len(values)} values for {rounds} rounds")
    seconds = []
    for rollout, critique, ready, end in zip(rollouts, critiques, rolled, stepped):
        start = max([ready, *(t for t in evaluated if t < end)])
        seconds.append(rollout + critique + end - start)
    return seconds


def curves(run: FitRun, seconds: list[float], rounds: int, eval_every: int) -> dict[str, dict[str, list[Point]]]:
    """metric -> {"questions": [(training questions seen, value)], "seconds": [(training seconds, value)]}."""
    at_rounds = eval_rounds(rounds, eval_every)
    elapsed = [sum(seconds[:r]) for r in at_rounds]
    result = {}
    for metric in METRICS:
        values = run.series(f"eval/{metric}")
        if len(values) != len(at_rounds):
            raise RuntimeError(f"eval/{metric}: {len(values)} evaluations, expected {len(at_rounds)} (rounds {at_rounds})")
        result[metric] = {
            "questions": [(float(r * QUESTIONS_PER_ROUND), v) for r, v in zip(at_rounds, values)],
            "seconds": list(zip(elapsed, values)),
        }
    return result


def run_variant(mode: str, pool: int | None, seed: int, rounds: int, eval_every: int, workdir: Path, lock: str | None) -> dict[str, Any]:
    root = workdir / f"{label(mode, pool)}-seed{seed}"
    with cpu_lock(lock) as waited:
        run = run_fit(QUICKSTART, overrides(mode, pool, seed, rounds, eval_every), root)
    seconds = round_seconds(run, read_wall_times(root), mode, rounds)
    run_curves = curves(run, seconds, rounds, eval_every)
    after = {metric: run.summary[f"{metric}_after"] for metric in METRICS}
    for metric in METRICS:  # the last curve point is the after-fit evaluation the JSON reports
        if not math.isclose(run_curves[metric]["questions"][-1][1], after[metric], abs_tol=1e-6):
            raise RuntimeError(f"{metric}: last curve point {run_curves[metric]['questions'][-1]} != {after[metric]} after fit")
    return {
        "variant": label(mode, pool),
        "mode": mode,
        "pool": pool,
        "seed": seed,
        "rounds": rounds,
        "eval_every": eval_every,
        **after,
        "training_seconds": sum(seconds),
        "round_seconds": seconds,
        "curves": run_curves,
        **run.timing(),
        "lock_wait_seconds": waited,
        "summary": run.summary,
    }


def value_at(points: list[Point], x: float) -> float:
    """The curve's value at ``x`` by linear interpolation between its points (x ascending)."""
    if not points[0][0] <= x <= points[-1][0]:
        raise ValueError(f"{x} is outside the curve's range [{points[0][0]}, {points[-1][0]}]")
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def winners(values: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """The best and second-best variant by mean, with their stds and the margin between them."""
    ranked = sorted(values, key=lambda name: values[name][0], reverse=True)
    best, second = ranked[0], ranked[1]
    return {
        "winner": best, "mean": values[best][0], "std": values[best][1],
        "runner_up": second, "runner_up_mean": values[second][0], "runner_up_std": values[second][1],
        "margin": values[best][0] - values[second][0],
    }  # fmt: skip


def aggregate(runs: list[dict[str, Any]], labels: list[str], budget: float) -> dict[str, dict[str, tuple[float, float]]]:
    """label -> quantity -> (mean, std) over seeds: the metrics after training, the metrics at
    ``budget`` training seconds (``<metric>_at_budget``), seconds per round and per run."""
    stats = {}
    for name in labels:
        own = [r for r in runs if r["variant"] == name]
        stats[name] = {metric: mean_std([r[metric] for r in own]) for metric in METRICS}
        for metric in METRICS:
            stats[name][f"{metric}_at_budget"] = mean_std([value_at(r["curves"][metric]["seconds"], budget) for r in own])
        stats[name]["seconds_per_round"] = mean_std([r["training_seconds"] / r["rounds"] for r in own])
        stats[name]["seconds"] = mean_std([r["seconds"] for r in own])
    return stats


def mean_curve(runs: list[dict[str, Any]], metric: str, axis: str) -> list[Point]:
    """Mean over seeds of each evaluation's x and value (every run has the same evaluations)."""
    series = [r["curves"][metric][axis] for r in runs]
    return [
        (sum(s[i][0] for s in series) / len(series), sum(s[i][1] for s in series) / len(series))
        for i in range(len(series[0]))
    ]


def plot(runs: list[dict[str, Any]], modes: list[str], pools: list[int | None], budget: float, title: str) -> Any:
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    colors = {"g_rl": "tab:gray", "c_rl": "tab:orange", "gc_rl": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    for row, metric in enumerate(WINNER_METRICS):
        for column, (axis, xlabel) in enumerate((("questions", "training questions seen"), ("seconds", "training seconds"))):
            ax = axes[row][column]
            for mode in modes:
                for pool, style in zip(pools, styles):
                    own = [r for r in runs if r["variant"] == label(mode, pool)]
                    points = mean_curve(own, metric, axis)
                    ax.plot([x for x, _ in points], [y for _, y in points], style, marker="o", markersize=3,
                            color=colors[mode], label=label(mode, pool))  # fmt: skip
            if axis == "seconds":
                ax.axvline(budget, color="black", linewidth=0.8, linestyle=":")  # the equal-seconds budget
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{metric} (held-out)")
            ax.legend(fontsize=7)
    figure.suptitle(title)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_schedule_args(parser, full_rounds=20)
    parser.add_argument("--eval-every", type=int, help="rounds between evaluations (default: 5; --quick: 4)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--pools", nargs="+", type=parse_pool, default=list(DEFAULT_POOLS),
        help="training pool sizes; 'unlimited' = the task's whole pool (default: 32 128 unlimited)",
    )  # fmt: skip
    add_lock_arg(parser)
    args = parser.parse_args()
    seeds, rounds = schedule(args)
    eval_every = args.eval_every if args.eval_every is not None else (4 if args.quick else 5)
    if eval_every < 1:
        raise SystemExit(f"--eval-every must be >= 1, got {eval_every}")
    modes, pools = list(args.modes), list(args.pools)
    labels = [label(mode, pool) for mode in modes for pool in pools]
    name = result_name("data_budget", args.quick)
    runs_dir = RESULTS_DIR / f"{name}-runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    info = machine()

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sorl-data-budget-") as workdir:
        for seed, (mode, pool) in interleaved(seeds, [(mode, pool) for mode in modes for pool in pools]):
            record = runs_dir / f"{label(mode, pool)}-seed{seed}-rounds{rounds}-every{eval_every}.json"
            run, reused = saved_run(record, lambda: run_variant(mode, pool, seed, rounds, eval_every, Path(workdir), args.lock))
            runs.append(run)
            print(
                f"seed {seed} {run['variant']:<18} " + "  ".join(f"{m} {run[m]:.3f}" for m in METRICS)
                + f"  training {run['training_seconds']:.0f}s of {run['seconds']:.0f}s "
                f"(cpu {run['cpu_seconds']:.0f}s, load {run['load_average']:.1f}){reused}",
                flush=True,
            )
    wall = time.perf_counter() - started

    # Equal seconds: the budget every run reached, the fastest run's whole training.
    budget = min(r["training_seconds"] for r in runs)
    stats = aggregate(runs, labels, budget)
    questions = rounds * QUESTIONS_PER_ROUND
    before = runs[0]["summary"]
    headers = ["mode", "pool", *METRICS, *(f"{m} at {budget:.0f} s" for m in WINNER_METRICS), "s per round", "s per run"]
    rows = [["initial policy", "-", *(f"{before[f'{m}_before']:.3f}" for m in METRICS), *(f"{before[f'{m}_before']:.3f}" for m in WINNER_METRICS), "-", "-"]]
    rows += [
        [mode, pool_name(pool), *(fmt(*stats[label(mode, pool)][m]) for m in METRICS),
         *(fmt(*stats[label(mode, pool)][f"{m}_at_budget"]) for m in WINNER_METRICS),
         fmt(*stats[label(mode, pool)]["seconds_per_round"], digits=2), fmt(*stats[label(mode, pool)]["seconds"], digits=0)]
        for mode in modes for pool in pools
    ]  # fmt: skip
    print(plain_table(headers, rows))

    final: dict[str, Any] = {}
    for mode in modes:
        final[mode] = {}
        for pool in pools:
            own = stats[label(mode, pool)]
            final[mode][pool_name(pool)] = (
                {m: own[m][0] for m in METRICS} | {f"{m}_std": own[m][1] for m in METRICS}
                | {f"{m}_at_budget": own[f"{m}_at_budget"][0] for m in WINNER_METRICS}
                | {f"{m}_at_budget_std": own[f"{m}_at_budget"][1] for m in WINNER_METRICS}
                | {"seconds_per_round": own["seconds_per_round"][0]}
            )  # fmt: skip
    final["equal_questions"] = {"questions": questions} | {m: winners({n: stats[n][m] for n in labels}) for m in WINNER_METRICS}
    final["equal_seconds"] = {"seconds": budget} | {m: winners({n: stats[n][f"{m}_at_budget"] for n in labels}) for m in WINNER_METRICS}
    final |= {"seeds": seeds, "rounds": rounds, "eval_every": eval_every}

    title = f"Data budgets on the embedded task ({rounds} rounds = {questions} training questions, seeds {seeds})"
    winner_rows = [
        [f"{kind} ({final[kind]['questions'] if kind == 'equal_questions' else f'{budget:.0f} s'})", metric,
         f"{final[kind][metric]['winner']} {fmt(final[kind][metric]['mean'], final[kind][metric]['std'])}",
         f"{final[kind][metric]['runner_up']} {fmt(final[kind][metric]['runner_up_mean'], final[kind][metric]['runner_up_std'])}"]
        for kind in ("equal_questions", "equal_seconds") for metric in WINNER_METRICS
    ]  # fmt: skip
    markdown = "\n\n".join([
        f"# {title}",
        f"`{QUICKSTART}` with `--data.init_args.mode` per mode and `--data.init_args.task.init_args.num_train` per "
        f"pool (`unlimited`: the task's 20,000 questions, fresh every round); evaluation every {eval_every} rounds, "
        "greedy only. Mean ± sample std over seeds. gen_acc: greedy pass@1 on 200 held-out questions; crit_acc / "
        f"crit_f1: verdicts on the 400-example label-balanced critique set. `at {budget:.0f} s`: each run's curve read "
        "at that many training seconds (the fastest run's whole training), interpolated between evaluations. "
        "Training seconds: rollouts and updates, evaluation and start-up left out; `s per run`: wall time of one "
        "`sorl fit`, evaluations included.",
        markdown_table(headers, rows),
        "Winners (highest mean over seeds):",
        markdown_table(["at", "metric", "winner", "runner-up"], winner_rows),
        machine_markdown(info) + f" Wall time of this invocation: {wall:.0f} s.",
        f"Command: `python benchmarks/data_budget.py{' --quick' if args.quick else ''} --seeds {' '.join(map(str, seeds))} "
        f"--rounds {rounds} --eval-every {eval_every} --modes {' '.join(modes)} --pools {' '.join(pool_name(p).removeprefix('pool') for p in pools)}`",
    ])
    payload = {
        "benchmark": "data_budget",
        "config": QUICKSTART,
        "seeds": seeds,
        "rounds": rounds,
        "eval_every": eval_every,
        "modes": modes,
        "pools": {pool_name(pool): pool for pool in pools},
        "questions_per_round": QUESTIONS_PER_ROUND,
        "budget_seconds": budget,
        "machine": info,
        "wall_seconds": wall,
        "stats": {name: {k: {"mean": v[0], "std": v[1]} for k, v in stats[name].items()} for name in labels},
        "runs": runs,
        "final": final,
    }
    for path in write_results(name, payload, markdown, plot(runs, modes, pools, budget, title)):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
