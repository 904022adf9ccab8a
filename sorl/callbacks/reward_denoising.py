"""RewardDenoising: checks rewarded critiques by whether their analysis helps a refinement."""

from __future__ import annotations

import random
import time
from typing import Any, Literal

from lightning.pytorch import Trainer

from sorl.callbacks.base import RolloutCallback
from sorl.rewards import is_right
from sorl.rollout import Round, RolloutContext
from sorl.sampler import derive_seed

TOTALS = ("checked", "refinements", "refinements_right", "rewards_changed", "filtered")


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
    none), ``denoise/rewards_changed`` (0 with ``filter``), with ``filter`` ``denoise/filtered``
    (critiques removed), and ``time/denoise`` per round; cumulative totals travel in checkpoints.
    """

    def __init__(
        self,
        strategy: Literal["none", "self_correction"] = "self_correction",
        num_refinements: int = 2,
        max_critiques: int | None = None,
        min_scale: float = 0.0,
        action: Literal["scale", "filter"] = "scale",
        keep_share: float = 0.5,
        seed: int = 0,
    ) -> None:
        if strategy not in ("none", "self_correction"):
            raise ValueError(f"strategy must be 'none' or 'self_correction', got {strategy!r}")
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
        task = context.task
        right = changed = 0
        removed: set[int] = set()  # indices into round.critiques
        if rewarded:  # no generate call (and no engine work) for a round without rewarded critiques
            samples = [round.critiques[i] for i in rewarded]
            prompts = [task.refinement_prompt(s.question, s.pair.response, s.completion.text) for s in samples]
            refinements = context.generate(prompts, self.num_refinements, context.response_sampling, "refinements", round.index)
            for index, sample, completions in zip(rewarded, samples, refinements):
                num_right = sum(is_right(task.verify(sample.question, c.text)) for c in completions)
                share_right = num_right / len(completions)
                right += num_right
                if self.action == "filter":
                    if share_right < self.keep_share:
                        removed.add(index)
                    continue
                reward = sample.reward * (self.min_scale + (1.0 - self.min_scale) * share_right)
                changed += reward != sample.reward
                sample.reward = reward
        if removed:
            round.critiques = [s for i, s in enumerate(round.critiques) if i not in removed]
        made = len(rewarded) * self.num_refinements
        for name, value in zip(TOTALS, (len(rewarded), made, right, changed, len(removed))):
            self.totals[name] += value
        round.metrics["denoise/checked"] = float(len(rewarded))
        round.metrics["denoise/refinements"] = float(made)
        round.metrics["denoise/refinement_accuracy"] = right / made if made else 0.0
        round.metrics["denoise/rewards_changed"] = float(changed)
        if self.action == "filter":
            round.metrics["denoise/filtered"] = float(len(removed))
        round.metrics["time/denoise"] = time.perf_counter() - started

    def state_dict(self) -> dict[str, Any]:
        return dict(self.totals)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checkpoints from before ``action`` existed hold no "filtered": they filtered nothing.
        self.totals = {name: int(state_dict.get(name, 0) if name == "filtered" else state_dict[name]) for name in TOTALS}
