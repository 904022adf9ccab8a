"""Truncated importance sampling: the loss's weights, the engine's logprobs, and a fit that uses them."""

import math
from pathlib import Path

import pytest
import torch

from scalars import scalar_series
from sorl.cli import cli_main
from sorl.batching import collate
from sorl.rollout import Sample
from sorl.engines import HFEngine, SamplingParams
from sorl.loss import GRPOLoss
from sorl.policy import completion_logprobs, load_policy, load_tokenizer
from sorl.tasks import Question

ROOT = Path(__file__).resolve().parents[1]


def test_weights_are_the_truncated_ratio_of_trainer_to_engine_logprobs():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages = torch.tensor([1.5])
    # engine logprobs lower by log 3 on token 0 (ratio 3, truncated to 2) and higher by log 2 on token 1 (0.5)
    behaviour = logprobs.detach() - torch.tensor([[math.log(3.0), -math.log(2.0), 0.0]])
    plain, _ = GRPOLoss()(logprobs, logprobs.detach(), advantages, mask)
    loss, stats = GRPOLoss(importance_sampling_cap=2.0)(
        logprobs, logprobs.detach(), advantages, mask, engine_logprobs=behaviour
    )
    # ratio 1 everywhere: per-token pg = -1.5; token mean over 2 tokens, weights 2 and 0.5
    assert plain.item() == pytest.approx(-1.5)
    assert loss.item() == pytest.approx((-1.5 * 2.0 - 1.5 * 0.5) / 2)
    assert stats["is_ratio_mean"].item() == pytest.approx((3.0 + 0.5) / 2)
    assert stats["is_ratio_max"].item() == pytest.approx(3.0)
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert torch.allclose(grad, torch.tensor([[-1.5 * 2.0 / 2, -1.5 * 0.5 / 2, 0.0]]))


def test_cap_needs_engine_logprobs_and_is_at_least_one():
    with pytest.raises(ValueError, match="engine_logprobs is required"):
        GRPOLoss(importance_sampling_cap=2.0)(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="importance_sampling_cap must be >= 1"):
        GRPOLoss(importance_sampling_cap=0.5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hf_engine_logprobs_match_the_trainer(tiny_policy_dir, temperature):
    policy, tokenizer = load_policy(tiny_policy_dir), load_tokenizer(tiny_policy_dir)
    engine = HFEngine()
    engine.setup(policy, tokenizer)
    prompts = [tokenizer("1+2=", add_special_tokens=False)["input_ids"], tokenizer("7*8-9=", add_special_tokens=False)["input_ids"]]
    sampling = SamplingParams(temperature=temperature, max_new_tokens=12, logprobs=True)
    completions = engine.generate(prompts, 3, sampling, seed=0)
    question = Question("q", "", "")
    samples = [
        Sample("response", g, question, prompts[g], c) for g, group in enumerate(completions) for c in group
    ]
    batch = collate(samples, tokenizer.pad_token_id, temperature, mask_truncated=False, engine_logprobs=True)
    with torch.no_grad():
        trainer_logprobs, _ = completion_logprobs(
            policy, batch["input_ids"], batch["attention_mask"], batch["completion_ids"], temperature
        )
    mask = batch["completion_mask"].bool()
    difference = (trainer_logprobs - batch["engine_logprobs"]).abs()[mask].max().item()
    assert difference < 1e-4, f"engine and trainer logprobs differ by {difference}"


def test_fit_with_importance_sampling_logs_the_ratio(tmp_path):
    cli_main([
        "fit", "--config", str(ROOT / "configs" / "gc_rl.yaml"), f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.check_val_every_n_epoch=100",
        "--data.questions_per_round=4", "--data.responses_per_question=4", "--data.critique_pairs_per_round=2",
        "--data.critiques_per_response=2", "--data.eval_max_questions=2", "--data.eval_samples=0",
        "--model.loss.init_args.importance_sampling_cap=2.0", "--data.engine_logprobs=true",
        f"--model.export_dir={tmp_path / 'hf'}",
    ])  # fmt: skip
    values = scalar_series(tmp_path).get("train/is_ratio_mean", [])
    assert values, "train/is_ratio_mean was not logged"
    # HFEngine samples with the trainer's own weights; bf16 autocast in training makes the small gap
    assert all(abs(v - 1.0) < 0.1 for v in values), values
