"""Rollouts with transformers ``generate``, sharing the policy's modules with training."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import copy

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from sorl.engines.base import Completion, SamplingParams
from sorl.policy import DType, cache_argument


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, both [B, max_len]."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def cut_at_eos(token_ids: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first EOS, and whether one was found."""
    for index, token in enumerate(token_ids):
        if token in eos_ids:
            return token_ids[: index + 1], True
    return token_ids, False


class HFEngine:
    """Batched sampling with ``model.generate`` (left padding, KV cache).

    By default it samples from the very modules being trained, so ``sync_weights`` has nothing to do.
    ``max_model_len`` (default: the model's ``max_position_embeddings``) is the length the
    DataModule's length budgets are checked against. Top-k is off so that the sampling distribution is the one the loss differentiates. For the same
    reason the model folder's ``generation_config.json`` (a repetition penalty, top-k, min-p, ...)
    is ignored: only ``SamplingParams`` and the model's EOS ids shape what is sampled (see
    :func:`_library_defaults`).

    ``dtype`` (e.g. ``bfloat16`` for float32 master weights) samples from a copy of the policy's
    parameters in that dtype, refreshed by each ``sync_weights`` (once per round), instead of the
    trained modules. The copy costs ``2 x parameters`` bytes in bfloat16; on 2 CPU cores it sampled
    1.11x (the embedded policy) and 1.02-1.08x (SmolLM2-135M) the float32 tokens per second, side
    by side (SmolLM2 loaded in bfloat16 from disk: 1.20x; autocast over float32 weights: 0.89x and
    1.15x). Buffers (rotary frequencies) stay as they are. Not under FSDP2: there use VLLMEngine.

    ``share_prompts`` (default on) runs each prompt's prefill once and copies its KV cache to its
    ``n`` samples, instead of letting ``generate`` repeat the prompt ``n`` times: the k responses of
    a question and, above all, the m critiques of a pair (whose prompts embed a whole response)
    then cost one prompt each. What is sampled is the same up to float rounding (the prefill runs
    at another batch size).
    """

    samples_policy_modules = True  # generate runs the trained modules themselves (or a copy of them)

    def __init__(
        self, max_batch_rows: int = 512, max_model_len: int | None = None, dtype: DType | None = None, share_prompts: bool = True
    ) -> None:
        self.max_batch_rows = max_batch_rows  # prompts x samples per generate call, bounds memory
        self.share_prompts = share_prompts
        # transformers sets no limit itself; past the model's positions its outputs degrade
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.policy: PreTrainedModel | None = None  # what generate runs: the policy, or its copy in dtype
        self.tokenizer: PreTrainedTokenizerBase | None = None

    def setup(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.policy = None
        self.sync_weights(policy)

    def sync_weights(self, policy: PreTrainedModel) -> None:
        dtype = getattr(torch, self.dtype) if self.dtype is not None else None
        if dtype is None or all(p.dtype == dtype for p in policy.parameters()):
            self.policy = policy
            return
        if isinstance(policy, FSDPModule):
            raise ValueError(
                f"HFEngine(dtype={self.dtype!r}) copies the whole policy, which FSDP2 shards: sample a sharded "
                "policy with VLLMEngine (configs/engine/vllm.yaml), or leave dtype unset"
            )
        with torch.no_grad():
            if self.policy is None or self.policy is policy:
                self.policy = copy.deepcopy(policy).requires_grad_(False)
                for param in self.policy.parameters():  # tied weights are one parameter: cast once
                    param.data = param.data.to(dtype)
            for mine, theirs in zip(self.policy.parameters(), policy.parameters(), strict=True):
                mine.copy_(theirs)

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams, seed: int | None = None
    ) -> list[list[Completion]]:
        if self.policy is None or self.tokenizer is None:
            raise RuntimeError("HFEngine.setup(policy, tokenizer) must be called before generate")
        policy, tokenizer = self.policy, self.tokenizer
        eos_ids = {tokenizer.eos_token_id, *_as_list(policy.generation_config.eos_token_id)} - {None}
        share = self.share_prompts and n > 1
        config = GenerationConfig(
            do_sample=not sampling.greedy,
            temperature=sampling.temperature if not sampling.greedy else None,
            top_p=sampling.top_p if not sampling.greedy else None,
            top_k=0 if not sampling.greedy else None,
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=1 if share else n,  # shared: the prompts come repeated
            eos_token_id=sorted(eos_ids),
            pad_token_id=tokenizer.pad_token_id,
            # the processed scores (after temperature and top-p) give the sampled tokens' logprobs
            output_scores=sampling.logprobs,
            return_dict_in_generate=True,
        )
        was_training = policy.training
        policy.eval()
        devices = [policy.device] if policy.device.type == "cuda" else []
        results: list[list[Completion]] = []
        prompts_per_call = max(1, self.max_batch_rows // n)
        try:
            with torch.random.fork_rng(devices=devices), _library_defaults(policy):
                if seed is not None:
                    torch.manual_seed(seed)
                for start in range(0, len(prompt_ids), prompts_per_call):
                    chunk = prompt_ids[start : start + prompts_per_call]
                    ids, mask = left_pad(chunk, tokenizer.pad_token_id)
                    ids, mask = ids.to(policy.device), mask.to(policy.device)
                    call = {}
                    if share:
                        if ids.shape[1] > 1:  # all but the last prompt token once per prompt; generate runs the rest
                            call[cache_argument(policy)] = _prefill(policy, ids[:, :-1], mask[:, :-1], n)
                        ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
                    out = policy.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        generation_config=config,
                        **call,
                        # transformers turns this on for a module torch's fully_shard manages: every
                        # decode step then all-reduces "finished?" over all ranks, which hangs as soon
                        # as ranks make different numbers of calls (an empty evaluation shard, a rank
                        # without critique pairs). The caller holds whole parameters (see
                        # sorl.distributed.full_parameters), so no step needs another rank.
                        synced_gpus=False,
                    )
                    generated = out.sequences[:, ids.shape[1] :]  # [rows, T]
                    new_tokens = generated.tolist()
                    token_logprobs = None
                    if sampling.logprobs:
                        scores = torch.stack(out.scores, dim=1).float().log_softmax(-1)  # [rows, T, V]
                        token_logprobs = scores.gather(-1, generated[:, :, None]).squeeze(-1).tolist()
                    for p in range(len(chunk)):
                        group = []
                        for r in range(p * n, (p + 1) * n):
                            tokens, stopped = cut_at_eos(new_tokens[r], eos_ids)
                            text = tokenizer.decode(tokens, skip_special_tokens=True)
                            logprobs = token_logprobs[r][: len(tokens)] if token_logprobs is not None else None
                            group.append(Completion(tokens, text, "stop" if stopped else "length", logprobs))
                        results.append(group)
        finally:
            policy.train(was_training)
        return results


def _prefill(policy: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, n: int) -> DynamicCache:
    """The KV cache of left-padded ``ids`` [P, L], each prompt's rows repeated ``n`` times
    (``[P * n, ...]``, in ``generate``'s order for ``num_return_sequences``). Positions are counted
    from each row's first real token, as ``generate`` counts them."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=policy.config)
    policy(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **{cache_argument(policy): cache})
    cache.batch_repeat_interleave(n)
    return cache


@contextmanager
def _library_defaults(policy: PreTrainedModel) -> Iterator[None]:
    """Within the block, ``policy.generation_config`` is a blank ``GenerationConfig``; restored after.

    ``generate`` fills every setting its ``generation_config`` argument leaves unset with the
    model's own (Qwen2.5 ships temperature 0.7, top_p 0.8, repetition_penalty 1.05), and some of
    them (min_p, top_h, watermarking) have no explicit "off" value to pass instead. Swapping the
    model's config for the call leaves only transformers' neutral library defaults, so the engine
    samples the distribution the trainer scores. The user's config object is put back unchanged.
    """
    saved = policy.generation_config
    policy.generation_config = GenerationConfig()
    try:
        yield
    finally:
        policy.generation_config = saved


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
