"""LabelBalancing: the paper's filter that keeps critique data label-balanced."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from fractions import Fraction
from typing import Literal

from lightning.pytorch import Trainer

from sorl.callbacks.base import RolloutCallback
from sorl.rollout import Round, RolloutContext, Sample
from sorl.sampler import derive_seed
from sorl.tasks.base import CritiqueExample


class LabelBalancing(RolloutCallback):
    """Keeps critique data label-balanced before it enters the question-response cache.

    With ``per_question`` (the paper's filter), each question whose responses hold both labels
    gives ``pairs_per_label`` right and ``pairs_per_label`` wrong (question, response) pairs, and
    questions with one label are dropped. ``target_right_share`` then subsamples the pairs to that
    global share of right responses (useful with ``per_question=False``).

    Wrong responses usually outnumber right ones, and an unbalanced critique set biases the critic
    towards ``wrong`` (the paper's first finding). Randomness is seeded per round and rank.

    Balanced pairs do not make a balanced update: only critique groups whose verdicts differ
    carry advantage, and a critic that is reliable on one label (say, right responses) leaves
    mostly the other label's groups to learn from. Each such group pushes the verdict one way, so
    the update moves the critic's verdict prior, not its judgement, and a small policy ends up
    saying one verdict whatever it read (README, "A real model"). ``balance_advantages`` evens the
    update out after the advantages are assigned (per rank; the larger side is scaled down to the
    smaller, so a round with one side only trains no critique):

    - ``label``: the critiques of the label whose groups carry more advantage (the sum of
      ``|advantage|``) get their advantages scaled down to the other label's sum. Logs
      ``rollout/right_advantage_share`` (the right-labelled share of that sum before; 0.5 when
      there is none).
    - ``verdict``: a group's push is the sum of the advantages of its critiques that say
      ``wrong``; the groups pushing towards ``wrong`` (push > 0) or those pushing towards
      ``right`` (push < 0), whichever push more in all, are scaled down until the round's pushes
      cancel: the update leaves the share of each verdict unchanged to first order and can only
      learn which responses deserve which. Logs ``rollout/wrong_push_share`` (the share of the
      push towards ``wrong`` before; 0.5 when none).

    Both log ``rollout/critique_advantage_kept``: the share of the balanced quantity kept (1.0
    when there is none).
    """

    def __init__(
        self,
        per_question: bool = True,
        pairs_per_label: int = 1,
        target_right_share: float | None = None,
        balance_advantages: Literal["label", "verdict"] | None = None,
        seed: int = 0,
    ) -> None:
        if balance_advantages not in (None, "label", "verdict"):
            raise ValueError(f"balance_advantages must be 'label', 'verdict' or None, got {balance_advantages!r}")
        if pairs_per_label < 1:
            raise ValueError(f"pairs_per_label must be >= 1, got {pairs_per_label}")
        if target_right_share is not None and not 0.0 < target_right_share < 1.0:
            raise ValueError(f"target_right_share must be in (0, 1), got {target_right_share}")
        self.per_question = per_question
        self.pairs_per_label = pairs_per_label
        self.target_right_share = target_right_share
        self.balance_advantages = balance_advantages
        self.seed = seed

    def on_cache_update(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        rng = random.Random(derive_seed(self.seed, "label_balancing", round.index, context.rank))
        pairs = round.candidates
        if self.per_question:
            pairs = balance_per_question(pairs, self.pairs_per_label, rng)
        if self.target_right_share is not None:
            pairs = subsample_to_share(pairs, self.target_right_share, rng)
        round.candidates = pairs

    def on_advantages_assigned(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        if self.balance_advantages == "label":
            round.metrics["rollout/right_advantage_share"], kept = balance_label_advantages(round.critiques)
        elif self.balance_advantages == "verdict":
            round.metrics["rollout/wrong_push_share"], kept = balance_verdict_advantages(round.critiques)
        else:
            return
        round.metrics["rollout/critique_advantage_kept"] = kept


def balance_label_advantages(critiques: list[Sample]) -> tuple[float, float]:
    """Scales the advantages of the critiques of the label with the larger ``sum |advantage|``
    down to the other label's sum, in place; returns the right-labelled share of that sum before,
    and the share of it kept (0.5 and 1.0 when there is none)."""
    mass = {label: sum(abs(s.advantage) for s in critiques if s.pair.is_right is label) for label in (True, False)}
    total = mass[True] + mass[False]
    if total == 0:
        return 0.5, 1.0
    target = min(mass.values())
    for sample in critiques:
        if mass[sample.pair.is_right] > target:  # the other label's samples (sum 0 or = target) stay
            sample.advantage *= target / mass[sample.pair.is_right]
    return mass[True] / total, 2 * target / total


def balance_verdict_advantages(critiques: list[Sample]) -> tuple[float, float]:
    """Scales the critique groups whose advantages push towards ``wrong`` (the sum over the
    group's critiques that say ``wrong``, > 0), or those pushing towards ``right`` (< 0), whichever
    push more in all, down until the two pushes are equal, in place; returns the share of the push
    towards ``wrong`` before, and the share of the push kept (0.5 and 1.0 when there is none)."""
    push: dict[int, float] = defaultdict(float)
    for sample in critiques:
        if sample.verdict is False:
            push[sample.group] += sample.advantage
    to_wrong = sum(p for p in push.values() if p > 0)
    to_right = -sum(p for p in push.values() if p < 0)
    total = to_wrong + to_right
    if total == 0:
        return 0.5, 1.0
    target, larger, sign = (to_right, to_wrong, 1.0) if to_wrong > to_right else (to_wrong, to_right, -1.0)
    if larger > target:
        for sample in critiques:
            if push.get(sample.group, 0.0) * sign > 0:
                sample.advantage *= target / larger
    return to_wrong / total, 2 * target / total


def balance_per_question(
    pairs: list[CritiqueExample], pairs_per_label: int, rng: random.Random
) -> list[CritiqueExample]:
    """Up to ``pairs_per_label`` right and as many wrong pairs from each question that has both."""
    by_question: dict[str, tuple[list[CritiqueExample], list[CritiqueExample]]] = defaultdict(lambda: ([], []))
    for pair in pairs:
        by_question[pair.question.id][0 if pair.is_right else 1].append(pair)
    kept: list[CritiqueExample] = []
    for right, wrong in by_question.values():
        if right and wrong:
            count = min(pairs_per_label, len(right), len(wrong))
            kept += rng.sample(right, count) + rng.sample(wrong, count)
    return kept


def subsample_to_share(pairs: list[CritiqueExample], target_right_share: float, rng: random.Random) -> list[CritiqueExample]:
    """The largest random subset of ``pairs`` whose share of right responses is the target."""
    right = [p for p in pairs if p.is_right]
    wrong = [p for p in pairs if not p.is_right]
    # Exact rational arithmetic: 3 * (1 - 0.3) / 0.3 is 6.999... in floats and would keep 6, not 7.
    share = Fraction(target_right_share).limit_denominator(10**6)
    keep_right = min(len(right), math.floor(len(wrong) * share / (1 - share)))
    keep_wrong = min(len(wrong), math.floor(len(right) * (1 - share) / share))
    chosen = set(map(id, rng.sample(right, keep_right) + rng.sample(wrong, keep_wrong)))
    return [p for p in pairs if id(p) in chosen]
