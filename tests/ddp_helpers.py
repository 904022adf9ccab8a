"""Callbacks for the DDP and resume tests (importable by class_path from subprocesses)."""

import json
import os
import signal
from pathlib import Path

import torch
from lightning.pytorch import Callback


class SaveRankWeights(Callback):
    """Each rank saves its own policy weights at the end of training."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.policy.state_dict(), Path(self.dirpath) / f"rank{trainer.global_rank}.pt")


class SigtermAtStep(Callback):
    """Sends this process SIGTERM once ``global_step`` reaches ``step`` (rank 0 only, as a scheduler would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class FailOnRank(Callback):
    """Raises on one rank at a given step, to check that a crash ends the job instead of hanging it."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"deliberate failure on rank {self.rank} at step {self.step}")


class RecordCache(Callback):
    """Each rank appends its critique cache (and whether it is frozen) as one JSON line per round."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        entry = {
            "round": datamodule.round_index - 1,
            "frozen": datamodule.cache.frozen,
            "cache": [[p.question.id, p.response, p.is_right] for p in datamodule.cache],
        }
        with (Path(self.dirpath) / f"cache-rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
