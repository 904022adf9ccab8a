"""The config hub: every base config parses (and instantiates where a fresh CPU clone can), every
overlay composes with its base, every callback preset swaps in, and every ``sorl`` command line
that README.md shows parses."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from sorl.cli import build_cli, cli_main

ROOT = Path(__file__).resolve().parents[1]
BASES = sorted((ROOT / "configs").glob("*.yaml"))
# overlay folder -> the base it is composed with in these tests
OVERLAYS = {"mode": "gc_rl.yaml", "engine": "gc_rl.yaml", "strategy": "gc_rl.yaml", "model": "qwen2.5_gpu.yaml"}
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))

# Configs that need what a fresh clone on a CPU machine lacks (GPUs, a converted model folder, a
# user's JSONL) are parsed and type-checked (--print_config) but not instantiated.
SMOLLM2_DIR = ROOT / "checkpoints" / "smollm2-135m-instruct"
NOT_INSTANTIATED = {
    "qwen2.5_gpu.yaml": True,  # GPUs, vLLM and a Qwen2.5 folder
    "qwen2.5_7b.yaml": True,
    "fsdp.yaml": True,  # GPUs (its CPU twin, fsdp_cpu.yaml, is instantiated)
    "smollm2_gsm8k.yaml": not SMOLLM2_DIR.is_dir(),  # python -m sorl.convert --output checkpoints/...
    "smollm2_cold_start.yaml": True,  # examples_file is the user's
    # a cold-started SmolLM2 (python -m sorl.cold_start, then the SFT config below) and reasoning-gym
    "smollm2_reasoning_gym.yaml": not (ROOT / "checkpoints" / "smollm2-135m-rgym-cold-start").is_dir()
    or importlib.util.find_spec("reasoning_gym") is None,
    "smollm2_reasoning_gym_cold_start.yaml": True,  # examples_file comes from python -m sorl.cold_start
}


def _check(configs: list[Path], instantiate: bool) -> None:
    args = [a for config in configs for a in ("--config", str(config))]
    if not instantiate:
        with pytest.raises(SystemExit) as exit_info:
            build_cli([*args, "--print_config"], run=False)
        assert exit_info.value.code == 0
        return
    cli = build_cli(args, run=False)
    assert cli.model is not None and cli.datamodule is not None
    assert cli.trainer.reload_dataloaders_every_n_epochs == 1


@pytest.mark.parametrize("config", BASES, ids=lambda p: p.name)
def test_base_config_parses(config):
    _check([config], not NOT_INSTANTIATED.get(config.name, False))


@pytest.mark.parametrize(
    "overlay", sorted(p for folder in OVERLAYS for p in (ROOT / "configs" / folder).glob("*.yaml")), ids=lambda p: p.stem
)
def test_overlay_composes_with_its_base(overlay):
    base = ROOT / "configs" / OVERLAYS[overlay.parent.name]
    _check([base, overlay], not NOT_INSTANTIATED.get(overlay.name, False) and not NOT_INSTANTIATED.get(base.name, False))


def test_mode_overlay_changes_only_the_mode():
    g_rl = build_cli(["--config", str(ROOT / "configs" / "gc_rl.yaml"), "--config", str(ROOT / "configs" / "mode" / "g_rl.yaml")], run=False)
    gc_rl = build_cli(["--config", str(ROOT / "configs" / "gc_rl.yaml")], run=False)
    assert (g_rl.datamodule.mode, gc_rl.datamodule.mode) == ("g_rl", "gc_rl")
    assert g_rl.datamodule.critique_pairs_per_round == gc_rl.datamodule.critique_pairs_per_round


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_callback_preset_swaps_in(preset):
    cli = build_cli(["--config", str(ROOT / "configs" / "gc_rl.yaml"), "--trainer.callbacks", str(preset)], run=False)
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert ("LabelBalancing" in names) == (preset.name != "unbalanced.yaml")
    assert ("RewardDenoising" in names) == (preset.name in ("denoised.yaml", "verdict_balanced.yaml"))


def _readme_commands() -> list[str]:
    """Every ``sorl fit|validate`` command line in README.md (code blocks and table cells)."""
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"(?:^|`|&& )(sorl (?:fit|validate) [^`\n]*)", text, flags=re.M)
    assert len(commands) >= 8, commands
    return sorted({c.split("#")[0].strip().rstrip("\\").strip() for c in commands})


@pytest.mark.parametrize("command", _readme_commands())
def test_readme_command_parses(command, monkeypatch):
    monkeypatch.chdir(ROOT)  # README's commands run from the repository root
    args = shlex.split(command)[1:]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    assert exit_info.value.code == 0, command


def test_bad_value_names_the_key(capsys):
    with pytest.raises(SystemExit):
        build_cli(["--config", str(ROOT / "configs" / "gc_rl.yaml"), "--data.responses_per_question", "many"], run=False)
    assert "responses_per_question" in capsys.readouterr().err


def test_the_default_bar_is_tqdm_so_the_summary_json_prints_last():
    # Rich's live display prints a blank line when it stops, after the Evaluation callback's JSON
    from lightning.pytorch.callbacks import TQDMProgressBar

    cli = build_cli(["--config", str(ROOT / "configs" / "gc_rl.yaml")], run=False)
    assert isinstance(cli.trainer.progress_bar_callback, TQDMProgressBar)
    quiet = build_cli(["--config", str(ROOT / "configs" / "gc_rl.yaml"), "--trainer.enable_progress_bar=false"], run=False)
    assert quiet.trainer.progress_bar_callback is None


@pytest.mark.parametrize("overlays", [[], ["configs/model/qwen2.5_7b.yaml"]], ids=["1.5b", "7b"])
def test_slurm_script_runs_the_fsdp2_gpu_configs_on_every_gpu(tmp_path, overlays):
    """scripts/slurm_gc_rl.sh on 2 nodes x 8 GPUs, with ``srun`` replaced by a stand-in that
    prints the config the command line makes: FSDP2 over all 16 GPUs, vLLM sized from
    gpu_memory_utilization (sleep mode left to the device), and PreemptionCheckpoint."""
    import os
    import subprocess
    import sys

    import yaml

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/bash\nshift\nexec {sys.executable} -m sorl "$@" --print_config\n')
    (bin_dir / "srun").chmod(0o755)
    env = {
        **os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8",
        "RUN_DIR": str(tmp_path / "run"), "CONFIGS": " ".join(["configs/qwen2.5_gpu.yaml", *overlays]),
    }  # fmt: skip
    result = subprocess.run(["bash", "scripts/slurm_gc_rl.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    trainer = config["trainer"]
    assert trainer["strategy"]["class_path"].endswith("ModelParallelStrategy")
    assert trainer["strategy"]["init_args"]["data_parallel_size"] == 16
    assert (trainer["num_nodes"], str(trainer["devices"]), trainer["precision"]) == (2, "8", "bf16-mixed")  # "8": Lightning takes both
    assert any(c["class_path"] == "sorl.PreemptionCheckpoint" for c in trainer["callbacks"])
    engine = config["data"]["init_args"]["engine"]
    assert engine["class_path"] == "sorl.engines.VLLMEngine"
    assert engine["init_args"]["kv_cache_gib"] is None and engine["init_args"]["sleep_mode"] is None
    assert config["model"]["init_args"]["model"].endswith("7B-Instruct" if overlays else "1.5B-Instruct")
