"""A tiny hand-made dataset with known sequential structure, for tests and smoke runs that must take seconds.

Items sit on a ring. After item i a user usually moves to i+1, i+2 or i+3 (a Markov chain), and otherwise picks
a random item by Zipf popularity — so a sequential model can predict the next item and popularity alone cannot.
Feedback is planted: P(positive) = sigmoid(user bias + item bias), stored in `planted["prob"]`, so a perfect
calibration head is known.
"""

from __future__ import annotations

import numpy as np

from e2erec.data.types import Interactions, ItemTable, Split


def markov_interactions(
    n_users: int = 300, n_items: int = 100, min_len: int = 15, max_len: int = 40, p_jump: float = 0.15, seed: int = 0
) -> Interactions:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    zipf = 1.0 / np.arange(1, n_items + 1)
    zipf = rng.permutation(zipf / zipf.sum())
    items = np.empty(offsets[-1], dtype=np.int64)
    for u in range(n_users):
        cur = rng.choice(n_items, p=zipf)
        for row in range(offsets[u], offsets[u + 1]):
            items[row] = cur
            cur = rng.choice(n_items, p=zipf) if rng.random() < p_jump else (cur + rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])) % n_items
    user_bias = rng.normal(0.0, 1.0, n_users)
    item_bias = rng.normal(0.0, 1.0, n_items)
    users = np.repeat(np.arange(n_users), lengths)
    prob = (1.0 / (1.0 + np.exp(-(user_bias[users] + item_bias[items])))).astype(np.float32)
    label = (rng.random(len(items)) < prob).astype(np.int8)
    timestamp = 1_000_000_000 + 60 * np.arange(len(items), dtype=np.int64)  # one event a minute
    table = ItemTable(
        raw_id=[str(i) for i in range(n_items)],
        title=[f"item {i}" for i in range(n_items)],
        text=[f"item {i} on the ring near {i // 10 * 10}" for i in range(n_items)],
        categories=[[f"arc{i // 10}"] for i in range(n_items)],
        year=np.full(n_items, 2000, dtype=np.int32),
        popularity=np.zeros(n_items, dtype=np.int64),
    )
    return Interactions(
        offsets=offsets, item=items, timestamp=timestamp, feedback=label.astype(np.float32) * 4 + 1, label=label,
        user_raw_id=[str(u) for u in range(n_users)], items=table, meta={"name": "toy-markov"},
        planted={"prob": prob},
    )


def toy_split(inter: Interactions) -> Split:
    """Leave-one-out split of the toy data through the data pipeline's own split (sets training popularity)."""
    from e2erec.data.config import DataConfig
    from e2erec.data.split import make_split

    return make_split(inter, DataConfig(split="leave_one_out"))


def item_vectors(inter: Interactions, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Stand-in "text embeddings" for the toy ring: nearby items get similar vectors (float32 [n_items, dim])."""
    rng = np.random.default_rng(seed)
    angle = 2 * np.pi * np.arange(inter.n_items) / inter.n_items
    base = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return np.concatenate([base * 3, rng.normal(0, 0.3, (inter.n_items, dim - 2))], axis=1).astype(np.float32)
