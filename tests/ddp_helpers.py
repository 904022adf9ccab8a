"""Callbacks for the DDP and resume tests (importable by class_path from subprocesses)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
CHECKPOINTS = (
    "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n      init_args:\n        save_last: true\n"
    "    - class_path: sorl.PreemptionCheckpoint\n"
)


def two_process_fit(root: Path, callbacks: str, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``sorl fit`` of configs/gc_rl.yaml on 2 CPU processes (DDP unless ``extra`` sets another
    strategy), small rounds, the LabelBalancing callback plus ``callbacks`` (YAML list items)."""
    callbacks_file = root.parent / f"{root.name}-callbacks.yaml"
    callbacks_file.write_text("trainer:\n  callbacks:\n    - class_path: sorl.LabelBalancing\n" + callbacks)
    command = [
        sys.executable, "-m", "sorl", "fit",
        "--config", str(ROOT / "configs" / "gc_rl.yaml"), "--config", str(callbacks_file),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false", "--trainer.check_val_every_n_epoch=100",
        f"--trainer.default_root_dir={root}", f"--model.export_dir={root / 'hf'}",
        "--data.questions_per_round=6", "--data.responses_per_question=4",
        "--data.critique_pairs_per_round=3", "--data.critiques_per_response=4", "--data.batch_size=8", *extra,
    ]  # fmt: skip
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


def save_weights(dirpath: Path) -> str:
    """The callbacks-list item of :class:`SaveRankWeights`."""
    return f"    - class_path: ddp_helpers.SaveRankWeights\n      init_args:\n        dirpath: {dirpath}\n"


class SaveRankWeights(Callback):
    """Each rank saves the policy weights it sees at the end of training: its own replica under
    DDP, the whole weights gathered from all shards under FSDP2 (a collective on every rank)."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        weights = get_model_state_dict(pl_module.policy, options=StateDictOptions(full_state_dict=True))
        torch.save(weights, Path(self.dirpath) / f"rank{trainer.global_rank}.pt")


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


class SaveMetrics(Callback):
    """Rank zero writes the logged metrics (``trainer.callback_metrics``) as JSON after validation."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps({name: float(value) for name, value in trainer.callback_metrics.items()}))
