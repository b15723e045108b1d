"""The data contract every stage reads: time-ordered interactions grouped by user, an item side table, and splits.

Events are stored flat and grouped by user (the jagged layout used everywhere in e2erec). A worked example with
3 users holding 2, 0 and 3 events::

    offsets   = [0, 2, 2, 5]          # user u owns rows offsets[u]:offsets[u+1]
    item      = [7, 3,   1, 7, 4]     # contiguous item ids in [0, n_items)
    timestamp = [10, 20, 5, 6, 9]     # unix seconds, non-decreasing within a user (stable order on ties)

User 1 has an empty history. The events of user 2 are `item[2:5] = [1, 7, 4]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ItemTable:
    """Per-item side information, indexed by contiguous item id."""

    raw_id: list[str]  # the id in the source data
    title: list[str]  # "" when unknown
    text: list[str]  # free text (description, review summary); "" when unknown
    categories: list[list[str]]  # genres / categories; [] when unknown
    year: np.ndarray  # int32 release year, -1 when unknown
    popularity: np.ndarray  # int64 number of events in the TRAINING part of the split (set by `Split`)

    @property
    def n_items(self) -> int:
        return len(self.raw_id)


@dataclass
class ColdHoldout:
    """The cold-item protocol's record (e2erec.data.cold): which items are held out, and where the probe users are."""

    items: np.ndarray  # bool [n_items], True = held out of every training and validation input
    first_probe: int  # users >= this are probe users: a warm history, then one cold event (a test target)
    origin: np.ndarray  # int64 [n_users], the real user each user was cut from (itself for a real user)


@dataclass
class NewUserHoldout:
    """The new-user protocol's record (e2erec.data.cold): users held out of training and validation, and the
    history lengths k at which each is evaluated (its event k + 1 predicted from its first k events)."""

    users: np.ndarray  # bool [n_users], True = a new user (never a probe user)
    ks: tuple[int, ...]


@dataclass
class Interactions:
    """All events of a dataset, grouped by user and ordered by time (stable on ties)."""

    offsets: np.ndarray  # int64 [n_users + 1]
    item: np.ndarray  # int64 [n_events]
    timestamp: np.ndarray  # int64 [n_events], unix seconds
    feedback: np.ndarray  # float32 [n_events], raw feedback (rating; 1.0 for implicit data)
    label: np.ndarray  # int8 [n_events], 1 = positive feedback (feedback >= data.positive_threshold)
    user_raw_id: list[str]
    items: ItemTable
    meta: dict[str, Any] = field(default_factory=dict)  # name, source, fingerprint, filter counts, ...
    # Ground truth planted by the synthetic generator (absent for real data):
    #   "prob": float32 [n_events] true P(positive) of each event;
    #   "user_interest": int64 [n_events] the user's latent interest when the event happened;
    #   "item_factors": float32 [n_items, dim], "interest_centers": float32 [n_interests, dim];
    #   "item_interest", "item_weight", "interest_weight", "user_mixture": see e2erec.data.synthetic, whose
    #   `planted_next_item_probs(inter, targets)` gives the Bayes-optimal next-item ranking for target events.
    planted: dict[str, np.ndarray] = field(default_factory=dict)
    cold: ColdHoldout | None = None  # set under the cold-item protocol (data.cold_items)
    new_users: NewUserHoldout | None = None  # set under the new-user protocol (data.new_users)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return self.items.n_items

    @property
    def n_events(self) -> int:
        return len(self.item)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def user_of(self, event_index: np.ndarray) -> np.ndarray:
        """The user owning each flat event index."""
        return np.searchsorted(self.offsets, event_index, side="right") - 1


@dataclass
class Split:
    """Which events train a model and which are held-out targets.

    Training events of user u are rows `offsets[u] : train_end[u]` (a prefix of the user's history).
    A held-out target is a flat event index `i`; its history is every earlier event of the same user,
    rows `offsets[user_of(i)] : i` — for leave-one-out the test history includes the validation event,
    as in the SASRec/RecBole protocol.

    Leave-one-out: users with >= 3 events give last = test, second-to-last = validation, rest = training;
    users with 2 events give last = test, first = training; users with 1 event train only.
    Temporal: events before the validation cut-off train; each user's events in [valid_cut, test_cut) are
    validation targets and those at or after test_cut are test targets; a target that is its user's first event
    (no history) is dropped and counted in `inter.meta["split"]`.
    """

    protocol: str
    train_end: np.ndarray  # int64 [n_users], exclusive end row of each user's training events
    valid: np.ndarray  # int64 [n_valid] flat event indices
    test: np.ndarray  # int64 [n_test] flat event indices
