"""RewardDenoising's self-correction rule and RewardNoise's oracle metric, on scripted rollouts."""

import io
from types import SimpleNamespace

import pytest
import torch

from sorl.callbacks import RewardDenoising, RewardNoise
from sorl.rollout import Round, Sample
from sorl.engines import Completion, SamplingParams
from sorl.tasks import ArithmeticTask, CritiqueExample, Question

TASK = ArithmeticTask()
Q = Question("q", "1+2*3", "9")
RIGHT = TASK.solution(Q)  # 1+2=3;3*3=9;A:9
WRONG = "1+2=3;3*3=8;A:8"
TRAINER = SimpleNamespace(global_rank=0)


def _critique(response: str, text: str, reward: float) -> Sample:
    pair = CritiqueExample(Q, response, TASK.verify(Q, response) >= 1.0)
    verdict = TASK.parse_verdict(text)
    return Sample("critique", 1, Q, [1], Completion([1], text, "stop"), reward, pair=pair, verdict=verdict)


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
    assert state == {"checked": 3, "refinements": 6, "refinements_right": 4, "rewards_changed": 2}
    buffer = io.BytesIO()  # through torch.save / load as in a Lightning checkpoint
    torch.save({"callbacks": {"RewardDenoising": state}}, buffer)
    buffer.seek(0)
    fresh = RewardDenoising()
    fresh.load_state_dict(torch.load(buffer, weights_only=True)["callbacks"]["RewardDenoising"])
    assert fresh.state_dict() == state
    fresh.on_critiques_scored(TRAINER, context, _round([_critique(WRONG, good, 1.0)], index=2))
    assert fresh.state_dict() == {"checked": 4, "refinements": 8, "refinements_right": 6, "rewards_changed": 2}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"strategy": "oracle"}, "strategy"),
        ({"num_refinements": 0}, "num_refinements"),
        ({"max_critiques": 0}, "max_critiques"),
        ({"min_scale": 1.5}, "min_scale"),
        ({"min_scale": -0.1}, "min_scale"),
    ],
)
def test_invalid_settings_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RewardDenoising(**kwargs)


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


def test_reward_noise_needs_a_step_oracle():
    class NoOracleTask:
        def verify(self, question, response):
            return 0.0

    round_ = _round([_critique(WRONG, SOUND, 1.0)])
    with pytest.raises(TypeError, match="critique_analysis_correct"):
        RewardNoise().on_critiques_scored(TRAINER, SimpleNamespace(task=NoOracleTask()), round_)
