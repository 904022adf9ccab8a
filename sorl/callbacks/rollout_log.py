"""RolloutLog: every sampled response and critique of a round, with its reward, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

from sorl.callbacks.base import RolloutCallback
from sorl.rollout import Round, RolloutContext, Sample


class RolloutLog(RolloutCallback):
    """Appends each logged round's samples to ``<dirpath>/rollouts-rank<R>.jsonl``, one JSON object
    per sample: ``round``, ``kind`` (``response`` or ``critique``), ``group``, ``question_id``,
    ``question``, ``gold``, ``completion``, ``finish_reason``, ``tokens``, ``reward`` and, for
    critiques, the critiqued ``response``, its label ``is_right`` and the parsed ``verdict``
    (``true``: judged right, ``null``: none found).

    Reading what the policy writes, and what it is rewarded for, is how reward hacking and collapse
    are found (e.g. a critic that learns to say ``wrong`` whatever it reads). Rewards are logged as
    the rollout callbacks before this one left them: put it after
    :class:`~sorl.callbacks.RewardDenoising` to see denoised rewards.

    Args:
        dirpath: the folder; ``None``: the trainer's ``log_dir`` (else its ``default_root_dir``).
        every_n_rounds: log rounds 0, n, 2n, ...
    """

    def __init__(self, dirpath: str | None = None, every_n_rounds: int = 1) -> None:
        if every_n_rounds < 1:
            raise ValueError(f"every_n_rounds must be >= 1, got {every_n_rounds}")
        self.dirpath = dirpath
        self.every_n_rounds = every_n_rounds

    def path(self, trainer: Trainer) -> Path:
        folder = self.dirpath or trainer.log_dir or trainer.default_root_dir
        return Path(folder) / f"rollouts-rank{trainer.global_rank}.jsonl"

    def on_responses_scored(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        self.write(trainer, round, round.responses)

    def on_critiques_scored(self, trainer: Trainer, context: RolloutContext, round: Round) -> None:
        self.write(trainer, round, round.critiques)

    def write(self, trainer: Trainer, round: Round, samples: list[Sample]) -> None:
        if round.index % self.every_n_rounds or not samples:
            return
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            for sample in samples:
                file.write(json.dumps(record(round.index, sample)) + "\n")


def record(round_index: int, sample: Sample) -> dict[str, Any]:
    completion = sample.completion
    line: dict[str, Any] = {
        "round": round_index,
        "kind": sample.kind,
        "group": sample.group,
        "question_id": sample.question.id,
        "question": sample.question.text,
        "gold": sample.question.gold,
        "completion": completion.text,
        "finish_reason": completion.finish_reason,
        "tokens": len(completion.token_ids),
        "reward": sample.reward,
    }
    if sample.pair is not None:
        line.update(response=sample.pair.response, is_right=sample.pair.is_right, verdict=sample.verdict)
    return line
