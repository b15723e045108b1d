"""The interface every evaluated system implements, and the history helpers they share.

A *target* is a flat event index `i` (from `Split.valid` or `Split.test`); its history is every earlier event of
the same user, rows ``offsets[u] : i``. Systems see only that history at recommendation time, and `fit` sees only
training events (rows ``offsets[u] : train_end[u]``) plus the validation targets for early stopping.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from e2erec.data.types import Interactions, Split
from e2erec.eval.config import EvalConfig
from e2erec.utils.shards import sharded_rows

if TYPE_CHECKING:  # the protocol does not depend on the baselines package; their settings are passed in
    from e2erec.baselines.config import BaselineConfig


@dataclass(frozen=True)
class FitContext:
    """What `Recommender.fit` reads, and nothing else of the run: the protocol (`eval`: the early-stopping rule, the
    selection metric, the list length, the seed), the baselines' hyperparameters (`baseline`), and a function that
    embeds the catalogue's item texts for a system with a content channel (the plugin cascade; None: no encoder)."""

    protocol: EvalConfig
    baseline: BaselineConfig
    item_texts: Callable[[Interactions], np.ndarray] | None = None

    @classmethod
    def from_run(cls, cfg) -> FitContext:
        """The context of a run config: its `eval` and `baseline` sections, texts by its tokenizer's encoder."""
        texts = functools.partial(_encode_item_texts, tokenizer=cfg.tokenizer, cache_dir=cfg.data.cache_dir)
        return cls(cfg.eval, cfg.baseline, texts)


def _encode_item_texts(inter: Interactions, *, tokenizer, cache_dir: str) -> np.ndarray:
    """The tokenizer's language-model embeddings of item texts (cached by the tokenizer under the data cache)."""
    from e2erec.tokenizer import encode_item_texts
    from e2erec.utils.io import cache_root

    return np.asarray(encode_item_texts(inter, tokenizer, cache_root(cache_dir)), dtype=np.float32)


@runtime_checkable
class Recommender(Protocol):
    """One evaluated system: a baseline, or the end-to-end model behind the same three calls."""

    name: str

    def fit(self, inter: Interactions, split: Split, ctx: FitContext) -> None:
        """Train on the split's training events; early-stop on `split.valid` under `ctx.protocol`'s rule."""

    def recommend(self, inter: Interactions, targets: np.ndarray, k: int,
                  among: np.ndarray | None = None) -> np.ndarray:
        """[n_targets, k] item ids for each target's history, excluding items already in that history (unless
        `eval.allow_repeats`); `among`
        (bool [n_items]): rank only those items (the evaluation's exploration asks for the long tail)."""

    def predict_proba(self, inter: Interactions, targets: np.ndarray, items: np.ndarray) -> np.ndarray | None:
        """P(positive feedback) of each target's history with `items[j]`; None without a calibrated head."""


class ShardedScoring:
    """A fitted system whose `recommend` and `predict_proba` run row-sharded across the ranks of a process group
    (`e2erec.utils.shards`): each rank scores a disjoint block of the targets, every rank gets them all. Everything
    else (name, fit_log, fit) is the wrapped system's."""

    def __init__(self, system: Recommender):
        self.system = system

    def __getattr__(self, name: str):
        return getattr(self.system, name)

    def recommend(self, inter: Interactions, targets: np.ndarray, k: int,
                  among: np.ndarray | None = None) -> np.ndarray:
        targets = np.asarray(targets)
        return sharded_rows(lambda lo, hi: np.asarray(self.system.recommend(inter, targets[lo:hi], k, among=among)),
                            len(targets))

    def predict_proba(self, inter: Interactions, targets: np.ndarray, items: np.ndarray) -> np.ndarray | None:
        targets, items = np.asarray(targets), np.asarray(items)

        def block(lo: int, hi: int):
            proba = self.system.predict_proba(inter, targets[lo:hi], items[lo:hi])
            return None if proba is None else np.asarray(proba)

        return sharded_rows(block, len(targets))


def target_users(inter: Interactions, targets: np.ndarray) -> np.ndarray:
    return inter.user_of(np.asarray(targets, dtype=np.int64))


def padded_histories(
    inter: Interactions, targets: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last `max_len` history events of each target, right-aligned (most recent last), padded on the left.

    Returns (items, labels, lengths): items int64 [n, max_len] with -1 as padding, labels int8 [n, max_len]
    (0 under padding), lengths int64 [n] (<= max_len). Example: a history [7, 3, 9] with max_len 4 gives
    items [-1, 7, 3, 9].
    """
    targets = np.asarray(targets, dtype=np.int64)
    start = inter.offsets[target_users(inter, targets)]
    lengths = np.minimum(targets - start, max_len)
    col = np.arange(max_len)[None, :] - (max_len - lengths[:, None])  # (n, max_len): offset into the window
    valid = col >= 0
    rows = np.where(valid, targets[:, None] - lengths[:, None] + col, 0)
    items = np.where(valid, inter.item[rows], -1)
    labels = np.where(valid, inter.label[rows], 0).astype(np.int8)
    return items, labels, lengths


def history_csr(inter: Interactions, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every history item of each target (not truncated): (row of each history event, its item id)."""
    targets = np.asarray(targets, dtype=np.int64)
    return history_events(inter, target_users(inter, targets), targets)


def history_events(inter: Interactions, users: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The events offsets[u]:end of each (user, end) row: (row of each event, its item id), without a loop."""
    start = np.asarray(inter.offsets)[users]
    lengths = np.asarray(ends, dtype=np.int64) - start
    rows = np.repeat(np.arange(len(lengths)), lengths)
    first = np.repeat(start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return rows, np.asarray(inter.item)[np.arange(lengths.sum()) + first]


# Scores held at once when a system scores the whole catalogue for a chunk of targets: 2^24 float64 = 128 MiB, so
# evaluation memory is bounded by a chunk, not by targets x items (a 1M-item catalogue: 16 targets a chunk).
SCORE_ELEMENTS = 1 << 24


def target_chunks(targets: np.ndarray, n_items: int, cap: int = 0, max_elements: int = SCORE_ELEMENTS):
    """Consecutive slices of `targets` whose [chunk, n_items] score tables hold at most `max_elements` (and at most
    `cap` targets when cap > 0)."""
    step = max(1, max_elements // max(n_items, 1))
    step = min(step, cap) if cap > 0 else step
    for start in range(0, len(targets), step):
        yield targets[start:start + step]


def mask_history(scores: np.ndarray, inter: Interactions, targets: np.ndarray,
                 allow_repeats: bool = False) -> np.ndarray:
    """Set the scores [n_targets, n_items] of items already in each target's history to -inf, in place (unless the
    protocol allows repeats: `eval.allow_repeats`)."""
    if allow_repeats:
        return scores
    rows, items = history_csr(inter, targets)
    scores[rows, items] = -np.inf
    return scores


def in_history(inter: Interactions, targets: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """bool like `lists` [n, m] (item ids, -1 = empty): the item is in target i's whole history (`in_histories`)."""
    targets = np.asarray(targets, dtype=np.int64)
    return in_histories(inter, target_users(inter, targets), targets, lists)


def in_histories(inter: Interactions, users: np.ndarray, ends: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """bool like `lists` [n, m]: the item is among the events offsets[users[i]]:ends[i] (a target's history, or a
    user's whole history with ends = offsets[u + 1]). O(history log) through one sorted (row, item) key, nothing
    [n, n_items]."""
    rows, items = history_events(inter, users, ends)
    lists = np.asarray(lists, np.int64)
    key = np.unique(rows.astype(np.int64) * inter.n_items + items)
    if len(key) == 0:
        return np.zeros(lists.shape, bool)
    query = np.arange(len(lists), dtype=np.int64)[:, None] * inter.n_items + np.maximum(lists, 0)
    return (key[np.minimum(np.searchsorted(key, query), len(key) - 1)] == query) & (lists >= 0)


def history_counts(inter: Interactions, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float [n]: how many distinct items of each target's whole history are in `mask` (bool [n_items]); a repeated
    item counts once. O(history log history)."""
    rows, items = history_csr(inter, targets)
    distinct = np.unique(rows.astype(np.int64) * inter.n_items + items)
    return np.bincount(distinct // inter.n_items, weights=np.asarray(mask)[distinct % inter.n_items],
                       minlength=len(targets))


def keep_only(scores: np.ndarray, among: np.ndarray | None) -> np.ndarray:
    """Set the scores [n_targets, n_items] of items outside `among` (bool [n_items]; None: all kept) to -inf, in
    place."""
    if among is not None:
        scores[:, ~np.asarray(among, bool)] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """The k highest-scoring ids per row, best first; -inf scores (masked items) become -1 padding.

    `ids` [n, m] maps columns to item ids (default: the column index). Inside the list, equal scores are ordered
    by column; at the cutoff itself a tie is broken by `argpartition`.
    """
    n, m = scores.shape
    k_eff = min(k, m)
    if k_eff < m:
        part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    else:
        part = np.tile(np.arange(m), (n, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # by score descending, then column
    cols = np.take_along_axis(part, order, axis=1)
    out = cols if ids is None else np.take_along_axis(ids, cols, axis=1)
    out = np.where(np.isneginf(np.take_along_axis(scores, cols, axis=1)), -1, out)
    if k_eff < k:
        out = np.concatenate([out, np.full((n, k - k_eff), -1, dtype=out.dtype)], axis=1)
    return out


def training_targets(inter: Interactions, split: Split, min_history: int = 1) -> np.ndarray:
    """Flat indices of training events with at least `min_history` earlier events (the next-item training pairs)."""
    starts = inter.offsets[:-1]
    lengths = np.maximum(split.train_end - starts - min_history, 0)
    base = np.repeat(starts + min_history - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(lengths.sum()) + base


def item_feedback_counts(inter: Interactions, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(positive events, events) per item over all training events, int64 [n_items] each: the counts behind the
    smoothed positive-rate features of the cascade ranker and of the e2erec calibration head."""
    rows = training_targets(inter, split, min_history=0)
    item = np.asarray(inter.item)[rows]
    positive = np.asarray(inter.label)[rows] > 0.5
    return (np.bincount(item[positive], minlength=inter.n_items).astype(np.int64),
            np.bincount(item, minlength=inter.n_items).astype(np.int64))
