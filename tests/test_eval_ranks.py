"""Evaluation on 2 processes with an evaluation set that does not divide by the world size (down
to a rank with no item at all) finishes and gives the metrics of 1 process: every rank takes part
in every metric's synchronisation (sorl.evaluation.EvalMetrics.compute)."""

import json
import subprocess
import sys

import pytest

from ddp_helpers import ENV, ROOT


def _validate(tmp_path, devices: int, eval_max_questions: int, *extra: str) -> dict[str, float]:
    name = f"d{devices}-q{eval_max_questions}-{len(extra)}"
    metrics = tmp_path / f"{name}.json"
    callbacks = tmp_path / f"{name}-callbacks.yaml"
    callbacks.write_text(f"trainer:\n  callbacks:\n    - class_path: ddp_helpers.SaveMetrics\n      init_args:\n        path: {metrics}\n")
    command = [
        sys.executable, "-m", "sorl", "validate", "--config", str(ROOT / "configs" / "gc_rl.yaml"), "--config", str(callbacks),
        f"--trainer.devices={devices}", f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / name}",
        f"--data.eval_max_questions={eval_max_questions}", "--data.eval_samples=0", *extra,
    ]  # fmt: skip
    # a hang (a rank waiting in a collective the other never joins) fails here instead of stalling the suite
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(metrics.read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "eval_max_questions",
    # 1: rank 1 has no question and no critique example; 7: 4 + 3 questions (the policy gets 5 of 7
    # right, which no count over 4 or 3 questions equals, so a dropped shard shows), 3 + 3 examples
    [1, 7],
)
def test_two_process_evaluation_of_an_uneven_set_equals_one_process(tmp_path, eval_max_questions):
    one = _validate(tmp_path, 1, eval_max_questions)
    two = _validate(tmp_path, 2, eval_max_questions)
    assert "eval/gen_acc" in one
    assert ("eval/crit_acc" in one) == (eval_max_questions > 1)
    assert set(two) == set(one)
    assert all(two[name] == pytest.approx(one[name], abs=1e-6) for name in one), (one, two)


@pytest.mark.slow
@pytest.mark.parametrize("eval_max_questions", [1, 7])
def test_fsdp2_evaluation_of_an_uneven_set_equals_one_process(tmp_path, eval_max_questions):
    """Under FSDP2, down to a rank with no item at all (1 question), which hung until HFEngine
    stopped transformers' generate from synchronising its decode steps across ranks (it does so
    for any module fully_shard manages; see sorl.engines.hf)."""
    one = _validate(tmp_path, 1, eval_max_questions)
    two = _validate(tmp_path, 2, eval_max_questions, "--config", str(ROOT / "configs" / "strategy" / "fsdp_cpu.yaml"))
    assert ("eval/crit_acc" in one) == (eval_max_questions > 1)
    assert set(two) == set(one)
    assert all(two[name] == pytest.approx(one[name], abs=1e-6) for name in one), (one, two)
