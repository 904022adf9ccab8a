"""The RolloutEngine interface: sampling completions from the current policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = False
    logprobs: bool = False  # return each sampled token's logprob under the engine (Completion.logprobs)


@dataclass
class Completion:
    token_ids: list[int]  # generated ids only; ends with EOS when finish_reason == "stop"
    text: str  # decoded without special tokens
    finish_reason: Literal["stop", "length"]
    logprobs: list[float] | None = None  # the engine's logprob of each sampled token, when asked


@runtime_checkable
class RolloutEngine(Protocol):
    #: The longest prompt + completion in tokens the engine takes; ``None``: the model's
    #: ``max_position_embeddings``. The DataModule checks its length budgets against it.
    max_model_len: int | None
    #: Whether ``generate`` runs the policy's own modules (``HFEngine``): under FSDP2 the
    #: DataModule then holds the policy's whole parameters while it samples. ``False`` for an
    #: engine with its own copy of the weights (``VLLMEngine``), which ``sync_weights`` gathers
    #: one tensor at a time instead.
    samples_policy_modules: bool

    def setup(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Called once before the first ``generate`` with the policy being trained."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        sampling: SamplingParams,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt, in prompt order; the same seed gives the same samples."""

    def sync_weights(self, policy: PreTrainedModel) -> None:
        """Make the engine sample from ``policy``'s current weights. The DataModule calls it on
        every rank before every rollout and evaluation (whether or not the rank then samples), so
        it may run collectives (gathering a sharded policy, starting an engine)."""
