"""Rollouts with an in-process vLLM engine colocated with training (one engine per rank)."""

from __future__ import annotations

import os
import random
import tempfile
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sorl.engines.base import Completion, SamplingParams

VLLMDType = Literal["auto", "float32", "bfloat16", "float16"]


class VLLMEngine:
    """Samples with a vLLM ``LLM`` that lives in the training process, created on first use.

    On the first ``generate`` the policy's config and tokenizer are saved to a temporary folder and
    vLLM starts from it (5 to 10 s on 2 CPU cores, most of it importing vLLM); then, and at every
    ``sync_weights``, the policy's current tensors are passed to vLLM's model in place
    (``reload_weights``, no disk round trip) and the prefix cache, computed with the old weights,
    is reset.

    When to sync: the DataModule samples only at the start of a round (and in evaluation), and
    calls ``sync_weights`` right before, so one sync per round is exact; syncing after every
    optimizer step would copy weights that nothing samples from before the next sync.

    Sampling follows ``HFEngine``: no top-k, stop at the tokenizer's and the generation config's
    EOS, text decoded by the policy's tokenizer without special tokens. With
    ``SamplingParams.logprobs`` each completion carries the logprob of every sampled token under
    the distribution it was sampled from (vLLM's ``processed_logprobs``: logits / temperature,
    renormalised over the top-p nucleus when ``top_p < 1``); with ``top_p == 1`` that is the
    distribution the trainer's logprobs use. The same ``seed`` gives the same samples: each prompt
    gets its own vLLM seed drawn from ``random.Random(seed)`` (``seed=None``: fresh ones).

    DDP: every process builds its own engine from its own (identical) policy replica. Sharded
    policies (FSDP) are not supported: ``state_dict`` must hold full tensors.

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set when it starts),
    which is what lets ``sync_weights`` hand it tensors without copies. On CPU, vLLM then makes
    ``torch.set_num_threads`` a no-op for the rest of the process; set ``OMP_NUM_THREADS`` before
    starting instead.

    Args:
        dtype: vLLM's parameter dtype; ``auto`` takes the policy's.
        kv_cache_gib: KV-cache space in GiB (vLLM's ``kv_cache_memory_bytes``). The default 1 GiB
            suits the CPU machines this project is tested on; ``None`` sizes the cache from
            ``gpu_memory_utilization`` instead, the usual choice on a GPU.
        gpu_memory_utilization: share of the device's memory vLLM may take when ``kv_cache_gib`` is
            ``None`` (on a GPU colocated with training leave room for it, e.g. 0.3 to 0.5; on CPU
            it is the share of the NUMA node's memory and must fit in what is free).
        max_model_len: longest prompt plus completion in tokens; ``None`` takes the model config's
            ``max_position_embeddings``. Lower it to shrink the KV cache vLLM reserves per sequence.
        max_num_seqs: sequences vLLM decodes together at most.
        enforce_eager: no CUDA graphs or ``torch.compile``: faster start-up, and on CPU no slower
            for small models. Set ``False`` on a GPU for throughput.
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes (the n samples of a
            prompt, repeated system prompts); reset at every weight sync.
    """

    def __init__(
        self,
        dtype: VLLMDType = "auto",
        kv_cache_gib: float | None = 1.0,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
    ) -> None:
        if kv_cache_gib is not None and kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be > 0 or None, got {kv_cache_gib}")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        self.dtype = dtype
        self.kv_cache_gib = kv_cache_gib
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.enforce_eager = enforce_eager
        self.enable_prefix_caching = enable_prefix_caching
        self.policy: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.llm: Any = None  # vllm.LLM, created on the first generate
        self._start_dir: tempfile.TemporaryDirectory | None = None
        self._stale = False  # the policy changed since vLLM last received its weights

    def setup(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.policy, self.tokenizer = policy, tokenizer
        self._stale = True

    def sync_weights(self, policy: PreTrainedModel) -> None:
        self.policy = policy
        self._stale = True
        if self.llm is not None:
            self._push_weights()

    def generate(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams, seed: int | None = None
    ) -> list[list[Completion]]:
        if self.policy is None or self.tokenizer is None:
            raise RuntimeError("VLLMEngine.setup(policy, tokenizer) must be called before generate")
        if self.llm is None:
            self._start()
        elif self._stale:
            self._push_weights()
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        tokenizer = self.tokenizer
        eos_ids = sorted({tokenizer.eos_token_id, *_as_list(self.policy.generation_config.eos_token_id)} - {None})
        rng = random.Random(seed)
        params = [
            VLLMSamplingParams(
                n=n,
                temperature=0.0 if sampling.greedy else sampling.temperature,
                top_p=1.0 if sampling.greedy else sampling.top_p,
                top_k=0,  # off (vLLM's 0 or -1 both mean all tokens)
                max_tokens=sampling.max_new_tokens,
                stop_token_ids=eos_ids,
                logprobs=0 if sampling.logprobs else None,  # 0: only the sampled token's
                seed=rng.getrandbits(63),  # seed None: Random(None) draws fresh seeds from the OS
                detokenize=False,  # decoded below with the policy's tokenizer, as HFEngine does
            )
            for _ in prompt_ids
        ]
        # Lightning's mixed precision may have autocast on here (evaluation): vLLM runs in its own dtype.
        # Its sampler draws from the global torch RNG too (in this process): keep training's stream.
        device = self.policy.device
        with torch.autocast(device.type, enabled=False), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids], params, use_tqdm=False
            )
        results = []
        for output in outputs:  # vLLM returns requests in input order
            group = []
            for sample in output.outputs:
                tokens = list(sample.token_ids)
                if sample.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished a request with {sample.finish_reason!r}")
                logprobs = None
                if sampling.logprobs:
                    logprobs = [step[token].logprob for step, token in zip(sample.logprobs, tokens)]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                group.append(Completion(tokens, text, sample.finish_reason, logprobs))
            results.append(group)
        return results

    # ------------------------------------------------------------------ engine
    def _start(self) -> None:
        """A vLLM ``LLM`` for the policy's architecture, holding the policy's current weights."""
        # In-process engine: sync_weights must reach the model object (see the class docstring).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import numpy as np
        from vllm import LLM

        policy = self.policy
        # Config, generation config and tokenizer only: vLLM starts with placeholder weights
        # (load_format="dummy") and gets the policy's tensors in place at once, as at every sync.
        # (Under DDP, transformers' save_pretrained writes weights on rank 0 only.)
        self._start_dir = tempfile.TemporaryDirectory(prefix="sorl-vllm-")
        policy.config.save_pretrained(self._start_dir.name)
        policy.generation_config.save_pretrained(self._start_dir.name)
        self.tokenizer.save_pretrained(self._start_dir.name)
        dtype = str(policy.dtype).removeprefix("torch.") if self.dtype == "auto" else self.dtype
        executor = None  # vLLM's default: one in-process worker; on CPU it joins a DDP group as its own TP group
        if policy.device.type == "cuda" and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            # DDP on GPUs: vLLM's torchrun-style launcher puts each rank's engine on the GPU of LOCAL_RANK.
            # (Not exercised by the tests, which run on CPU.)
            executor = "external_launcher"
            os.environ["RANK"] = str(torch.distributed.get_rank())
            os.environ["LOCAL_RANK"] = str(policy.device.index)
        # An in-process vLLM seeds the global RNGs at start-up; training keeps its own streams.
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[policy.device] if policy.device.type == "cuda" else []):
            self.llm = LLM(
                model=self._start_dir.name,
                load_format="dummy",
                dtype=dtype,
                kv_cache_memory_bytes=int(self.kv_cache_gib * 2**30) if self.kv_cache_gib is not None else None,
                gpu_memory_utilization=self.gpu_memory_utilization,
                max_model_len=self.max_model_len,
                max_num_seqs=self.max_num_seqs,
                enforce_eager=self.enforce_eager,
                enable_prefix_caching=self.enable_prefix_caching,
                logprobs_mode="processed_logprobs",  # after temperature (and top-p), as sampled
                distributed_executor_backend=executor,
                # vLLM 0.32 on CPU fails on seeded requests whose prompt is split across steps
                # ("CPU Generator does not use offset"): schedule whole prompts only.
                enable_chunked_prefill=policy.device.type != "cpu",
                trust_remote_code=False,
            )
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        self._push_weights()

    @torch.no_grad()
    def _push_weights(self) -> None:
        """The policy's current tensors into vLLM's model, in place; then drop cached prefixes."""
        weights = [(name, tensor.detach()) for name, tensor in self.policy.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        self._stale = False


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
