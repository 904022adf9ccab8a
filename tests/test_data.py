"""The DataModule's batch schedule: step normalizers, equal step counts, multiple passes."""

from types import SimpleNamespace

import torch

from sorl.data import Round, RolloutDataModule, Sample
from sorl.engines import Completion
from sorl.loss import GRPOLoss
from sorl.tasks import ArithmeticTask, Question

QUESTION = Question("q", "1+2", "3")


def _datamodule(accumulation: int, batch_size: int, passes: int = 1) -> RolloutDataModule:
    datamodule = RolloutDataModule(ArithmeticTask(num_eval=4), batch_size=batch_size, passes_per_round=passes)
    datamodule.trainer = SimpleNamespace(accumulate_grad_batches=accumulation, world_size=1, global_rank=0)
    return datamodule


def _round(lengths: list[int], kind: str = "answer") -> Round:
    round_ = Round(0, [QUESTION])
    samples = [
        Sample(kind, i // 2, QUESTION, [5, 6], Completion(list(range(3, 3 + n)), "", "stop"), advantage=float(i % 3 - 1))
        for i, n in enumerate(lengths)
    ]
    if kind == "answer":
        round_.answers = samples
    else:
        round_.critiques = samples
    return round_


def _module(mode: str = "gc_rl", logprobs=None):
    tokenizer = SimpleNamespace(pad_token_id=0)
    return SimpleNamespace(mode=mode, tokenizer=tokenizer, completion_logprobs=logprobs)


def test_step_normalizer_makes_token_mean_independent_of_accumulation():
    lengths = [1, 3, 2, 5, 4, 1, 2, 3]
    total_tokens = sum(lengths)
    # 4 micro-batches of 2 samples, 2 per optimizer step -> 2 steps
    batches = _datamodule(accumulation=2, batch_size=2).make_batches(_round(lengths), _module())
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
    datamodule = _datamodule(accumulation=4, batch_size=2)
    round_ = _round([2, 2, 2])
    round_.critiques = _round([3, 3], "critique").critiques
    gc = datamodule.make_batches(round_, _module("gc_rl"))
    assert len(gc) == 4  # 3 real micro-batches padded to one whole step of 4
    assert gc[-1]["completion_mask"].sum() == 0
    assert sum(b["is_critique"].sum().item() for b in gc) == 2
    g = datamodule.make_batches(round_, _module("g_rl"))
    assert sum(b["is_critique"].sum().item() for b in g) == 0
    c = datamodule.make_batches(round_, _module("c_rl"))
    assert sum(len(b["advantages"]) for b in c if b["completion_mask"].sum() > 0) == 2


def test_multiple_passes_compute_old_logprobs_once_per_round():
    calls = []

    def logprobs(batch):
        calls.append(batch)
        return torch.zeros(batch["completion_ids"].shape), None

    batches = _datamodule(accumulation=1, batch_size=2, passes=3).make_batches(_round([2, 3, 1, 4]), _module(logprobs=logprobs))
    assert len(batches) == 6 and len(calls) == 2  # 2 micro-batches, 3 passes; logprobs computed once each
    assert all("old_logprobs" in b for b in batches)
    assert {id(b) for b in batches} == {id(b) for b in calls}


def test_drop_zero_std_groups():
    datamodule = _datamodule(accumulation=1, batch_size=8)
    datamodule.drop_zero_std_groups = True
    round_ = _round([2, 2, 2, 2])
    round_.answers[0].advantage = 0.0
    round_.answers[1].advantage = 0.0
    batches = datamodule.make_batches(round_, _module("g_rl"))
    assert sum(len(b["advantages"]) for b in batches) == 2


def test_ranks_get_disjoint_shards_of_each_round():
    task = ArithmeticTask(num_train=50, num_eval=4)
    seen_by_round = []
    for round_index in range(3):
        shards = []
        for rank in range(2):
            datamodule = RolloutDataModule(task, questions_per_round=8)
            datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)
            datamodule.round_index = round_index
            shards.append([q.id for q in datamodule._round_questions()])
        assert len(set(shards[0])) == 8 and not set(shards[0]) & set(shards[1])
        seen_by_round.append(set(shards[0]) | set(shards[1]))
    # 50 questions, 16 per round: the first three rounds use 48 distinct questions
    assert len(set().union(*seen_by_round)) == 48
