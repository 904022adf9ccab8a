"""Resuming from last.ckpt at a round boundary continues exactly: bitwise-equal final weights."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from sorl.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--config",
    str(ROOT / "configs" / "gc_rl.yaml"),
    "--trainer.enable_progress_bar=false",
    "--trainer.check_val_every_n_epoch=100",
    "--data.questions_per_round=8",
    "--data.responses_per_question=4",
    "--data.critique_pairs_per_round=4",
    "--data.critiques_per_response=4",
    "--data.eval_max_questions=4",
    "--data.eval_samples=0",
    "--data.batch_size=16",
]


def test_resume_from_last_checkpoint_is_exact(tmp_path):
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    cli_main(["fit", *ARGS, "--trainer.max_epochs=4", f"--trainer.default_root_dir={straight}", f"--model.export_dir={straight / 'hf'}"])
    cli_main(["fit", *ARGS, "--trainer.max_epochs=2", f"--trainer.default_root_dir={first}", f"--model.export_dir={first / 'hf'}"])
    (checkpoint,) = first.rglob("last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["RolloutDataModule"]["round_index"] == 2
    cli_main(
        ["fit", *ARGS, "--trainer.max_epochs=4", f"--trainer.default_root_dir={resumed}",
         f"--model.export_dir={resumed / 'hf'}", f"--ckpt_path={checkpoint}"]
    )
    a = AutoModelForCausalLM.from_pretrained(straight / "hf").state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed / "hf").state_dict()
    c = AutoModelForCausalLM.from_pretrained(first / "hf").state_dict()
    assert any(not torch.equal(a[name], c[name]) for name in a)  # the last two rounds did train
    max_diff = max((a[name] - b[name]).abs().max().item() for name in a)
    assert max_diff == 0.0, f"resumed run differs from the straight run by {max_diff}"
