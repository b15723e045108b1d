"""Row-sharded work across the ranks of a process group (torchrun, srun, the deepspeed launcher), for evaluation
and generation: each rank computes a contiguous block of the rows, every rank receives the whole result in row
order. Without a process group (or with one rank) it is a plain call.

    items, scores = sharded_rows(lambda lo, hi: search(users[lo:hi]), len(users))

Every user is computed exactly once; ranks beyond the number of rows compute nothing and still return the whole
result. The gather is a collective: a rank that dies makes the others fail at their process-group timeout with
torch's error naming the collective, instead of returning a partial result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [lo, hi) of `rank`: contiguous blocks whose sizes differ by at most one."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(_concat([p[i] for p in parts]) for i in range(len(first)))
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    return np.concatenate(parts)


def sharded_rows(fn: Callable[[int, int], Any], n: int) -> Any:
    """fn(lo, hi) -> an array, tensor or tuple of them (None entries allowed), or None, over rows lo..hi-1; returns
    the result over rows 0..n-1 on every rank, each block computed by one rank."""
    rank, size = world()
    if size == 1 or n == 0:
        return fn(0, n)
    lo, hi = shard_bounds(n, rank, size)
    mine = [fn(lo, hi)] if hi > lo else []  # a rank without rows sends nothing
    parts: list[Any] = [None] * size
    dist.all_gather_object(parts, mine)  # CPU tensors and numpy arrays pickle; on NCCL torch moves them itself
    results = [r for p in parts for r in p]  # in rank order = row order
    return None if all(r is None for r in results) else _concat(results)
