"""Micro-batches by token budget, without a Trainer: within the budget, grouped by kind and length,
and the same optimizer step (loss and gradient) as row-count batching over the same samples."""

import random

import pytest
import torch

from sorl.batching import bucket_rows, length_grouped, round_batches
from sorl.engines import Completion
from sorl.loss import GRPOLoss
from sorl.rollout import Sample
from sorl.tasks import Question

QUESTION = Question("q", "1+2", "3")


def _samples(seed: int = 0, count: int = 24) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for i in range(count):
        kind = "critique" if i % 3 == 0 else "response"
        prompt = list(range(5, 5 + (rng.randint(20, 40) if kind == "critique" else rng.randint(3, 8))))
        completion = list(range(3, 3 + rng.randint(1, 30 if kind == "critique" else 10)))
        samples.append(Sample(kind, i // 4, QUESTION, prompt, Completion(completion, "", "stop"), advantage=rng.uniform(-1, 1)))
    return samples


def _batches(samples, max_tokens, accumulation):
    return round_batches(
        samples, batch_size=64, max_tokens_per_micro_batch=max_tokens, accumulation=accumulation, world=1, passes=1,
        pad_id=0, temperature=1.0, mask_truncated=False, engine_logprobs=False, reduce=lambda tensor, op: tensor,
        order_rng=random.Random(0), group_rng=random.Random(1),
    )  # fmt: skip


def test_groups_stay_within_the_budget_and_hold_one_kind():
    samples = _samples()
    groups = length_grouped(samples, max_rows=64, max_tokens=120, rng=random.Random(0))
    assert sorted(id(s) for g in groups for s in g) == sorted(id(s) for s in samples)
    for group in groups:
        width = max(len(s.prompt_ids) for s in group) + max(len(s.completion.token_ids) for s in group)
        assert len(group) == 1 or len(group) * width <= 120
        assert len({s.kind for s in group}) == 1
    assert len(groups) < len(samples)  # short responses do share micro-batches


def _step_loss_and_grad(batches, logprobs_of, accumulation):
    """The step's loss as Lightning accumulates it (each micro-batch's loss / accumulation) and its
    gradient with respect to each sample's logprobs."""
    loss_fn = GRPOLoss()
    total = 0.0
    for batch in batches:
        if batch["completion_mask"].sum() == 0:
            continue
        logprobs = logprobs_of(batch)
        loss, _ = loss_fn(logprobs, logprobs.detach() - 0.1, batch["advantages"], batch["completion_mask"], normalizer=batch["step_tokens"])
        total = total + loss / accumulation
    return total


def test_token_budget_gives_the_same_step_as_row_count_batching():
    samples = _samples(count=24)
    # one logprob per (sample, position), shared by both batchings through the completion ids' rows
    table = {id(s): torch.randn(len(s.completion.token_ids), generator=torch.Generator().manual_seed(i), requires_grad=False) for i, s in enumerate(samples)}
    params = {key: value.clone().requires_grad_(True) for key, value in table.items()}

    def logprobs_of_factory(batches_samples):
        def logprobs_of(batch):
            rows = []
            for sample in batches_samples[id(batch)]:
                values = params[id(sample)]
                rows.append(torch.nn.functional.pad(values, (0, batch["completion_ids"].shape[1] - len(values))))
            return torch.stack(rows)
        return logprobs_of

    results = []
    for max_tokens, accumulation in ((None, 1), (150, 16)):
        if max_tokens is None:
            groups = [samples]
        else:
            groups = length_grouped(samples, 64, max_tokens, random.Random(1))
        batches = _batches(samples, max_tokens, accumulation)
        # map each real micro-batch to its samples (the same grouping round_batches made)
        real = [b for b in batches if b["completion_mask"].sum() > 0]
        assert len(real) == len(groups) and len(batches) == accumulation
        loss = _step_loss_and_grad(batches, logprobs_of_factory(dict(zip(map(id, real), groups))), accumulation)
        grads = torch.autograd.grad(loss, list(params.values()))
        results.append((loss.detach(), grads))
    (loss_rows, grads_rows), (loss_tokens, grads_tokens) = results
    assert loss_tokens.item() == pytest.approx(loss_rows.item(), abs=1e-6)
    for a, b in zip(grads_rows, grads_tokens):
        torch.testing.assert_close(a, b)


def _kind_loss(samples, logprobs_of_sample, aggregation="token_mean"):
    """GRPOLoss over the samples of one kind in one batch, with its own default normalizer: the
    kind's exact token (or sequence) mean."""
    width = max(len(s.completion.token_ids) for s in samples)
    logprobs = torch.stack([torch.nn.functional.pad(logprobs_of_sample(s), (0, width - len(s.completion.token_ids))) for s in samples])
    mask = torch.stack([(torch.arange(width) < len(s.completion.token_ids)).float() for s in samples])
    advantages = torch.tensor([s.advantage for s in samples])
    return GRPOLoss(aggregation=aggregation)(logprobs, logprobs.detach() - 0.1, advantages, mask)[0]


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("max_tokens, accumulation", [(None, 1), (150, 16)])
@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 1.0])
def test_critique_share_weighs_each_kinds_own_mean(aggregation, max_tokens, accumulation, share):
    samples = _samples(count=24)

    def key(sample):  # logprobs are a function of the tokens: samples with equal ids get equal ones
        return tuple(sample.prompt_ids), tuple(sample.completion.token_ids)

    params = {key(s): torch.randn(len(s.completion.token_ids), generator=torch.Generator().manual_seed(i)) for i, s in enumerate(samples)}
    batches = round_batches(
        samples, batch_size=64, max_tokens_per_micro_batch=max_tokens, accumulation=accumulation, world=1, passes=1,
        pad_id=0, temperature=1.0, mask_truncated=False, engine_logprobs=False, reduce=lambda tensor, op: tensor,
        order_rng=random.Random(0), group_rng=random.Random(1), critique_share=share,
    )  # fmt: skip
    loss_fn, step_loss = GRPOLoss(aggregation=aggregation), torch.zeros(())
    for batch in batches:
        if batch["completion_mask"].sum() == 0:
            continue
        width = batch["completion_ids"].shape[1]
        rows = []
        for row in range(batch["input_ids"].shape[0]):
            length = int(batch["completion_mask"][row].sum())
            prompt = [t for t, m in zip(batch["input_ids"][row, :-width].tolist(), batch["attention_mask"][row, :-width].tolist()) if m]
            values = params[(tuple(prompt), tuple(batch["completion_ids"][row, :length].tolist()))]
            rows.append(torch.nn.functional.pad(values, (0, width - length)))
        logprobs = torch.stack(rows)
        normalizer = batch["step_tokens"] if aggregation == "token_mean" else batch["step_sequences"]
        loss, _ = loss_fn(logprobs, logprobs.detach() - 0.1, batch["advantages"], batch["completion_mask"], normalizer=normalizer)
        step_loss = step_loss + loss / accumulation
    responses = [s for s in samples if s.kind == "response"]
    critiques = [s for s in samples if s.kind == "critique"]
    expected = (1 - share) * _kind_loss(responses, lambda s: params[key(s)], aggregation) + share * _kind_loss(
        critiques, lambda s: params[key(s)], aggregation
    )
    assert step_loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_a_step_of_one_kind_gives_it_the_whole_weight():
    responses = [s for s in _samples(count=24) if s.kind == "response"]
    mixed = _batches(responses, None, 1)[0]
    weighted = round_batches(
        responses, batch_size=64, max_tokens_per_micro_batch=None, accumulation=1, world=1, passes=1, pad_id=0,
        temperature=1.0, mask_truncated=False, engine_logprobs=False, reduce=lambda tensor, op: tensor,
        order_rng=random.Random(0), group_rng=random.Random(1), critique_share=0.7,
    )[0]  # fmt: skip
    assert torch.equal(weighted["step_tokens"], torch.full((len(responses),), mixed["step_tokens"].item()))


def test_critique_share_is_checked():
    from sorl import RolloutDataModule
    from sorl.tasks.arithmetic import ArithmeticTask

    with pytest.raises(ValueError, match=r"critique_share must be in \[0, 1\]"):
        RolloutDataModule(ArithmeticTask(), critique_share=1.5)


def _bucket_input(prompts: list[list[int]], completion_lengths: list[int], critique: list[bool] | None = None):
    """Left-padded prompts and right-padded completions (ids 9) as a collated batch would hold them."""
    prompt_width, width = max(map(len, prompts)), max(completion_lengths)
    input_ids = torch.zeros((len(prompts), prompt_width + width), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for row, (prompt, length) in enumerate(zip(prompts, completion_lengths)):
        input_ids[row, prompt_width - len(prompt) : prompt_width] = torch.tensor(prompt)
        mask[row, prompt_width - len(prompt) : prompt_width + length] = 1
        input_ids[row, prompt_width : prompt_width + length] = 9
    is_critique = torch.tensor(critique if critique is not None else [False] * len(prompts))
    return input_ids, mask, width, is_critique


def _brute_force_cost(prompts, lengths, units, share, max_buckets, overhead):
    """Least cost over every cut of the units (sorted by longest completion) into <= max_buckets."""
    import itertools

    units = sorted(units, key=lambda rows: max(lengths[r] for r in rows))
    best = float("inf")
    for k in range(1, min(max_buckets, len(units)) + 1):
        for cuts in itertools.combinations(range(1, len(units)), k - 1):
            bounds = (0, *cuts, len(units))
            total = 0
            for start, end in zip(bounds, bounds[1:]):
                rows = [r for unit in units[start:end] for r in unit]
                prompt_rows = (end - start) if share else len(rows)
                total += prompt_rows * max(len(prompts[r]) for r in rows) + len(rows) * max(lengths[r] for r in rows) + overhead
            best = min(best, total)
    return best


def _cost(buckets, prompts, lengths, share, overhead):
    total = 0
    for bucket in buckets:
        rows = bucket.tolist()
        prompt_rows = len({tuple(prompts[r]) for r in rows}) if share else len(rows)
        total += prompt_rows * max(len(prompts[r]) for r in rows) + len(rows) * max(lengths[r] for r in rows) + overhead
    return total


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_bucket_rows_is_the_cheapest_cut(share, seed):
    """bucket_rows partitions each kind's rows into the cut of least positions (checked against
    every cut), keeping rows of one prompt together when they share it."""
    rng = random.Random(seed)
    groups = [[rng.randrange(3, 70) for _ in range(rng.randrange(1, 6))] for _ in range(rng.randrange(2, 6))]
    prompts = [group_prompt for group_prompt in groups for _ in range(3)]
    lengths = [rng.randrange(1, 40) for _ in prompts]
    input_ids, mask, width, is_critique = _bucket_input(prompts, lengths)
    buckets = bucket_rows(input_ids, mask, width, is_critique, share, max_buckets=3, bucket_overhead=10)
    assert sorted(r for b in buckets for r in b.tolist()) == list(range(len(prompts)))
    units = [[3 * g, 3 * g + 1, 3 * g + 2] for g in range(len(groups))] if share else [[r] for r in range(len(prompts))]
    if share:  # a group's rows are in one bucket
        assert all(any(set(unit) <= set(b.tolist()) for b in buckets) for unit in units)
    assert len(buckets) <= 3
    assert _cost(buckets, prompts, lengths, share, 10) == _brute_force_cost(prompts, lengths, units, share, 3, 10)


def test_bucket_rows_splits_kinds_and_short_from_long():
    prompts = [[5, 6]] * 4 + [[7] * 30] * 2
    lengths = [2, 3, 2, 40, 5, 6]
    input_ids, mask, width, is_critique = _bucket_input(prompts, lengths, [False] * 4 + [True] * 2)
    buckets = bucket_rows(input_ids, mask, width, is_critique, share_prompts=False, max_buckets=4, bucket_overhead=8)
    assert [b.tolist() for b in buckets] == [[0, 1, 2], [3], [4, 5]]
    one = bucket_rows(input_ids, mask, width, is_critique, share_prompts=False, max_buckets=1)
    assert [b.tolist() for b in one] == [[0, 1, 2, 3], [4, 5]]  # one forward per kind


def test_bucket_rows_merges_neighbours_beyond_max_units():
    """With more units than max_units, neighbours (by completion length) are merged first: still a
    partition, ordered by length, and no dearer than one forward."""
    lengths = list(range(1, 41))
    prompts = [[5, 6]] * len(lengths)
    input_ids, mask, width, is_critique = _bucket_input(prompts, lengths)
    buckets = bucket_rows(input_ids, mask, width, is_critique, share_prompts=False, max_buckets=4, bucket_overhead=0, max_units=8)
    assert sorted(r for b in buckets for r in b.tolist()) == list(range(len(lengths)))
    assert len(buckets) == 4 and all(max(a.tolist()) < min(b.tolist()) for a, b in zip(buckets, buckets[1:]))
    assert all(len(b) % 5 == 0 for b in buckets)  # whole merged units of 5 rows
    assert _cost(buckets, prompts, lengths, False, 0) < _cost([torch.arange(len(lengths))], prompts, lengths, False, 0)
