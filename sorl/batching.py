"""Collation, padding and a round's micro-batch schedule with exact step normalizers (no Lightning).

A round's samples become micro-batches of token ids; ``accumulation`` consecutive micro-batches
form one optimizer step. Each micro-batch carries the global token and sequence counts of its
step (``step_tokens``, ``step_sequences``, divided by accumulation x world size), so that a loss
summed over a micro-batch and divided by them gives the step's global mean once Lightning scales
by 1/accumulation and DDP averages over ranks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch.utils.data import IterableDataset

from sorl.engines.hf import left_pad
from sorl.rollout import Sample


def collate(
    samples: Sequence[Sample], pad_id: int, temperature: float, mask_truncated: bool, engine_logprobs: bool = False
) -> dict[str, Any]:
    """Token ids of prompts (left-padded) followed by completions (right-padded), with masks, and
    with ``engine_logprobs`` the engine's logprobs of the completion tokens.

    Training uses the generated ids as they are, never re-tokenized text.
    """
    prompt_ids, prompt_mask = left_pad([s.prompt_ids for s in samples], pad_id)
    width = max(1, max(len(s.completion.token_ids) for s in samples))
    completion_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(samples), width), dtype=torch.float32)
    for row, sample in enumerate(samples):
        tokens = sample.completion.token_ids
        completion_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        keep = not (mask_truncated and sample.completion.finish_reason == "length")
        completion_mask[row, : len(tokens)] = float(keep)
    lengths = torch.tensor([len(s.completion.token_ids) for s in samples])
    batch = {
        "input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
        "attention_mask": torch.cat([prompt_mask, (torch.arange(width)[None, :] < lengths[:, None]).long()], dim=1),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        "is_critique": torch.tensor([s.kind == "critique" for s in samples]),
        "temperature": temperature,
    }
    if engine_logprobs:
        batch["engine_logprobs"] = torch.zeros((len(samples), width), dtype=torch.float32)
        for row, sample in enumerate(samples):
            if sample.completion.logprobs is None:
                raise ValueError("importance sampling needs logprobs from the engine, which returned none")
            values = sample.completion.logprobs
            batch["engine_logprobs"][row, : len(values)] = torch.tensor(values, dtype=torch.float32)
    return batch


def empty_batch(pad_id: int, temperature: float, engine_logprobs: bool = False) -> dict[str, Any]:
    """A batch that contributes nothing to the loss, to even out ranks' step counts."""
    ids = torch.full((1, 2), pad_id, dtype=torch.long)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "completion_ids": ids[:, 1:],
        "completion_mask": torch.zeros((1, 1)),
        "advantages": torch.zeros(1),
        "is_critique": torch.zeros(1, dtype=torch.bool),
        "temperature": temperature,
    }
    if engine_logprobs:
        batch["engine_logprobs"] = torch.zeros((1, 1))
    return batch


def step_counts(batches: Sequence[dict[str, Any]], accumulation: int) -> torch.Tensor:
    """[steps, 2, 2]: per optimizer step and kind (responses, critiques), the completion tokens
    and the sequences with at least one token."""
    if len(batches) % accumulation:
        raise ValueError(f"{len(batches)} micro-batches do not make whole steps of {accumulation}")
    counts = torch.zeros((len(batches), 2, 2), dtype=torch.float64)
    for index, batch in enumerate(batches):
        tokens = batch["completion_mask"].sum(-1).double()  # [B]
        for kind, rows in enumerate((~batch["is_critique"], batch["is_critique"])):
            counts[index, kind, 0] = tokens[rows].sum()
            counts[index, kind, 1] = (tokens[rows] > 0).sum()
    return counts.view(-1, accumulation, 2, 2).sum(1)


def set_step_normalizers(
    batches: Sequence[dict[str, Any]], global_counts: torch.Tensor, accumulation: int, world: int,
    critique_share: float | None = None,
) -> None:
    """Gives each micro-batch its step's ``step_tokens`` and ``step_sequences``.

    ``global_counts`` is :func:`step_counts` summed over ranks ([steps, 2, 2]). With
    ``critique_share`` None they are scalars, the counts of both kinds together: one mean over
    every response and critique token of the step. With a share ``s`` they are per row ([B]), the
    count of the row's own kind divided by its weight (``1 - s`` for responses, ``s`` for
    critiques), so that the step's loss is ``(1 - s) * response mean + s * critique mean``; a step
    holding one kind only gives it the whole weight.
    """
    per_micro_batch = global_counts / (accumulation * world)  # [steps, kind, (tokens, sequences)]
    if critique_share is None:
        totals = per_micro_batch.sum(1).float()  # [steps, 2]
        for index, batch in enumerate(batches):
            batch["step_tokens"] = totals[index // accumulation, 0].clamp(min=1e-8)
            batch["step_sequences"] = totals[index // accumulation, 1].clamp(min=1e-8)
        return
    share = torch.tensor([1.0 - critique_share, critique_share], dtype=torch.float64)[None, :, None]  # [1, kind, 1]
    present = per_micro_batch > 0
    weights = torch.where(present.all(1, keepdim=True), share, present.double())  # [steps, kind, 2]
    # a kind of weight 0 gets an infinite normalizer: its rows count 0 (the empty batch's rows too)
    normalizers = (per_micro_batch / weights).float()
    for index, batch in enumerate(batches):
        kinds = batch["is_critique"].long()  # [B]
        step = normalizers[index // accumulation]  # [kind, 2]
        batch["step_tokens"] = step[kinds, 0].clamp(min=1e-8)
        batch["step_sequences"] = step[kinds, 1].clamp(min=1e-8)


def schedule(batches: list[dict[str, Any]], accumulation: int, passes: int, rng: random.Random) -> list[dict[str, Any]]:
    """The round's training order: the micro-batches in order, then ``passes - 1`` more passes with
    the order of whole optimizer steps shuffled by ``rng``.

    ``rng`` must be seeded identically on every rank: each rank's micro-batch carries its own
    step's normalizer, so ranks must train the same step at the same time, or the token weights
    of a combined step no longer sum to one.

    Every micro-batch trained after the round's first optimizer step is marked ``off_policy``:
    the policy has changed since it was sampled, so the loss needs the sampling policy's
    logprobs (``old_logprobs``) for its importance ratio. The first step's micro-batches, trained
    once, are on-policy (ratio exactly 1).
    """
    steps = [batches[s : s + accumulation] for s in range(0, len(batches), accumulation)]
    order = list(batches)
    for _ in range(passes - 1):
        rng.shuffle(steps)
        order += [batch for step in steps for batch in step]
    for batch in batches:
        batch["off_policy"] = False
    for batch in order[accumulation:]:  # the same dict objects: a later pass marks its first one too
        batch["off_policy"] = True
    return order


Reduce = Callable[[torch.Tensor, Literal["sum", "max"]], torch.Tensor]  # over ranks


def length_grouped(samples: Sequence[Sample], max_rows: int, max_tokens: int, rng: random.Random) -> list[list[Sample]]:
    """Micro-batches of at most ``max_rows`` samples whose padded size (rows x (longest prompt +
    longest completion)) stays within ``max_tokens``; a longer sample goes alone. Samples are
    grouped by kind and length, so that one long critique does not set the padding of many short
    responses; the groups are then shuffled by ``rng`` so optimizer steps still mix them."""
    ordered = sorted(samples, key=lambda s: (s.kind, len(s.prompt_ids), len(s.completion.token_ids)))
    groups: list[list[Sample]] = []
    current: list[Sample] = []
    prompt_width = completion_width = 0
    for sample in ordered:
        prompt = max(prompt_width, len(sample.prompt_ids))
        completion = max(completion_width, len(sample.completion.token_ids))
        fits = len(current) < max_rows and (len(current) + 1) * (prompt + completion) <= max_tokens
        if current and (not fits or sample.kind != current[-1].kind):
            groups.append(current)
            current, prompt, completion = [], len(sample.prompt_ids), len(sample.completion.token_ids)
        current.append(sample)
        prompt_width, completion_width = prompt, completion
    if current:
        groups.append(current)
    rng.shuffle(groups)
    return groups


def round_batches(
    samples: Sequence[Sample],
    *,
    batch_size: int,
    max_tokens_per_micro_batch: int | None,
    accumulation: int,
    world: int,
    passes: int,
    pad_id: int,
    temperature: float,
    mask_truncated: bool,
    engine_logprobs: bool,
    reduce: Reduce,
    order_rng: random.Random,
    group_rng: random.Random,
    critique_share: float | None = None,
) -> list[dict[str, Any]]:
    """This rank's micro-batches of ``samples`` (already in training order) for the whole round:
    ``batch_size`` samples each (each optimizer step's ``batch_size x accumulation`` samples
    sorted by group first), or with ``max_tokens_per_micro_batch`` grouped by length within that
    many padded tokens (:func:`length_grouped`, shuffled by ``group_rng``).

    Every rank gets the same number of whole optimizer steps, padded with empty micro-batches, or
    DDP waits forever; ``reduce`` combines the ranks' counts (max of steps, sum of tokens).
    ``critique_share`` weighs the kinds (see :func:`set_step_normalizers`).
    """
    if max_tokens_per_micro_batch is None:
        # Within each optimizer step's samples, a group's samples go together (sorted by group):
        # the step trains the same samples, and its micro-batches hold whole groups, whose shared
        # prompt the update runs once (GCRLModule(share_prompts=True)).
        step = batch_size * accumulation
        samples = [s for start in range(0, len(samples), step) for s in sorted(samples[start : start + step], key=lambda s: s.group)]
        groups = [list(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]
    else:
        groups = length_grouped(samples, batch_size, max_tokens_per_micro_batch, group_rng)
    batches = [collate(group, pad_id, temperature, mask_truncated, engine_logprobs) for group in groups]
    steps = max(1, int(reduce(torch.tensor(float(-(-len(batches) // accumulation))), "max").item()))
    batches += [empty_batch(pad_id, temperature, engine_logprobs) for _ in range(steps * accumulation - len(batches))]
    set_step_normalizers(batches, reduce(step_counts(batches, accumulation), "sum"), accumulation, world, critique_share)
    return schedule(batches, accumulation, passes, order_rng)


class RoundBatches(IterableDataset):
    """A round's pre-built micro-batches. Iterable so Lightning adds no distributed sampler:
    each rank already holds its own shard."""

    def __init__(self, batches: list[dict[str, Any]], skipped: int = 0) -> None:
        self.batches = batches
        self.skipped = skipped  # batches of this round trained before a resume: counted, not yielded

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        # The round's full length: Lightning's restored batch position counts the skipped ones.
        return self.skipped + len(self.batches)


class SampledOnIteration(IterableDataset):
    """Items made by ``make()`` each time the dataset is iterated (evaluation: sampled with the
    policy as it is then, not as it was when Lightning built the dataloader)."""

    def __init__(self, make: Callable[[], list[dict[str, Any]]], length: int) -> None:
        self.make = make
        self.length = length

    def __iter__(self) -> Iterator[dict[str, Any]]:
        items = self.make()
        if len(items) != self.length:
            raise RuntimeError(f"expected {self.length} items, made {len(items)}")
        return iter(items)

    def __len__(self) -> int:
        return self.length
