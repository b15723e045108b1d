"""Hand-built inputs for the model tests: jagged histories (the JaggedBatch fields the model reads) and codes."""

from __future__ import annotations

import torch

from e2erec.data.jagged import JaggedBatch as Events
from e2erec.model.bench import unique_codes


def events_from_lists(items: list[list[int]], labels: list[list[int]] | None = None, gap: int = 3600) -> Events:
    """One sequence per list; timestamps `gap` seconds apart; rating 5 for label 1, 2 for label 0."""
    lengths = torch.tensor([len(x) for x in items], dtype=torch.int64)
    offsets = torch.zeros(len(items) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    flat = torch.tensor([i for x in items for i in x], dtype=torch.int64)
    lab = torch.tensor([y for x in (labels or [[1] * len(x) for x in items]) for y in x], dtype=torch.float32)
    ts = torch.cat([1_000_000 + gap * torch.arange(n) for n in lengths.tolist()]) if len(flat) else flat
    return Events(
        offsets=offsets, user=torch.arange(len(items)), item=flat, timestamp=ts.long(),
        feedback=torch.where(lab > 0, 5.0, 2.0), label=lab, max_len=int(lengths.max()) if len(items) else 0,
    )


def random_events(lengths: list[int], n_items: int, seed: int = 0) -> Events:
    g = torch.Generator().manual_seed(seed)
    items = [torch.randint(0, n_items, (n,), generator=g).tolist() for n in lengths]
    labels = [torch.randint(0, 2, (n,), generator=g).tolist() for n in lengths]
    ev = events_from_lists(items, labels)
    # Irregular gaps so time buckets differ between tokens.
    ev.timestamp = ev.timestamp + torch.randint(0, 5000, ev.timestamp.shape, generator=g).cumsum(0)
    return ev


def random_codes(n_items: int, codebook_sizes: list[int], seed: int = 0) -> torch.Tensor:
    """Unique random codes [n_items, L] (the last level plays the tokenizer's dedup level)."""
    return unique_codes(n_items, codebook_sizes, seed)
