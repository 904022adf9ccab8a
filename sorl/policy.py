"""Loading policies and tokenizers, and per-token logprobs of completions."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sorl.loss import sequence_logprobs_from_logits

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


def completion_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [B, P + C]: left-padded prompts, then right-padded completions
    attention_mask: torch.Tensor,  # [B, P + C]
    completion_ids: torch.Tensor,  # [B, C]: the last C columns of input_ids
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs [B, C] of the completion tokens under ``model``, and their entropy [B, C] (no grad).

    Position ids follow the attention mask, so left padding does not shift positions. Only the
    logits that predict completion tokens are materialised (``logits_to_keep``).
    """
    num_completion = completion_ids.shape[1]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=num_completion + 1,
        use_cache=False,
    ).logits[:, :-1]  # position t predicts token t + 1
    return sequence_logprobs_from_logits(logits, completion_ids, temperature)
