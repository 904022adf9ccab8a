"""HFEngine samples the distribution the trainer scores, whatever the model folder's
``generation_config.json`` says (transformers would otherwise fill unset settings from it)."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from sorl.engines import HFEngine, SamplingParams
from sorl.policy import EMBEDDED_POLICY, completion_logprobs, load_policy, load_tokenizer
from sorl.tasks import ArithmeticTask

# Each of these changes what transformers' generate samples when the caller leaves it unset.
HOSTILE_GENERATION_CONFIG = {
    "do_sample": True,
    "temperature": 0.05,
    "top_p": 0.5,
    "top_k": 3,
    "min_p": 0.3,
    "repetition_penalty": 2.0,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 12,
    "suppress_tokens": [3],
}


@pytest.fixture
def hostile_policy_dir(tmp_path: Path) -> str:
    """The embedded policy with a generation_config.json that sets every sampling knob."""
    path = tmp_path / "policy"
    shutil.copytree(EMBEDDED_POLICY, path)
    config_file = path / "generation_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, **HOSTILE_GENERATION_CONFIG}))
    return str(path)


def _prompts(tokenizer) -> list[list[int]]:
    task = ArithmeticTask()
    questions = task.eval_questions()[:4]
    return [tokenizer(task.response_prompt(q), add_special_tokens=False)["input_ids"] for q in questions]


@torch.no_grad()
def _argmax_decode(model, prompt: list[int], eos_id: int, max_new_tokens: int) -> list[int]:
    """Greedy decoding by hand: one full forward pass per token, no generate, no cache."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        if token == eos_id:
            break
    return ids[len(prompt) :]


def test_hf_engine_greedy_ignores_the_model_generation_config(hostile_policy_dir):
    model, tokenizer = load_policy(hostile_policy_dir).eval(), load_tokenizer(hostile_policy_dir)
    assert model.generation_config.repetition_penalty == 2.0  # the folder's settings were loaded
    engine = HFEngine()
    engine.setup(model, tokenizer)
    prompts = _prompts(tokenizer)
    groups = engine.generate(prompts, 1, SamplingParams(greedy=True, max_new_tokens=32))
    for prompt, group in zip(prompts, groups):
        assert group[0].token_ids == _argmax_decode(model, prompt, tokenizer.eos_token_id, 32)
    assert any(group[0].finish_reason == "stop" for group in groups)  # EOS ids still come from the model
    # the user's generation config is put back, unchanged
    assert model.generation_config.repetition_penalty == 2.0 and model.generation_config.top_k == 3


def test_hf_engine_sampled_logprobs_match_the_trainer(hostile_policy_dir):
    model, tokenizer = load_policy(hostile_policy_dir).eval(), load_tokenizer(hostile_policy_dir)
    engine = HFEngine()
    engine.setup(model, tokenizer)
    prompts = _prompts(tokenizer)
    temperature = 0.8
    sampling = SamplingParams(temperature=temperature, max_new_tokens=32, logprobs=True)
    groups = engine.generate(prompts, 4, sampling, seed=3)
    distinct = set()
    for prompt, group in zip(prompts, groups):
        for completion in group:
            distinct.add(tuple(completion.token_ids))
            ids = torch.tensor([prompt + completion.token_ids])
            completion_ids = torch.tensor([completion.token_ids])
            trainer, _ = completion_logprobs(model, ids, torch.ones_like(ids), completion_ids, temperature)
            torch.testing.assert_close(torch.tensor(completion.logprobs), trainer[0], atol=1e-4, rtol=0)
    assert len(distinct) > len(prompts)  # it sampled (the folder's temperature 0.05 would be near-greedy)


def test_generate_never_synchronises_ranks(monkeypatch):
    """transformers' generate all-reduces "finished?" at every decode step for a module that
    torch's fully_shard manages (synced_gpus); HFEngine turns that off, since ranks call it
    different numbers of times (tests/test_eval_ranks.py runs the 2-process case)."""
    policy, tokenizer = load_policy(None), load_tokenizer(None)
    policy._is_fsdp_managed_module = True  # what fully_shard sets
    seen = []
    generate = policy.generate
    monkeypatch.setattr(policy, "generate", lambda **kwargs: seen.append(kwargs.get("synced_gpus")) or generate(**kwargs))
    engine = HFEngine()
    engine.setup(policy, tokenizer)
    engine.generate([[3, 4]], 1, SamplingParams(greedy=True, max_new_tokens=2))
    assert seen == [False]


def test_bf16_engine_samples_a_copy_refreshed_by_each_sync():
    """HFEngine(dtype="bfloat16") samples from a bfloat16 copy of the float32 policy: its greedy
    tokens are those of the policy cast by hand, the trained parameters stay float32, and a sync
    after an update carries the new weights into the copy."""
    policy, tokenizer = load_policy(None).train(), load_tokenizer(None)
    engine = HFEngine(dtype="bfloat16")
    engine.setup(policy, tokenizer)
    prompts = _prompts(tokenizer)
    greedy = SamplingParams(greedy=True, max_new_tokens=24)

    def by_hand() -> list[list[int]]:
        cast = copy.deepcopy(policy)
        for param in cast.parameters():
            param.data = param.data.to(torch.bfloat16)
        reference = HFEngine()
        reference.setup(cast, tokenizer)
        return [group[0].token_ids for group in reference.generate(prompts, 1, greedy)]

    assert [group[0].token_ids for group in engine.generate(prompts, 1, greedy)] == by_hand()
    assert {p.dtype for p in policy.parameters()} == {torch.float32} and policy.training
    assert {p.dtype for p in engine.policy.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    before = [group[0].token_ids for group in engine.generate(prompts, 1, greedy)]
    engine.sync_weights(policy)
    after = [group[0].token_ids for group in engine.generate(prompts, 1, greedy)]
    assert after == by_hand() != before


def test_engine_dtype_of_the_policy_samples_the_policy_itself():
    policy = load_policy(None, dtype="bfloat16")
    engine = HFEngine(dtype="bfloat16")
    engine.setup(policy, load_tokenizer(None))
    assert engine.policy is policy


def test_shared_prompts_run_each_prefill_once_and_sample_the_same():
    """share_prompts (the default) runs each prompt once for its n samples: no forward sees the
    n-times repeated prompts. With the same seed it samples what the repeated prompts sample,
    with the same logprobs up to float rounding, prompts of different lengths (left padding) included."""
    policy, tokenizer = load_policy(None).eval(), load_tokenizer(None)
    prompts = _prompts(tokenizer)
    prompts[1] = prompts[1][:2]  # a short prompt: padded on the left
    n, sampling = 4, SamplingParams(temperature=1.0, max_new_tokens=24, logprobs=True)
    shapes: list[tuple[int, int]] = []
    hook = policy.model.embed_tokens.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    samples = {}
    for share in (False, True):
        shapes.clear()
        engine = HFEngine(share_prompts=share)
        engine.setup(policy, tokenizer)
        samples[share] = engine.generate(prompts, n, sampling, seed=5)
        width = max(map(len, prompts))
        assert shapes[0] == ((len(prompts), width - 1) if share else (len(prompts) * n, width))
        assert all(rows == len(prompts) * n and length == 1 for rows, length in shapes[1:])
    hook.remove()
    for unshared, shared in zip(samples[False], samples[True]):
        assert [c.token_ids for c in shared] == [c.token_ids for c in unshared]
        for a, b in zip(unshared, shared):
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-4, rtol=0)
    assert len({tuple(c.token_ids) for group in samples[True] for c in group}) > len(prompts)


def test_shared_prompts_greedy_gives_n_equal_samples():
    """n greedy samples of a prompt (generate itself refuses num_return_sequences > 1 when greedy)."""
    policy, tokenizer = load_policy(None).eval(), load_tokenizer(None)
    engine = HFEngine()
    engine.setup(policy, tokenizer)
    prompts = _prompts(tokenizer)
    groups = engine.generate(prompts, 3, SamplingParams(greedy=True, max_new_tokens=16))
    for prompt, group in zip(prompts, groups):
        assert [c.token_ids for c in group] == [_argmax_decode(policy, prompt, tokenizer.eos_token_id, 16)] * 3
