"""PreemptionCheckpoint: a checkpoint to resume from when the job is told to stop."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(Callback):
    """On SIGTERM (a scheduler's preemption or time limit), saves ``last.ckpt`` at the next
    optimizer-step boundary and stops; resume with ``--ckpt_path`` on it.

    The signal handler only sets a flag. After each optimizer step every rank learns whether any
    rank got the signal (one tiny all-reduce), so all ranks save the same step together, even when
    only one process was signalled; the DataModule's state keeps the untrained rest of the round.
    This replaces Lightning's own SIGTERM handler during training, which runs collectives inside
    the handler and can deadlock DDP when ranks get the signal at different moments. (SLURM's
    auto-requeue signal, SIGUSR1, stays with Lightning's ``SLURMEnvironment``.)

    Args:
        dirpath: where to write; defaults to the ``ModelCheckpoint``'s folder, else
            ``<default_root_dir>/checkpoints``.
        filename: the checkpoint's file name.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt") -> None:
        self.dirpath = dirpath
        self.filename = filename
        self.stop_requested = False
        self._previous_handler: Any = None
        self._last_step = -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.stop_requested = False
        self._last_step = trainer.global_step
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:  # accumulating: not a step boundary
            return
        self._last_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self.stop_requested, all=False):
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"Received SIGTERM: saved {path} at step {trainer.global_step}; resume with --ckpt_path {path}")
        raise SIGTERMException()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def checkpoint_path(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath) / self.filename
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath is not None:
            return Path(trainer.checkpoint_callback.dirpath) / self.filename
        return Path(trainer.default_root_dir) / "checkpoints" / self.filename
