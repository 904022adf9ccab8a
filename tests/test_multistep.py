"""Rounds that span several optimizer steps: later steps train with an importance ratio against the
sampling policy, computed like the training step's logprobs (bf16 autocast), and train/loss is the
step's mean loss whatever the accumulation."""

from pathlib import Path

import pytest

from helpers import small_round
from scalars import scalar_series
from sorl.cli import cli_main


def _fit(root: Path, *extra: str) -> dict[str, list[float]]:
    args = small_round(root, trainer__max_epochs=1, data__questions_per_round=4, data__critique_pairs_per_round=2)
    cli_main(["fit", *args, *extra])
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
    common = ("--data.mode=g_rl", "--trainer.precision=32")
    whole = _fit(tmp_path / "whole", *common, "--data.batch_size=16")["train/loss"]
    halves = _fit(tmp_path / "halves", *common, "--data.batch_size=8", "--trainer.accumulate_grad_batches=2")["train/loss"]
    assert len(whole) == len(halves) == 1
    assert halves[0] == pytest.approx(whole[0], abs=1e-6)
