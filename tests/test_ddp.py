"""Two-process DDP on CPU (gloo): rounds sharded per rank, same step count, identical weights,
exact resume from a SIGTERM inside a round, and a crash on one rank ending the job."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from ddp_helpers import CHECKPOINTS, save_weights as _save_weights, two_process_fit as _ddp_fit
from sorl.policy import EMBEDDED_POLICY


@pytest.mark.slow
def test_two_process_ddp_ends_with_identical_weights_and_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    result = _ddp_fit(straight, _save_weights(straight / "weights") + CHECKPOINTS, "--trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(straight / "weights" / "rank0.pt", weights_only=True)
    rank1 = torch.load(straight / "weights" / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    initial = AutoModelForCausalLM.from_pretrained(EMBEDDED_POLICY).state_dict()
    assert any(not torch.equal(rank0[name], initial[name]) for name in rank0)
    assert (straight / "hf" / "model.safetensors").exists()
    steps_per_round = torch.load(next(straight.rglob("last.ckpt")), weights_only=True)["global_step"] // 2
    assert steps_per_round >= 2, "the test needs a round of several steps to stop inside it"

    # SIGTERM to rank 0 one step into round 1: every rank stops at that step boundary.
    stopped = tmp_path / "stopped"
    sigterm = f"    - class_path: ddp_helpers.SigtermAtStep\n      init_args:\n        step: {steps_per_round + 1}\n"
    result = _ddp_fit(stopped, sigterm + CHECKPOINTS, "--trainer.max_epochs=2")
    (checkpoint,) = stopped.rglob("last.ckpt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == steps_per_round + 1
    assert all(rank["pending_batches"] for rank in state["RolloutDataModule"]["ranks"])
    resumed = tmp_path / "resumed"
    result = _ddp_fit(
        resumed, _save_weights(resumed / "weights") + CHECKPOINTS, "--trainer.max_epochs=2", f"--ckpt_path={checkpoint}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        weights = torch.load(resumed / "weights" / f"rank{rank}.pt", weights_only=True)
        difference = max((weights[name] - rank0[name]).abs().max().item() for name in rank0)
        assert difference == 0.0, f"rank {rank} of the resumed run differs from the straight run by {difference}"


@pytest.mark.slow
@pytest.mark.parametrize("failing_rank", [0, 1])
def test_crash_on_one_rank_ends_the_job_with_its_error(failing_rank, tmp_path):
    failure = f"    - class_path: ddp_helpers.FailOnRank\n      init_args:\n        rank: {failing_rank}\n        step: 1\n"
    result = _ddp_fit(tmp_path / "run", failure, "--trainer.max_epochs=2", timeout=300)
    assert result.returncode != 0
    assert f"deliberate failure on rank {failing_rank} at step 1" in result.stderr
