"""Loading policies and tokenizers, and per-token logprobs of completions."""

from __future__ import annotations

import inspect
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from sorl.loss import chunked_logprobs_from_hidden, sequence_logprobs_from_logits

#: The small cold-started arithmetic policy shipped inside the package (see configs/cold_start.yaml).
EMBEDDED_POLICY = str(files("sorl") / "assets" / "arithmetic-policy")

DType = Literal["float32", "bfloat16", "float16"]


def load_policy(
    path: str | None = None,
    config: dict[str, Any] | None = None,
    dtype: DType = "float32",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM from a local folder or a ``.gguf`` file (de-quantized to ``dtype``; needs the
    ``gguf`` package), or built fresh from a config dict (``model_type`` required)."""
    torch_dtype = getattr(torch, dtype)
    if config is not None:
        config = dict(config)
        model_config = AutoConfig.for_model(config.pop("model_type"), **config)
        return AutoModelForCausalLM.from_config(model_config, dtype=torch_dtype)
    folder, gguf_file = _local_source(path or EMBEDDED_POLICY)
    return AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=True
    )


def load_tokenizer(path: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a local folder or ``.gguf`` file; a missing pad token becomes EOS."""
    folder, gguf_file = _local_source(path or EMBEDDED_POLICY)
    tokenizer = AutoTokenizer.from_pretrained(
        folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _local_source(path: str) -> tuple[str, str | None]:
    """(folder, gguf file name) for a ``.gguf`` file, (folder, None) for a folder.

    sorl never downloads at run time, so anything else is an error that names the path (rather
    than transformers' "Repo id must be in the form ..." for a path it took for a hub name).
    """
    if path.endswith(".gguf"):
        gguf = Path(path)
        if not gguf.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return str(gguf.parent), gguf.name
    if not Path(path).is_dir():
        problem = "is a file, not a folder or a .gguf file" if Path(path).exists() else "does not exist"
        raise FileNotFoundError(
            f"model folder {path} {problem}: sorl loads models and tokenizers only from a local folder "
            "(with config.json) or a .gguf file, and never downloads from a hub; fix the path, or "
            "download the model first (e.g. `hf download NAME --local-dir DIR`) and pass DIR"
        )
    return path, None


#: Config keys of architectures that transform the logits after the output projection (Gemma 2/3
#: soft-capping, Cohere and Granite scaling). The chunked path computes ``lm_head(hidden)`` only, so
#: it refuses these rather than return wrong logprobs; ``chunk_size=None`` runs the model's own head.
LOGIT_POSTPROCESSING_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "logits_mup_width_multiplier")

#: Default token positions per chunk of the output projection (see ``completion_logprobs``).
LOGPROB_CHUNK_SIZE = 1024


def completion_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [B, P + C]: left-padded prompts, then right-padded completions
    attention_mask: torch.Tensor,  # [B, P + C]
    completion_ids: torch.Tensor,  # [B, C]: the last C columns of input_ids
    temperature: float = 1.0,
    chunk_size: int | None = LOGPROB_CHUNK_SIZE,
    share_prompts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs [B, C] of the completion tokens under ``model``, and their entropy [B, C] (no grad).

    Position ids follow the attention mask, so left padding does not shift positions.

    With ``chunk_size`` (default 1024 token positions) the decoder (``model.get_decoder()``) gives
    the final hidden states and the output projection, float32 log-softmax and entropy run a chunk
    of positions at a time, recomputed in the backward
    (:func:`~sorl.loss.chunked_logprobs_from_hidden`): nothing of size B*C*V is kept for backward
    (for Qwen2.5-7B's V = 152,064 at 4 x 3,072 completion tokens the unchunked path keeps a 7.5 GB
    float32 log-softmax and peaks near 30 GB; 1024-token chunks peak near 2.8 GB). 1024: on CPU
    the chunk size (256 to 2048) did not change the time, and the transient peak grows with it.
    This needs
    a plain ``nn.Linear`` head and no logit post-processing (:data:`LOGIT_POSTPROCESSING_KEYS`).
    ``chunk_size=None`` calls the model itself with
    ``logits_to_keep`` (its [B, C, V] logits and float32 log-softmax are kept for backward).

    ``share_prompts`` (chunked path only): rows with the same prompt (the k responses of a
    question, the m critiques of a pair) share one forward of it: the distinct prompts run once
    with a KV cache, which is indexed out to their rows (its gradient sums back over them), and
    the completions run on top of it. The same logprobs up to rounding, for fewer positions. Not
    with gradient checkpointing (transformers then drops the cache) nor under FSDP2 (every rank must
    run the same forwards, and whether rows share a prompt is data).
    """
    num_completion = completion_ids.shape[1]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if chunk_size is None:
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=num_completion + 1,
            use_cache=False,
        ).logits[:, :-1]  # position t predicts token t + 1
        return sequence_logprobs_from_logits(logits, completion_ids, temperature)
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"chunked logprobs need an nn.Linear output head, {type(model).__name__} has {type(head).__name__}; "
            "pass chunk_size=None"
        )
    config = model.config.to_dict()
    postprocessing = {key: config[key] for key in LOGIT_POSTPROCESSING_KEYS if config.get(key) not in (None, 1, 1.0)}
    if postprocessing:
        raise ValueError(
            f"{type(model).__name__} transforms its logits after the head ({postprocessing}), which chunked "
            "logprobs do not reproduce; pass chunk_size=None"
        )
    hidden = _shared_prompt_hidden(model, input_ids, attention_mask, position_ids, num_completion) if share_prompts else None
    if hidden is None:
        hidden = _decoder_output(model, input_ids, attention_mask, position_ids)  # [B, P + C, H]
        hidden = hidden[:, -(num_completion + 1) : -1]  # [B, C, H]: position t predicts token t + 1
    return chunked_logprobs_from_hidden(hidden, head.weight, head.bias, completion_ids, temperature, chunk_size)


def _shared_prompt_hidden(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [B, P + C]
    attention_mask: torch.Tensor,  # [B, P + C]
    position_ids: torch.Tensor,  # [B, P + C]
    num_completion: int,
) -> torch.Tensor | None:
    """The hidden states [B, C, H] that predict the completion tokens, each distinct prompt run
    once (see ``share_prompts`` in :func:`completion_logprobs`); None when no two rows share one."""
    prompt_width = input_ids.shape[1] - num_completion
    prompts = torch.cat([input_ids[:, :prompt_width], attention_mask[:, :prompt_width]], dim=1)  # [B, 2P]
    distinct, row_prompt = torch.unique(prompts, dim=0, return_inverse=True)  # [U, 2P], [B]
    if len(distinct) == len(prompts):
        return None
    rows = torch.arange(len(prompts), device=input_ids.device)
    first = torch.full((len(distinct),), len(prompts), device=input_ids.device).scatter_reduce(0, row_prompt, rows, "amin")  # [U]
    cache = DynamicCache(config=model.config)
    prompt_hidden = _decoder_output(
        model, input_ids[first, :prompt_width], attention_mask[first, :prompt_width], position_ids[first, :prompt_width], cache
    )  # [U, P, H]
    cache.batch_select_indices(row_prompt)  # [U, ...] -> [B, ...]: the gradient sums back over a prompt's rows
    completion_hidden = _decoder_output(
        model, input_ids[:, prompt_width:], attention_mask, position_ids[:, prompt_width:], cache
    )  # [B, C, H]
    # the prompt's last position predicts the first completion token
    return torch.cat([prompt_hidden[row_prompt, -1:], completion_hidden[:, :-1]], dim=1)


def cache_argument(model: PreTrainedModel) -> str:
    """The name of a model's KV cache argument (forward and ``generate``): transformers 5.2x renamed
    ``past_key_values`` to ``cache`` (the old name is deprecated there)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decoder_output(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor,  # [B, cached + L]
    position_ids: torch.Tensor,  # [B, L]
    cache: DynamicCache | None = None,  # holds the first ``cached`` positions; grown by these
) -> torch.Tensor:
    """The decoder's last hidden states [B, L, H] (after the final norm); without ``cache``, no
    cache is built.

    Through the model's own forward (its head on one position only), not its decoder module:
    FSDP2 gathers the root's parameters (embeddings, final norm, head) in the root's forward
    hooks and reduces their gradients only for a forward that ran through them. The hidden state
    is caught by a hook on the decoder: asking the model for hidden states would keep every
    layer's, and selecting one is not in every transformers.
    """
    caught: list[torch.Tensor] = []
    hook = model.get_decoder().register_forward_hook(lambda module, args, output: caught.append(output[0]))
    cached = {cache_argument(model): cache} if cache is not None else {}
    try:
        model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=cache is not None, logits_to_keep=1, **cached,
        )  # fmt: skip
    finally:
        hook.remove()
    return caught[0]
