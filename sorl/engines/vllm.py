"""Rollouts with an in-process vLLM engine colocated with training (one engine per rank)."""

from __future__ import annotations

import os
import random
import tempfile
import weakref
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sorl.engines.base import Completion, SamplingParams

VLLMDType = Literal["auto", "float32", "bfloat16", "float16"]


class VLLMEngine:
    """Samples with a vLLM ``LLM`` that lives in the training process.

    ``start`` (or the first ``sync_weights``) saves the policy's config and tokenizer to a
    temporary folder and starts vLLM from it (5 to 10 s on 2 CPU cores, most of it importing
    vLLM); at every ``sync_weights`` the policy's current tensors are then streamed into vLLM's
    model in place (``reload_weights``, no disk round trip) and the prefix cache, computed with
    the old weights, is reset.

    When to sync: the DataModule samples only at the start of a round (and in evaluation), and
    calls ``sync_weights`` on every rank right before, so one sync per round is exact; syncing
    after every optimizer step would copy weights that nothing samples from before the next sync.

    Streamed sync: the weights go to vLLM one tensor at a time, in the policy's ``state_dict``
    order and names (vLLM's ``load_weights`` maps transformers' names; a tied output head is sent
    under its own name too, as vLLM's reload needs). A parameter sharded by FSDP2 (a ``DTensor``) has its shard cast
    to the engine's dtype and is then all-gathered whole (``full_tensor``, a collective: every
    rank syncs together, which the DataModule does), handed to vLLM and dropped; the whole policy
    is never gathered at once, and nothing gathered is alive once ``sync_weights`` returns, so
    none of it is held while vLLM generates. vLLM 0.32 keeps the tensors of one of its fused
    modules (q, k and v; gate and up) until the module's last one arrives, so the most bytes held
    at once is about the largest such group, not one parameter: ``last_sync_peak_bytes`` is that
    peak as measured in the last sync (the tensors this engine made, gathered or cast, counted
    from when they are handed over until they are freed).

    Sampling follows ``HFEngine``: no top-k, stop at the tokenizer's and the generation config's
    EOS, text decoded by the policy's tokenizer without special tokens. With
    ``SamplingParams.logprobs`` each completion carries the logprob of every sampled token under
    the distribution it was sampled from (vLLM's ``processed_logprobs``: logits / temperature,
    renormalised over the top-p nucleus when ``top_p < 1``); with ``top_p == 1`` that is the
    distribution the trainer's logprobs use. The same ``seed`` gives the same samples: each prompt
    gets its own vLLM seed drawn from ``random.Random(seed)`` (``seed=None``: fresh ones).

    DDP and FSDP2: every process runs its own engine with the whole policy. vLLM's start is a
    collective under its ``external_launcher`` (several processes on GPUs), and so is an FSDP2
    sync: the DataModule calls ``sync_weights`` on every rank before every rollout and
    evaluation, whatever the rank then samples. ``generate`` never gathers: with a sharded policy
    it refuses to run on weights that were not synced.

    Sleep mode (GPU): between rollouts vLLM gives its memory back to training. vLLM starts with
    ``enable_sleep_mode`` and sleeps at once; a sync wakes the weights, streams the new ones in
    and sleeps again; ``generate`` wakes the weights, syncs them if stale, wakes the KV cache,
    samples and sleeps. Level 1: weights are kept in CPU memory and the KV cache is dropped;
    level 2 would drop the weights too, and a ``generate`` without a sync before it (the second
    of a round) would then have none.

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
        sleep_mode: vLLM's sleep mode (see above); ``None`` turns it on where vLLM has it (a CUDA
            policy) and off on CPU, where ``True`` is an error.
    """

    samples_policy_modules = False  # vLLM has its own copy of the weights, synced by sync_weights

    def __init__(
        self,
        dtype: VLLMDType = "auto",
        kv_cache_gib: float | None = 1.0,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        sleep_mode: bool | None = None,
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
        self.sleep_mode = sleep_mode
        self.policy: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.llm: Any = None  # vllm.LLM, created by start
        self.last_sync_peak_bytes = 0  # most bytes of the tensors a sync made (gathers, casts) alive at once
        self.sync_bytes_held = 0  # bytes of those tensors alive now (0 once a sync has returned)
        self._start_dir: tempfile.TemporaryDirectory | None = None
        self._stale = False  # the policy changed since vLLM last received its weights
        self._sleeps = False  # sleep mode, resolved for the policy's device by setup

    def setup(self, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        on_cuda = policy.device.type == "cuda"
        if self.sleep_mode and not on_cuda:
            raise ValueError(
                f"VLLMEngine(sleep_mode=True) needs a CUDA device (vLLM has no sleep mode on {policy.device.type}); "
                "leave sleep_mode unset (None) to use it where it exists"
            )
        self.policy, self.tokenizer = policy, tokenizer
        self._sleeps = on_cuda if self.sleep_mode is None else self.sleep_mode
        self._stale = True

    def start(self) -> None:
        """Starts vLLM if it has not started (a collective under ``external_launcher``: call it on
        every rank); asleep afterwards in sleep mode, and without the policy's weights until a sync."""
        if self.policy is None or self.tokenizer is None:
            raise RuntimeError("VLLMEngine.setup(policy, tokenizer) must be called before start")
        if self.llm is None:
            self._start()
            if self._sleeps:
                self.llm.sleep(level=1)

    def sync_weights(self, policy: PreTrainedModel) -> None:
        """Starts vLLM if needed and streams ``policy``'s weights into it. Under a sharded policy a
        collective: every rank calls it together."""
        self.policy = policy
        self._stale = True
        self.start()
        if self._sleeps:
            self.llm.wake_up(tags=["weights"])
        self._push_weights()
        if self._sleeps:
            self.llm.sleep(level=1)

    def generate(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams, seed: int | None = None
    ) -> list[list[Completion]]:
        if self.policy is None or self.tokenizer is None:
            raise RuntimeError("VLLMEngine.setup(policy, tokenizer) must be called before generate")
        if self._stale and _is_sharded(self.policy):
            # gathering here would be a collective that ranks with nothing to sample never join
            raise RuntimeError("VLLMEngine: with a sharded policy, call sync_weights on every rank before generate")
        self.start()
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
        device = self.policy.device
        if self._sleeps:
            self.llm.wake_up(tags=["weights"])
        try:
            if self._stale:
                self._push_weights()
            if self._sleeps:
                self.llm.wake_up(tags=["kv_cache"])
            # Lightning's mixed precision may have autocast on here (evaluation): vLLM runs in its own dtype.
            # Its sampler draws from the global torch RNG too (in this process): keep training's stream.
            with torch.autocast(device.type, enabled=False), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                outputs = self.llm.generate(
                    [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids], params, use_tqdm=False
                )
        finally:
            if self._sleeps:  # training gets the memory back, also when sampling failed
                self.llm.sleep(level=1)
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
                enable_sleep_mode=self._sleeps,
                trust_remote_code=False,
            )
        random.setstate(python_state)
        np.random.set_state(numpy_state)

    @torch.no_grad()
    def _push_weights(self) -> None:
        """The policy's current tensors streamed into vLLM's model, in place; then drop cached prefixes."""
        weights = self._streamed_weights()
        self.last_sync_peak_bytes = self.sync_bytes_held
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        finally:
            # Every rank runs every gather, also if vLLM stopped reading early (or failed).
            for _ in weights:
                pass
        self.llm.reset_prefix_cache()
        self._stale = False

    def _streamed_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` in the engine's dtype, one at a time, gathered whole from FSDP2 shards.

        Tensors this makes (a gather, a cast) are counted in ``_held_bytes`` from when they are
        handed over until they are freed (``weakref.finalize``), and the peak is kept.
        """
        dtype = self._dtype()
        # Every name, a tied output head too (gathered again, not kept from the embedding's turn):
        # vLLM 0.32's reload counts what each of its modules received, and a head left out kept
        # the weights it had before (greedy outputs went wrong when it was skipped).
        for name, tensor in self.policy.state_dict(keep_vars=True).items():
            with torch.no_grad():
                tensor = tensor.detach()
                if isinstance(tensor, DTensor):
                    # the shard is cast first: the gather moves and holds the engine's dtype only
                    whole = tensor.to(dtype if tensor.is_floating_point() else tensor.dtype).full_tensor()
                else:
                    whole = tensor.to(dtype) if tensor.is_floating_point() else tensor
            if whole.untyped_storage().data_ptr() != _storage_of(tensor):
                self._count(whole)
            del tensor
            yield name, whole
            del whole  # nothing of this engine's keeps it past vLLM's use

    def _count(self, tensor: torch.Tensor) -> None:
        size = tensor.untyped_storage().nbytes()
        self.sync_bytes_held += size
        self.last_sync_peak_bytes = max(self.last_sync_peak_bytes, self.sync_bytes_held)
        weakref.finalize(tensor, self._release, size)

    def _release(self, size: int) -> None:
        self.sync_bytes_held -= size

    def _dtype(self) -> torch.dtype:
        return self.policy.dtype if self.dtype == "auto" else getattr(torch, self.dtype)


def _is_sharded(policy: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in policy.parameters())


def _storage_of(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.untyped_storage().data_ptr()


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)
