"""FSDP2 (``fully_shard`` per decoder layer, Lightning's ModelParallelStrategy) on 2 CPU processes
(gloo): a GC-RL fit finishes, trains every parameter, exports the gathered weights, reaches DDP's
weights, and resumes exactly from a SIGTERM inside a round (a folder checkpoint)."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ddp_helpers import CHECKPOINTS, ROOT, save_weights, two_process_fit
from sorl.policy import EMBEDDED_POLICY

FSDP2 = ("--config", str(ROOT / "configs" / "strategy" / "fsdp_cpu.yaml"))
# float32 for both strategies, so that their difference is the order of reductions alone (bf16
# autocast would add its rounding of two different sharded/replicated matmul layouts).
FLOAT32 = "--trainer.precision=32-true"
# Measured max |FSDP2 - DDP| after 2 rounds: see test_fsdp2_fit_trains_exports_and_matches_ddp.
DDP_TOLERANCE = 1e-5


def _weights(folder: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(folder / f"rank{rank}.pt", weights_only=True)


@pytest.mark.slow
def test_fsdp2_fit_trains_exports_and_matches_ddp_then_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    result = two_process_fit(straight, save_weights(straight / "weights") + CHECKPOINTS, *FSDP2, FLOAT32, "--trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    gathered = _weights(straight / "weights", 0)
    assert all(torch.equal(gathered[name], _weights(straight / "weights", 1)[name]) for name in gathered)
    initial = AutoModelForCausalLM.from_pretrained(EMBEDDED_POLICY).state_dict()
    assert set(gathered) == set(initial)
    unchanged = [name for name in gathered if torch.equal(gathered[name], initial[name])]
    assert not unchanged, f"parameters left unchanged by FSDP2 training: {unchanged}"
    exported = AutoModelForCausalLM.from_pretrained(straight / "hf").state_dict()
    assert all(torch.equal(exported[name], gathered[name]) for name in gathered)

    ddp = tmp_path / "ddp"
    result = two_process_fit(ddp, save_weights(ddp / "weights"), FLOAT32, "--trainer.max_epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    replicated = _weights(ddp / "weights", 0)
    difference = max((gathered[name] - replicated[name]).abs().max().item() for name in gathered)
    print(f"max |FSDP2 - DDP| after 2 rounds: {difference:.3e}")
    assert difference <= DDP_TOLERANCE, f"FSDP2 and DDP weights differ by {difference}"

    # The checkpoint is a folder (sharded model and optimizer; meta.pt holds the rest).
    checkpoint = next(straight.rglob("last.ckpt"))
    assert checkpoint.is_dir()
    steps_per_round = torch.load(checkpoint / "meta.pt", weights_only=True)["global_step"] // 2
    assert steps_per_round >= 2, "the test needs a round of several steps to stop inside it"
    stopped = tmp_path / "stopped"
    sigterm = f"    - class_path: ddp_helpers.SigtermAtStep\n      init_args:\n        step: {steps_per_round + 1}\n"
    two_process_fit(stopped, sigterm + CHECKPOINTS, *FSDP2, FLOAT32, "--trainer.max_epochs=2")
    (checkpoint,) = stopped.rglob("last.ckpt")
    state = torch.load(checkpoint / "meta.pt", weights_only=True)
    assert state["global_step"] == steps_per_round + 1
    assert all(rank["pending_batches"] for rank in state["RolloutDataModule"]["ranks"])
    resumed = tmp_path / "resumed"
    result = two_process_fit(
        resumed, save_weights(resumed / "weights") + CHECKPOINTS, *FSDP2, FLOAT32, "--trainer.max_epochs=2",
        f"--ckpt_path={checkpoint}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    weights = _weights(resumed / "weights", 0)
    difference = max((weights[name] - gathered[name]).abs().max().item() for name in gathered)
    assert difference == 0.0, f"the resumed FSDP2 run differs from the straight run by {difference}"


@pytest.mark.slow
def test_fsdp2_bf16_mixed_with_checkpointing_and_a_reference_trains_every_parameter(tmp_path):
    """The shipped precision (bf16-mixed: FSDP2's bf16 MixedPrecisionPolicy, float32 reductions),
    non-reentrant activation checkpointing, and a sharded frozen reference (beta > 0)."""
    run = tmp_path / "run"
    result = two_process_fit(
        run, save_weights(run / "weights"), *FSDP2, "--trainer.precision=bf16-mixed", "--trainer.max_epochs=2",
        "--model.gradient_checkpointing=true", "--model.loss.init_args.beta=0.01",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    gathered = _weights(run / "weights", 0)
    initial = AutoModelForCausalLM.from_pretrained(EMBEDDED_POLICY).state_dict()
    unchanged = [name for name in gathered if torch.equal(gathered[name], initial[name])]
    assert not unchanged, f"parameters left unchanged: {unchanged}"
    assert all(torch.isfinite(tensor).all() for tensor in gathered.values())
