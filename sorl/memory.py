"""The memory model behind ``python -m sorl.plan``: per-GPU bytes of a policy's training and rollouts.

The model (all sizes per GPU, in bytes; N parameters, W ranks, S = W under FSDP and 1 otherwise,
p = bytes of the parameters' dtype (``model.init_args.dtype``), a = bytes of the compute dtype
(2 under bf16/16 precision, else p), B = ``data.batch_size``, T = the longest trained sequence,
C = the most completion positions of one kind, V vocabulary, L layers, H hidden size):

- parameters N*p/S. With ``dtype: float32`` and ``bf16-mixed`` they are the fp32 master weights;
  with ``dtype: bfloat16`` there are none (updates round in bf16).
- gradients N*p/S, in the parameters' dtype (FSDP reduce-scatters them into the shard's dtype);
  under DDP with W > 1 twice that (DDP's gradient buckets are copies by default).
- optimizer: AdamW's two states per parameter, in the parameters' dtype (torch's AdamW), 2*N*p/S.
- reference model (only when ``loss.init_args.beta > 0``): N*p/S.
- gathered parameters (FSDP): the units being computed are all-gathered in a, and their gradients
  are whole until reduce-scattered: 2 x (root unit + 2 decoder layers) x a with an
  ``auto_wrap_policy``; without one the whole model is one unit: 2*N*a. DDP with a != p keeps
  autocast's N*a copies of the weights for the backward instead.
- activations: B*T tokens per micro-batch, all rows assumed as long as a critique
  (T = prompt + critique template + response + critique, capped at the engine's max_model_len or
  the model's max_position_embeddings).
  Per token and layer a decoder layer keeps 2*(4H + aH) (two RMSNorms, fp32 inside) +
  a*(2*q_dim + 2*kv_dim) (q, k, v, attention output; flash/efficient attention, no T x T) +
  4*a*I (SwiGLU). With gradient checkpointing: the L layer inputs (B*T*H*r, r = a under FSDP,
  whose gathered weights are in a, else p: the residual stream's dtype) plus one layer's
  activations for its recomputation.
- logprobs: ~(16 + a) bytes per logit while the float32 log-softmax, its gradient and the
  entropy's temporaries live: (16 + a)*B*C*V unchunked, (16 + a)*min(chunk, B*C)*V chunked
  (``sorl.policy.completion_logprobs``, an upper bound there: its chunks reuse float32 buffers,
  (12 + a); SFT's loss is unchunked and over all T positions).
- vLLM (``VLLMEngine``, one engine per rank): with ``kv_cache_gib: null`` it takes
  ``gpu_memory_utilization`` x the GPU (weights, KV cache, its own activations); otherwise its
  weights (N x its dtype) + ``kv_cache_gib`` (its activations and CUDA graphs, ~1-2 GiB, are not
  counted). Resident all the time without sleep mode; with it (``sleep_mode`` unset on a GPU)
  only during the rollout phase.
- rollout phase: with ``HFEngine`` under FSDP every rank gathers the whole policy in p for
  sampling (N*p*(S-1)/S more than its shard), and ``HFEngine`` keeps a KV cache of
  ``max_batch_rows`` sequences. With ``VLLMEngine`` nothing is gathered for sampling; its weight
  sync streams one tensor at a time and holds about two of the largest (2 x max(V*H, I*H) in
  vLLM's dtype: vLLM keeps a fused module's parts until the last arrives, see
  ``sorl.engines.VLLMEngine``).

Total = parameters + optimizer + reference + max(training step, rollout phase) + vLLM when it
does not sleep (with sleep mode vLLM counts in the rollout phase instead). Not
counted: the CUDA context and allocator fragmentation (keep ~10% free), HYBRID_SHARD's node-local
sharding (counted as FULL_SHARD), optimizers other than Adam-like (counted as two states).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 2**30

#: Public config.json values of models the shipped configs name but this machine need not hold,
#: keyed by lower-case name without "-Instruct" (matched against the model folder's or file's name).
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, max_position_embeddings=32768,
    ),
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
    ),
}

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer (Llama/Qwen2-style: SwiGLU MLP, RMSNorm, GQA)
    that memory depends on. Biases are left out (under 0.1% of the parameters)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int
    max_position_embeddings: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Architecture:
        """From a config.json's values; missing ones take transformers' defaults for its model_type."""
        from transformers import AutoConfig

        values = dict(config)
        full = AutoConfig.for_model(values.pop("model_type"), **values).to_dict()
        heads = full["num_attention_heads"]
        return cls(
            hidden_size=full["hidden_size"],
            intermediate_size=full["intermediate_size"],
            num_hidden_layers=full["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=full.get("num_key_value_heads") or heads,
            vocab_size=full["vocab_size"],
            tie_word_embeddings=full["tie_word_embeddings"],
            head_dim=full.get("head_dim") or full["hidden_size"] // heads,
            max_position_embeddings=full["max_position_embeddings"],
        )

    @property
    def layer_parameters(self) -> int:
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h  # q, k, v, o, SwiGLU, 2 norms

    @property
    def root_parameters(self) -> int:
        """Embeddings, the output head when untied, the final norm: what no decoder layer holds."""
        embeddings = self.vocab_size * self.hidden_size
        return embeddings * (1 if self.tie_word_embeddings else 2) + self.hidden_size

    @property
    def num_parameters(self) -> int:
        return self.root_parameters + self.num_hidden_layers * self.layer_parameters

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    def activation_bytes_per_token_and_layer(self, a: int) -> int:
        h, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return 2 * (4 * h + a * h) + a * (2 * q + 2 * kv) + 4 * a * self.intermediate_size


@dataclass(frozen=True)
class Setting:
    """What a run's memory depends on, read from a config (see :func:`setting_from_config`)."""

    world_size: int
    fsdp: bool
    auto_wrap: bool  # FSDP units per decoder layer (an auto_wrap_policy); else the model is one unit
    param_bytes: int  # p
    compute_bytes: int  # a
    gradient_checkpointing: bool
    reference: bool
    training: bool  # False for a sampling-only config (critique sets)
    micro_batch: int  # B
    sequence_tokens: int  # T
    completion_tokens: int  # C
    logprob_chunk: int | None  # None: unchunked
    vllm: bool
    vllm_param_bytes: int
    gpu_memory_utilization: float
    kv_cache_gib: float | None
    hf_generation_rows: int  # HFEngine's rows per generate call (0 with vLLM or no rollouts)
    vllm_sleep: bool = False  # vLLM's memory is given back to training between rollouts
    hf_copy_bytes: int = 0  # bytes per parameter of HFEngine(dtype=...)'s sampling copy; 0: none


def plan_memory(arch: Architecture, setting: Setting, gpu_memory_gib: float) -> dict[str, int]:
    """Each part of the per-GPU estimate in bytes (see the module docstring), with the chosen
    activation and logprob variants in ``activations`` and ``logprobs`` and the others alongside."""
    n, p, a = arch.num_parameters, setting.param_bytes, setting.compute_bytes
    shards = setting.world_size if setting.fsdp else 1
    tokens = setting.micro_batch * setting.sequence_tokens
    per_layer = arch.activation_bytes_per_token_and_layer(a) * tokens
    residual = a if setting.fsdp else p
    logits = setting.micro_batch * setting.completion_tokens * arch.vocab_size
    parts = {
        "parameters": n * p // shards,
        "optimizer": 2 * n * p // shards,
        "reference": n * p // shards if setting.reference else 0,
        "gradients": n * p // shards * (2 if not setting.fsdp and setting.world_size > 1 else 1),
        "gathered_parameters": 0,
        "activations_checkpointed": arch.num_hidden_layers * tokens * arch.hidden_size * residual + per_layer,
        "activations_full": arch.num_hidden_layers * per_layer,
        "logprobs_full": (16 + a) * logits,
        "logprobs_chunked": (16 + a) * min(setting.logprob_chunk or logits, setting.micro_batch * setting.completion_tokens) * arch.vocab_size,
        "vllm_weights": 0,
        "vllm_kv_cache": 0,
        # HFEngine samples from the gathered policy; VLLMEngine's streamed sync holds ~two large tensors
        "rollout_gathered_policy": n * p * (shards - 1) // shards if not setting.vllm
        else 2 * max(arch.vocab_size, arch.intermediate_size) * arch.hidden_size * setting.vllm_param_bytes,
        "hf_kv_cache": setting.hf_generation_rows * setting.sequence_tokens * arch.kv_bytes_per_token(a),
        "hf_copy": n * setting.hf_copy_bytes,  # kept between rounds, like vLLM's weights
    }
    if setting.fsdp:
        unit = n if not setting.auto_wrap else arch.root_parameters + 2 * arch.layer_parameters
        parts["gathered_parameters"] = 2 * unit * a
    elif a != p:
        parts["gathered_parameters"] = n * a  # autocast's low-precision weight copies, kept for backward
    if setting.vllm:
        parts["vllm_weights"] = n * setting.vllm_param_bytes
        if setting.kv_cache_gib is None:
            parts["vllm_kv_cache"] = max(0, int(setting.gpu_memory_utilization * gpu_memory_gib * GIB) - parts["vllm_weights"])
        else:
            parts["vllm_kv_cache"] = int(setting.kv_cache_gib * GIB)
    if not setting.training:
        for name in ("optimizer", "reference", "gradients", "gathered_parameters", "activations_checkpointed",
                     "activations_full", "logprobs_full", "logprobs_chunked"):
            parts[name] = 0
    parts["activations"] = parts["activations_checkpointed" if setting.gradient_checkpointing else "activations_full"]
    parts["logprobs"] = parts["logprobs_full" if setting.logprob_chunk is None else "logprobs_chunked"]
    parts["training_step"] = parts["gradients"] + parts["gathered_parameters"] + parts["activations"] + parts["logprobs"]
    vllm = parts["vllm_weights"] + parts["vllm_kv_cache"]
    parts["rollout_phase"] = parts["rollout_gathered_policy"] + parts["hf_kv_cache"] + (vllm if setting.vllm_sleep else 0)
    parts["total"] = (
        parts["parameters"] + parts["optimizer"] + parts["reference"] + parts["hf_copy"] + (0 if setting.vllm_sleep else vllm)
        + max(parts["training_step"], parts["rollout_phase"])
    )
    return parts
