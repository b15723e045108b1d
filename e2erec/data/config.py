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
    explore: float = 0.1  # probability that an event's item is drawn from global popularity, not the interest
    interests_per_user: int = 3  # size of each user's interest mixture (drawn from the n_interests clusters)
    # Item arrivals (cold start): this share of the items is released during the last `arrival_window` of the time
    # span, has no event before its release, and its popularity ramps up linearly over `arrival_ramp_days` after it.
    # 0 = every item exists from the start (and the log is draw for draw what it was before arrivals existed).
    arrival_share: float = 0.0
    arrival_window: float = 0.2
    arrival_ramp_days: float = 30.0
    # Repeat consumption: this share of the items is consumable (a snack someone loves, detergent on its cycle),
    # each with its own repurchase cycle (log-normal around `repeat_cycle_days`); a positive event on one is bought
    # again, with probability `repeat_prob`, at the user's first event a cycle later, and so on. 0 = off (the log is
    # then draw for draw what it was before repeats existed).
    repeat_share: float = 0.0
    repeat_cycle_days: float = 7.0
    repeat_prob: float = 0.8
    seed: int = 0

    def validate(self) -> None:
        if self.n_users < 1 or self.n_items < 2 or self.n_interests < 1 or self.dim < 1:
            raise ValueError("synthetic: n_users, n_items, n_interests and dim must be positive (n_items >= 2)")
        if self.n_events < 3 * self.n_users:
            raise ValueError(
                f"synthetic: n_events ({self.n_events}) must be >= 3 * n_users ({3 * self.n_users}) "
                "so every user has a training, a validation and a test event"
            )
        if not 0 <= self.drift <= 1 or not 0 <= self.explore <= 1:
            raise ValueError("synthetic: drift and explore are probabilities in [0, 1]")
        if not 1 <= self.interests_per_user <= self.n_interests:
            raise ValueError("synthetic: interests_per_user must be in [1, n_interests]")
        if not 0 <= self.arrival_share < 1 or not 0 < self.arrival_window <= 1 or self.arrival_ramp_days < 0:
            raise ValueError(f"synthetic: arrival_share must be in [0, 1) (got {self.arrival_share}), arrival_window "
                             f"in (0, 1] (got {self.arrival_window}), arrival_ramp_days >= 0 "
                             f"(got {self.arrival_ramp_days})")
        if not 0 <= self.repeat_share <= 1 or not 0 <= self.repeat_prob <= 1 or self.repeat_cycle_days <= 0:
            raise ValueError(f"synthetic: repeat_share and repeat_prob must be in [0, 1] (got {self.repeat_share}, "
                             f"{self.repeat_prob}) and repeat_cycle_days > 0 (got {self.repeat_cycle_days})")


@dataclass
class ColdItemsConfig:
    """The cold-item protocol (e2erec.data.cold): held-out items with no event in any training or validation input,
    histories included; every event on one is a test target, predicted from its user's warm history before it."""

    share: float = 0.0  # a seeded random share of the catalogue is held out (0 = off)
    after: float | None = None  # or: the items first seen after this fraction of the log's time span
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.share > 0 or self.after is not None

    def validate(self) -> None:
        if not 0 <= self.share < 1:
            raise ValueError(f"cold_items.share must be in [0, 1), got {self.share}")
        if self.after is not None and not 0 < self.after < 1:
            raise ValueError(f"cold_items.after must be a fraction of the time span in (0, 1), got {self.after}")
        if self.share > 0 and self.after is not None:
            raise ValueError("cold_items: set share (a random hold-out) or after (items first seen late), not both")


@dataclass
class NewUsersConfig:
    """The new-user protocol (e2erec.data.cold): a share of the users is held out of every training and validation
    input; each is evaluated from its first k events alone, predicting event k + 1, for every k in `ks`."""

    share: float = 0.0  # a seeded random share of the users (0 = off)
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.share > 0

    def validate(self) -> None:
        if not 0 <= self.share < 1:
            raise ValueError(f"new_users.share must be in [0, 1), got {self.share}")
        if not self.ks or min(self.ks) < 1 or sorted(set(self.ks)) != list(self.ks):
            raise ValueError(f"new_users.ks must be distinct history lengths >= 1 in ascending order, got {self.ks}")


@dataclass
class DataConfig:
    name: str = "ml-100k"  # a registered dataset (ml-100k, ml-1m, ml-20m, synthetic) or a path
    source: Literal["auto", "movielens", "recbole", "amazon", "tabular", "synthetic"] = "auto"
    path: str | None = None  # local file/folder for recbole / amazon / tabular sources
    item_path: str | None = None  # optional item table for tabular sources
    cache_dir: str = "~/.cache/e2erec"  # E2EREC_CACHE overrides
    sha256: str | None = None  # expected digest of a downloaded archive; None: the digest recorded at first download
    columns: ColumnMap = field(default_factory=ColumnMap)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    positive_threshold: float = 4.0  # feedback >= threshold is a positive label (MovieLens: rating >= 4)
    dedupe: bool = True  # drop repeated (user, item, timestamp) events, keeping the last one in file order
    min_user_events: int = 0  # k-core filter (0 = off); counts before/after are logged
    min_item_events: int = 0
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    temporal_valid_frac: float = 0.1  # temporal split: the last fractions of the time range
    temporal_test_frac: float = 0.1
    max_seq_len: int = 200  # events per history; truncation keeps the most recent
    cold_items: ColdItemsConfig = field(default_factory=ColdItemsConfig)
    new_users: NewUsersConfig = field(default_factory=NewUsersConfig)

    def validate(self) -> None:
        if self.max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {self.max_seq_len}")
        if not 0 <= self.temporal_valid_frac < 1 or not 0 < self.temporal_test_frac < 1:
            raise ValueError("temporal_valid_frac and temporal_test_frac must be fractions in [0, 1)")
        if self.temporal_valid_frac + self.temporal_test_frac >= 1:
            raise ValueError("temporal_valid_frac + temporal_test_frac must leave some time for training (< 1)")
        if self.min_user_events < 0 or self.min_item_events < 0:
            raise ValueError("min_user_events and min_item_events must be >= 0")
