"""The memory plan: its arithmetic on a hand-computed case, reading configs, and every shipped config."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from sorl.memory import GIB, KNOWN_ARCHITECTURES, Architecture, Setting, plan_memory
from sorl.plan import main

ROOT = Path(__file__).resolve().parents[1]
# every base config, and every overlay on the base it is composed with (as tests/test_configs.py does)
OVERLAY_BASES = {"mode": "gc_rl.yaml", "engine": "gc_rl.yaml", "strategy": "gc_rl.yaml", "model": "qwen2.5_gpu.yaml"}
SHIPPED = [[str(path.relative_to(ROOT))] for path in sorted((ROOT / "configs").glob("*.yaml"))]
SHIPPED.append(["configs/critique_set/smollm2.yaml"])
SHIPPED += [
    [f"configs/{base}", str(path.relative_to(ROOT))]
    for folder, base in OVERLAY_BASES.items()
    for path in sorted((ROOT / "configs" / folder).glob("*.yaml"))
]

# A Llama with hidden 64, SwiGLU 128, 3 layers, 4 heads of 16, 2 KV heads (kv_dim 32), vocab 1000, tied.
TINY = dict(
    model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True, max_position_embeddings=512,
)
# Per layer: q 64*64 + k, v 2*64*32 + o 64*64 + SwiGLU 3*64*128 + norms 2*64
#          = 4096 + 4096 + 4096 + 24576 + 128 = 36992.
# Root: embeddings 1000*64 (tied: counted once) + final norm 64 = 64064.  N = 64064 + 3*36992 = 175040.
TINY_PARAMETERS = 175040

FSDP_SETTING = Setting(
    world_size=4, fsdp=True, auto_wrap=True, param_bytes=4, compute_bytes=2, gradient_checkpointing=True,
    reference=False, training=True, micro_batch=2, sequence_tokens=100, completion_tokens=40, logprob_chunk=16,
    vllm=True, vllm_param_bytes=2, gpu_memory_utilization=0.5, kv_cache_gib=None, hf_generation_rows=0,
    vllm_sleep=True,
)


def test_architecture_counts_parameters_as_transformers_does():
    arch = Architecture.from_config(TINY)
    assert arch.num_parameters == TINY_PARAMETERS
    assert arch.num_parameters == sum(p.numel() for p in _meta_model(TINY).parameters())


@pytest.mark.parametrize("name", sorted(KNOWN_ARCHITECTURES))
def test_known_architectures_count_as_transformers_does_without_biases(name):
    model = _meta_model(KNOWN_ARCHITECTURES[name])
    weights = sum(p.numel() for n, p in model.named_parameters() if not n.endswith(".bias"))
    assert Architecture.from_config(KNOWN_ARCHITECTURES[name]).num_parameters == weights


def _meta_model(values):
    values = dict(values)
    with torch.device("meta"):  # shapes only, no memory
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values))


def test_plan_arithmetic_fsdp_per_layer_with_vllm():
    """Hand computation (N = 175040, W = 4, p = 4, a = 2, B = 2, T = 100, C = 40, V = 1000, 1 GiB GPU):
    parameters N*p/W = 175040; optimizer 2*N*p/W = 350080; gradients N*p/W = 175040;
    gathered: unit = root 64064 + 2 layers 73984 = 138048, params and grads in a: 2*138048*2 = 552192;
    activations per token and layer: 2*(4*64 + 2*64) + 2*(2*64 + 2*32) + 4*2*128 = 768 + 384 + 1024
    = 2176, times B*T = 200 tokens: 435200; checkpointed: L*B*T*H*a = 3*200*64*2 = 76800, + one
    layer 435200 = 512000; without: 3*435200 = 1305600;
    logprobs: (16 + 2) * B*C*V = 18*80000 = 1440000 full, 18*16*1000 = 288000 in chunks of 16;
    vLLM: weights N*2 = 350080, KV cache 0.5 GiB - 350080 = 536870912 - 350080 = 536520832;
    rollout: no gathered policy; the streamed sync's ~two largest tensors 2*max(V, I)*H*2 =
    2*1000*64*2 = 256000; in sleep mode vLLM counts here: 256000 + 350080 + 536520832 = 537126912;
    training step 175040 + 552192 + 512000 + 288000 = 1527232 (less than the rollout);
    total 175040 + 350080 + 537126912 = 537652032."""
    parts = plan_memory(Architecture.from_config(TINY), FSDP_SETTING, gpu_memory_gib=1.0)
    expected = {
        "parameters": 175040, "optimizer": 350080, "reference": 0, "gradients": 175040,
        "gathered_parameters": 552192, "activations_checkpointed": 512000, "activations_full": 1305600,
        "logprobs_full": 1440000, "logprobs_chunked": 288000, "vllm_weights": 350080,
        "vllm_kv_cache": 536520832, "rollout_gathered_policy": 256000, "hf_kv_cache": 0, "hf_copy": 0,
        "activations": 512000, "logprobs": 288000, "training_step": 1527232, "rollout_phase": 537126912,
        "total": 537652032,
    }
    assert parts == expected
    # Without sleep mode vLLM stays resident beside training: 525120 + 350080 + 536520832 + 1527232.
    awake = plan_memory(Architecture.from_config(TINY), Setting(**{**FSDP_SETTING.__dict__, "vllm_sleep": False}), 1.0)
    assert (awake["rollout_phase"], awake["total"]) == (256000, 538923264)


def test_plan_arithmetic_ddp_without_checkpointing_with_hf_engine():
    """DDP on 2 ranks: nothing is sharded. parameters N*4 = 700160, optimizer 1400320; gradients
    and DDP's bucket copies 2*N*4 = 1400320; autocast's bf16 weight copies N*2 = 350080;
    activations without checkpointing 1305600; logprobs chunked 288000; HFEngine's KV cache:
    8 rows * 100 tokens * (2 * 3 layers * 2 KV heads * 16 * 2 bytes = 384) = 307200, no gathering.
    Total 700160 + 1400320 + (1400320 + 350080 + 1305600 + 288000 = 3344000) = 5444480."""
    setting = Setting(**{**FSDP_SETTING.__dict__, "world_size": 2, "fsdp": False, "auto_wrap": False,
                         "gradient_checkpointing": False, "vllm": False, "hf_generation_rows": 8})
    parts = plan_memory(Architecture.from_config(TINY), setting, gpu_memory_gib=1.0)
    assert (parts["gradients"], parts["gathered_parameters"], parts["activations"]) == (1400320, 350080, 1305600)
    assert (parts["hf_kv_cache"], parts["rollout_phase"], parts["vllm_kv_cache"]) == (307200, 307200, 0)
    assert parts["total"] == 5444480


def test_plan_counts_the_hf_engine_bf16_copy_between_rounds():
    """HFEngine(dtype="bfloat16") keeps a bfloat16 copy of the policy (N * 2 = 350080 bytes) for
    the whole run: the DDP total above plus that copy."""
    setting = Setting(**{**FSDP_SETTING.__dict__, "world_size": 2, "fsdp": False, "auto_wrap": False,
                         "gradient_checkpointing": False, "vllm": False, "hf_generation_rows": 8, "hf_copy_bytes": 2})
    parts = plan_memory(Architecture.from_config(TINY), setting, gpu_memory_gib=1.0)
    assert parts["hf_copy"] == 350080
    assert parts["total"] == 5444480 + 350080


def _write_config(tmp_path: Path, max_model_len: int) -> str:
    config = {
        "trainer": {
            "devices": 4, "precision": "bf16-mixed",
            "strategy": {"class_path": "lightning.pytorch.strategies.FSDPStrategy",
                         "init_args": {"auto_wrap_policy": ["transformers.models.llama.modeling_llama.LlamaDecoderLayer"]}},
        },
        "model": {"class_path": "sorl.GCRLModule",
                  "init_args": {"model_config": TINY, "gradient_checkpointing": True, "dtype": "float32"}},
        "data": {"class_path": "sorl.RolloutDataModule", "init_args": {
            "batch_size": 2, "max_response_tokens": 20, "max_critique_tokens": 40,
            "engine": {"class_path": "sorl.engines.VLLMEngine",
                       "init_args": {"dtype": "bfloat16", "kv_cache_gib": None, "gpu_memory_utilization": 0.5,
                                     "max_model_len": max_model_len}},
        }},
    }
    path = tmp_path / f"tiny_{max_model_len}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_main_reads_the_config_into_the_hand_computed_setting(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sorl.policy.LOGPROB_CHUNK_SIZE", 16)
    # T = 30 (prompt) + 10 (template) + 20 (response) + 40 (critique) = 100 <= max_model_len 100
    result = main(["--config", _write_config(tmp_path, 100), "--gpu-memory-gib", "1",
                   "--max-prompt-tokens", "30", "--critique-overhead-tokens", "10"])
    assert result["setting"] == FSDP_SETTING.__dict__  # world size 4 from trainer.devices
    assert result["num_parameters"] == TINY_PARAMETERS
    assert result["per_gpu_gib"] == round(537652032 / GIB, 2) and result["fits"] is True
    assert result["length_budget_error"] is None
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result


def test_main_reports_a_length_budget_that_does_not_fit_and_overlays_merge(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"init_args": {"batch_size": 3}}}))
    result = main(["--config", _write_config(tmp_path, 99), "--config", str(overlay), "--world-size", "2",
                   "--gpu-memory-gib", "0.001", "--max-prompt-tokens", "30", "--critique-overhead-tokens", "10"])
    assert "= 100 tokens, more than max_model_len 99" in result["length_budget_error"]
    assert result["setting"]["micro_batch"] == 3 and result["setting"]["world_size"] == 2
    assert result["setting"]["sequence_tokens"] == 99  # capped at the engine's max_model_len
    assert result["fits"] is False  # vLLM takes half of the 1 MiB, and training needs more than the rest


def test_unknown_model_is_refused_with_what_to_pass(tmp_path):
    path = tmp_path / "unknown.yaml"
    path.write_text(yaml.safe_dump({"model": {"class_path": "sorl.GCRLModule", "init_args": {"model": "/nowhere/Mystery-3B"}}}))
    with pytest.raises(ValueError, match="--model-config"):
        main(["--config", str(path)])


@pytest.mark.parametrize("configs", SHIPPED, ids=lambda c: "+".join(Path(p).stem for p in c))
def test_every_shipped_config_has_a_plan(configs, capsys):
    main([a for config in configs for a in ("--config", str(ROOT / config))])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["per_gpu_gib"] > 0 and isinstance(last["fits"], bool) and last["parts"]["parameters"] >= 0


@pytest.mark.parametrize("configs", [["configs/qwen2.5_gpu.yaml"], ["configs/qwen2.5_gpu.yaml", "configs/model/qwen2.5_7b.yaml"]])
@pytest.mark.parametrize("overlay", [[], ["configs/strategy/fsdp.yaml"]])
def test_shipped_gpu_configs_fit_80_gib_with_a_10_percent_margin(configs, overlay):
    args = [a for config in configs + overlay for a in ("--config", str(ROOT / config))]
    result = main(args + ["--world-size", "8", "--gpu-memory-gib", "80"])
    assert result["margin"] >= 0.10, result
