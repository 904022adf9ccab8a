"""Failing clearly or safely: non-finite losses, rounds without critique data, bad config values."""

import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from sorl import ArithmeticTask, GCRLModule, GRPOLoss, LabelBalancing, RolloutDataModule
from sorl.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]


class NaNOnCalls(GRPOLoss):
    """GRPOLoss whose result is NaN on the given (0-based) calls."""

    def __init__(self, nan_calls: set[int]) -> None:
        super().__init__()
        self.nan_calls = nan_calls
        self.calls = 0

    def forward(self, *args, **kwargs):
        loss, diagnostics = super().forward(*args, **kwargs)
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        self.calls += 1
        return loss, diagnostics


def _fit(module: GCRLModule, task, tmp_path: Path, batch_size: int = 8, mode: str = "gc_rl") -> RolloutDataModule:
    datamodule = RolloutDataModule(
        task, mode=mode, questions_per_round=4, responses_per_question=4, critique_pairs_per_round=2,
        critiques_per_response=2, batch_size=batch_size, eval_max_questions=2,
    )  # fmt: skip
    trainer = Trainer(
        max_epochs=1, reload_dataloaders_every_n_epochs=1, callbacks=[LabelBalancing()], default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0, logger=False,
    )  # fmt: skip
    trainer.fit(module, datamodule)
    return datamodule


def _weights(module: GCRLModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.policy.named_parameters()}


@pytest.mark.parametrize("nan_calls, expect_change", [({0, 1, 2, 3, 4, 5}, False), ({0}, True)])
def test_non_finite_loss_skips_the_step_and_counts_it(nan_calls, expect_change, tmp_path):
    module = GCRLModule(loss=NaNOnCalls(nan_calls), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    module.configure_model()
    before = _weights(module)
    with pytest.warns(UserWarning, match="non-finite gradient"):
        _fit(module, ArithmeticTask(num_eval=2), tmp_path, batch_size=4, mode="g_rl")  # 16 responses: 4 steps
    after = _weights(module)
    assert all(torch.isfinite(p).all() for p in after.values())
    changed = any(not torch.equal(before[name], after[name]) for name in before)
    assert changed == expect_change
    assert module.skipped_steps == min(len(nan_calls), 4)


class AlwaysWrong:
    """The embedded task with a verifier that rejects every response: no mixed-label question."""

    def __init__(self) -> None:
        self.task = ArithmeticTask(num_eval=2)

    def __getattr__(self, name):
        return getattr(self.task, name)

    def verify(self, question, response) -> float:
        return 0.0


def test_round_without_mixed_pairs_trains_on_responses_and_says_why(tmp_path, caplog):
    module = GCRLModule()
    with caplog.at_level(logging.INFO):
        datamodule = _fit(module, AlwaysWrong(), tmp_path)
    round_ = datamodule.last_round
    assert round_.responses and not round_.critiques and not datamodule.cache
    assert round_.metrics["rollout/critique_pairs"] == 0
    assert "no question so far had both a right and a wrong response" in caplog.text
    assert sum(batch["input_ids"].shape[0] for batch in datamodule._schedule) == len(round_.responses)


def test_bad_config_value_names_the_key(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(ROOT / "configs" / "gc_rl.yaml"), "--data.questions_per_round=many"])
    error = capsys.readouterr().err
    assert "questions_per_round" in error and "many" in error
