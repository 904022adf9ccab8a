"""The ``sorl`` command: a LightningCLI over any LightningModule and DataModule (``class_path``)."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The CLI with sorl's defaults: a trainer that reloads dataloaders every epoch, as rollouts need."""
    return LightningCLI(
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
