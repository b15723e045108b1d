"""Jagged batches: sequences packed as values + offsets (no padding), a token-budget sampler, padded views for baselines.

Sharding across data-parallel ranks must satisfy two things that pull against each other: every sequence is seen by
exactly one rank (no duplicates, no drops), and every rank yields the same number of batches per epoch (synchronous
data-parallel training hangs in the all-reduce of a rank that runs out early). `TokenBudgetSampler` reconciles them by
planning ONE global list of batches per epoch (identical on every rank, from the seed and the epoch) and then
adjusting its length to a multiple of the world size: it splits the largest multi-sequence batch in two (both halves
stay under the budget) until the count divides evenly; only when too few batches hold two sequences for that does it
merge the two smallest batches instead, `count % world_size` times (the one case a batch may exceed the budget). Batches are then grouped into steps of
`world_size` batches of similar token counts (so no rank waits long on another) and rank r takes the r-th batch of
every step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from e2erec.data.types import Interactions


@dataclass
class JaggedBatch:
    """A batch of variable-length histories, packed without padding (torchrec's jagged layout).

    Worked example: users 4 and 9 with histories of items [7, 3, 5] and [2]::

        offsets   = [0, 3, 4]        # int64 [B+1]; sequence b is rows offsets[b]:offsets[b+1]
        user      = [4, 9]           # int64 [B]
        item      = [7, 3, 5, 2]     # int64 [N], N = offsets[-1] = 4 tokens, oldest first within a sequence
        timestamp = [10, 20, 30, 15] # int64 [N]
        feedback  = [4., 2., 5., 3.] # float32 [N] raw feedback (rating)
        label     = [1., 0., 1., 0.] # float32 [N] feedback >= positive_threshold
        max_len   = 3                # longest sequence, for kernels that tile by length

    The last item of user 4 is `item[offsets[1] - 1] = 5`. `to_padded` gives the [B, max_len] view baselines use.
    """

    offsets: torch.Tensor  # int64 [B+1]
    user: torch.Tensor  # int64 [B]
    item: torch.Tensor  # int64 [N]
    timestamp: torch.Tensor  # int64 [N]
    feedback: torch.Tensor  # float32 [N]
    label: torch.Tensor  # float32 [N] (0/1)
    max_len: int

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def _map(self, fn) -> JaggedBatch:
        return JaggedBatch(**{f.name: fn(getattr(self, f.name)) if f.name != "max_len" else self.max_len
                              for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> JaggedBatch:
        return self._map(lambda t: t.pin_memory())


def gather_histories(inter: Interactions, users: np.ndarray, ends: np.ndarray, max_len: int,
                     starts: np.ndarray | None = None) -> JaggedBatch:
    """Histories `item[offsets[u] : ends[i]]` of `users[i]`, truncated to the most recent `max_len` events (and to
    rows >= `starts[i]` where given: a history window, `e2erec.data.window`).

    `ends` are exclusive flat event indices (a training prefix end `split.train_end[u]`, or a target index `t` for
    the history before target `t`). Vectorised: one gather over the concatenated row indices.
    """
    users = np.asarray(users, np.int64)
    ends = np.asarray(ends, np.int64)
    if users.shape != ends.shape or users.ndim != 1:
        raise ValueError(f"users and ends must be 1-D of equal length, got {users.shape} and {ends.shape}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    offsets = np.asarray(inter.offsets)
    first = offsets[users]
    if np.any(ends < first) or np.any(ends > offsets[users + 1]):
        raise ValueError("each end must lie within its user's rows offsets[u]..offsets[u+1]")
    starts = np.maximum(first if starts is None else np.maximum(first, starts), ends - max_len)
    lens = np.maximum(ends - starts, 0)
    out = np.zeros(len(users) + 1, np.int64)
    np.cumsum(lens, out=out[1:])
    # Row of token j of sequence b is starts[b] + (j - out[b]).
    rows = np.arange(out[-1], dtype=np.int64) + np.repeat(starts - out[:-1], lens)
    return batch_of_rows(inter, users, out, rows)


def batch_of_rows(inter: Interactions, users: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> JaggedBatch:
    """The JaggedBatch whose sequence b holds the log's events `rows[offsets[b]:offsets[b + 1]]` (flat event
    indices, oldest first) as user `users[b]`'s history: one gather per field."""
    offsets = np.asarray(offsets, np.int64)
    lens = np.diff(offsets)
    return JaggedBatch(
        offsets=torch.from_numpy(offsets.copy()),
        user=torch.from_numpy(np.asarray(users, np.int64).copy()),
        item=torch.from_numpy(np.asarray(inter.item)[rows].astype(np.int64, copy=False)),
        timestamp=torch.from_numpy(np.asarray(inter.timestamp)[rows].astype(np.int64, copy=False)),
        feedback=torch.from_numpy(np.asarray(inter.feedback)[rows].astype(np.float32, copy=False)),
        label=torch.from_numpy(np.asarray(inter.label)[rows].astype(np.float32)),
        max_len=int(lens.max()) if len(lens) else 0,
    )


def newest_first_windows(counts: np.ndarray, ends: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut row i's `counts[i]` consecutive rows ending (exclusive) at `ends[i]` into windows of at most `size`,
    newest first: returns (i of each window, its exclusive end), the oldest window of each row holding the remainder.
    Example: counts [5, 0], ends [10, 3], size 2 -> ([0, 0, 0], [10, 8, 6])."""
    counts = np.asarray(counts, np.int64)
    n_win = -(-counts // size)
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), n_win)
    j = np.arange(int(n_win.sum())) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # window index, 0 = newest
    return owner, np.asarray(ends, np.int64)[owner] - j * size


def to_padded(batch: JaggedBatch, pad_item: int = -1, *, right_align: bool = False) -> dict[str, torch.Tensor]:
    """Padded [B, max_len] tensors plus a bool "mask" (True = real token), for baselines and tests only.

    Left-aligned by default (token j of a sequence at column j); `right_align=True` puts every sequence's last event
    in the last column, as SASRec-style models expect.
    """
    lens = batch.lengths()
    B, L = len(batch), batch.max_len
    col = torch.arange(L).expand(B, L)  # (B, L)
    mask = col < lens[:, None]
    if right_align:
        mask = col >= (L - lens)[:, None]
    out: dict[str, torch.Tensor] = {"mask": mask, "user": batch.user, "lengths": lens}
    for name, pad in (("item", pad_item), ("timestamp", 0), ("feedback", 0.0), ("label", 0.0)):
        values = getattr(batch, name)
        dense = torch.full((B, L), pad, dtype=values.dtype)
        dense[mask] = values  # row-major fill matches the jagged order
        out[name] = dense
    return out


class TokenBudgetSampler:
    """Packs sequence indices into batches of at most `max_tokens` tokens, length-bucketed, sharded over ranks.

    Per epoch (seed and epoch decide everything, so all ranks compute the same plan): shuffle, sort by length within
    buckets of `bucket_size` sequences (similar lengths share a batch: less tile waste in attention kernels), pack
    greedily up to the budget, equalise the batch count across ranks (see the module docstring), shuffle the steps.
    A sequence longer than `max_tokens` gets a batch of its own (truncate histories first: `gather_histories`).

    Resumption: `state_dict()` records (epoch, batches already yielded); after `load_state_dict`, iterating yields
    exactly the batches the uninterrupted run would have yielded next. Save it after the step that consumed the batch.
    """

    def __init__(self, lengths: np.ndarray, max_tokens: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, bucket_size: int | None = None):
        self.lengths = np.asarray(lengths, np.int64)
        if self.lengths.ndim != 1:
            raise ValueError(f"lengths must be 1-D, got shape {self.lengths.shape}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(self.lengths) < world_size:
            raise ValueError(f"{len(self.lengths)} sequences cannot feed {world_size} ranks (every rank needs a batch)")
        if len(self.lengths) and self.lengths.min() < 1:
            raise ValueError("every sequence needs >= 1 token: drop empty histories before sampling")
        self.max_tokens, self.seed, self.shuffle = int(max_tokens), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        mean = float(self.lengths.mean()) if len(self.lengths) else 1.0
        # ~64 batches' worth of sequences per bucket: enough to find similar lengths, still well shuffled.
        self.bucket_size = int(bucket_size or max(64, 64 * max(1, int(self.max_tokens // max(mean, 1.0)))))
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[list[np.ndarray]]] | None = None
        self._digest = hashlib.sha256(self.lengths.tobytes()).hexdigest()[:16]

    # -- planning ------------------------------------------------------------------------------------------------

    def _pack(self, order: np.ndarray) -> list[np.ndarray]:
        cost = np.minimum(self.lengths[order], self.max_tokens)
        batches, start, acc = [], 0, 0
        for i, c in enumerate(cost.tolist()):
            if acc + c > self.max_tokens and i > start:
                batches.append(order[start:i])
                start, acc = i, 0
            acc += c
        if len(order) > start:
            batches.append(order[start:])
        return batches

    def _equalise(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """Make len(batches) a multiple of world_size without duplicating or dropping a sequence."""
        tokens = [int(self.lengths[b].sum()) for b in batches]
        need_splits = -len(batches) % self.world_size
        # Each split adds one batch; possible while some batch holds >= 2 sequences.
        if sum(len(b) - 1 for b in batches) >= need_splits:
            for _ in range(need_splits):
                i = max((j for j, b in enumerate(batches) if len(b) >= 2), key=lambda j: (tokens[j], -j))
                b = batches[i]
                cut = int(np.searchsorted(np.cumsum(self.lengths[b]), tokens[i] / 2)) + 1
                cut = min(max(cut, 1), len(b) - 1)
                batches[i:i + 1] = [b[:cut], b[cut:]]
                tokens[i:i + 1] = [int(self.lengths[b[:cut]].sum()), int(self.lengths[b[cut:]].sum())]
            return batches
        for _ in range(len(batches) % self.world_size):  # merge the two smallest; n >= world_size keeps >= 1 step
            i, j = sorted(np.argsort(tokens, kind="stable")[:2].tolist())
            batches[i] = np.concatenate([batches[i], batches[j]])
            tokens[i] += tokens[j]
            del batches[j], tokens[j]
        return batches

    def _plan(self, epoch: int) -> list[list[np.ndarray]]:
        """Steps of the epoch: each a list of world_size batches (index arrays); identical on every rank."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.lengths)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        chunks = []
        for s in range(0, n, self.bucket_size):
            chunk = order[s:s + self.bucket_size]
            chunks.append(chunk[np.argsort(-self.lengths[chunk], kind="stable")])
        batches = self._equalise(self._pack(np.concatenate(chunks) if chunks else order))
        tokens = np.array([self.lengths[b].sum() for b in batches])
        by_size = np.argsort(-tokens, kind="stable")  # similar-sized batches share a step
        steps = [[batches[k] for k in by_size[s:s + self.world_size]] for s in range(0, len(batches), self.world_size)]
        if self.shuffle:
            steps = [steps[k] for k in rng.permutation(len(steps))]
        self._cache = (epoch, steps)
        return steps

    # -- iteration -----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (the same on every rank)."""
        return len(self._plan(self.epoch))

    def __iter__(self) -> Iterator[np.ndarray]:
        steps = self._plan(self.epoch)
        if self.position >= len(steps):  # a finished epoch iterated again repeats it
            self.position = 0
        for i in range(self.position, len(steps)):
            self.position = i + 1
            yield steps[i][self.rank]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's plan; the position resets unless this is the epoch being resumed."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        epoch, position = self.epoch, self.position
        if position >= len(self):
            epoch, position = epoch + 1, 0
        return {"epoch": epoch, "position": position, "seed": self.seed, "max_tokens": self.max_tokens,
                "world_size": self.world_size, "shuffle": self.shuffle, "bucket_size": self.bucket_size,
                "lengths_digest": self._digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "max_tokens", "world_size", "shuffle", "bucket_size", "lengths_digest"):
            mine = self._digest if key == "lengths_digest" else getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(f"sampler state was saved with {key}={state.get(key)!r}, this sampler has {mine!r}: "
                                 "resuming would not replay the same batches")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class HistoryLoader:
    """Iterates `JaggedBatch`es of histories `users[i]`, ending at `ends[i]`, in the order a `TokenBudgetSampler`
    over their (truncated) lengths decides; `state_dict`/`set_epoch` delegate to the sampler."""

    def __init__(self, inter: Interactions, users: np.ndarray, ends: np.ndarray, max_len: int, max_tokens: int, *,
                 seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.inter, self.max_len = inter, int(max_len)
        self.users, self.ends = np.asarray(users, np.int64), np.asarray(ends, np.int64)
        lengths = np.minimum(self.ends - np.asarray(inter.offsets)[self.users], self.max_len)
        self.sampler = TokenBudgetSampler(lengths, max_tokens, seed=seed, shuffle=shuffle, rank=rank,
                                          world_size=world_size)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[JaggedBatch]:
        for idx in self.sampler:
            yield gather_histories(self.inter, self.users[idx], self.ends[idx], self.max_len)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
