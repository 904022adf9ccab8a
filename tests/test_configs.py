"""Every shipped config (alone, and composed with every callback preset) parses and instantiates."""

import importlib.util
from pathlib import Path

import pytest

from sorl.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
# gc_rl_fsdp.yaml only sets the strategy, to compose after an experiment config (test_fsdp_config.py)
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name != "gc_rl_fsdp.yaml")
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))


# Configs that need what a fresh clone on a CPU machine lacks (GPUs, a converted model folder, a
# user's JSONL) are parsed and type-checked (--print_config) but not instantiated.
SMOLLM2_DIR = ROOT / "checkpoints" / "smollm2-135m-instruct"
NOT_INSTANTIATED = {
    "qwen2.5_1.5b_gc_rl_gpu.yaml": True,  # GPUs, vLLM and a Qwen2.5 folder
    "qwen2.5_7b_gc_rl_gpu.yaml": True,
    "smollm2_gsm8k.yaml": not SMOLLM2_DIR.is_dir(),  # python -m sorl.convert --output checkpoints/...
    "smollm2_cold_start.yaml": True,  # examples_file is the user's
    # a cold-started SmolLM2 (python -m sorl.cold_start, then the SFT config below) and reasoning-gym
    "smollm2_reasoning_gym.yaml": not (ROOT / "checkpoints" / "smollm2-135m-rgym-cold-start").is_dir()
    or importlib.util.find_spec("reasoning_gym") is None,
    "smollm2_reasoning_gym_cold_start.yaml": True,  # examples_file comes from python -m sorl.cold_start
}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config):
    if NOT_INSTANTIATED.get(config.name, False):
        with pytest.raises(SystemExit) as exit_info:
            build_cli(["--config", str(config), "--print_config"], run=False)
        assert exit_info.value.code == 0
        return
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
