"""Per-GPU memory estimate of a config, before anything runs.

    python -m sorl.plan --config configs/qwen2.5_gpu.yaml --config configs/model/qwen2.5_7b.yaml --world-size 8 --gpu-memory-gib 80

prints each part of the estimate and the total against the GPU's memory, and as its last line a
JSON object (``per_gpu_gib``, ``fits``, ``parts``, ...). Nothing is downloaded or loaded: the YAML
files are read as data (``yaml.safe_load``, later ``--config`` files merged over earlier ones as
LightningCLI does), and the model's architecture comes from ``--model-config`` (a config.json),
``model.init_args.model_config``, the ``config.json`` of a local ``model`` folder, or, for a model
that is not on this machine, :data:`KNOWN_ARCHITECTURES` by the folder's name (the shipped GPU
configs name ``/models/Qwen2.5-7B-Instruct``). A table rather than ``model_config`` in the YAML,
because ``GCRLModule(model_config=...)`` builds a fresh, randomly initialised model: it cannot
describe a pretrained one.

The memory model itself (what is counted, and how) is :mod:`sorl.memory`.
"""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from sorl.budgets import check_length_budgets
from sorl.memory import DTYPE_BYTES, GIB, KNOWN_ARCHITECTURES, Architecture, Setting, plan_memory


# ---------------------------------------------------------------------------------- reading configs
def load_config(paths: list[str]) -> dict[str, Any]:
    """The YAML files merged in order (later ones override; nested dicts merge, as LightningCLI's
    ``--config`` does; a changed ``class_path`` replaces its ``init_args``)."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = _merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in overlay.items():
        old = result.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            if "class_path" in value and value["class_path"] != old.get("class_path"):
                old = {}
            result[key] = _merge(old, value)
        else:
            result[key] = value
    return result


def architecture_of(config: dict[str, Any], model_config_file: str | None = None) -> Architecture:
    """The policy's architecture, without downloading: ``model_config_file`` (a config.json), the
    config's ``model_config``, a local folder's config.json, else :data:`KNOWN_ARCHITECTURES`."""
    from sorl.policy import EMBEDDED_POLICY

    if model_config_file is not None:
        return Architecture.from_config(json.loads(Path(model_config_file).read_text()))
    model = config.get("model")
    init_args = model.get("init_args", {}) if isinstance(model, dict) else {}
    if init_args.get("model_config") is not None:
        return Architecture.from_config(init_args["model_config"])
    path = model if isinstance(model, str) else init_args.get("model") or EMBEDDED_POLICY
    if (Path(path) / "config.json").is_file():
        return Architecture.from_config(json.loads((Path(path) / "config.json").read_text()))
    name = Path(path).name.lower().removesuffix(".gguf")
    for key in sorted(KNOWN_ARCHITECTURES, key=len, reverse=True):
        # the model's own name, or a folder named after it (a fine-tune: smollm2-135m-rgym-cold-start)
        if name == key or name.startswith(key + "-") or name.startswith(key + "."):
            return Architecture.from_config(KNOWN_ARCHITECTURES[key])
    raise ValueError(
        f"the architecture of {path!r} is unknown here (no config.json, not in sorl.memory.KNOWN_ARCHITECTURES): "
        "pass --model-config path/to/config.json"
    )


def _init_args(section: Any, cls: type) -> dict[str, Any]:
    """``cls``'s defaults overridden by a ``class_path``/``init_args`` section's values."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **(section.get("init_args", {}) if isinstance(section, dict) else {})}


def setting_from_config(
    config: dict[str, Any],
    arch: Architecture,
    world_size: int,
    max_prompt_tokens: int,
    critique_prompt_overhead: int,
) -> tuple[Setting, dict[str, int | None]]:
    """The :class:`Setting` of a merged config, and the length budget's inputs."""
    from sorl.data import RolloutDataModule
    from sorl.engines import HFEngine, VLLMEngine
    from sorl.module import GCRLModule
    from sorl.policy import LOGPROB_CHUNK_SIZE
    from sorl.sft import SFTDataModule, SFTModule

    trainer = config.get("trainer", {})
    strategy = trainer.get("strategy", "auto")
    strategy_name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy)
    # ModelParallelStrategy: GCRLModule applies FSDP2 per decoder layer (FSDPStrategy: FSDP1, per
    # layer only with an auto_wrap_policy)
    model_parallel = strategy_name.endswith("ModelParallelStrategy")
    fsdp = model_parallel or "fsdp" in strategy_name.lower()
    auto_wrap = model_parallel or (isinstance(strategy, dict) and bool(strategy.get("init_args", {}).get("auto_wrap_policy")))
    precision = str(trainer.get("precision", "32-true"))
    model = config.get("model")
    if not isinstance(model, dict):  # a sampling-only config (python -m sorl.critique_set)
        param_bytes = DTYPE_BYTES[config.get("dtype", "float32")]
        budget = dict(max_prompt_tokens=max_prompt_tokens, max_response_tokens=config.get("max_new_tokens", 0),
                      critique_prompt_overhead=0, max_critique_tokens=0, max_model_len=None)
        rows = _init_args({}, HFEngine)["max_batch_rows"]
        setting = Setting(world_size, False, False, param_bytes, param_bytes, False, False, False, 1,
                          max_prompt_tokens + config.get("max_new_tokens", 0), 0, None, False, 0, 0.0, None, rows)
        return setting, budget
    sft = model.get("class_path", "").endswith("SFTModule")
    model_args = _init_args(model, SFTModule if sft else GCRLModule)
    param_bytes = DTYPE_BYTES[model_args["dtype"]]
    compute_bytes = 2 if precision.startswith(("bf16", "16")) else param_bytes
    loss = model_args.get("loss")
    beta = loss.get("init_args", {}).get("beta", 0.0) if isinstance(loss, dict) else 0.0
    if sft:
        data = _init_args(config.get("data", {}), SFTDataModule)
        length = data["max_length"]
        setting = Setting(world_size, fsdp, auto_wrap, param_bytes, compute_bytes, False, False, True,
                          data["batch_size"], length, length, None, False, 0, 0.0, None, 0)
        return setting, dict(max_prompt_tokens=length, max_response_tokens=0, critique_prompt_overhead=0,
                             max_critique_tokens=0, max_model_len=None)
    data = _init_args(config.get("data", {}), RolloutDataModule)
    engine = data["engine"] if isinstance(data["engine"], dict) else {}
    vllm = engine.get("class_path", "").endswith("VLLMEngine")
    engine_args = _init_args(engine, VLLMEngine if vllm else HFEngine)
    response, critique = data["max_response_tokens"], data["max_critique_tokens"]
    max_model_len = engine_args.get("max_model_len") or (arch.max_position_embeddings if vllm else None)
    longest = max_prompt_tokens + critique_prompt_overhead + response + critique
    sequence = min(longest, max_model_len or arch.max_position_embeddings)  # no engine samples past the model's length
    vllm_dtype = engine_args["dtype"] if vllm else "auto"
    # HFEngine(dtype=...) keeps a copy of the policy in that dtype between rounds
    hf_dtype = None if vllm else engine_args["dtype"]
    hf_copy_bytes = DTYPE_BYTES[hf_dtype] if hf_dtype not in (None, model_args["dtype"]) else 0
    setting = Setting(
        world_size=world_size,
        fsdp=fsdp,
        auto_wrap=auto_wrap,
        param_bytes=param_bytes,
        compute_bytes=compute_bytes,
        gradient_checkpointing=bool(model_args["gradient_checkpointing"]),
        reference=beta > 0,
        training=True,
        micro_batch=data["batch_size"],
        sequence_tokens=sequence,
        completion_tokens=max(response, critique),
        logprob_chunk=LOGPROB_CHUNK_SIZE,
        vllm=vllm,
        vllm_param_bytes=param_bytes if vllm_dtype == "auto" else DTYPE_BYTES[vllm_dtype],
        gpu_memory_utilization=engine_args.get("gpu_memory_utilization", 0.0),
        kv_cache_gib=engine_args.get("kv_cache_gib"),
        hf_generation_rows=0 if vllm else engine_args["max_batch_rows"],
        hf_copy_bytes=hf_copy_bytes,
        # sleep_mode unset: on where vLLM has it, and this is a plan for GPUs unless the config says CPU
        vllm_sleep=vllm and (engine_args.get("sleep_mode") if engine_args.get("sleep_mode") is not None
                             else trainer.get("accelerator", "auto") != "cpu"),
    )
    budget = dict(max_prompt_tokens=max_prompt_tokens, max_response_tokens=response,
                  critique_prompt_overhead=critique_prompt_overhead, max_critique_tokens=critique,
                  max_model_len=max_model_len)
    return setting, budget


def report(
    configs: list[str], arch: Architecture, setting: Setting, parts: dict[str, int], gpu: float,
    budget: dict[str, Any], budget_error: str | None,
) -> dict[str, Any]:
    """Prints the plan's table; returns its JSON summary."""
    def gib(name: str) -> float:
        return round(parts[name] / GIB, 2)

    total = parts["total"] / GIB
    print(f"{', '.join(configs)}: {arch.num_parameters / 1e9:.3f}B parameters, world size {setting.world_size}, "
          f"{'FSDP' + (' per decoder layer' if setting.auto_wrap else ' (one unit: no auto_wrap_policy)') if setting.fsdp else 'replicated'}, "
          f"params {setting.param_bytes} B, compute {setting.compute_bytes} B")
    print(f"  micro-batch {setting.micro_batch} x {setting.sequence_tokens} tokens, {setting.completion_tokens} completion positions")
    rows = [
        ("parameters", "parameters"), ("optimizer (AdamW, 2 states)", "optimizer"), ("reference model", "reference"),
        ("vLLM weights", "vllm_weights"), ("vLLM KV cache", "vllm_kv_cache"), ("gradients", "gradients"),
        ("gathered parameters / compute copies", "gathered_parameters"),
        (f"activations ({'with' if setting.gradient_checkpointing else 'without'} checkpointing)", "activations"),
        ("  activations with checkpointing", "activations_checkpointed"), ("  activations without", "activations_full"),
        (f"logprobs ({'chunked' if setting.logprob_chunk else 'full'})", "logprobs"),
        ("  logprobs chunked", "logprobs_chunked"), ("  logprobs full [B, C, V]", "logprobs_full"),
        ("training step (gradients .. logprobs)", "training_step"),
        ("rollout phase (gathering, HF KV cache; vLLM if it sleeps)", "rollout_phase"),
    ]
    for label, name in rows:
        print(f"  {label:<46} {gib(name):>9.2f} GiB")
    fits = total <= gpu
    print(f"  {'total per GPU':<46} {total:>9.2f} GiB of {gpu:g} GiB: "
          f"{'fits' if fits else 'does NOT fit'} ({100 * (1 - total / gpu):.0f}% free)")
    kv_tokens = None
    if setting.vllm:
        # vLLM's own activations come out of this share too, so it is an upper bound.
        kv_tokens = parts["vllm_kv_cache"] // arch.kv_bytes_per_token(setting.vllm_param_bytes)
        print(f"  vLLM KV cache holds at most ~{kv_tokens} tokens: "
              f"{kv_tokens / budget['max_model_len']:.1f} sequences of max_model_len {budget['max_model_len']}")
    if budget_error:
        print(f"  length budget: {budget_error}")
    result = {
        "per_gpu_gib": round(total, 2),
        "fits": fits,
        "margin": round(1 - total / gpu, 3),
        "gpu_memory_gib": gpu,
        "world_size": setting.world_size,
        "num_parameters": arch.num_parameters,
        "parts": {name: gib(name) for name in parts if name != "total"},
        "setting": asdict(setting),
        "vllm_kv_cache_tokens": kv_tokens,
        "length_budget_error": budget_error,
    }
    return result


def main(args: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m sorl.plan", description="Per-GPU memory estimate of a sorl config.")
    parser.add_argument("--config", action="append", required=True, help="YAML file; repeat to overlay")
    parser.add_argument("--world-size", type=int, default=None, help="ranks in all (default: trainer.devices x num_nodes)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0)
    parser.add_argument("--model-config", default=None, help="a config.json giving the policy's architecture")
    parser.add_argument("--max-prompt-tokens", type=int, default=512, help="longest answer prompt (assumed)")
    parser.add_argument("--critique-overhead-tokens", type=int, default=128, help="critique template's tokens (assumed)")
    options = parser.parse_args(args)
    config = load_config(options.config)
    trainer = config.get("trainer", {})
    devices = trainer.get("devices", 1)
    world_size = options.world_size or (devices if isinstance(devices, int) else 1) * trainer.get("num_nodes", 1)
    gpu = options.gpu_memory_gib
    arch = architecture_of(config, options.model_config)
    setting, budget = setting_from_config(config, arch, world_size, options.max_prompt_tokens, options.critique_overhead_tokens)
    parts = plan_memory(arch, setting, gpu)
    try:
        check_length_budgets(**budget)
        budget_error = None
    except ValueError as error:
        budget_error = str(error)

    result = report(options.config, arch, setting, parts, gpu, budget, budget_error)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
