"""Length budgets and middle truncation of embedded responses."""

import pytest

from sorl.budgets import TRUNCATION_MARKER, check_length_budgets, truncate_middle


def test_budgets_that_fit_pass_at_the_exact_limit():
    # answer 100 + 300 = 400 <= 800; critique 100 + 50 + 300 + 350 = 800 <= 800
    check_length_budgets(100, 300, 50, 350, max_model_len=800)
    check_length_budgets(10**6, 10**6, 10**6, 10**6, max_model_len=None)  # no engine limit


def test_answer_sequences_too_long_are_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"100 \(prompt\) \+ 300 \(response\) = 400 tokens, more than max_model_len 399"):
        check_length_budgets(100, 300, 0, 0, max_model_len=399)


def test_critique_sequences_too_long_are_refused_with_the_numbers_and_the_room_left():
    # The shipped Qwen GPU configs' bounds with a 512-token prompt and a 128-token template:
    # 512 + 128 + 3072 + 2048 = 5760 > 4096; room for 4096 - 512 - 128 - 2048 = 1408 embedded tokens.
    with pytest.raises(ValueError) as error:
        check_length_budgets(512, 3072, 128, 2048, max_model_len=4096)
    message = str(error.value)
    assert "512 (prompt) + 128 (critique template) + 3072 (embedded response) + 2048 (critique) = 5760" in message
    assert "max_embedded_response_tokens to 1408" in message
    check_length_budgets(512, 3072, 128, 2048, max_model_len=4096, max_embedded_response_tokens=1408)
    with pytest.raises(ValueError, match="1409 \\(embedded response\\)"):
        check_length_budgets(512, 3072, 128, 2048, max_model_len=4096, max_embedded_response_tokens=1409)


def test_no_truncation_hint_when_even_an_empty_response_does_not_fit():
    with pytest.raises(ValueError) as error:
        check_length_budgets(100, 10, 50, 900, max_model_len=1000)
    assert "max_embedded_response_tokens" not in str(error.value)


@pytest.mark.parametrize("name", ["max_prompt_tokens", "max_critique_tokens"])
def test_negative_bounds_are_refused(name):
    values = dict(max_prompt_tokens=1, max_response_tokens=1, critique_prompt_overhead=1, max_critique_tokens=1)
    values[name] = -1
    with pytest.raises(ValueError, match=name):
        check_length_budgets(**values, max_model_len=None)


def test_truncate_middle_on_token_ids():
    ids = list(range(10))
    assert truncate_middle(ids, 10, [-1]) is ids  # fits: unchanged
    # 7 items, marker of 2: 5 kept, head 3 (one more than the tail), tail 2
    assert truncate_middle(ids, 7, [-1, -2]) == [0, 1, 2, -1, -2, 8, 9]
    assert truncate_middle(ids, 6, [-1, -2]) == [0, 1, -1, -2, 8, 9]
    assert truncate_middle(tuple(ids), 3, (-1,)) == (0, -1, 9)
    with pytest.raises(ValueError, match="no room"):
        truncate_middle(ids, 2, [-1])


def test_truncate_middle_on_text_keeps_the_final_answer():
    response = "Step 1: 12 * 3 = 36. " * 20 + "The answer is 42."
    cut = truncate_middle(response, 60, TRUNCATION_MARKER)
    assert len(cut) == 60
    assert cut.startswith("Step 1: 12") and cut.endswith("The answer is 42.")
    assert TRUNCATION_MARKER in cut


# ---------------------------------------------------------------- wired into the DataModule
def test_bounds_past_the_models_positions_are_refused_before_any_rollout(tmp_path):
    from lightning.pytorch import Trainer

    from sorl import ArithmeticTask, GCRLModule, RolloutDataModule

    # the embedded policy has 256 positions: a 200-token response embedded in a critique prompt,
    # then 100 critique tokens, cannot fit
    datamodule = RolloutDataModule(ArithmeticTask(num_eval=2), max_response_tokens=200, max_critique_tokens=100)
    trainer = Trainer(max_epochs=1, reload_dataloaders_every_n_epochs=1, default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"critique sequences need up to .* more than max_model_len 256"):
        trainer.fit(GCRLModule(), datamodule)
    assert datamodule.last_round is None  # refused before the first rollout
    # g_rl samples no critique: the same bounds fit
    RolloutDataModule(ArithmeticTask(num_eval=2), mode="g_rl", max_response_tokens=200, max_critique_tokens=100)


def test_a_long_response_is_cut_from_the_middle_in_critique_prompts():
    from sorl import ArithmeticTask, HFEngine, SamplingParams
    from sorl.policy import load_tokenizer
    from sorl.rollout import RolloutContext, embedded_response
    from sorl.sampler import Sampler

    tokenizer = load_tokenizer(None)
    sampler = Sampler(HFEngine(), tokenizer)
    context = RolloutContext(ArithmeticTask(), sampler, SamplingParams(), SamplingParams(), rank=0, max_embedded_response_tokens=20)
    short = "1+2=3;A:3"
    long = "1+2=3;" * 10 + "A:3"
    assert embedded_response(context, short) == short
    cut = embedded_response(context, long)
    assert len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 21  # seams may re-tokenize by one
    assert cut.startswith("1+2=3;") and cut.endswith("A:3") and "[...]" in cut


def test_a_critique_template_shorter_than_the_answer_template():
    # critique prompt 15 tokens, answer prompt 20: the overhead is -5, and both sequences fit 100
    check_length_budgets(20, 40, -5, 40, max_model_len=100)
    with pytest.raises(ValueError, match="critique sequences need up to 20 .* = 101 tokens"):
        check_length_budgets(20, 40, -5, 46, max_model_len=100)
    with pytest.raises(ValueError, match="max_prompt_tokens \\+ critique_prompt_overhead must be >= 0"):
        check_length_budgets(2, 40, -5, 40, max_model_len=100)
