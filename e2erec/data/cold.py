"""Cold-start protocols: items, or users, held out of every training and validation input.

**Cold items** (`hold_out_items`): held-out items, each of their events a test target.

A random share of the catalogue (`data.cold_items.share`), or the items first seen after a time cut-off
(`data.cold_items.after`), is held out. The log is rewritten so that the usual machinery (contiguous histories,
`Split`, `gather_histories`) needs no special case:

- the **warm log**: every user's events minus those on cold items (users keep their ids; their splits are computed
  on it as before, so no cold item is in any training row, validation target or history);
- one **probe user per cold event**, appended after the real users: the real user's warm events before that
  event (at most `data.max_seq_len`, the most recent, since no model reads further back), then the cold event
  itself. Its only row that any split uses is that last one, as a test target (`make_split` gives probe users no
  training rows and no validation target).

With a 10% random hold-out on ml-100k that is ~10K cold targets, where the last event of each user would give a few
dozen. Cost: O(events + cold events x max_seq_len), all vectorised.

`Interactions.cold` records the held-out items and, for every probe user, the real user it was cut from (the
bootstrap resamples real users, so a user's cold targets stay together). The dataset fingerprint changes with the
protocol, so semantic IDs and exports trained under it are told apart from the plain ones.

**New users** (`hold_out_users`): a seeded random share of the real users (`data.new_users.share`) trains nothing
and validates nothing; each is evaluated at every k of `data.new_users.ks`, its event k + 1 predicted from its first
k events (`make_split` makes those the test targets). Truncating the histories of users the models trained on
instead would leak: their event k + 1 was a training target of every system, memorised from that very history.
The log is unchanged; `Interactions.new_users` records who is held out, and the fingerprint changes with it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from e2erec.data.config import ColdItemsConfig, NewUsersConfig
from e2erec.data.types import ColdHoldout, Interactions, NewUserHoldout
from e2erec.errors import DataError
from e2erec.utils.io import fingerprint

PER_EVENT_PLANTED = ("prob", "user_interest")  # synthetic ground truth indexed by event (see Interactions.planted)
PER_USER_PLANTED = ("user_mixture",)


def cold_item_mask(inter: Interactions, cfg: ColdItemsConfig) -> np.ndarray:
    """bool [n_items]: the held-out items. `share`: a seeded random round(share x n_items) of the catalogue;
    `after`: items whose first event comes after t_min + after x (t_max - t_min)."""
    n = inter.n_items
    cold = np.zeros(n, bool)
    if cfg.share > 0:
        rng = np.random.default_rng(cfg.seed)
        cold[rng.choice(n, size=round(cfg.share * n), replace=False)] = True
    elif cfg.after is not None:
        ts = np.asarray(inter.timestamp)
        first = np.full(n, np.iinfo(np.int64).max)
        np.minimum.at(first, np.asarray(inter.item), ts)
        cut = ts.min() + cfg.after * (ts.max() - ts.min())
        cold = first > cut
        cold &= first < np.iinfo(np.int64).max  # an item with no event is not a cold target, just absent
    return cold


def hold_out_items(inter: Interactions, cfg: ColdItemsConfig, max_history: int) -> Interactions:
    """The log rewritten for the cold-item protocol (module docstring): warm users, then one probe user per cold
    event. Raises DataError when the hold-out leaves no cold event or no warm one."""
    cold = cold_item_mask(inter, cfg)
    item = np.asarray(inter.item)
    offsets = np.asarray(inter.offsets, np.int64)
    n_users, lens = inter.n_users, np.diff(offsets)
    is_cold = cold[item]
    n_cold_events = int(is_cold.sum())
    if n_cold_events == 0 or n_cold_events == len(item):
        raise DataError(f"data.cold_items ({dataclasses.asdict(cfg)}) holds out {int(cold.sum())} items with "
                        f"{n_cold_events} of {len(item)} events: the protocol needs both cold and warm events")
    user = np.repeat(np.arange(n_users), lens)

    # Warm log: the events off cold items, in their order (so each user's stay time-ordered and contiguous).
    warm_rows = np.flatnonzero(~is_cold)
    warm_offsets = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(user[warm_rows], minlength=n_users), out=warm_offsets[1:])

    # Probe users: warm events of the user before the cold event (the count of warm rows before it), then the event.
    cold_rows = np.flatnonzero(is_cold)
    warm_before = np.cumsum(~is_cold) - (~is_cold)  # warm rows before each row, over the whole log
    end = warm_before[cold_rows]  # exclusive end of the user's warm events before it, as a warm-log row
    # A cold event with no warm event before it (its user's first, or only cold ones before) has no history to
    # condition on: dropped and counted, as the temporal split drops first events.
    has_history = end > warm_offsets[user[cold_rows]]
    cold_rows, end = cold_rows[has_history], end[has_history]
    owner = user[cold_rows]
    start = np.maximum(warm_offsets[owner], end - max_history)
    probe_lens = end - start + 1
    probe_offsets = np.zeros(len(cold_rows) + 1, np.int64)
    np.cumsum(probe_lens, out=probe_offsets[1:])
    pos = np.arange(probe_offsets[-1]) - np.repeat(probe_offsets[:-1], probe_lens)
    last = pos == np.repeat(probe_lens - 1, probe_lens)
    history_row = warm_rows[np.minimum(np.repeat(start, probe_lens) + pos, len(warm_rows) - 1)]
    probe_rows = np.where(last, np.repeat(cold_rows, probe_lens), history_row)

    rows = np.concatenate([warm_rows, probe_rows])  # source row of every event of the rewritten log
    users = np.concatenate([np.arange(n_users), owner])  # source user of every user
    planted = dict(inter.planted)
    for key in PER_EVENT_PLANTED:
        if key in planted:
            planted[key] = np.asarray(planted[key])[rows]
    for key in PER_USER_PLANTED:
        if key in planted:
            planted[key] = np.asarray(planted[key])[users]
    meta = dict(inter.meta)
    meta["cold_items"] = {"protocol": dataclasses.asdict(cfg), "n_items": int(cold.sum()),
                          "n_targets": len(cold_rows), "dropped_without_history": int((~has_history).sum()),
                          "max_history": max_history}
    meta["fingerprint"] = fingerprint("cold-items-v1", str(meta.get("fingerprint")), dataclasses.asdict(cfg),
                                      max_history)
    raw = np.asarray(inter.user_raw_id, dtype=object)[owner].astype(str)  # "<user>#cold<j>": numpy, not a loop
    probe_ids = np.char.add(np.char.add(raw, "#cold"), np.arange(len(owner)).astype(str))
    return dataclasses.replace(
        inter,
        offsets=np.concatenate([warm_offsets, warm_offsets[-1] + probe_offsets[1:]]),
        item=item[rows], timestamp=np.asarray(inter.timestamp)[rows], feedback=np.asarray(inter.feedback)[rows],
        label=np.asarray(inter.label)[rows],
        user_raw_id=list(inter.user_raw_id) + probe_ids.tolist(),
        items=dataclasses.replace(inter.items, popularity=np.zeros(inter.n_items, np.int64)),
        meta=meta, planted=planted,
        cold=ColdHoldout(items=cold, first_probe=n_users, origin=users),
    )


def hold_out_users(inter: Interactions, cfg: NewUsersConfig) -> Interactions:
    """`inter` with a seeded random round(share x real users) of its real users (not probe users) marked new
    (module docstring); only users with at least 2 events, so each has one target at least. Raises DataError when
    no such user is left to hold out, or every one would be."""
    real = inter.n_users if inter.cold is None else inter.cold.first_probe
    lens = inter.lengths()[:real]
    eligible = np.flatnonzero(lens >= 2)
    n_new = round(cfg.share * real)
    if n_new == 0 or n_new >= len(eligible):
        raise DataError(f"data.new_users.share={cfg.share} holds out {n_new} of the {len(eligible)} users with 2 or "
                        f"more events: the protocol needs some new users and some to train on")
    new = np.zeros(inter.n_users, bool)
    new[np.random.default_rng(cfg.seed).choice(eligible, size=n_new, replace=False)] = True
    meta = dict(inter.meta)
    meta["new_users"] = {"protocol": dataclasses.asdict(cfg), "n_users": n_new,
                         "n_targets": {f"k{k}": int((lens[new[:real]] > k).sum()) for k in cfg.ks}}
    meta["fingerprint"] = fingerprint("new-users-v1", str(meta.get("fingerprint")), dataclasses.asdict(cfg))
    return dataclasses.replace(inter, meta=meta, new_users=NewUserHoldout(users=new, ks=tuple(cfg.ks)))
