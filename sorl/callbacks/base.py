"""RolloutCallback: a Lightning callback with hooks into the round the DataModule builds."""

from __future__ import annotations

from lightning.pytorch import Callback, Trainer

from sorl.rollout import Round, RolloutContext


class RolloutCallback(Callback):
    """Hooks the :class:`~sorl.data.RolloutDataModule` calls, in this order, once per round.

    Each receives the round being built, which it may change in place (``round.metrics`` takes
    extra values to log, reduced across ranks by mean), and the round's
    :class:`~sorl.rollout.RolloutContext`: the task, the sampler and the sampling settings.
    """

    def on_responses_scored(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        """After the first-order rollout is verified: ``round.responses`` hold their rewards."""

    def on_cache_update(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        """Before ``round.candidates`` (this round's scored pairs) enter the question-response cache."""

    def on_critiques_scored(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        """After the second-order rollout is scored: ``round.critiques`` hold their rewards."""

    def on_advantages_assigned(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        """After the group-relative advantages are assigned, before batching: the last word on
        what each sample's ``advantage`` is."""
