"""VLLMEngine's calls into vLLM, against a fake ``vllm`` module (runs without vLLM): when it
starts, the order of sleep, wake-up, weight streaming and generation in sleep mode, what a
sync sends, and the bytes a sync holds."""

import sys
import types
from contextlib import nullcontext

import pytest
import torch

from sorl.engines import SamplingParams, VLLMEngine
from sorl.policy import load_policy, load_tokenizer


class FakeLLM:
    """Records every call; ``collective_rpc("reload_weights")`` reads the stream one tensor at a
    time and keeps none (the largest a sync can then hold is one tensor)."""

    def __init__(self, calls: list, **kwargs) -> None:
        self.calls = calls
        self.kwargs = kwargs
        self.sent: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        calls.append(("LLM",))

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", tuple(tags) if tags else None))
        return True

    def collective_rpc(self, method: str, kwargs: dict) -> list:
        self.calls.append(("collective_rpc", method))
        for name, tensor in kwargs["weights_iterator"]:
            self.sent.append((name, tuple(tensor.shape), tensor.dtype))
        return [None]

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    def generate(self, prompts: list, params: list, use_tqdm: bool = False) -> list:
        self.calls.append(("generate", len(prompts)))
        eos = params[0].stop_token_ids[0]
        sample = types.SimpleNamespace(token_ids=[eos], finish_reason="stop", logprobs=None)
        return [types.SimpleNamespace(outputs=[sample] * params[0].n) for _ in prompts]


@pytest.fixture
def fake_vllm(monkeypatch):
    """A ``vllm`` module whose ``LLM`` is :class:`FakeLLM`; returns the list the calls go to."""
    calls: list = []
    module = types.ModuleType("vllm")
    module.LLM = lambda **kwargs: FakeLLM(calls, **kwargs)
    module.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda prompt_token_ids: prompt_token_ids
    module.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the engine sets it; restored afterwards
    return calls


class OnCuda:
    """The embedded policy as the engine sees a policy on a GPU (what it reads, and nothing else)."""

    device = torch.device("cuda", 0)

    def __init__(self, model) -> None:
        self.model = model
        self.config, self.generation_config, self.dtype = model.config, model.generation_config, model.dtype

    def state_dict(self, keep_vars: bool = False) -> dict:
        return self.model.state_dict(keep_vars=keep_vars)

    def parameters(self):
        return self.model.parameters()


@pytest.fixture
def cuda_policy(monkeypatch):
    # No GPU here: the engine's CUDA RNG fork is the one CUDA call left to stub.
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices=None: nullcontext())
    return OnCuda(load_policy(None))


GREEDY = SamplingParams(greedy=True, max_new_tokens=4)


def test_sleep_mode_order_on_a_gpu(fake_vllm, cuda_policy):
    """On by default on CUDA: asleep after start; a sync wakes the weights, streams them and sleeps;
    generate wakes the weights, (syncs if stale,) wakes the KV cache, samples and sleeps."""
    engine = VLLMEngine()
    engine.setup(cuda_policy, load_tokenizer(None))
    engine.sync_weights(cuda_policy)
    assert engine.llm.kwargs["enable_sleep_mode"] is True
    assert fake_vllm == [
        ("LLM",), ("sleep", 1),
        ("wake_up", ("weights",)), ("collective_rpc", "reload_weights"), ("reset_prefix_cache",), ("sleep", 1),
    ]  # fmt: skip
    fake_vllm.clear()
    engine.generate([[3, 4]], 2, GREEDY)
    assert fake_vllm == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",)), ("generate", 1), ("sleep", 1)]
    fake_vllm.clear()
    engine.setup(cuda_policy, load_tokenizer(None))  # a new policy: stale until pushed
    engine.generate([[3, 4]], 1, GREEDY)
    assert fake_vllm == [
        ("wake_up", ("weights",)), ("collective_rpc", "reload_weights"), ("reset_prefix_cache",),
        ("wake_up", ("kv_cache",)), ("generate", 1), ("sleep", 1),
    ]  # fmt: skip


def test_sleep_mode_sleeps_again_when_sampling_fails(fake_vllm, cuda_policy, monkeypatch):
    engine = VLLMEngine()
    engine.setup(cuda_policy, load_tokenizer(None))
    engine.sync_weights(cuda_policy)
    monkeypatch.setattr(FakeLLM, "generate", lambda *args, **kwargs: 1 / 0)
    fake_vllm.clear()
    with pytest.raises(ZeroDivisionError):
        engine.generate([[3, 4]], 1, GREEDY)
    assert fake_vllm == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",)), ("sleep", 1)]


def test_sleep_mode_off_on_cpu_and_refused_there(fake_vllm):
    policy, tokenizer = load_policy(None), load_tokenizer(None)
    engine = VLLMEngine()  # sleep_mode None: off on CPU, where vLLM has none
    engine.setup(policy, tokenizer)
    engine.generate([[3, 4]], 1, GREEDY)
    assert engine.llm.kwargs["enable_sleep_mode"] is False
    assert fake_vllm == [("LLM",), ("collective_rpc", "reload_weights"), ("reset_prefix_cache",), ("generate", 1)]
    with pytest.raises(ValueError, match=r"sleep_mode=True\) needs a CUDA device"):
        VLLMEngine(sleep_mode=True).setup(policy, tokenizer)
    VLLMEngine(sleep_mode=False).setup(policy, tokenizer)


def test_first_sync_starts_the_engine_with_nothing_to_sample(fake_vllm):
    """A rank with no evaluation item never calls generate; its sync still starts vLLM (a
    collective under external_launcher) and streams the weights."""
    policy = load_policy(None)
    engine = VLLMEngine()
    engine.setup(policy, load_tokenizer(None))
    assert engine.llm is None
    engine.sync_weights(policy)
    assert fake_vllm == [("LLM",), ("collective_rpc", "reload_weights"), ("reset_prefix_cache",)]


def test_sync_streams_each_tensor_once_in_the_engine_dtype_and_holds_one_at_a_time(fake_vllm):
    policy = load_policy(None)  # float32, output head tied to the embedding
    engine = VLLMEngine(dtype="bfloat16")
    engine.setup(policy, load_tokenizer(None))
    engine.sync_weights(policy)
    state = policy.state_dict()
    assert policy.config.tie_word_embeddings and "lm_head.weight" in state
    expected = [(name, tuple(t.shape), torch.bfloat16) for name, t in state.items()]
    assert engine.llm.sent == expected  # the tied head too: vLLM 0.32's reload needs its name
    largest = max(t.numel() for t in state.values()) * 2  # bytes in bfloat16
    # a consumer that keeps nothing: at most the tensor it is reading and the one being made
    assert largest <= engine.last_sync_peak_bytes <= 2 * largest
    assert engine.sync_bytes_held == 0  # nothing made by the sync is alive after it

    same_dtype = VLLMEngine()  # auto: the policy's float32, so its own tensors go as they are
    same_dtype.setup(policy, load_tokenizer(None))
    same_dtype.sync_weights(policy)
    assert same_dtype.last_sync_peak_bytes == 0
