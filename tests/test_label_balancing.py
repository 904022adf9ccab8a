import random
from types import SimpleNamespace

import pytest

from sorl.callbacks.label_balancing import LabelBalancing, balance_per_question, subsample_to_share
from sorl.tasks import CritiqueExample, Question


def _pairs(labels_by_question: dict[str, str]) -> list[CritiqueExample]:
    """'RWW' -> one right and two wrong responses to that question."""
    pairs = []
    for qid, labels in labels_by_question.items():
        question = Question(qid, qid, "0")
        pairs += [CritiqueExample(question, f"{qid}-{i}", label == "R") for i, label in enumerate(labels)]
    return pairs


@pytest.mark.parametrize(
    ("labels", "per_label", "expected"),
    [
        ({"a": "RWWW"}, 1, {"a": (1, 1)}),  # one of each from a mixed question
        ({"a": "RRRR", "b": "WWWW"}, 1, {}),  # single-label questions are dropped
        ({"a": "RRWW", "b": "RWWW", "c": "WWWW"}, 2, {"a": (2, 2), "b": (1, 1)}),  # capped by the rarer label
        ({"a": "RRRW", "b": "RW"}, 1, {"a": (1, 1), "b": (1, 1)}),
        ({}, 1, {}),
    ],
)
def test_balance_per_question_table(labels, per_label, expected):
    kept = balance_per_question(_pairs(labels), per_label, random.Random(0))
    counts: dict[str, list[int]] = {}
    for pair in kept:
        counts.setdefault(pair.question.id, [0, 0])[0 if pair.is_right else 1] += 1
    assert {k: tuple(v) for k, v in counts.items()} == expected


def test_subsample_to_share():
    pairs = _pairs({"a": "RWWWWWWWWW", "b": "RRWWWWWWWW"})  # 3 right, 17 wrong
    kept = subsample_to_share(pairs, 0.5, random.Random(0))
    assert sum(p.is_right for p in kept) == 3 and sum(not p.is_right for p in kept) == 3
    kept = subsample_to_share(pairs, 0.25, random.Random(0))
    assert sum(p.is_right for p in kept) == 3 and sum(not p.is_right for p in kept) == 9
    # 3 * (1 - 0.3) / 0.3 is exactly 7, though 6.999... in floats
    kept = subsample_to_share(pairs, 0.3, random.Random(0))
    assert sum(p.is_right for p in kept) == 3 and sum(not p.is_right for p in kept) == 7


def test_callback_replaces_round_candidates():
    class _Round:
        index = 3
        candidates = _pairs({"a": "RWW", "b": "WWW"})

    round_ = _Round()
    LabelBalancing().on_cache_update(None, SimpleNamespace(rank=0), round_)
    assert sorted(p.is_right for p in round_.candidates) == [False, True]
    assert {p.question.id for p in round_.candidates} == {"a"}


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="balance_advantages"):
        LabelBalancing(balance_advantages=True)
    with pytest.raises(ValueError, match="pairs_per_label"):
        LabelBalancing(pairs_per_label=0)
    with pytest.raises(ValueError, match="target_right_share"):
        LabelBalancing(target_right_share=1.0)


def _critiques(advantages_by_label: dict[bool, list[float]]):
    from sorl.engines import Completion
    from sorl.rollout import Sample

    question = Question("q", "q", "0")
    return [
        Sample("critique", 1 if label else 2, question, [0], Completion([0], "", "stop"), advantage=a, pair=CritiqueExample(question, "r", label))
        for label, advantages in advantages_by_label.items()
        for a in advantages
    ]


@pytest.mark.parametrize(
    ("advantages", "expected", "right_share", "kept"),
    [
        # one informative right-labelled group (sum |A| 3), two wrong-labelled ones (sum 6): halved
        ({True: [1.5, -0.5, -0.5, -0.5], False: [1.0, -1.0, 1.0, -1.0, 0.5, -0.5, 0.5, -0.5]},
         {True: [1.5, -0.5, -0.5, -0.5], False: [0.5, -0.5, 0.5, -0.5, 0.25, -0.25, 0.25, -0.25]}, 1 / 3, 2 / 3),
        ({True: [1.0, -1.0], False: [-1.0, 1.0]}, {True: [1.0, -1.0], False: [-1.0, 1.0]}, 0.5, 1.0),  # balanced
        ({True: [1.0, -1.0], False: [0.0, 0.0]}, {True: [0.0, 0.0], False: [0.0, 0.0]}, 1.0, 0.0),  # one label only
        ({True: [0.0, 0.0], False: [0.0, 0.0]}, {True: [0.0, 0.0], False: [0.0, 0.0]}, 0.5, 1.0),  # no advantage
        ({}, {}, 0.5, 1.0),
    ],
)
def test_balance_label_advantages_table(advantages, expected, right_share, kept):
    from sorl.callbacks.label_balancing import balance_label_advantages

    critiques = _critiques(advantages)
    assert balance_label_advantages(critiques) == pytest.approx((right_share, kept))
    got: dict[bool, list[float]] = {}
    for sample in critiques:
        got.setdefault(sample.pair.is_right, []).append(sample.advantage)
    assert got == {label: pytest.approx(values) for label, values in expected.items()}


def _group(verdicts: str, advantages: list[float], group: int):
    """'WWR' -> critiques of one group saying wrong, wrong, right (N: no verdict), with these advantages."""
    from sorl.engines import Completion
    from sorl.rollout import Sample

    question = Question("q", "q", "0")
    pair = CritiqueExample(question, "r", True)
    verdicts_ = {"W": False, "R": True, "N": None}
    return [
        Sample("critique", group, question, [0], Completion([0], "", "stop"), advantage=a, pair=pair, verdict=verdicts_[v])
        for v, a in zip(verdicts, advantages)
    ]


@pytest.mark.parametrize(
    ("groups", "expected", "wrong_share", "kept"),
    [
        # two groups push towards wrong (1.5 and 1.0), one towards right (1.0): the first two scaled by 1/2.5
        ([("WRRR", [1.5, -0.5, -0.5, -0.5]), ("WWRR", [0.5, 0.5, -0.5, -0.5]), ("WWWR", [-1 / 3, -1 / 3, -1 / 3, 1.0])],
         [[0.6, -0.2, -0.2, -0.2], [0.2, 0.2, -0.2, -0.2], [-1 / 3, -1 / 3, -1 / 3, 1.0]], 2.5 / 3.5, 2 / 3.5),
        # the push is what the verdicts get, whatever the labels: a group of one verdict pushes nothing
        ([("WWWW", [0.5, -0.5, 0.5, -0.5]), ("RWRW", [1.0, -1.0, 1.0, -1.0])],
         [[0.5, -0.5, 0.5, -0.5], [0.0, 0.0, 0.0, 0.0]], 0.0, 0.0),
        # a critique with no verdict pushes neither way: 1.0 towards wrong, 0.5 towards right
        ([("WRN", [1.0, -0.5, -0.5]), ("RWN", [1.0, -0.5, -0.5])], [[0.5, -0.25, -0.25], [1.0, -0.5, -0.5]], 2 / 3, 2 / 3),
        ([], [], 0.5, 1.0),
    ],
)
def test_balance_verdict_advantages_table(groups, expected, wrong_share, kept):
    from sorl.callbacks.label_balancing import balance_verdict_advantages

    critiques = [s for g, (verdicts, advantages) in enumerate(groups) for s in _group(verdicts, advantages, g)]
    assert balance_verdict_advantages(critiques) == pytest.approx((wrong_share, kept))
    by_group = [[s.advantage for s in critiques if s.group == g] for g in range(len(groups))]
    assert by_group == [pytest.approx(values) for values in expected]


@pytest.mark.parametrize("balance", ["label", "verdict"])
def test_balanced_advantages_reach_the_update(tmp_path, balance):
    """A real round through the DataModule: the advantages batched for the update are the balanced
    ones (equal sums of |advantage| per label, or a zero net push on the verdict) and the
    metrics are logged."""
    from lightning.pytorch import Trainer

    from sorl import ArithmeticTask, GCRLModule, RolloutDataModule

    datamodule = RolloutDataModule(
        ArithmeticTask(num_eval=8), questions_per_round=16, responses_per_question=4, critique_pairs_per_round=8,
        critiques_per_response=4, batch_size=8,
    )  # fmt: skip
    trainer = Trainer(
        max_epochs=1, reload_dataloaders_every_n_epochs=1, callbacks=[LabelBalancing(balance_advantages=balance)],
        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0, logger=False,
    )  # fmt: skip
    trainer.fit(GCRLModule(), datamodule)
    round_ = datamodule.last_round
    assert any(s.advantage for s in round_.critiques)
    if balance == "label":
        mass = {label: sum(abs(s.advantage) for s in round_.critiques if s.pair.is_right is label) for label in (True, False)}
        assert mass[True] == pytest.approx(mass[False])
        assert 0.0 <= round_.metrics["rollout/right_advantage_share"] <= 1.0
    else:
        assert sum(s.advantage for s in round_.critiques if s.verdict is False) == pytest.approx(0.0, abs=1e-6)
        assert 0.0 <= round_.metrics["rollout/wrong_push_share"] <= 1.0
    assert round_.metrics["rollout/critique_advantage_kept"] <= 1.0
    batched = sorted(a for batch in datamodule.make_batches(round_, 0) for a, c in zip(batch["advantages"].tolist(), batch["is_critique"].tolist()) if c)
    assert batched == pytest.approx(sorted(s.advantage for s in round_.critiques))
