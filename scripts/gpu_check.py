"""The GPU check of the sharded path, in one run with nothing downloaded:

    python scripts/gpu_check.py                  # one GPU of the H100/H200 class, under 8 minutes
    python scripts/gpu_check.py --cpu --tiny     # the same code path on a CPU, tiny shapes (tests)

A randomly initialised policy of Qwen2.5-1.5B's shape (``GCRLModule(model_config=...)``: hidden
1536, 28 layers, 12 heads, 2 KV heads, MLP 8960, vocabulary 151,936, tied head) with the embedded
policy's character tokenizer (its ids stay far below the vocabulary), FSDP2 per decoder layer
through Lightning's ``ModelParallelStrategy`` on one device, ``bf16-mixed``, gradient
checkpointing, ``HFEngine`` rollouts, 3 rounds of GC-RL on the embedded arithmetic task. A random
policy gets no answer right, so no question yields a right and a wrong response for the critique
cache; the cache is therefore filled once with the task's own labelled pairs (a worked solution
and one with an injected error per training question), so every round samples and trains
critiques too.

Prints one JSON line (and writes it to ``--out``, default benchmarks/results/gpu_check.json):
peak device memory (``torch.cuda.max_memory_allocated``), rollout tokens/s (completion tokens
sampled / rollout time), training tokens/s (attended tokens of the trained micro-batches /
training time), per round, and ``python -m sorl.plan``'s estimate of the same setting.

Needs torch, lightning, transformers, tensorboard and torchmetrics only (no jsonargparse, no
vLLM): everything is built in Python, and sorl is imported from this checkout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: E402

from sorl import ArithmeticTask, GCRLModule, GRPOLoss, RolloutDataModule  # noqa: E402
from sorl.engines import HFEngine  # noqa: E402
from sorl.memory import GIB, Architecture, plan_memory  # noqa: E402
from sorl.plan import setting_from_config  # noqa: E402
from sorl.policy import EMBEDDED_POLICY, load_tokenizer  # noqa: E402

QWEN25_1_5B = dict(
    model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=1024,
)  # fmt: skip
TINY = dict(QWEN25_1_5B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
# Sizes per round (the GPU run): 64 questions x 8 responses, 32 pairs x 4 critiques, 8-row micro-batches.
ROUND = dict(questions_per_round=64, responses_per_question=8, critique_pairs_per_round=32, critiques_per_response=4, batch_size=8)
TINY_ROUND = dict(questions_per_round=4, responses_per_question=2, critique_pairs_per_round=2, critiques_per_response=2, batch_size=4)
MAX_RESPONSE_TOKENS, MAX_CRITIQUE_TOKENS = 128, 128


class Clock(Callback):
    """Per round: rollout time and completion tokens (from the DataModule's round), training time
    and the attended tokens of the micro-batches trained."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []
        self._train_tokens = 0
        self._started = 0.0
        self._first_step = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        round_ = trainer.datamodule.last_round
        samples = round_.responses + round_.critiques
        rollout_s = round_.metrics.get("time/response_rollout", 0.0) + round_.metrics.get("time/critique_rollout", 0.0)
        self.rounds.append(
            {
                "rollout_tokens": float(sum(len(s.completion.token_ids) for s in samples)),
                "rollout_s": rollout_s,
                "responses": float(len(round_.responses)),
                "critiques": float(len(round_.critiques)),
            }
        )
        self._train_tokens = 0
        self._first_step = trainer.global_step
        _synchronize(pl_module.device)
        self._started = time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: dict[str, Any], batch_idx: int) -> None:
        self._train_tokens += int(batch["attention_mask"].sum())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        _synchronize(pl_module.device)
        self.rounds[-1].update(
            train_tokens=float(self._train_tokens), train_s=time.perf_counter() - self._started,
            optimizer_steps=float(trainer.global_step - self._first_step),
        )  # fmt: skip


class Profile(Callback):
    """torch.profiler over a few micro-batches of the last round's training (after its rollouts and
    two warm micro-batches): the operators that take the most device time and the most host time,
    written as two tables to ``path``. A few, because profiling a whole round of the 1.5B policy on
    a GPU outran a 330 s limit."""

    def __init__(self, path: Path, micro_batches: int = 4, skip: int = 2) -> None:
        self.path, self.micro_batches, self.skip = path, micro_batches, skip
        self._profiler: torch.profiler.profile | None = None
        self._profiled = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch != trainer.max_epochs - 1 or batch_idx != self.skip:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if pl_module.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.__enter__()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._profiler is None:
            return
        self._profiled += 1
        if self._profiled == self.micro_batches:
            self._write(pl_module.device)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        if self._profiler is not None:  # a round with fewer micro-batches than the window
            self._write(pl_module.device)

    def _write(self, device: torch.device) -> None:
        _synchronize(device)
        self._profiler.__exit__(None, None, None)
        averages = self._profiler.key_averages()
        device_sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        tables = [f"{self._profiled} micro-batches, sorted by {key}\n" + averages.table(sort_by=key, row_limit=30) for key in (device_sort, "self_cpu_time_total")]
        self.path.write_text("\n\n".join(tables))
        self._profiler = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill_cache(datamodule: RolloutDataModule, task: ArithmeticTask, size: int) -> None:
    """Labelled pairs for the critique cache: a worked solution and an injected error per question."""
    rng = random.Random(0)
    from sorl.tasks.base import CritiqueExample

    pairs = []
    for question in task.train_questions()[: size // 2]:
        pairs += [CritiqueExample(question, task.solution(question), True), CritiqueExample(question, task.inject_error(question, rng), False)]
    datamodule.cache.add(pairs)


def plan_estimate(model_config: dict[str, Any], sizes: dict[str, int], gpu_gib: float) -> dict[str, Any]:
    """``python -m sorl.plan``'s estimate (sorl.memory) of this run's setting, on one device."""
    config = {
        "trainer": {"strategy": {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}, "precision": "bf16-mixed"},
        "model": {"class_path": "sorl.GCRLModule", "init_args": {"model_config": model_config, "gradient_checkpointing": True}},
        "data": {"class_path": "sorl.RolloutDataModule", "init_args": {
            "batch_size": sizes["batch_size"], "max_response_tokens": MAX_RESPONSE_TOKENS, "max_critique_tokens": MAX_CRITIQUE_TOKENS}},
    }  # fmt: skip
    arch = Architecture.from_config(model_config)
    # the arithmetic task's prompts: ~40 tokens; a critique template adds ~40 (both rounded up)
    setting, _ = setting_from_config(config, arch, world_size=1, max_prompt_tokens=64, critique_prompt_overhead=64)
    parts = plan_memory(arch, setting, gpu_gib)
    return {"per_gpu_gib": round(parts["total"] / GIB, 2), "parts_gib": {k: round(v / GIB, 2) for k, v in parts.items() if k != "total"}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (gloo) instead of one CUDA device")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and rounds (a test of the script itself)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    parser.add_argument("--profile", action="store_true", help="profile 4 micro-batches of the last round's training into <out>-profile.txt")
    options = parser.parse_args(argv)
    if not options.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --cpu (and --tiny) to run on the CPU")
    started = time.perf_counter()
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    model_config = TINY if options.tiny else QWEN25_1_5B
    sizes = TINY_ROUND if options.tiny else ROUND
    torch.manual_seed(0)
    task = ArithmeticTask()
    module = GCRLModule(
        model_config=model_config, tokenizer=EMBEDDED_POLICY, dtype="float32", gradient_checkpointing=True,
        loss=GRPOLoss(beta=0.0), optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6),
    )  # fmt: skip
    assert len(load_tokenizer(EMBEDDED_POLICY)) < model_config["vocab_size"]
    datamodule = RolloutDataModule(
        task, engine=HFEngine(max_batch_rows=512), mode="gc_rl", max_response_tokens=MAX_RESPONSE_TOKENS,
        max_critique_tokens=MAX_CRITIQUE_TOKENS, eval_samples=0, seed=0, **sizes,
    )  # fmt: skip
    fill_cache(datamodule, task, 256)
    clock = Clock()
    callbacks: list[Callback] = [clock]
    if options.profile:
        callbacks.append(Profile(Path(options.out).with_name(Path(options.out).stem + "-profile.txt")))
    with tempfile.TemporaryDirectory(prefix="sorl-gpu-check-") as root:
        trainer = Trainer(
            accelerator="cpu" if options.cpu else "gpu", devices=1,
            strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
            precision="bf16-mixed", max_epochs=options.rounds, reload_dataloaders_every_n_epochs=1,
            limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, callbacks=callbacks, default_root_dir=root,
        )  # fmt: skip
        module.export_dir = str(Path(root) / "hf")
        trainer.fit(module, datamodule=datamodule)
    device = torch.device("cpu") if options.cpu else torch.device("cuda", torch.cuda.current_device())
    gpu_gib = torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else 0.0
    rounds = clock.rounds
    num_parameters = sum(p.numel() for p in module.policy.parameters())
    measured = rounds[1:] or rounds  # the first round also warms up kernels and allocators
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tiny": options.tiny,
        "model": {k: v for k, v in model_config.items()},
        "num_parameters": num_parameters,
        "rounds": rounds,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2) if device.type == "cuda" else None,
        "rollout_tokens_per_s": round(sum(r["rollout_tokens"] for r in measured) / sum(r["rollout_s"] for r in measured), 1),
        "train_tokens_per_s": round(sum(r["train_tokens"] for r in measured) / sum(r["train_s"] for r in measured), 1),
        # the usual model-FLOPs count (6 per parameter per token), without checkpointing's recompute
        "train_model_tflops_per_s": round(6 * num_parameters * sum(r["train_tokens"] for r in measured) / sum(r["train_s"] for r in measured) / 1e12, 2),
        "plan": plan_estimate(model_config, sizes, gpu_gib or 80.0),
        "wall_s": round(time.perf_counter() - started, 1),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "lightning": __import__("lightning").__version__},
    }  # fmt: skip
    Path(options.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
