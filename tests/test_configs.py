"""Every shipped config (alone, and composed with every callback preset) parses and instantiates."""

from pathlib import Path

import pytest

from sorl.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config):
    cli = build_cli(["--config", str(config)], run=False)
    assert cli.model is not None and cli.datamodule is not None
    assert cli.trainer.reload_dataloaders_every_n_epochs == 1


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_callback_preset_composes(preset):
    cli = build_cli(["--config", str(ROOT / "configs" / "gc_rl.yaml"), "--config", str(preset)], run=False)
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert ("LabelBalancing" in names) == (preset.name != "unbalanced.yaml")


def test_bad_value_names_the_key(capsys):
    with pytest.raises(SystemExit):
        build_cli(["--config", str(ROOT / "configs" / "gc_rl.yaml"), "--data.responses_per_question", "many"], run=False)
    assert "responses_per_question" in capsys.readouterr().err
