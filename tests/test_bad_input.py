"""Bad input, tried as a new user would: the last lines the ``sorl`` command prints name the problem.

Each CLI case runs ``python -m sorl fit`` in a subprocess (what the user sees, stdout and stderr in
order) and fails before training starts.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sorl import ArithmeticTask, RolloutDataModule
from sorl.policy import load_policy, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
UNION_NOISE = "Does not validate against any of the Union subtypes"


def _sorl_fit(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Exit status and the combined output of a one-round quickstart run with ``args`` added."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sorl", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml")]
    command += ["--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run"), *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return done.returncode, done.stdout


def _last_line(output: str) -> str:
    return output.rstrip().splitlines()[-1]


def test_missing_model_folder_is_named(tmp_path):
    code, output = _sorl_fit(tmp_path, "--model.init_args.model", "/nonexistent/dir")
    assert code != 0
    assert _last_line(output).startswith("FileNotFoundError: model folder /nonexistent/dir does not exist")
    assert "never downloads" in _last_line(output)
    assert "Repo id" not in output and UNION_NOISE not in output


def test_constructor_error_is_the_last_line(tmp_path):
    code, output = _sorl_fit(tmp_path, "--data.init_args.critiques_per_response", "0")
    assert code != 0
    assert _last_line(output).startswith("ValueError: critiques_per_response must be >= 2 in mode gc_rl, got 0")
    assert UNION_NOISE not in output and "Given value" not in output


def test_nested_constructor_error_is_the_last_line(tmp_path):
    code, output = _sorl_fit(tmp_path, "--data.init_args.task.init_args.digits", "0")
    assert code != 0
    assert _last_line(output).startswith("ValueError: need digits >= 1")
    assert UNION_NOISE not in output


def test_corrupt_checkpoint_is_named(tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_text("seed_everything: 0\n")  # a YAML saved under the checkpoint's name
    code, output = _sorl_fit(tmp_path, "--ckpt_path", str(checkpoint))
    assert code != 0
    assert _last_line(output).startswith(f"ValueError: cannot read the checkpoint {checkpoint}:")
    assert "weights_only=True" in _last_line(output)


def test_one_response_per_question_is_refused(tmp_path):
    code, output = _sorl_fit(tmp_path, "--data.init_args.responses_per_question", "1")
    assert code != 0
    assert _last_line(output).startswith("ValueError: responses_per_question must be >= 2, got 1")
    assert "advantage 0" in _last_line(output)


def test_one_critique_per_response_is_refused_when_critiques_train(tmp_path):
    code, output = _sorl_fit(tmp_path, "--data.init_args.critiques_per_response", "1")
    assert code != 0
    assert _last_line(output).startswith("ValueError: critiques_per_response must be >= 2 in mode gc_rl, got 1")


@pytest.mark.parametrize("mode", ["g_rl", "c_rl"])
def test_one_critique_per_response_only_matters_when_critiques_train(mode):
    """g_rl samples no critiques, so m = 1 is harmless there; c_rl trains only critiques."""
    task = ArithmeticTask(num_train=64, num_eval=8)
    if mode == "g_rl":
        assert RolloutDataModule(task, mode=mode, critiques_per_response=1).critiques_per_response == 1
    else:
        with pytest.raises(ValueError, match="critiques_per_response must be >= 2 in mode c_rl"):
            RolloutDataModule(task, mode=mode, critiques_per_response=1)


def test_check_checkpoint(tmp_path):
    from sorl.cli import check_checkpoint

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, good)
    check_checkpoint(str(good))
    check_checkpoint("last")  # a name Lightning resolves itself
    check_checkpoint(None)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot read the checkpoint .*truncated.ckpt"):
        check_checkpoint(str(truncated))


def test_model_paths_must_be_local(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder org/some-model does not exist.*never downloads"):
        load_policy("org/some-model")  # a hub name is not fetched
    not_a_folder = tmp_path / "model.bin"
    not_a_folder.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        load_tokenizer(str(not_a_folder))
