"""Work across ranks: reductions, whole parameters for sampling, and per-process RNG state."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from transformers import AutoModelForCausalLM, PreTrainedModel


def reduce(trainer: Any, tensor: torch.Tensor, op: Literal["sum", "max"]) -> torch.Tensor:
    """``tensor`` summed or maxed over ranks (returned on the CPU); itself with one process."""
    if trainer.world_size == 1:
        return tensor
    strategy = trainer.strategy
    on_device = tensor.to(strategy.root_device)
    if op == "max":
        return strategy.all_gather(on_device).max(dim=0).values.cpu()
    return strategy.reduce(on_device, reduce_op="sum").cpu()


def reduce_sums(trainer: Any, sums: dict[str, Sequence[float]]) -> dict[str, float]:
    """Global ``sum / count`` per name over all ranks, from each rank's ``name -> (sum, count)``;
    a name some ranks lack (no critiques there, no question of some set) still lines up."""
    names = sorted(sums)
    if trainer.world_size > 1:
        gathered: list[list[str]] = [[] for _ in range(trainer.world_size)]
        torch.distributed.all_gather_object(gathered, names)
        names = sorted(set().union(*gathered))
    totals = torch.tensor([[float(v) for v in sums.get(n, (0.0, 0.0))] for n in names], dtype=torch.float64)
    totals = reduce(trainer, totals, "sum")
    return {n: (t[0] / t[1]).item() for n, t in zip(names, totals) if t[1] > 0}


def shard_policy(policy: torch.nn.Module, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy) -> None:
    """FSDP2 (``fully_shard``) on each decoder layer, then on the root (embeddings, final norm,
    head), over ``mesh``: one all-gather and one reduce-scatter per layer.

    Decoder layers are the modules whose class the model names in ``_no_split_modules`` (the list
    transformers and accelerate shard by), so no architecture is named here. Layers free their
    gathered parameters after forward and gather them again in backward; the root keeps its own
    (FSDP2's default for the root, which backward needs first). :func:`full_parameters` restores
    exactly these settings after sampling.
    """
    layer_names = set(policy._no_split_modules or ())
    layers = [m for m in policy.modules() if type(m).__name__ in layer_names]
    if not layers:
        raise ValueError(
            f"{type(policy).__name__} names no decoder layer class in _no_split_modules ({sorted(layer_names)}): "
            "cannot shard it per layer"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True, mp_policy=mp_policy)
    fully_shard(policy, mesh=mesh, reshard_after_forward=False, mp_policy=mp_policy)


def meta_copy(trainer: Any, full: PreTrainedModel | None, trust_remote_code: bool = False) -> PreTrainedModel:
    """On every rank, a model without storage (meta device) shaped like rank zero's loaded ``full``
    (``None`` on the other ranks): the same config, dtype and generation config, sent from rank zero,
    so that only rank zero ever holds the whole model. Shard it, then :func:`load_from_rank_zero`."""
    sent = (full.config, full.generation_config, full.dtype) if full is not None else None
    config, generation_config, dtype = trainer.strategy.broadcast(sent)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.generation_config = generation_config  # the engine reads its EOS ids; export writes it
    return model.train()


def load_from_rank_zero(trainer: Any, model: torch.nn.Module, full: PreTrainedModel | None) -> None:
    """Fills ``model`` (a :func:`meta_copy`, already sharded) with rank zero's ``full`` weights:
    each tensor is broadcast from rank zero and each rank keeps its own shard of it."""
    model.to_empty(device=trainer.strategy.root_device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full.state_dict() if full is not None else {}, options=options)
    # Buffers are not sharded and partly not in the state dict (rotary ``inv_freq`` is
    # non-persistent): rank zero's are copied whole.
    full_buffers = dict(full.named_buffers()) if full is not None else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if full is not None:
                buffer.copy_(full_buffers[name])
            torch.distributed.broadcast(buffer, src=0)


@contextmanager
def full_parameters(trainer: Any) -> Iterator[None]:
    """Whole parameters on every rank while sampling or syncing an engine, when the policy is
    sharded with FSDP2 (:func:`shard_policy`); nothing to do otherwise.

    Ranks sample different prompts for different numbers of decode steps, so no collective may
    run inside ``generate``: every sharded module is all-gathered once here (the same collectives
    on every rank) and told not to free its parameters after forward; FSDP2's forward hooks then
    find them gathered and communicate nothing. Afterwards the shards are put back. Like TRL's
    ``unwrap_model_for_generation``: each rank needs memory for one whole policy meanwhile.
    """
    policy = trainer.lightning_module.policy
    if not isinstance(policy, FSDPModule):
        yield
        return
    sharded = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
        module.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()
        policy.set_reshard_after_forward(True)  # the layers' setting (see shard_policy) ...
        policy.set_reshard_after_forward(False, recurse=False)  # ... and the root's


def rng_states() -> dict[str, Any]:
    """This process's Python, NumPy and torch RNG states, as plain data (loadable with weights_only)."""
    version, state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
