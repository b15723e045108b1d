"""The `data` section: where interactions come from and how they are turned into sequences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ColumnMap:
    """Maps a generic CSV/Parquet/JSON-lines table onto e2erec's event schema."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    feedback: str | None = "rating"  # None: implicit feedback, every event counts as positive
    timestamp_format: str | None = None  # None: unix seconds; otherwise a strptime format such as "%Y-%m-%d %H:%M:%S"
    item_title: str | None = None  # columns of an optional item table (data.item_path)
    item_text: str | None = None
    item_categories: str | None = None  # a list column, or a string split on `category_sep`
    category_sep: str = "|"


@dataclass
class SyntheticConfig:
    """Planted-structure generator: power-law popularity, drifting latent interests, planted feedback probabilities."""

    n_users: int = 2_000
    n_items: int = 1_000
    n_events: int = 50_000
    n_interests: int = 16  # latent interest clusters; item categories and text derive from them
    dim: int = 16  # latent factor dimension
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity
    drift: float = 0.05  # per-event probability that a user's current interest changes
    seed: int = 0


@dataclass
class DataConfig:
    name: str = "ml-100k"  # a registered dataset (ml-100k, ml-1m, ml-20m, synthetic) or a path
    source: Literal["auto", "movielens", "recbole", "amazon", "tabular", "synthetic"] = "auto"
    path: str | None = None  # local file/folder for recbole / amazon / tabular sources
    item_path: str | None = None  # optional item table for tabular sources
    cache_dir: str = "~/.cache/e2erec"  # E2EREC_CACHE overrides
    columns: ColumnMap = field(default_factory=ColumnMap)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    positive_threshold: float = 4.0  # feedback >= threshold is a positive label (MovieLens: rating >= 4)
    min_user_events: int = 0  # k-core filter (0 = off); counts before/after are logged
    min_item_events: int = 0
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    temporal_valid_frac: float = 0.1  # temporal split: the last fractions of the time range
    temporal_test_frac: float = 0.1
    max_seq_len: int = 200  # events per history; truncation keeps the most recent

    def validate(self) -> None:
        if self.max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {self.max_seq_len}")
        if not 0 <= self.temporal_valid_frac < 1 or not 0 < self.temporal_test_frac < 1:
            raise ValueError("temporal_valid_frac and temporal_test_frac must be fractions in [0, 1)")
