"""RewardDenoising: checks rewarded critiques by whether their analysis helps a refinement, or is right."""

from __future__ import annotations

import random
import time
from typing import Any, Literal

from lightning.pytorch import Trainer

from sorl.callbacks.base import RolloutCallback
from sorl.callbacks.reward_noise import StepOracleTask
from sorl.rewards import is_right
from sorl.rollout import Round, RolloutContext, Sample
from sorl.sampler import derive_seed

TOTALS = ("checked", "refinements", "refinements_right", "rewards_changed", "filtered", "analyses_right")
ADDED_LATER = ("filtered", "analyses_right")  # absent from older checkpoints, which had none


class RewardDenoising(RolloutCallback):
    """Scales down, or filters out, critique rewards whose analysis does not help fix the response.

    The outcome-only critique reward is noisy: a critique can reach the right verdict through a
    wrong analysis. With ``self_correction``, each critique with reward > 0 (a zero reward cannot
    be made noisier, and skipping them bounds the cost) is given to the policy as a refinement
    prompt ``num_refinements`` times; each refinement is verified, and ``share_right`` is the
    share of them that are right:

    - a critique that says ``wrong`` proves its analysis useful when the refinements it leads to
      are right;
    - a critique that says ``right`` (rewarded only when the response is right) follows the same
      rule: a sound endorsement should let the refinement keep the right answer, so refinements
      that go wrong are evidence of an analysis that misleads.

    With ``analysis``, each critique with reward > 0 is checked by the task's own
    ``critique_analysis_correct`` (see :class:`~sorl.callbacks.StepOracleTask`) and
    ``share_right`` is 1 when its analysis is right, else 0. No sampling: it needs a task that can
    check an analysis, such as :class:`~sorl.tasks.ArithmeticTask` (every step) or
    :class:`~sorl.tasks.ReasoningGymTask` (a solve-it-yourself critique's own answer and the
    answer it reads from the response). On a small policy whose critiques repeat the response's
    error and still say ``wrong``, this is what keeps the critique reward from teaching the
    verdict ``wrong`` whatever the analysis found (README, "A real model").

    ``action`` decides what the check does to a critique:

    - ``scale``: its reward becomes ``reward * (min_scale + (1 - min_scale) * share_right)``;
    - ``filter``: a critique with ``share_right < keep_share`` is removed from ``round.critiques``,
      so it is neither trained on nor counted in its group's advantage baseline, nor in the
      round's ``rollout/critique_*`` statistics or :class:`~sorl.callbacks.RewardNoise` (both
      describe the critiques training sees). Scaling a noisy critique's reward to 0 would
      instead give it a negative advantage next to its group's rewarded critiques, although its
      verdict was right. Kept critiques keep their reward. Its group becomes smaller (a group
      left with one critique, or with equal rewards, gets advantage 0, as any such group does),
      and ranks may hold different numbers of critiques, which batching already evens out (a
      rank whose cache holds fewer pairs than it draws has fewer critiques too).

    ``min_scale`` is used by ``scale`` only, ``keep_share`` by ``filter`` only.
    ``max_critiques`` checks only a random sample (seeded per round and rank) of that many
    rewarded critiques; the rest keep their reward. Answer rewards are never changed. ``none``
    changes nothing. Refinements are sampled with the answer sampling parameters, in one batched
    call per round.

    Logs ``denoise/checked``, ``denoise/refinements``, ``denoise/refinement_accuracy`` (0.0 when
    none), with ``analysis`` ``denoise/analysis_accuracy`` (the share of checked critiques whose
    analysis is right) instead of the two refinement figures, ``denoise/rewards_changed`` (0 with
    ``filter``), with ``filter`` ``denoise/filtered`` (critiques removed), and ``time/denoise`` per
    round; cumulative totals travel in checkpoints.
    """

    def __init__(
        self,
        strategy: Literal["none", "self_correction", "analysis"] = "self_correction",
        num_refinements: int = 2,
        max_critiques: int | None = None,
        min_scale: float = 0.0,
        action: Literal["scale", "filter"] = "scale",
        keep_share: float = 0.5,
        seed: int = 0,
    ) -> None:
        if strategy not in ("none", "self_correction", "analysis"):
            raise ValueError(f"strategy must be 'none', 'self_correction' or 'analysis', got {strategy!r}")
        if num_refinements < 1:
            raise ValueError(f"num_refinements must be >= 1, got {num_refinements}")
        if max_critiques is not None and max_critiques < 1:
            raise ValueError(f"max_critiques must be >= 1 or None, got {max_critiques}")
        if not 0.0 <= min_scale <= 1.0:
            raise ValueError(f"min_scale must be in [0, 1], got {min_scale}")
        if action not in ("scale", "filter"):
            raise ValueError(f"action must be 'scale' or 'filter', got {action!r}")
        if not 0.0 <= keep_share <= 1.0:
            raise ValueError(f"keep_share must be in [0, 1], got {keep_share}")
        self.strategy = strategy
        self.num_refinements = num_refinements
        self.max_critiques = max_critiques
        self.min_scale = min_scale
        self.action = action
        self.keep_share = keep_share
        self.seed = seed
        self.totals = dict.fromkeys(TOTALS, 0)

    def on_critiques_scored(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        if self.strategy == "none":
            round.metrics["denoise/checked"] = 0.0
            return
        started = time.perf_counter()
        rewarded = [i for i, s in enumerate(round.critiques) if s.reward > 0]
        if self.max_critiques is not None and len(rewarded) > self.max_critiques:
            rng = random.Random(derive_seed(self.seed, "denoise_choice", round.index, context.rank))
            chosen = sorted(rng.sample(range(len(rewarded)), self.max_critiques))
            rewarded = [rewarded[i] for i in chosen]
        samples = [round.critiques[i] for i in rewarded]
        if self.strategy == "analysis":
            shares = self.analysis_shares(context, samples)
            made = refinements_right = 0
            analyses_right = int(sum(shares))
        else:
            shares, refinements_right = self.refinement_shares(context, round, samples)
            made, analyses_right = len(rewarded) * self.num_refinements, 0
        changed = 0
        removed: set[int] = set()  # indices into round.critiques
        for index, sample, share_right in zip(rewarded, samples, shares):
            if self.action == "filter":
                if share_right < self.keep_share:
                    removed.add(index)
                continue
            reward = sample.reward * (self.min_scale + (1.0 - self.min_scale) * share_right)
            changed += reward != sample.reward
            sample.reward = reward
        if removed:
            round.critiques = [s for i, s in enumerate(round.critiques) if i not in removed]
        for name, value in zip(TOTALS, (len(rewarded), made, refinements_right, changed, len(removed), analyses_right)):
            self.totals[name] += value
        round.metrics["denoise/checked"] = float(len(rewarded))
        if self.strategy == "analysis":
            round.metrics["denoise/analysis_accuracy"] = analyses_right / len(rewarded) if rewarded else 0.0
        else:
            round.metrics["denoise/refinements"] = float(made)
            round.metrics["denoise/refinement_accuracy"] = refinements_right / made if made else 0.0
        round.metrics["denoise/rewards_changed"] = float(changed)
        if self.action == "filter":
            round.metrics["denoise/filtered"] = float(len(removed))
        round.metrics["time/denoise"] = time.perf_counter() - started

    def refinement_shares(self, context: RolloutContext, round: Round, samples: list[Sample]) -> tuple[list[float], int]:
        """Per critique, the share of its refinements that are right; and the right ones in all."""
        if not samples:  # no generate call (and no engine work) for a round without rewarded critiques
            return [], 0
        task = context.task
        prompts = [task.refinement_prompt(s.question, s.pair.response, s.completion.text) for s in samples]
        refinements = context.generate(prompts, self.num_refinements, context.response_sampling, "refinements", round.index)
        counts = [sum(is_right(task.verify(s.question, c.text)) for c in completions) for s, completions in zip(samples, refinements)]
        return [count / self.num_refinements for count in counts], sum(counts)

    @staticmethod
    def analysis_shares(context: RolloutContext, samples: list[Sample]) -> list[float]:
        """Per critique, 1.0 when the task finds its analysis right, else 0.0."""
        task = context.task
        if not isinstance(task, StepOracleTask):
            raise TypeError(
                f"RewardDenoising(strategy='analysis') needs a task with critique_analysis_correct(question, response, "
                f"critique); {type(task).__name__} has none"
            )
        return [float(task.critique_analysis_correct(s.question, s.pair.response, s.completion.text)) for s in samples]

    def state_dict(self) -> dict[str, Any]:
        return dict(self.totals)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.totals = {name: int(state_dict.get(name, 0) if name in ADDED_LATER else state_dict[name]) for name in TOTALS}
