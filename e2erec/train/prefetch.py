"""Training batches in step order, built in the step (`train.num_workers=0`) or ahead of it by background threads.

The stream draws index batches from the rank's sampler, continuing across epochs, and builds each model batch with
a generator seeded from (seed, step, micro-batch, rank) only: so a batch is the same whoever builds it and whenever,
and a prefetched stream yields exactly the batches (and golden losses) of the synchronous one.

Threads, not worker processes: building a batch is numpy and torch work on the dataset's memory maps, which mostly
runs outside the GIL, and a thread shares the maps and hands the batch over without pickling it. With prefetching
the sampler runs ahead of training, so the checkpointed sampler state is the one recorded with the last batch the
step *consumed*: a resumed run replays the batches that were built but not trained on.
"""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


def batch_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The candidate-draw seed of one micro-batch: nothing to checkpoint, identical on resume."""
    return ((seed * 1_000_003 + step) * 64 + micro) * 4096 + rank


class BatchStream:
    """`next()` -> the next micro-batch (on the CPU); `state_dict()` -> the sampler state to checkpoint.

    num_workers = 0: built on demand. num_workers = n > 0: n threads build up to 2n micro-batches ahead."""

    def __init__(self, task, sampler, *, seed: int, rank: int, grad_accum: int, start_step: int,
                 num_workers: int = 0):
        self.task, self.sampler = task, sampler
        self.seed, self.rank, self.grad_accum = seed, rank, grad_accum
        self.epoch = sampler.epoch
        self._indices = None
        self._plan = (start_step, 0)  # (step, micro) of the next batch to draw
        self._consumed_state = sampler.state_dict()
        self._pool = ThreadPoolExecutor(num_workers, thread_name_prefix="e2erec-batches") if num_workers > 0 else None
        self._depth = 2 * num_workers
        self._ahead: collections.deque[tuple[Future, dict[str, Any]]] = collections.deque()

    def _draw(self):
        """The next index batch, continuing across epochs; the sampler's (epoch, position) after it."""
        while True:
            if self._indices is None:
                self.sampler.set_epoch(self.epoch)  # keeps the position when it is the epoch being resumed
                self._indices = iter(self.sampler)
            nxt = next(self._indices, None)
            if nxt is not None:
                return nxt
            self.epoch, self._indices = self.epoch + 1, None

    def _build(self, indices, step: int, micro: int):
        return self.task.train_batch(indices, torch.Generator().manual_seed(batch_seed(self.seed, step, micro,
                                                                                      self.rank)))

    def _advance(self) -> tuple[Any, int, int]:
        step, micro = self._plan
        self._plan = (step, micro + 1) if micro + 1 < self.grad_accum else (step + 1, 0)
        return self._draw(), step, micro

    def next(self):
        if self._pool is None:
            indices, step, micro = self._advance()
            self._consumed_state = self.sampler.state_dict()
            return self._build(indices, step, micro)
        while len(self._ahead) < self._depth:
            indices, step, micro = self._advance()
            self._ahead.append((self._pool.submit(self._build, indices, step, micro), self.sampler.state_dict()))
        future, state = self._ahead.popleft()
        self._consumed_state = state
        return future.result()

    def state_dict(self) -> dict[str, Any]:
        return dict(self._consumed_state)

    def close(self) -> None:
        if self._pool is not None:
            for future, _ in self._ahead:
                future.cancel()
            self._ahead.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
