"""Tiny CPU integration: short fits of each mode through the CLI and through a plain Trainer."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from transformers import AutoModelForCausalLM

from sorl import ArithmeticTask, GCRLModule, LabelBalancing, RolloutDataModule
from sorl.cli import cli_main
from sorl.policy import EMBEDDED_POLICY
from helpers import small_round
from scalars import scalar_series


def _assert_every_parameter_changed(before: torch.nn.Module, after: torch.nn.Module) -> None:
    after_params = dict(after.named_parameters())
    unchanged = [
        name for name, param in before.named_parameters() if torch.equal(param, after_params[name].to(param.dtype))
    ]
    assert not unchanged, f"parameters left unchanged by training: {unchanged}"


@pytest.mark.parametrize("mode", ["g_rl", "c_rl", "gc_rl"])
def test_cli_fit_each_mode(mode, tmp_path):
    cli_main(["fit", *small_round(tmp_path, data__mode=mode, trainer__max_epochs=2, trainer__check_val_every_n_epoch=2)])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    _assert_every_parameter_changed(AutoModelForCausalLM.from_pretrained(EMBEDDED_POLICY), exported)
    tags = set(scalar_series(tmp_path))
    assert "rollout/response_reward" in tags  # every mode samples responses (c_rl to fill the cache)
    assert ("rollout/critique_reward" in tags) == (mode != "g_rl")
    for tag in ("train/loss", "train/clip_frac", "time/response_rollout", "eval/gen_acc", "eval/crit_acc"):
        assert tag in tags
    assert (tmp_path / "hf" / "tokenizer.json").exists() or (tmp_path / "hf" / "tokenizer_config.json").exists()
    assert list(tmp_path.rglob("last.ckpt"))


def test_plain_trainer_without_cli(tmp_path):
    task = ArithmeticTask(num_eval=8)
    module = GCRLModule(optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    datamodule = RolloutDataModule(
        task, questions_per_round=16, responses_per_question=4, critique_pairs_per_round=4, critiques_per_response=4
    )
    trainer = Trainer(
        max_epochs=1,
        reload_dataloaders_every_n_epochs=1,
        callbacks=[LabelBalancing()],
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule)
    round_ = datamodule.last_round
    assert len(round_.responses) == 64 and round_.critiques
    assert {s.group for s in round_.critiques}.isdisjoint({s.group for s in round_.responses})
    # balanced cache: as many right as wrong pairs
    assert sum(p.is_right for p in datamodule.cache) * 2 == len(datamodule.cache)
    _assert_every_parameter_changed(AutoModelForCausalLM.from_pretrained(EMBEDDED_POLICY), module.policy)
    assert (Path(trainer.log_dir) / "hf" / "config.json").exists()


def test_trainer_without_reload_fails_clearly(tmp_path):
    trainer = Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs=1"):
        trainer.fit(GCRLModule(), RolloutDataModule(ArithmeticTask(num_eval=8)))

