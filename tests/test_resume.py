"""Resuming from last.ckpt continues exactly: bitwise-equal final weights to an uninterrupted run,
whether the checkpoint falls at a round boundary or inside a round (SIGTERM, PreemptionCheckpoint)."""

from pathlib import Path

import pytest
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
    "--data.batch_size=16",  # 32 responses + up to 16 critiques: 2-3 optimizer steps per round
]


def _fit(root: Path, *extra: str) -> None:
    cli_main(["fit", *ARGS, f"--trainer.default_root_dir={root}", f"--model.export_dir={root / 'hf'}", *extra])


def _max_weight_difference(a: Path, b: Path) -> float:
    wa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    return max((wa[name] - wb[name]).abs().max().item() for name in wa)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    _fit(root, "--trainer.max_epochs=3")
    return root


def test_resume_at_round_boundary_is_exact(straight_run, tmp_path):
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    _fit(first, "--trainer.max_epochs=2")
    (checkpoint,) = first.rglob("last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["RolloutDataModule"]["round_index"] == 2
    assert state["RolloutDataModule"]["ranks"][0]["pending_batches"] == []
    _fit(resumed, "--trainer.max_epochs=3", f"--ckpt_path={checkpoint}")
    assert _max_weight_difference(first / "hf", straight_run / "hf") > 0  # the last round did train
    difference = _max_weight_difference(straight_run / "hf", resumed / "hf")
    assert difference == 0.0, f"resumed run differs from the straight run by {difference}"


def test_sigterm_inside_a_round_leaves_a_checkpoint_that_resumes_exactly(straight_run, tmp_path):
    stopped, resumed = tmp_path / "stopped", tmp_path / "resumed"
    callbacks = tmp_path / "sigterm.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: sorl.LabelBalancing\n    - class_path: sorl.Evaluation\n"
        "    - class_path: ddp_helpers.SigtermAtStep\n      init_args:\n        step: 4\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args:\n        save_last: true\n    - class_path: sorl.PreemptionCheckpoint\n"
    )
    with pytest.raises(SystemExit):  # Lightning's SIGTERMException
        _fit(stopped, "--trainer.max_epochs=3", "--config", str(callbacks))
    (checkpoint,) = stopped.rglob("last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    rank_state = state["RolloutDataModule"]["ranks"][0]
    assert rank_state["pending_batches"], "the checkpoint should fall inside round 1"
    assert state["RolloutDataModule"]["round_index"] == 2  # round 1 was built before the stop
    _fit(resumed, "--trainer.max_epochs=3", f"--ckpt_path={checkpoint}")
    difference = _max_weight_difference(straight_run / "hf", resumed / "hf")
    assert difference == 0.0, f"resumed run differs from the straight run by {difference}"
