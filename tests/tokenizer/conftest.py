"""Tokenizer fixtures: tiny hand-built datasets and ml-100k's MiniLM embeddings (encoded once per cache)."""

from __future__ import annotations

import numpy as np
import pytest

from e2erec.data.types import Interactions, ItemTable, Split


def tiny_interactions(n_items: int = 24, n_users: int = 40, seed: int = 0, name: str = "tiny") -> tuple:
    """Hand-built data: items in 3 genres, users who watch mostly one genre; (Interactions, leave-one-out Split)."""
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama"]
    genre_of = np.arange(n_items) % 3
    titles = [f"{['Explosive', 'Funny', 'Tearful'][g]} movie number {i}" for i, g in enumerate(genre_of)]
    offsets, items = [0], []
    for u in range(n_users):
        g = u % 3
        pool = np.flatnonzero(genre_of == g)
        seq = rng.choice(pool, size=min(6, len(pool)), replace=False)
        items.extend(seq.tolist())
        offsets.append(len(items))
    offsets = np.array(offsets, dtype=np.int64)
    item = np.array(items, dtype=np.int64)
    table = ItemTable(
        raw_id=[f"i{i}" for i in range(n_items)], title=titles, text=[""] * n_items,
        categories=[[genres[g]] for g in genre_of], year=np.full(n_items, 1990, dtype=np.int32) + genre_of,
        popularity=np.bincount(item, minlength=n_items).astype(np.int64),
    )
    n_events = len(item)
    inter = Interactions(offsets, item, np.arange(n_events, dtype=np.int64), np.ones(n_events, np.float32),
                         np.ones(n_events, np.int8), [f"u{u}" for u in range(n_users)], table,
                         {"name": name, "fingerprint": f"{name}-{seed}-{n_items}"})
    ends = offsets[1:]
    split = Split("leave_one_out", ends - 2, ends - 2, ends - 1)
    return inter, split


@pytest.fixture(scope="session")
def ml100k_text_embeddings(ml100k, data_cache):
    """MiniLM embeddings of ml-100k's 1,682 item texts (the encode is cached on disk across runs)."""
    from e2erec.tokenizer.config import TokenizerConfig
    from e2erec.tokenizer.embed import encode_item_texts

    return encode_item_texts(ml100k, TokenizerConfig(), data_cache, progress=False)


@pytest.fixture(scope="session")
def make_tiny():
    """`make_tiny(n_items=24, n_users=40, seed=0, name="tiny") -> (Interactions, Split)`."""
    return tiny_interactions
