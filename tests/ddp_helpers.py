"""A callback for the DDP test: each rank saves its own policy weights at the end of training."""

from pathlib import Path

import torch
from lightning.pytorch import Callback


class SaveRankWeights(Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.policy.state_dict(), Path(self.dirpath) / f"rank{trainer.global_rank}.pt")
