"""RewardDenoising's self-correction rule and RewardNoise's oracle metric, on scripted rollouts."""

import io
from types import SimpleNamespace

import pytest
import torch

from sorl.callbacks import RewardDenoising, RewardNoise
from sorl.rollout import Round, Sample, assign_advantages, round_sums
from sorl.engines import Completion, SamplingParams
from sorl.tasks import ArithmeticTask, CritiqueExample, Question

TASK = ArithmeticTask()
Q = Question("q", "1+2*3", "9")
RIGHT = TASK.solution(Q)  # 1+2=3;3*3=9;A:9
WRONG = "1+2=3;3*3=8;A:8"
TRAINER = SimpleNamespace(global_rank=0)


def _critique(response: str, text: str, reward: float, group: int = 1) -> Sample:
    pair = CritiqueExample(Q, response, TASK.verify(Q, response) >= 1.0)
    verdict = TASK.parse_verdict(text)
    return Sample("critique", group, Q, [1], Completion([1], text, "stop"), reward, pair=pair, verdict=verdict)


def _context(refinements: dict[str, list[str]]):
    """A rollout context whose ``generate`` answers each refinement prompt with the scripted texts
    keyed by its critique."""
    calls = []

    def generate(prompts, n, sampling, purpose, round_index):
        calls.append(SimpleNamespace(prompts=list(prompts), n=n, sampling=sampling, purpose=purpose))
        out = []
        for prompt in prompts:
            critique = prompt.split("\nC:")[1].removesuffix("\nF:")
            texts = refinements[critique]
            assert len(texts) == n
            out.append([Completion([1], t, "stop") for t in texts])
        return out

    return SimpleNamespace(task=TASK, response_sampling=SamplingParams(max_new_tokens=17), generate=generate, calls=calls, rank=0)


def _round(critiques: list[Sample], index: int = 0) -> Round:
    responses = [
        Sample("response", 0, Q, [1], Completion([1], RIGHT, "stop"), 1.0),
        Sample("response", 0, Q, [1], Completion([1], WRONG, "stop"), 0.0),
    ]
    return Round(index, [Q], responses=responses, critiques=critiques)


@pytest.mark.parametrize(
    ("num_right", "min_scale", "expected"),
    [(0, 0.0, 0.0), (2, 0.0, 1.0), (1, 0.0, 0.5), (1, 0.5, 0.75), (0, 0.5, 0.5)],
)
def test_wrong_verdict_keeps_reward_in_proportion_to_right_refinements(num_right, min_scale, expected):
    text = TASK.critique(Q, WRONG)
    context = _context({text: [RIGHT] * num_right + [WRONG] * (2 - num_right)})
    round_ = _round([_critique(WRONG, text, 1.0)])
    RewardDenoising(num_refinements=2, min_scale=min_scale).on_critiques_scored(TRAINER, context, round_)
    assert round_.critiques[0].reward == expected


def test_right_verdict_loses_reward_when_refinements_go_wrong():
    sound, misleading = TASK.critique(Q, RIGHT), TASK.critique(Q, RIGHT) + " "
    context = _context({sound: [RIGHT] * 4, misleading: [RIGHT, WRONG, WRONG, WRONG]})
    round_ = _round([_critique(RIGHT, sound, 1.0), _critique(RIGHT, misleading, 1.0)])
    RewardDenoising(num_refinements=4).on_critiques_scored(TRAINER, context, round_)
    assert [s.reward for s in round_.critiques] == [1.0, 0.25]


def test_one_batched_call_only_for_rewarded_critiques_and_answers_untouched():
    rewarded, unrewarded = TASK.critique(Q, WRONG), "V:right"
    context = _context({rewarded: [WRONG, WRONG, WRONG]})
    round_ = _round([_critique(WRONG, unrewarded, 0.0), _critique(WRONG, rewarded, 1.0), _critique(WRONG, rewarded, 1.0)])
    RewardDenoising(num_refinements=3).on_critiques_scored(TRAINER, context, round_)
    assert len(context.calls) == 1
    call = context.calls[0]
    assert call.prompts == [TASK.refinement_prompt(Q, WRONG, rewarded)] * 2
    assert (call.n, call.purpose, call.sampling) == (3, "refinements", context.response_sampling)
    assert [s.reward for s in round_.critiques] == [0.0, 0.0, 0.0]
    assert [s.reward for s in round_.responses] == [1.0, 0.0]


def test_no_generate_call_without_rewarded_critiques():
    context = _context({})
    round_ = _round([_critique(WRONG, "V:right", 0.0)])
    RewardDenoising().on_critiques_scored(TRAINER, context, round_)
    assert context.calls == []
    assert round_.metrics["denoise/checked"] == 0.0 and round_.metrics["denoise/refinement_accuracy"] == 0.0


def test_max_critiques_bounds_the_checked_critiques():
    texts = [TASK.critique(Q, WRONG) + " " * i for i in range(5)]
    context = _context({t: [WRONG, WRONG] for t in texts})
    round_ = _round([_critique(WRONG, t, 1.0) for t in texts])
    RewardDenoising(max_critiques=2, seed=3).on_critiques_scored(TRAINER, context, round_)
    assert len(context.calls[0].prompts) == 2
    assert sorted(s.reward for s in round_.critiques) == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert round_.metrics["denoise/checked"] == 2.0
    # the same seed, round and rank check the same critiques
    again = _round([_critique(WRONG, t, 1.0) for t in texts])
    RewardDenoising(max_critiques=2, seed=3).on_critiques_scored(TRAINER, context, again)
    assert [s.reward for s in again.critiques] == [s.reward for s in round_.critiques]


def test_strategy_none_changes_nothing():
    text = TASK.critique(Q, WRONG)
    context = _context({text: [WRONG, WRONG]})
    round_ = _round([_critique(WRONG, text, 1.0)])
    RewardDenoising(strategy="none").on_critiques_scored(TRAINER, context, round_)
    assert context.calls == []
    assert round_.critiques[0].reward == 1.0
    assert round_.metrics == {"denoise/checked": 0.0}


def test_metrics_and_totals_survive_a_checkpoint():
    good, bad = TASK.critique(Q, WRONG), TASK.critique(Q, WRONG) + " "
    context = _context({good: [RIGHT, RIGHT], bad: [RIGHT, WRONG]})
    callback = RewardDenoising()
    round_ = _round([_critique(WRONG, good, 1.0), _critique(WRONG, bad, 1.0), _critique(WRONG, "x", 0.0)])
    callback.on_critiques_scored(TRAINER, context, round_)
    metrics = dict(round_.metrics)
    assert metrics.pop("time/denoise") >= 0.0
    assert metrics == {
        "denoise/checked": 2.0,
        "denoise/refinements": 4.0,
        "denoise/refinement_accuracy": 0.75,
        "denoise/rewards_changed": 1.0,
    }
    callback.on_critiques_scored(TRAINER, context, _round([_critique(WRONG, bad, 1.0)], index=1))
    state = callback.state_dict()
    assert state == {"checked": 3, "refinements": 6, "refinements_right": 4, "rewards_changed": 2, "filtered": 0, "analyses_right": 0}
    buffer = io.BytesIO()  # through torch.save / load as in a Lightning checkpoint
    torch.save({"callbacks": {"RewardDenoising": state}}, buffer)
    buffer.seek(0)
    fresh = RewardDenoising()
    fresh.load_state_dict(torch.load(buffer, weights_only=True)["callbacks"]["RewardDenoising"])
    assert fresh.state_dict() == state
    fresh.on_critiques_scored(TRAINER, context, _round([_critique(WRONG, good, 1.0)], index=2))
    assert fresh.state_dict() == {"checked": 4, "refinements": 8, "refinements_right": 6, "rewards_changed": 2, "filtered": 0, "analyses_right": 0}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"strategy": "oracle"}, "strategy"),
        ({"num_refinements": 0}, "num_refinements"),
        ({"max_critiques": 0}, "max_critiques"),
        ({"min_scale": 1.5}, "min_scale"),
        ({"min_scale": -0.1}, "min_scale"),
        ({"action": "drop"}, "action"),
        ({"keep_share": 1.5}, "keep_share"),
        ({"keep_share": -0.1}, "keep_share"),
    ],
)
def test_invalid_settings_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RewardDenoising(**kwargs)


# ---- action="filter" ---------------------------------------------------------------------------

# Critiques of the wrong response, each with its own text, so that each gets its own refinements.
FULL, HALF, NONE = (TASK.critique(Q, WRONG) + " " * i for i in range(3))
FILTER_REFINEMENTS = {FULL: [RIGHT, RIGHT], HALF: [RIGHT, WRONG], NONE: [WRONG, WRONG]}


@pytest.mark.parametrize(
    ("keep_share", "kept"),
    [(0.5, [FULL, HALF, "V:right"]), (1.0, [FULL, "V:right"]), (0.0, [FULL, HALF, NONE, "V:right"])],
)
def test_filter_removes_checked_critiques_below_keep_share(keep_share, kept):
    context = _context(FILTER_REFINEMENTS)
    critiques = [_critique(WRONG, FULL, 1.0), _critique(WRONG, HALF, 1.0), _critique(WRONG, NONE, 1.0), _critique(WRONG, "V:right", 0.0)]
    round_ = _round(list(critiques))
    RewardDenoising(action="filter", keep_share=keep_share).on_critiques_scored(TRAINER, context, round_)
    # the same objects, in their order, with their rewards: removed, not rescaled
    assert [s.completion.text for s in round_.critiques] == kept
    assert all(any(s is c for c in critiques) for s in round_.critiques)
    assert [s.reward for s in round_.critiques] == [1.0] * (len(kept) - 1) + [0.0]
    metrics = dict(round_.metrics)
    assert metrics.pop("time/denoise") >= 0.0
    assert metrics == {
        "denoise/checked": 3.0,
        "denoise/refinements": 6.0,
        "denoise/refinement_accuracy": 0.5,
        "denoise/rewards_changed": 0.0,
        "denoise/filtered": float(4 - len(kept)),
    }
    assert len(context.calls) == 1 and len(context.calls[0].prompts) == 3


def test_filtered_critique_gets_no_advantage_where_scaling_gives_a_negative_one():
    # group 1: a sound critique, a noisy one (both with the right verdict) and two wrong verdicts;
    # group 2: a noisy critique and one wrong verdict
    def critiques():
        return [
            _critique(WRONG, FULL, 1.0), _critique(WRONG, NONE, 1.0), _critique(WRONG, "V:right", 0.0), _critique(WRONG, "V:right", 0.0),
            _critique(WRONG, NONE + "  ", 1.0, group=2), _critique(WRONG, "V:right", 0.0, group=2),
        ]  # fmt: skip

    context = _context(FILTER_REFINEMENTS | {NONE + "  ": [WRONG, WRONG]})
    scaled, filtered = _round(critiques()), _round(critiques())
    RewardDenoising(action="scale").on_critiques_scored(TRAINER, context, scaled)
    RewardDenoising(action="filter").on_critiques_scored(TRAINER, context, filtered)
    for round_ in (scaled, filtered):
        assign_advantages(round_, scale_by_std=False)
    # scaled: the noisy critique's reward 0 sits below its group's mean 1/4
    assert [(s.group, s.reward, s.advantage) for s in scaled.critiques] == [
        (1, 1.0, 0.75), (1, 0.0, -0.25), (1, 0.0, -0.25), (1, 0.0, -0.25), (2, 0.0, 0.0), (2, 0.0, 0.0)
    ]
    # filtered: gone; its group's baseline is the mean of the other three (1/3), and group 2 is
    # left with one critique: advantage 0, a zero-std group
    assert [(s.group, s.completion.text, s.reward) for s in filtered.critiques] == [
        (1, FULL, 1.0), (1, "V:right", 0.0), (1, "V:right", 0.0), (2, "V:right", 0.0)
    ]
    assert [s.advantage for s in filtered.critiques] == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0])
    assert filtered.zero_std_groups == {2}
    assert filtered.metrics["rollout/frac_zero_std_critique"] == 0.5
    # answers are untouched
    assert [s.advantage for s in filtered.responses] == [s.advantage for s in scaled.responses] == [0.5, -0.5]


def test_filtered_critiques_leave_reward_noise_and_round_statistics():
    context = _context({SOUND: [RIGHT, RIGHT], CORRUPTED: [WRONG, WRONG]})
    round_ = _round([_critique(WRONG, SOUND, 1.0), _critique(WRONG, CORRUPTED, 1.0), _critique(WRONG, "V:right", 0.0)])
    for callback in (RewardDenoising(action="filter"), RewardNoise()):
        callback.on_critiques_scored(TRAINER, context, round_)
    assert round_.metrics["rollout/critique_reward_noise"] == 0.0
    sums = round_sums(round_)
    assert sums["rollout/critique_reward"] == (1.0, 2)
    assert sums["rollout/verdict_parse_failures"] == (0, 2)
    assert sums["denoise/filtered"] == (1.0, 1)


def test_filtered_total_survives_a_checkpoint_and_old_checkpoints_load():
    context = _context(FILTER_REFINEMENTS)
    callback = RewardDenoising(action="filter")
    for index in range(2):
        callback.on_critiques_scored(TRAINER, context, _round([_critique(WRONG, FULL, 1.0), _critique(WRONG, NONE, 1.0)], index=index))
    state = callback.state_dict()
    assert state == {"checked": 4, "refinements": 8, "refinements_right": 4, "rewards_changed": 0, "filtered": 2, "analyses_right": 0}
    fresh = RewardDenoising(action="filter")
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    old = {"checked": 3, "refinements": 6, "refinements_right": 4, "rewards_changed": 2}  # saved before "filtered" existed
    fresh.load_state_dict(old)
    assert fresh.state_dict() == old | {"filtered": 0, "analyses_right": 0}


def test_filter_trains_a_round_through_the_data_module(tmp_path):
    """A real round: sampling, refinements, advantages, batches and the update, with every checked
    critique whose refinements are not all right removed."""
    from lightning.pytorch import Trainer

    from sorl import ArithmeticTask, GCRLModule, LabelBalancing, RolloutDataModule

    denoising = RewardDenoising(action="filter", keep_share=1.0)
    datamodule = RolloutDataModule(
        ArithmeticTask(num_eval=8), questions_per_round=16, responses_per_question=4, critique_pairs_per_round=4,
        critiques_per_response=4, batch_size=8,
    )  # fmt: skip
    trainer = Trainer(
        max_epochs=1, reload_dataloaders_every_n_epochs=1, callbacks=[LabelBalancing(), denoising], default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0, logger=False,
    )  # fmt: skip
    trainer.fit(GCRLModule(), datamodule)
    round_ = datamodule.last_round
    sampled = len(round_.critique_pairs) * 4
    assert denoising.totals["filtered"] > 0
    assert len(round_.critiques) == sampled - denoising.totals["filtered"]
    assert round_.metrics["denoise/filtered"] == denoising.totals["filtered"]
    assert trainer.global_step >= 1
    assert round_.critiques  # some are left to train on


# ---- RewardNoise -------------------------------------------------------------------------------

SOUND = TASK.critique(Q, WRONG)  # 1+2=3|3 ok;3*3=9|8 no;A:9|8 no;V:wrong
CORRUPTED = SOUND.replace("1+2=3|", "1+2=4|")  # the same verdict through a wrong step value


def test_corrupted_critique_has_the_right_verdict_and_a_wrong_analysis():
    assert CORRUPTED != SOUND
    assert TASK.parse_verdict(CORRUPTED) is False and TASK.parse_verdict(SOUND) is False
    assert TASK.critique_analysis_correct(Q, WRONG, SOUND)
    assert not TASK.critique_analysis_correct(Q, WRONG, CORRUPTED)


@pytest.mark.parametrize(
    ("critiques", "expected"),
    [
        ([(SOUND, 1.0), (CORRUPTED, 1.0), (CORRUPTED, 0.0)], 0.5),  # zero rewards do not count
        ([(SOUND, 1.0), (SOUND, 1.0), (CORRUPTED, 1.0), (CORRUPTED, 0.0)], 1 / 3),
        ([(SOUND, 0.75), (CORRUPTED, 0.25)], 0.25),  # reward-weighted
        ([(SOUND, 0.2), (CORRUPTED, 0.6)], 0.75),
        ([(CORRUPTED, 0.0), (SOUND, 0.0)], 0.0),  # no rewarded critique
        ([], 0.0),
    ],
)
def test_reward_noise_is_the_reward_weighted_share_of_wrong_analyses(critiques, expected):
    round_ = _round([_critique(WRONG, text, reward) for text, reward in critiques])
    RewardNoise().on_critiques_scored(TRAINER, SimpleNamespace(task=TASK), round_)
    assert round_.metrics["rollout/critique_reward_noise"] == pytest.approx(expected)


def test_reward_noise_after_denoising_measures_denoised_rewards():
    # the corrupted analysis leads every refinement astray, the sound one fixes every response
    context = _context({SOUND: [RIGHT, RIGHT], CORRUPTED: [WRONG, WRONG]})
    raw = _round([_critique(WRONG, SOUND, 1.0), _critique(WRONG, CORRUPTED, 1.0)])
    RewardNoise().on_critiques_scored(TRAINER, context, raw)
    assert raw.metrics["rollout/critique_reward_noise"] == 0.5
    denoised = _round([_critique(WRONG, SOUND, 1.0), _critique(WRONG, CORRUPTED, 1.0)])
    for callback in (RewardDenoising(), RewardNoise()):
        callback.on_critiques_scored(TRAINER, context, denoised)
    assert denoised.metrics["rollout/critique_reward_noise"] == 0.0


class NoOracleTask:
    def verify(self, question, response):
        return 0.0


@pytest.mark.parametrize(
    "callback", [RewardNoise(), RewardDenoising(strategy="analysis")], ids=["RewardNoise", "RewardDenoising-analysis"]
)
def test_analysis_needs_a_task_that_checks_analyses(callback):
    round_ = _round([_critique(WRONG, SOUND, 1.0)])
    with pytest.raises(TypeError, match="critique_analysis_correct"):
        callback.on_critiques_scored(TRAINER, SimpleNamespace(task=NoOracleTask(), rank=0), round_)


@pytest.mark.parametrize(("action", "rewards"), [("scale", [1.0, 0.0]), ("filter", [1.0])])
def test_analysis_strategy_uses_the_step_oracle(action, rewards):
    """The arithmetic task's step oracle as the check: the corrupted analysis loses its reward
    (scale) or leaves the round (filter); no refinement is sampled."""
    round_ = _round([_critique(WRONG, SOUND, 1.0), _critique(WRONG, CORRUPTED, 1.0)])
    context = _context({})  # a refinement prompt would find no scripted answer and fail
    RewardDenoising(strategy="analysis", action=action).on_critiques_scored(TRAINER, context, round_)
    assert [s.reward for s in round_.critiques] == rewards
    assert round_.metrics["denoise/analysis_accuracy"] == 0.5
    assert "denoise/refinements" not in round_.metrics and context.calls == []
