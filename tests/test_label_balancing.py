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
    with pytest.raises(ValueError, match="pairs_per_label"):
        LabelBalancing(pairs_per_label=0)
    with pytest.raises(ValueError, match="target_right_share"):
        LabelBalancing(target_right_share=1.0)
