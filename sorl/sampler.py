"""The one path through which everything samples: rounds, evaluation, denoising, critique sets.

A :class:`Sampler` encodes prompt texts (through the chat template when used), derives the seed of
each call from one formula (:func:`derive_seed`) and calls the engine, with whole parameters when
the training strategy shards them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sorl.engines.base import Completion, RolloutEngine, SamplingParams
from sorl.engines.hf import HFEngine
from sorl.policy import DType, load_policy, load_tokenizer


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 31-bit seed for one use of randomness (``purpose``: "responses", "critique_pairs", ...) at
    ``keys`` (round, rank, ...). Every seed in sorl comes from here, so that no two uses share a
    stream by accident and a run is reproduced by its one ``seed``."""
    digest = hashlib.blake2b(repr((seed, purpose, *keys)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], chat_template: bool | None = None, system_prompt: str | None = None
) -> list[list[int]]:
    """Token ids of each prompt; as a user turn of the chat template when ``chat_template`` is
    true, or ``None`` and the tokenizer has a template. The template adds its own special tokens."""
    if chat_template is None:
        chat_template = tokenizer.chat_template is not None
    if not chat_template:
        return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if tokenizer.chat_template is None:
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    texts = [
        tokenizer.apply_chat_template(system + [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class Sampler:
    """Samples completions of prompt texts with an engine.

    Args:
        engine: the rollout engine, already set up with the policy.
        tokenizer: encodes prompts.
        chat_template, system_prompt: see :func:`encode_prompts`.
        seed: the run's seed; each call's seed is ``derive_seed(seed, purpose, *keys)``.

    Under sharded training the caller holds whole parameters around a whole round's or
    evaluation's sampling (:func:`~sorl.distributed.full_parameters`), not around each call:
    ranks sample different numbers of times.
    """

    def __init__(
        self,
        engine: RolloutEngine,
        tokenizer: Any,
        chat_template: bool | None = None,
        system_prompt: str | None = None,
        seed: int = 0,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.seed = seed

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, self.chat_template, self.system_prompt)

    def generate_ids(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams, purpose: str, *keys: int
    ) -> list[list[Completion]]:
        """``n`` completions of each tokenized prompt, seeded by ``(seed, purpose, *keys)``."""
        return self.engine.generate(prompt_ids, n, sampling, seed=derive_seed(self.seed, purpose, *keys))

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams, purpose: str, *keys: int) -> list[list[Completion]]:
        """``n`` completions of each prompt text (see :meth:`generate_ids`)."""
        return self.generate_ids(self.encode(prompts), n, sampling, purpose, *keys)


def model_sampler(
    model: str,
    engine: RolloutEngine | None = None,
    dtype: DType = "float32",
    trust_remote_code: bool = False,
    chat_template: bool | None = None,
    system_prompt: str | None = None,
    seed: int = 0,
) -> Sampler:
    """A :class:`Sampler` over a model folder (or ``.gguf`` file) loaded for sampling only, as the
    offline builders (cold-start data, critique sets) use it; ``engine`` defaults to :class:`HFEngine`."""
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    policy = load_policy(model, dtype=dtype, trust_remote_code=trust_remote_code).eval()
    engine = engine if engine is not None else HFEngine()
    engine.setup(policy, tokenizer)
    return Sampler(engine, tokenizer, chat_template, system_prompt, seed)
