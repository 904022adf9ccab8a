"""The DataModule's batch schedule: step normalizers, equal step counts, multiple passes."""

import threading
from types import SimpleNamespace

import pytest
import torch

from sorl.data import RolloutDataModule
from sorl.evaluation import balanced_head
from sorl.rollout import Round, Sample, assign_advantages
from sorl.engines import Completion
from sorl.loss import GRPOLoss
from sorl.tasks import ArithmeticTask, CritiqueExample, Question

QUESTION = Question("q", "1+2", "3")


def _datamodule(accumulation: int, batch_size: int, passes: int = 1, mode: str = "gc_rl") -> RolloutDataModule:
    datamodule = RolloutDataModule(ArithmeticTask(num_eval=4), mode=mode, batch_size=batch_size, passes_per_round=passes)
    datamodule.trainer = SimpleNamespace(accumulate_grad_batches=accumulation, world_size=1, global_rank=0)
    return datamodule


def _round(lengths: list[int], kind: str = "response") -> Round:
    round_ = Round(0, [QUESTION])
    samples = [
        Sample(kind, i // 2, QUESTION, [5, 6], Completion(list(range(3, 3 + n)), "", "stop"), advantage=float(i % 3 - 1))
        for i, n in enumerate(lengths)
    ]
    if kind == "response":
        round_.responses = samples
    else:
        round_.critiques = samples
    return round_


def test_step_normalizer_makes_token_mean_independent_of_accumulation():
    lengths = [1, 3, 2, 5, 4, 1, 2, 3]
    total_tokens = sum(lengths)
    # 4 micro-batches of 2 samples, 2 per optimizer step -> 2 steps
    batches = _datamodule(accumulation=2, batch_size=2).make_batches(_round(lengths), pad_id=0)
    assert len(batches) == 4
    step_tokens = [b["completion_mask"].sum().item() for b in batches]
    for step in range(2):
        expected = (step_tokens[2 * step] + step_tokens[2 * step + 1]) / 2  # / (accumulation * world)
        for batch in batches[2 * step : 2 * step + 2]:
            assert batch["step_tokens"].item() == expected
    assert sum(step_tokens) == total_tokens
    # Lightning scales each micro-batch loss by 1/accumulation: the step's loss is the global token mean.
    loss_fn = GRPOLoss()
    torch.manual_seed(0)
    per_token = {}
    step_loss = 0.0
    for batch in batches[:2]:
        logprobs = torch.randn(batch["completion_mask"].shape)
        per_token[id(batch)] = logprobs
        loss, _ = loss_fn(logprobs, logprobs - 0.1, batch["advantages"], batch["completion_mask"], normalizer=batch["step_tokens"])
        step_loss += loss.item() / 2
    # the same tokens in one batch, normalised by their own count
    mask = torch.cat([torch.nn.functional.pad(b["completion_mask"], (0, 5 - b["completion_mask"].shape[1])) for b in batches[:2]])
    logprobs = torch.cat([torch.nn.functional.pad(per_token[id(b)], (0, 5 - b["completion_mask"].shape[1])) for b in batches[:2]])
    advantages = torch.cat([b["advantages"] for b in batches[:2]])
    full, _ = loss_fn(logprobs, logprobs - 0.1, advantages, mask)
    assert abs(full.item() - step_loss) < 1e-6


def test_batches_padded_to_whole_steps_and_modes_select_samples():
    round_ = _round([2, 2, 2])
    round_.critiques = _round([3, 3], "critique").critiques
    gc = _datamodule(accumulation=4, batch_size=2).make_batches(round_, pad_id=0)
    assert len(gc) == 4  # 3 real micro-batches padded to one whole step of 4
    assert gc[-1]["completion_mask"].sum() == 0
    assert sum(b["is_critique"].sum().item() for b in gc) == 2
    g = _datamodule(accumulation=4, batch_size=2, mode="g_rl").make_batches(round_, pad_id=0)
    assert sum(b["is_critique"].sum().item() for b in g) == 0
    c = _datamodule(accumulation=4, batch_size=2, mode="c_rl").make_batches(round_, pad_id=0)
    assert sum(len(b["advantages"]) for b in c if b["completion_mask"].sum() > 0) == 2


def test_batches_after_the_first_step_are_off_policy():
    # 4 micro-batches of 2, 2 per step: the second step's batches were sampled before the first update
    one_pass = _datamodule(accumulation=2, batch_size=2, mode="g_rl").make_batches(_round([2, 3, 1, 4, 2, 2, 1, 1]), pad_id=0)
    assert [b["off_policy"] for b in one_pass] == [False, False, True, True]
    # with 3 passes every micro-batch is trained again later: all need the sampling policy's logprobs
    passes = _datamodule(accumulation=1, batch_size=2, passes=3, mode="g_rl").make_batches(_round([2, 3, 1, 4]), pad_id=0)
    assert len(passes) == 6 and len({id(b) for b in passes}) == 2
    assert all(b["off_policy"] for b in passes)


def test_drop_zero_std_groups_drops_whole_groups_not_zero_advantages():
    datamodule = _datamodule(accumulation=1, batch_size=8, mode="g_rl")
    datamodule.drop_zero_std_groups = True
    round_ = _round([2, 2, 2, 2, 2, 2])  # groups 0, 1, 2 of two samples each
    round_.zero_std_groups = {1}
    round_.responses[0].advantage = 0.0  # the middle sample of a group with a spread (rewards 1, 0.5, 0)
    batches = datamodule.make_batches(round_, pad_id=0)
    assert sum(len(b["advantages"]) for b in batches) == 4
    assert 0.0 in batches[0]["advantages"].tolist()


def test_advantage_phase_records_zero_std_groups():
    round_ = _round([2, 2, 2])
    group = [Sample("critique", 7, QUESTION, [5], Completion([3], "", "stop"), reward=r) for r in (1.0, 0.5, 0.0)]
    round_.critiques = group
    assign_advantages(round_, scale_by_std=True)
    assert 7 not in round_.zero_std_groups and group[1].advantage == 0.0


def test_later_passes_shuffle_steps_alike_on_every_rank():
    """Two simulated ranks with different step token counts: in every optimizer step of every pass,
    the token weights 1 / step_tokens / (accumulation x world) over both ranks' micro-batches sum to 1."""
    accumulation, world = 2, 2
    rounds = [_round([1, 3, 2, 5, 4, 1, 2, 3] * 2), _round([6, 1, 1, 2, 7, 3, 2, 2, 1, 1, 9, 4, 2, 5, 3, 8])]
    barrier, shared = threading.Barrier(world), [None] * world
    schedules = [None] * world

    def run(rank: int) -> None:
        datamodule = RolloutDataModule(ArithmeticTask(num_eval=4), mode="g_rl", batch_size=2, passes_per_round=4, seed=3)
        datamodule.trainer = SimpleNamespace(accumulate_grad_batches=accumulation, world_size=world, global_rank=rank)

        def reduce(tensor, op):  # an all-reduce over the two threads
            shared[rank] = tensor
            barrier.wait()
            result = torch.stack(shared).amax(0) if op == "max" else torch.stack(shared).sum(0)
            barrier.wait()
            return result

        datamodule._reduce = reduce
        schedules[rank] = datamodule.make_batches(rounds[rank], pad_id=0)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(schedules[0]) == len(schedules[1]) == 8 * 4  # 8 micro-batches (4 steps), 4 passes
    for start in range(0, len(schedules[0]), accumulation):
        weight = sum(
            (b["completion_mask"].sum() / b["step_tokens"]).item() / (accumulation * world)
            for schedule in schedules
            for b in schedule[start : start + accumulation]
        )
        assert weight == pytest.approx(1.0), f"micro-batches {start}..{start + accumulation - 1}"


def test_balanced_head_keeps_the_critique_set_balanced():
    examples = [CritiqueExample(QUESTION, str(i), i % 2 == 0) for i in range(10)]
    kept = balanced_head(examples, 5)
    assert [e.response for e in kept] == ["0", "1", "2", "3"]
    assert balanced_head(examples, None) == examples


def test_ranks_get_disjoint_shards_of_each_round():
    task = ArithmeticTask(num_train=50, num_eval=4)
    seen_by_round = []
    for round_index in range(3):
        shards = []
        for rank in range(2):
            datamodule = RolloutDataModule(task, questions_per_round=8)
            datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)
            datamodule.round_index = round_index
            shards.append([q.id for q in datamodule.round_questions()])
        assert len(set(shards[0])) == 8 and not set(shards[0]) & set(shards[1])
        seen_by_round.append(set(shards[0]) | set(shards[1]))
    # 50 questions, 16 per round: the first three rounds use 48 distinct questions
    assert len(set().union(*seen_by_round)) == 48



def test_micro_batches_of_a_step_hold_whole_groups():
    """Each optimizer step trains the samples of its place in the shuffled order, but its
    micro-batches take them group by group, so that the update runs a shared prompt once."""
    datamodule = _datamodule(accumulation=2, batch_size=3)
    round_ = _round([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # groups 0..5, two samples each
    samples = datamodule.training_samples(round_)
    batches = datamodule.make_batches(round_, pad_id=0)
    steps = [samples[:6], samples[6:]]
    for step, (first, second) in zip(steps, [batches[:2], batches[2:]]):
        trained = torch.cat([first["completion_mask"].sum(-1), second["completion_mask"].sum(-1)])
        assert sorted(trained.tolist()) == sorted(float(len(s.completion.token_ids)) for s in step)
        lengths = trained.tolist()  # this round's lengths are distinct: they name the samples
        groups = [next(s.group for s in step if len(s.completion.token_ids) == n) for n in lengths]
        assert groups == sorted(groups)

