"""Work across ranks: reductions, whole parameters for sampling, and per-process RNG state."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.strategies import FSDPStrategy


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


@contextmanager
def full_parameters(trainer: Any) -> Iterator[None]:
    """Whole parameters on every rank while sampling or syncing an engine, when the strategy
    shards them (Lightning's ``FSDPStrategy``); nothing to do for other strategies. Like TRL's
    ``unwrap_model_for_generation``: each rank then needs memory for the full policy."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False, recurse=True):
        yield


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
