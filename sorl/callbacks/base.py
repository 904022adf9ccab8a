"""RolloutCallback: a Lightning callback with hooks into the DataModule's rollout round."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch import Callback, Trainer

if TYPE_CHECKING:
    from sorl.data import RolloutDataModule
    from sorl.rollout import Round


class RolloutCallback(Callback):
    """Hooks the :class:`~sorl.data.RolloutDataModule` calls, in this order, once per round.

    Each receives the round being built and may change it in place; ``round.metrics`` takes
    extra values to log (reduced across ranks by mean).
    """

    def on_answers_scored(self, trainer: Trainer, datamodule: RolloutDataModule, round: Round) -> None:
        """After the first-order rollout is verified: ``round.answers`` hold their rewards."""

    def on_cache_update(self, trainer: Trainer, datamodule: RolloutDataModule, round: Round) -> None:
        """Before ``round.candidates`` (this round's scored pairs) enter the question-response cache."""

    def on_critiques_scored(self, trainer: Trainer, datamodule: RolloutDataModule, round: Round) -> None:
        """After the second-order rollout is scored: ``round.critiques`` hold their rewards."""


def rollout_callbacks(trainer: Trainer) -> list[RolloutCallback]:
    return [callback for callback in trainer.callbacks if isinstance(callback, RolloutCallback)]


