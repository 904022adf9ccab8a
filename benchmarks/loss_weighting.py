"""How the GC-RL loss weighs responses against critiques, on the embedded task, at equal questions.

With one token mean over a mixed batch (the paper's weighting, as in verl's GRPO; sorl's default,
``critique_share: null``), each kind weighs as much as its share of the step's tokens: in the
quickstart schedule critiques are the longer sequences, so responses get well under the weight
G-RL gives them at the same learning rate. ``RolloutDataModule(critique_share=s)`` gives each kind
its own token mean instead, combined as ``(1 - s) * responses + s * critiques``. Variants, each
``configs/quickstart.yaml`` for the same rounds (so the same training questions):

- ``g_rl``: responses only (the generation reference);
- ``mixed``: GC-RL, one mean over both kinds (the default);
- ``share_0.5``, ``share_0.25``: GC-RL, per-kind means with critique share 0.5 and 0.25.

The share of critique tokens in the mixed runs (``critique_token_share``, from the logged mean
lengths and counts) says what weight the mixed mean gave critiques. Prints a table (mean ± sample
std over seeds) and, as its last line, one JSON object with each variant's ``gen_acc``,
``crit_acc``, ``crit_f1`` (means), their ``_std``, and ``critique_token_share``; writes
``benchmarks/results/loss_weighting[-quick].{json,md,png}``; finished runs are kept in
``results/loss_weighting[-quick]-runs/`` and reused by a later invocation with the same rounds.

    python benchmarks/loss_weighting.py [--quick] [--seeds 0 1 2] [--rounds 30] [--lock PATH]

``--quick``: one seed, 8 rounds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    QUICKSTART,
    RESULTS_DIR,
    add_lock_arg,
    add_schedule_args,
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

# label -> (training mode, critique_share; None = one mixed token mean)
VARIANTS: dict[str, tuple[str, float | None]] = {
    "g_rl": ("g_rl", None),
    "mixed": ("gc_rl", None),
    "share_0.5": ("gc_rl", 0.5),
    "share_0.25": ("gc_rl", 0.25),
}
METRICS = ("gen_acc", "crit_acc", "crit_f1")
QUESTIONS_PER_ROUND = 32  # configs/quickstart.yaml
RESPONSES_PER_ROUND = 32 * 8  # questions x k
CRITIQUES_PER_PAIR = 4  # m


def run_variant(label: str, seed: int, rounds: int, workdir: Path, lock: str | None) -> dict[str, Any]:
    mode, share = VARIANTS[label]
    overrides = [
        f"--trainer.max_epochs={rounds}", f"--data.init_args.mode={mode}", *seed_overrides(seed),
        *([f"--data.init_args.critique_share={share}"] if share is not None else []),
    ]
    with cpu_lock(lock):
        run = run_fit(QUICKSTART, overrides, workdir / f"{label}-seed{seed}")
    record: dict[str, Any] = {"variant": label, "seed": seed, "rounds": rounds, **run.timing(), "summary": run.summary}
    record.update({metric: run.summary[f"{metric}_after"] for metric in METRICS})
    if mode == "gc_rl":  # what weight one mixed mean gives critiques: their share of the tokens
        response_tokens = sum(run.series("rollout/response_len")) * RESPONSES_PER_ROUND
        critiques = [pairs * CRITIQUES_PER_PAIR for pairs in run.series("rollout/critique_pairs")]
        critique_tokens = sum(length * count for length, count in zip(run.series("rollout/critique_len"), critiques))
        record["critique_token_share"] = critique_tokens / (response_tokens + critique_tokens)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_schedule_args(parser)
    add_lock_arg(parser)
    args = parser.parse_args()
    seeds, rounds = schedule(args)
    name = result_name("loss_weighting", args.quick)
    runs_dir = RESULTS_DIR / f"{name}-runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sorl-loss-weighting-") as workdir:
        for seed, label in interleaved(seeds, list(VARIANTS)):
            saved = runs_dir / f"{label}-seed{seed}-rounds{rounds}.json"
            run, _ = saved_run(saved, lambda: run_variant(label, seed, rounds, Path(workdir), args.lock))
            runs.append(run)
            print(f"seed {seed} {label:<10} " + "  ".join(f"{m} {run[m]:.3f}" for m in METRICS) + f"  {run['seconds']:.0f}s", flush=True)
    wall = time.perf_counter() - started

    stats = {label: {m: mean_std([r[m] for r in runs if r["variant"] == label]) for m in (*METRICS, "seconds")} for label in VARIANTS}
    shares = [r["critique_token_share"] for r in runs if r["variant"] == "mixed"]
    before = runs[0]["summary"]
    headers = ["variant", "critique weight", *METRICS, "seconds per run"]
    weights = {"g_rl": "-", "mixed": f"{mean_std(shares)[0]:.2f} (its token share)", "share_0.5": "0.5", "share_0.25": "0.25"}
    rows = [["initial policy", "-", *(f"{before[f'{m}_before']:.3f}" for m in METRICS), "-"]]
    rows += [[label, weights[label], *(fmt(*stats[label][m], digits=0 if m == "seconds" else 3) for m in (*METRICS, "seconds"))] for label in VARIANTS]
    print(plain_table(headers, rows))

    final: dict[str, Any] = {label: {m: stats[label][m][0] for m in METRICS} | {f"{m}_std": stats[label][m][1] for m in METRICS} for label in VARIANTS}
    final |= {"critique_token_share": mean_std(shares)[0], "seeds": seeds, "rounds": rounds}
    title = f"Loss weighting of GC-RL on the embedded task ({rounds} rounds = {rounds * QUESTIONS_PER_ROUND} questions, seeds {seeds})"
    markdown = "\n\n".join([
        f"# {title}",
        f"`{QUICKSTART}` per variant (`--data.init_args.mode`, `--data.init_args.critique_share`). Mean ± sample std "
        "over seeds. gen_acc: greedy pass@1 on 200 held-out questions; crit_acc / crit_f1: verdicts on the "
        "400-example balanced critique set. Critique weight: the share of the step's loss given to critiques.",
        markdown_table(headers, rows),
        machine_markdown(machine()) + f" Wall time of this invocation: {wall:.0f} s.",
        f"Command: `python benchmarks/loss_weighting.py{' --quick' if args.quick else ''} --seeds {' '.join(map(str, seeds))} --rounds {rounds}`",
    ])
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.2
    for index, label in enumerate(VARIANTS):
        xs = [m + (index - 1.5) * width for m in range(len(METRICS))]
        axis.bar(xs, [stats[label][m][0] for m in METRICS], width, yerr=[stats[label][m][1] for m in METRICS], capsize=4, label=label)
    axis.set_xticks(range(len(METRICS)), METRICS)
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=9)
    payload = {"benchmark": "loss_weighting", "config": QUICKSTART, "variants": VARIANTS, "runs": runs, "final": final, "wall_seconds": wall}
    for path in write_results(name, payload, markdown, figure):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
