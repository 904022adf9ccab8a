"""RewardNoise: how much critique reward goes to critiques whose analysis is wrong."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from lightning.pytorch import Trainer

from sorl.callbacks.base import RolloutCallback
from sorl.rollout import Round, RolloutContext
from sorl.tasks.base import Question


@runtime_checkable
class StepOracleTask(Protocol):
    def critique_analysis_correct(self, question: Question, response: str, critique: str) -> bool:
        """Whether the critique's whole analysis (not only its verdict) is right."""


class RewardNoise(RolloutCallback):
    """Logs ``rollout/critique_reward_noise``: among critiques with reward > 0, the reward-weighted
    share whose analysis is wrong by the task's step oracle (the plain share with 0/1 rewards;
    0.0 when no critique has reward).

    Needs a task with ``critique_analysis_correct`` (see :class:`StepOracleTask`), such as
    :class:`~sorl.tasks.ArithmeticTask`. Callbacks run in list order: put it after
    :class:`~sorl.callbacks.RewardDenoising` to measure denoised rewards, and before it (or use
    ``strategy: none``) to measure raw ones.
    """

    def on_critiques_scored(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        task = context.task
        if not isinstance(task, StepOracleTask):
            raise TypeError(
                f"RewardNoise needs a task with critique_analysis_correct(question, response, critique); "
                f"{type(task).__name__} has none"
            )
        total = noisy = 0.0
        for sample in round.critiques:
            if sample.reward > 0:
                total += sample.reward
                if not task.critique_analysis_correct(sample.question, sample.pair.response, sample.completion.text):
                    noisy += sample.reward
        round.metrics["rollout/critique_reward_noise"] = noisy / total if total else 0.0
