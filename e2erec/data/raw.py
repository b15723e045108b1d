"""What every source reader produces before processing: raw events (`RawData`) and the item table's schema.

Source readers (`e2erec.data.sources`) and the synthetic generator (`e2erec.data.synthetic`) both build these;
`e2erec.data.process` turns them into the prepared dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

ITEM_SCHEMA = pa.schema(
    [
        ("raw_id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("year", pa.int32()),
    ]
)


@dataclass
class RawData:
    """Events in the source's own ids, in file order, before dedupe, filtering and sorting."""

    user: pa.Array  # raw user ids (integer or string)
    item: pa.Array  # raw item ids (integer or string)
    timestamp: np.ndarray  # int64 unix seconds
    feedback: np.ndarray | None  # float32; None = implicit feedback
    items: pa.Table | None  # ITEM_SCHEMA, keyed by raw_id (as a string)
    source: str
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-event planted columns (synthetic)
    planted_static: dict[str, np.ndarray] = field(default_factory=dict)  # per-item / per-user planted arrays
    meta: dict[str, Any] = field(default_factory=dict)


def describe(title: str, year: int, categories: list[str]) -> str:
    """Item text when the source has no description: title, year and categories, so `text` is always usable."""
    parts = [title + (f" ({year})" if year > 0 else "")]
    if categories:
        parts.append("Genres: " + ", ".join(categories))
    return ". ".join(p for p in parts if p)


def make_item_table(raw_id: list[str], title: list[str], text: list[str | None], categories: list[list[str]],
                    year: list[int]) -> pa.Table:
    text = [t if t else describe(ti, y, c) for t, ti, y, c in zip(text, title, year, categories)]
    return pa.table([raw_id, title, text, categories, pa.array(year, pa.int32())], schema=ITEM_SCHEMA)
