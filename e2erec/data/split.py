"""Splits: which events train a model and which are held-out targets (the protocol is code, see `Split`)."""

from __future__ import annotations

import logging

import numpy as np

from e2erec.data.config import DataConfig
from e2erec.data.types import Interactions, Split

log = logging.getLogger("e2erec.data")


def leave_one_out(inter: Interactions) -> Split:
    """SASRec/RecBole protocol: last event = test, second-to-last = validation, the rest trains (see `Split`)."""
    start, end = np.asarray(inter.offsets[:-1]), np.asarray(inter.offsets[1:])
    lens = end - start
    test = end[lens >= 2] - 1
    valid = end[lens >= 3] - 2
    train_len = np.where(lens >= 3, lens - 2, np.where(lens == 2, 1, lens))
    return Split("leave_one_out", (start + train_len).astype(np.int64), valid.astype(np.int64), test.astype(np.int64))


def temporal(inter: Interactions, valid_frac: float, test_frac: float) -> Split:
    """Global time cut-offs over the dataset's time range: [t_min, valid_cut) trains, [valid_cut, test_cut) validates,
    [test_cut, t_max] tests. A target must have at least one earlier event of its user (else it has no history to
    condition on); targets dropped for that reason are logged and counted in `inter.meta["split"]`."""
    ts = np.asarray(inter.timestamp)
    lens = inter.lengths()
    t_min, t_max = int(ts.min()), int(ts.max())
    valid_cut = t_min + (1.0 - valid_frac - test_frac) * (t_max - t_min)
    test_cut = t_min + (1.0 - test_frac) * (t_max - t_min)
    user = np.repeat(np.arange(inter.n_users), lens)
    is_train = ts < valid_cut
    # Events are time-ordered within a user, so the training events form a prefix.
    train_end = np.asarray(inter.offsets[:-1]) + np.bincount(user, weights=is_train, minlength=inter.n_users).astype(np.int64)
    first = np.zeros(len(ts), bool)
    first[np.asarray(inter.offsets[:-1])[lens > 0]] = True
    valid_mask = (ts >= valid_cut) & (ts < test_cut)
    test_mask = ts >= test_cut
    dropped = int((first & (valid_mask | test_mask)).sum())
    if dropped:
        log.info("temporal split: dropped %d targets that are their user's first event (no history)", dropped)
    inter.meta["split"] = {"protocol": "temporal", "valid_cut": valid_cut, "test_cut": test_cut,
                           "dropped_targets_without_history": dropped}
    return Split("temporal", train_end, np.flatnonzero(valid_mask & ~first), np.flatnonzero(test_mask & ~first))


def _with_probes(inter: Interactions, split: Split) -> Split:
    """Under the cold-item protocol (e2erec.data.cold): probe users train nothing and validate nothing; the last
    event of each (its cold event) is a test target, after the real users' own targets."""
    first = inter.cold.first_probe
    offsets = np.asarray(inter.offsets)
    train_end = split.train_end.copy()
    train_end[first:] = offsets[first:-1]
    probe_row = offsets[first]
    cold_targets = offsets[first + 1:] - 1
    return Split(split.protocol, train_end, split.valid[split.valid < probe_row],
                 np.concatenate([split.test[split.test < probe_row], cold_targets]).astype(np.int64))


def _with_new_users(inter: Interactions, split: Split) -> Split:
    """Under the new-user protocol (e2erec.data.cold): new users train nothing and validate nothing; their test
    targets are their events k (0-based, so k events of history before each) for every k of the protocol that their
    history reaches, after every other target."""
    new = inter.new_users.users
    offsets = np.asarray(inter.offsets)
    train_end = np.where(new, offsets[:-1], split.train_end)
    users = np.flatnonzero(new)
    lens = np.diff(offsets)[users]
    ks = np.asarray(inter.new_users.ks, np.int64)
    reach = lens[:, None] > ks[None, :]  # (new users, ks): the user has an event k (its k + 1-th)
    targets = (offsets[users][:, None] + ks[None, :])[reach]
    valid = split.valid[~new[inter.user_of(split.valid)]]
    test = split.test[~new[inter.user_of(split.test)]]
    return Split(split.protocol, train_end.astype(np.int64), valid, np.concatenate([test, targets]).astype(np.int64))


def training_mask(inter: Interactions, split: Split) -> np.ndarray:
    """bool [n_events]: True for the rows `offsets[u]:train_end[u]`."""
    lens = inter.lengths()
    pos = np.arange(inter.n_events) - np.repeat(np.asarray(inter.offsets[:-1]), lens)
    return pos < np.repeat(split.train_end - np.asarray(inter.offsets[:-1]), lens)


def make_split(inter: Interactions, cfg: DataConfig) -> Split:
    """The split `cfg.split` names; also sets `inter.items.popularity` from the TRAINING events only (so popularity
    baselines and popularity-stratified metrics never see held-out events)."""
    if cfg.split == "leave_one_out":
        split = leave_one_out(inter)
    else:
        split = temporal(inter, cfg.temporal_valid_frac, cfg.temporal_test_frac)
    if inter.cold is not None:
        split = _with_probes(inter, split)
    if inter.new_users is not None:
        split = _with_new_users(inter, split)
    train_items = np.asarray(inter.item)[training_mask(inter, split)]
    inter.items.popularity = np.bincount(train_items, minlength=inter.n_items).astype(np.int64)
    return split
