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
from typing import Any, Literal, NamedTuple

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


def bucket_rows(
    input_ids: torch.Tensor,  # [B, P + C]: left-padded prompts, then right-padded completions
    attention_mask: torch.Tensor,  # [B, P + C]
    completion_width: int,  # C
    is_critique: torch.Tensor,  # [B] bool
    share_prompts: bool,
    max_buckets: int,
    bucket_overhead: int = 256,
    max_units: int = 64,
) -> list[torch.Tensor]:
    """Row indices of a micro-batch split for the update's forwards: by kind (responses and
    critiques never share one), then each kind into at most ``max_buckets`` buckets of similar
    completion length, each to be run trimmed to its own longest prompt and completion, so that
    rows of 20 tokens are not padded to the 48 of the longest.

    The cut minimises the positions the forwards run (exact dynamic programming over units sorted
    by completion length, at most ``max_units`` of them: neighbours are merged beyond), charging
    ``bucket_overhead`` positions per forward for its fixed cost. A unit is a row or, with
    ``share_prompts``, the rows of one prompt (a group), which then stay in one bucket and run
    their prompt once: a bucket costs units x prompt + rows x completion; without, rows x (prompt
    + completion).
    """
    kinds = [rows.nonzero()[:, 0] for rows in (~is_critique, is_critique)]
    kinds = [index for index in kinds if len(index)]
    if max_buckets <= 1:
        return kinds
    prompt_width = input_ids.shape[1] - completion_width
    prompt_lengths = attention_mask[:, :prompt_width].sum(-1).tolist()  # [B]
    completion_lengths = attention_mask[:, prompt_width:].sum(-1).tolist()  # [B]
    buckets: list[torch.Tensor] = []
    for index in kinds:
        if share_prompts:
            prompts = torch.cat([input_ids[index, :prompt_width], attention_mask[index, :prompt_width]], dim=1)
            unit_of_row = torch.unique(prompts, dim=0, return_inverse=True)[1].tolist()
        else:
            unit_of_row = list(range(len(index)))
        members: dict[int, list[int]] = {}
        for position, unit in enumerate(unit_of_row):
            members.setdefault(unit, []).append(int(index[position]))
        units = sorted(
            (
                _Unit(rows_, 1, max(prompt_lengths[r] for r in rows_), max(completion_lengths[r] for r in rows_))
                for rows_ in members.values()
            ),
            key=lambda unit: unit.completion,
        )
        units = _merge_neighbours(units, max_units)
        for start, end in _best_cut(units, share_prompts, max_buckets, bucket_overhead):
            rows_ = sorted(r for unit in units[start:end] for r in unit.rows)
            buckets.append(torch.tensor(rows_, dtype=torch.long, device=index.device))
    return buckets


class _Unit(NamedTuple):
    """Rows that go into one bucket together (a row, or a group sharing its prompt)."""

    rows: list[int]
    prompts: int  # distinct prompts among them
    prompt: int  # longest prompt
    completion: int  # longest completion


def _merge_neighbours(units: list[_Unit], max_units: int) -> list[_Unit]:
    """At most ``max_units`` units, consecutive ones merged (equal numbers of them per merge)."""
    if len(units) <= max_units:
        return units
    merged = []
    for part in range(max_units):
        chunk = units[part * len(units) // max_units : (part + 1) * len(units) // max_units]
        merged.append(_Unit(
            [r for unit in chunk for r in unit.rows], sum(u.prompts for u in chunk),
            max(u.prompt for u in chunk), max(u.completion for u in chunk),
        ))  # fmt: skip
    return merged


def _best_cut(units: list[_Unit], share_prompts: bool, max_buckets: int, overhead: int) -> list[tuple[int, int]]:
    """The contiguous [start, end) segments of ``units`` (at most ``max_buckets``) of least cost."""
    count = len(units)
    segment_cost = [[0] * (count + 1) for _ in range(count + 1)]  # [start][end]
    for start in range(count):
        rows = prompt_rows = prompt = completion = 0
        for end in range(start + 1, count + 1):
            unit = units[end - 1]
            rows += len(unit.rows)
            prompt_rows += unit.prompts if share_prompts else len(unit.rows)
            prompt, completion = max(prompt, unit.prompt), max(completion, unit.completion)
            segment_cost[start][end] = prompt_rows * prompt + rows * completion + overhead
    # best[k][end]: least cost of units[:end] in k segments; choice[k][end]: where the last starts
    best = [[0] + [float("inf")] * count]
    choice: list[list[int]] = [[0] * (count + 1)]
    for k in range(1, min(max_buckets, count) + 1):
        row, picks = [float("inf")] * (count + 1), [0] * (count + 1)
        for end in range(1, count + 1):
            for start in range(k - 1, end):
                total = best[k - 1][start] + segment_cost[start][end]
                if total < row[end]:
                    row[end], picks[end] = total, start
        best.append(row)
        choice.append(picks)
    k = min(range(1, len(best)), key=lambda k: best[k][count])
    segments, end = [], count
    while k > 0:
        start = choice[k][end]
        segments.append((start, end))
        end, k = start, k - 1
    return segments[::-1]
