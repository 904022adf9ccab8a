"""Two-process DDP on CPU (gloo): rounds sharded per rank, same step count, identical weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sorl.policy import EMBEDDED_POLICY

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: sorl.LabelBalancing\n"
        f"    - class_path: ddp_helpers.SaveRankWeights\n      init_args:\n        dirpath: {tmp_path / 'weights'}\n"
    )
    command = [
        sys.executable, "-m", "sorl", "fit",
        "--config", str(ROOT / "configs" / "gc_rl.yaml"), "--config", str(callbacks),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--trainer.check_val_every_n_epoch=100",
        f"--trainer.default_root_dir={tmp_path}", f"--model.export_dir={tmp_path / 'hf'}",
        "--data.questions_per_round=6", "--data.responses_per_question=4",
        "--data.critique_pairs_per_round=3", "--data.critiques_per_response=4", "--data.batch_size=8",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "weights" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "weights" / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    initial = AutoModelForCausalLM.from_pretrained(EMBEDDED_POLICY).state_dict()
    assert any(not torch.equal(rank0[name], initial[name]) for name in rank0)
    assert (tmp_path / "hf" / "model.safetensors").exists()
