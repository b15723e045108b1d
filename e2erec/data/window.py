"""History windows: "recommend from what the user did in the past 3 days", or from the last N events.

A window is a first row per request. The request happens at the target event's time (or, after a user's whole
history, at the time of its latest event); the window keeps the events of the last `history_days` days before it
and at most the last `history_events` of them, and never less than the latest event, so a model always has a history to read.
`window_starts` is what e2erec's search uses; `windowed_view` truncates the log by hand, one user per request, so a
system that reads whole histories (the cascade) gets the same instruction, and tests compare the two.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from e2erec.data.types import Interactions

DAY_S = 86_400


def window_starts(inter: Interactions, users: np.ndarray, ends: np.ndarray, history_days: float = 0.0,
                  history_events: int = 0) -> np.ndarray:
    """int64 first row of each (user, end) request's window (`offsets[u]` without a window). O(n log L) for n
    requests with histories of at most L events: a vectorised binary search inside each request's own rows (a
    user's rows are sorted by time), nothing over the whole log."""
    users, ends = np.asarray(users, np.int64), np.asarray(ends, np.int64)
    offsets = np.asarray(inter.offsets)
    first = offsets[users].copy()
    if history_events > 0:
        first = np.maximum(first, ends - history_events)
    if history_days > 0:
        ts = np.asarray(inter.timestamp, np.int64)
        cut = _request_time(inter, users, ends) - int(history_days * DAY_S)
        lo, hi = first.copy(), ends.copy()  # the first row in [lo, hi) with ts >= cut (hi if none)
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            early = (lo < hi) & (ts[np.minimum(mid, len(ts) - 1)] < cut)
            lo = np.where(early, mid + 1, lo)
            hi = np.where((lo < hi) & ~early, mid, hi)
        first = lo
    # Never an empty history: the latest event stays (a user with no event in the window).
    return np.where(ends > offsets[users], np.minimum(first, ends - 1), first)


def _request_time(inter: Interactions, users: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The target event's time, or after a user's whole history the time of its latest event."""
    ts = np.asarray(inter.timestamp, np.int64)
    last = np.asarray(inter.offsets)[users + 1]
    return np.where(ends < last, ts[np.minimum(ends, len(ts) - 1)], ts[np.maximum(ends - 1, 0)])


def window_mask(inter: Interactions, users: np.ndarray, ends: np.ndarray, history_days: float = 0.0,
                history_events: int = 0) -> np.ndarray:
    """bool [n]: the requests whose window holds at least one event without the latest-event fallback."""
    users, ends = np.asarray(users, np.int64), np.asarray(ends, np.int64)
    has = ends > np.asarray(inter.offsets)[users]
    if history_days <= 0:
        return has
    latest = np.asarray(inter.timestamp, np.int64)[np.maximum(ends - 1, 0)]
    return has & (latest >= _request_time(inter, users, ends) - int(history_days * DAY_S))


def windowed_view(inter: Interactions, targets: np.ndarray, history_days: float = 0.0,
                  history_events: int = 0) -> tuple[Interactions, np.ndarray]:
    """The log truncated by hand: one user per target, holding the target's window and then the target event
    itself. Returns (that log, the targets' new flat indices). Costs O(the windows' events)."""
    targets = np.asarray(targets, np.int64)
    users = inter.user_of(targets)
    starts = window_starts(inter, users, targets, history_days, history_events)
    lens = targets - starts + 1  # the window, then the target
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    rows = np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], lens)
    view = dataclasses.replace(
        inter, offsets=offsets, item=np.asarray(inter.item)[rows], timestamp=np.asarray(inter.timestamp)[rows],
        feedback=np.asarray(inter.feedback)[rows], label=np.asarray(inter.label)[rows],
        user_raw_id=np.asarray(inter.user_raw_id, dtype=object)[users].tolist(), planted={}, cold=None, new_users=None,
        meta={**inter.meta, "window": {"history_days": history_days, "history_events": history_events}})
    return view, offsets[1:] - 1
