"""``critique_data: static``: each rank freezes the cache its first critique round built, keeps it
unchanged for the rest of training, and gets its own frozen cache back on resume."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from sorl.cli import cli_main
from sorl.data import RolloutDataModule, rng_states
from sorl.tasks import ArithmeticTask

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
SMALL = [
    "--trainer.enable_progress_bar=false", "--trainer.check_val_every_n_epoch=100", "--data.critique_data=static",
    "--data.questions_per_round=6", "--data.responses_per_question=4", "--data.critique_pairs_per_round=3",
    "--data.critiques_per_response=4", "--data.batch_size=64", "--data.eval_max_questions=2", "--data.eval_samples=0",
]  # fmt: skip


def _callbacks(root: Path, extra: str = "") -> Path:
    path = root.parent / f"{root.name}-callbacks.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n    - class_path: sorl.LabelBalancing\n"
        f"    - class_path: ddp_helpers.RecordCache\n      init_args:\n        dirpath: {root / 'caches'}\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n      init_args:\n        save_last: true\n" + extra
    )
    return path


def _frozen_caches(path: Path) -> list[dict]:
    """The recorded rounds of one rank, asserting the cache never changed once frozen."""
    rounds = [json.loads(line) for line in path.read_text().splitlines()]
    frozen = [r for r in rounds if r["frozen"]]
    assert frozen, f"{path.name}: the cache was never frozen"
    assert all(r["cache"] == frozen[0]["cache"] for r in frozen), f"{path.name}: a frozen cache changed"
    return frozen


def test_a_frozen_cache_never_changes(tmp_path):
    root = tmp_path / "run"
    cli_main([
        "fit", "--config", str(ROOT / "configs" / "gc_rl.yaml"), "--config", str(_callbacks(root)), *SMALL,
        "--trainer.max_epochs=4", f"--trainer.default_root_dir={root}", f"--model.export_dir={root / 'hf'}",
    ])  # fmt: skip
    frozen = _frozen_caches(root / "caches" / "cache-rank0.jsonl")
    assert frozen[0]["cache"] and len(frozen) >= 3


def _pair(name: str) -> dict:
    return {"question": {"id": name, "text": name, "gold": "0", "dataset": ""}, "response": name, "is_right": True}


def test_each_rank_restores_its_own_frozen_flag():
    """Rank 0 froze its cache in round 0; rank 1 had no mixed question yet and must keep filling its own."""
    pending = {"pending_batches": [], "pending_skipped": 0, "rng": rng_states()}
    state = {
        "round_index": 1,
        "ranks": [{"cache": [_pair("a")], "cache_frozen": True, **pending}, {"cache": [], "cache_frozen": False, **pending}],
    }
    restored = []
    for rank in (0, 1):
        datamodule = RolloutDataModule(ArithmeticTask(num_eval=2), critique_data="static")
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        datamodule.load_state_dict(state)
        restored.append((datamodule.cache.frozen, [p.question.id for p in datamodule.cache]))
    assert restored == [(True, ["a"]), (False, [])]


@pytest.mark.slow
def test_two_process_static_resume_is_exact_and_keeps_each_ranks_cache(tmp_path):
    def fit(root: Path, *extra: str) -> None:
        command = [
            sys.executable, "-m", "sorl", "fit", "--config", str(ROOT / "configs" / "gc_rl.yaml"),
            "--config", str(_callbacks(root)), *SMALL, "--trainer.strategy=ddp", "--trainer.devices=2",
            f"--trainer.default_root_dir={root}", f"--model.export_dir={root / 'hf'}", *extra,
        ]  # fmt: skip
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    fit(straight, "--trainer.max_epochs=3")
    fit(first, "--trainer.max_epochs=2")
    (checkpoint,) = first.rglob("last.ckpt")
    ranks = torch.load(checkpoint, weights_only=True)["RolloutDataModule"]["ranks"]
    assert [r["cache_frozen"] for r in ranks] == [True, True]
    fit(resumed, "--trainer.max_epochs=3", f"--ckpt_path={checkpoint}")
    caches = []
    for rank in (0, 1):
        straight_caches = _frozen_caches(straight / "caches" / f"cache-rank{rank}.jsonl")
        resumed_caches = _frozen_caches(resumed / "caches" / f"cache-rank{rank}.jsonl")
        assert resumed_caches[-1]["cache"] == straight_caches[-1]["cache"]
        caches.append(straight_caches[-1]["cache"])
    assert caches[0] != caches[1], "each rank freezes the cache of its own questions"
    a = AutoModelForCausalLM.from_pretrained(straight / "hf").state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed / "hf").state_dict()
    assert max((a[n] - b[n]).abs().max().item() for n in a) == 0.0
