"""The ``sorl`` command: a LightningCLI over any LightningModule and DataModule (``class_path``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

# jsonargparse's message when no type of a Union (``Optional[LightningModule]`` for ``model``, say)
# accepts a value; an exception raised by a class's ``__init__`` reaches the user wrapped in it.
_UNION_ERROR = "Does not validate against any of the Union subtypes"


class SorlCLI(LightningCLI):
    """LightningCLI whose errors end with their cause: a bad setting or a file that cannot be read."""

    def instantiate_classes(self) -> None:
        cause: BaseException | None = None
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = _root_of_union_errors(error)
            if cause is error:
                raise
        if cause is not None:
            # Raised outside the except block, so the union message (which ends with a dump of the
            # whole config) is not printed after it; the cause's own chain is printed above it.
            raise cause

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # TQDM rather than Rich as the default bar: Rich's live display prints a blank line when it
        # stops at the very end, after the Evaluation callback's summary JSON, which must come last.
        trainer = self._get(self.config_init, "trainer", default={})
        callbacks = list(trainer.get("callbacks") or [])
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, TQDMProgressBar()])
        return super().instantiate_trainer(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads ``ckpt_path`` right after parsing (for its hyperparameters): check it first
        subcommand = self.config.get("subcommand")
        if subcommand is not None:
            check_checkpoint(self.config[subcommand].get("ckpt_path"))


def _root_of_union_errors(error: BaseException) -> BaseException:
    """The exception jsonargparse's union errors wrap (its ``__cause__``), through nested ones."""
    while str(error).startswith(_UNION_ERROR) and error.__cause__ is not None:
        error = error.__cause__
    return error


def check_checkpoint(ckpt_path: str | None) -> None:
    """Fail with a message naming ``ckpt_path`` when that file is not a readable PyTorch checkpoint.

    Lightning's own load ends in the unpickler's internals (``IndexError: pop from empty list``,
    ``EOFError``) or in advice to retry with ``weights_only=False``, which would run code from the
    file. The file is opened as Lightning opens it (``weights_only=True``), memory-mapped so that its
    tensors are not read an extra time. Names Lightning resolves itself (``last``, ``best``, ...) and
    missing files are left to it.
    """
    if ckpt_path is None or not Path(ckpt_path).is_file():
        return
    try:
        torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise ValueError(
            f"cannot read the checkpoint {ckpt_path}: it is damaged (a truncated copy?) or not a checkpoint "
            "written by Lightning; pass a complete .ckpt file (e.g. <default_root_dir>/.../checkpoints/last.ckpt). "
            "sorl loads checkpoints with weights_only=True and will not load them otherwise"
        ) from error


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The CLI with sorl's defaults: a trainer that reloads dataloaders every epoch, as rollouts need."""
    return SorlCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={"reload_dataloaders_every_n_epochs": 1},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``sorl`` and ``python -m sorl``; ``args`` allows in-process use in tests."""
    build_cli(args)
