"""Rounds that span several optimizer steps: later steps train with an importance ratio against the
sampling policy, computed like the training step's logprobs (bf16 autocast), and train/loss is the
step's mean loss whatever the accumulation."""

from pathlib import Path

import pytest

from scalars import scalar_series
from sorl.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]


def _fit(root: Path, *extra: str) -> dict[str, list[float]]:
    cli_main([
        "fit", "--config", str(ROOT / "configs" / "gc_rl.yaml"), f"--trainer.default_root_dir={root}",
        "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.check_val_every_n_epoch=100",
        "--data.questions_per_round=4", "--data.responses_per_question=4", "--data.critique_pairs_per_round=2",
        "--data.critiques_per_response=4", "--data.eval_max_questions=2", "--data.eval_samples=0",
        f"--model.export_dir={root / 'hf'}", *extra,
    ])  # fmt: skip
    return scalar_series(root)


def test_steps_after_the_first_train_with_a_ratio_to_the_sampling_policy(tmp_path):
    # 16 responses + up to 8 critiques in micro-batches of 6: at least 3 optimizer steps, lr high
    # enough that the policy moves between them
    series = _fit(tmp_path, "--data.batch_size=6", "--model.optimizer.init_args.lr=0.001")
    ratio, clip, kl = series["train/ratio_mean"], series["train/clip_frac"], series["train/sampling_kl"]
    assert len(ratio) >= 3 and len(clip) == len(ratio) and len(kl) == len(ratio)
    assert ratio[0] == 1.0 and clip[0] == 0.0 and kl[0] == 0.0  # the first step is on-policy
    assert all(r != 1.0 for r in ratio[1:]), ratio
    assert all(k > 0.0 for k in kl[1:]), kl


@pytest.mark.parametrize("precision", ["bf16-mixed", "32"])
def test_old_logprobs_are_computed_as_the_training_step_computes_logprobs(tmp_path, precision):
    # Two passes: the first step's micro-batches are trained again later, so they carry old_logprobs
    # computed before the first update. Under the same autocast the first step's ratio is exactly 1.
    series = _fit(tmp_path, "--data.batch_size=6", "--data.passes_per_round=2", f"--trainer.precision={precision}")
    assert series["train/ratio_mean"][0] == 1.0, series["train/ratio_mean"]
    assert series["train/clip_frac"][0] == 0.0
    assert len(series["train/ratio_mean"]) >= 6


def test_train_loss_is_the_step_mean_whatever_the_accumulation(tmp_path):
    # g_rl: 16 responses, one optimizer step either as one micro-batch of 16 or two of 8
    common = ("--model.mode=g_rl", "--trainer.precision=32")
    whole = _fit(tmp_path / "whole", *common, "--data.batch_size=16")["train/loss"]
    halves = _fit(tmp_path / "halves", *common, "--data.batch_size=8", "--trainer.accumulate_grad_batches=2")["train/loss"]
    assert len(whole) == len(halves) == 1
    assert halves[0] == pytest.approx(whole[0], abs=1e-6)
