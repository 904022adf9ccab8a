"""PreemptionCheckpoint: a checkpoint to resume from when the job is told to stop."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(Callback):
    """Saves ``last.ckpt`` when the job receives SIGTERM (a scheduler's preemption or time limit).

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next optimizer-step boundary, on
    every rank at once, so the checkpoint is consistent and every rank takes part in saving it; the
    DataModule's state keeps the untrained rest of the round. Resume with ``--ckpt_path`` on it.
    Other exceptions save nothing: a rank that crashed cannot join the save, and waiting for it
    would turn a crash into a hang.

    Args:
        dirpath: where to write; defaults to the ``ModelCheckpoint``'s folder, else
            ``<default_root_dir>/checkpoints``.
        filename: the checkpoint's file name.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt") -> None:
        self.dirpath = dirpath
        self.filename = filename

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"Received SIGTERM: saved {path} at step {trainer.global_step}; resume with --ckpt_path {path}")

    def checkpoint_path(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath) / self.filename
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath is not None:
            return Path(trainer.checkpoint_callback.dirpath) / self.filename
        return Path(trainer.default_root_dir) / "checkpoints" / self.filename
