"""Which history events drove a recommended item: occlusion (leave one event out), batched, and the deletion test.

An event's weight for an item is how much the item's generation log-probability drops when the event is removed
from the history: w(e) = log P_gen(item | H) - log P_gen(item | H without e). Removal is real removal: the model
re-reads the history without the event, so the later events' time gaps and positions change as they would had the
event never happened, and where the history is longer than the model's window the next older event slides in.
Every occluded history of a request scores all of its items at once (one encoder pass gives the next-item state;
the items cost only the small code decoder), so a user with n candidate events costs n encoder passes of its
history, whatever the list's length.

`candidate_events` bounds that cost: the latest events and each item's most similar ones, `max_events` in all.
Events also act together (the latest few matter jointly far more than one at a time), so `explain_events` removes
an item's single causes together, and the latest events together, and cites the stronger set (`deletion_drop`).
The explain bench measures faithfulness and cost (`e2erec.explain.bench`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from e2erec.data.jagged import batch_of_rows
from e2erec.data.types import Interactions

# An event is a single cause only when its weight is at least this share of the item's largest: below it the weight is
# noise-level (ml-100k: the second and third weights are often +0.01 against a first of +2), and citing it would
# claim a cause the model barely has. Measured on ml-100k (issue-17 note).
MIN_CAUSE_SHARE = 0.1


@dataclass
class Attribution:
    """Occlusion weights of request i's candidate events (jagged over requests) for each of its items.

    offsets: int64 [n + 1]; rows: int64 [E] flat event indices of the candidate events, oldest first per request;
    weights: float32 [E, k], the drop of item j's log-probability without the event (positive: the event supports
    the item); base: float32 [n, k], each item's log-probability under the whole history."""

    offsets: np.ndarray
    rows: np.ndarray
    weights: np.ndarray
    base: np.ndarray

    def top(self, i: int, j: int, n: int = 3) -> list[tuple[int, float]]:
        """Request i's item j: its `n` most supporting events (row, weight), largest weight first; only events
        whose removal lowers the item's log-probability (weight > 0) are causes, so fewer may come back."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        w = self.weights[lo:hi, j]
        order = np.argsort(-w, kind="stable")[:n]
        return [(int(self.rows[lo + o]), float(w[o])) for o in order if w[o] > 0]

    def top_rows(self, n: int = 3, min_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The top-`n` supporting events of every (request, item) as padded rows int64 [n_requests, k, n] (-1:
        fewer causes) and their weights float32 (0 there); an event counts as a cause when its weight is positive
        and at least `min_share` of the item's largest. Vectorised over requests with a padded view."""
        n_req, k = self.base.shape
        lens = np.diff(self.offsets)
        width = max(int(lens.max()) if len(lens) else 0, 1)
        pos = np.arange(len(self.rows)) - np.repeat(self.offsets[:-1], lens)
        req = np.repeat(np.arange(n_req), lens)
        w = np.full((n_req, width, k), -np.inf, np.float32)
        w[req, pos] = self.weights
        r = np.full((n_req, width), -1, np.int64)
        r[req, pos] = self.rows
        order = np.argsort(-w, axis=1, kind="stable")[:, :n]  # (n_req, n, k)
        top_w = np.take_along_axis(w, order, axis=1)
        top_r = np.take_along_axis(np.broadcast_to(r[:, :, None], w.shape), order, axis=1)
        cause = (top_w > 0) & (top_w >= min_share * top_w[:, :1, :])
        return (np.where(cause, top_r, -1).transpose(0, 2, 1), np.where(cause, top_w, 0).transpose(0, 2, 1))


def history_window(inter: Interactions, users: np.ndarray, ends: np.ndarray, max_len: int) -> np.ndarray:
    """int64 first row of the history the model reads for each (user, end): the most recent `max_len` events."""
    return np.maximum(np.asarray(inter.offsets)[users], np.asarray(ends, np.int64) - max_len)


def histories_without(inter: Interactions, users: np.ndarray, ends: np.ndarray, drop_offsets: np.ndarray,
                      drop_rows: np.ndarray, max_len: int):
    """The history the model would read for request i had its events `drop_rows[drop_offsets[i]:drop_offsets[i+1]]`
    (flat event indices) never happened: the user's rows before `ends[i]` minus those, the most recent `max_len`
    of the rest (so an older event slides into the window for each removed one). A JaggedBatch; O(max_len + the
    dropped events) per request, no loop."""
    users, ends = np.asarray(users, np.int64), np.asarray(ends, np.int64)
    drop_offsets = np.asarray(drop_offsets, np.int64)
    n_drop = np.diff(drop_offsets)
    starts = np.maximum(np.asarray(inter.offsets)[users], ends - max_len - n_drop)
    lens = ends - starts
    req = np.repeat(np.arange(len(users)), lens)
    rows = np.arange(lens.sum(), dtype=np.int64) + np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]),
                                                              lens)
    n_events = len(inter.item)
    dropped = np.unique(np.repeat(np.arange(len(users)), n_drop) * n_events + np.asarray(drop_rows, np.int64))
    key = req * n_events + rows
    if len(dropped):
        keep = dropped[np.minimum(np.searchsorted(dropped, key), len(dropped) - 1)] != key
    else:
        keep = np.ones(len(key), bool)
    # Of the kept rows, the most recent max_len per request: rank each kept row from its request's end.
    kept_req, kept_rows = req[keep], rows[keep]
    count = np.bincount(kept_req, minlength=len(users))
    from_end = np.repeat(np.cumsum(count), count) - np.arange(len(kept_rows)) - 1
    recent = from_end < max_len
    kept_req, kept_rows = kept_req[recent], kept_rows[recent]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(kept_req, minlength=len(users)))]).astype(np.int64)
    return batch_of_rows(inter, users, offsets, kept_rows)


def candidate_events(system, inter: Interactions, users: np.ndarray, ends: np.ndarray, items: np.ndarray,
                     max_events: int, recent: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n + 1], rows): the events of each request an explanation may cite, oldest first: all of the history
    the model reads when `max_events` <= 0, else at most `max_events` of it: the `recent` latest events, then, round
    robin over the request's items, each item's next most similar event (cosine of the model's own item embeddings:
    the sum of an item's code embeddings). The similarity only chooses whom to test; the weights are occlusion's.
    O(requests x window x items), no loop."""
    users, ends, items = np.asarray(users, np.int64), np.asarray(ends, np.int64), np.asarray(items, np.int64)
    first = history_window(inter, users, ends, model_window(system))
    lens = ends - first
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    rows = np.arange(offsets[-1], dtype=np.int64) + np.repeat(first - offsets[:-1], lens)
    if max_events <= 0 or len(rows) == 0 or int(lens.max()) <= max_events:
        return offsets, rows
    n, width = len(users), int(lens.max())
    req = np.repeat(np.arange(n), lens)
    pos = np.arange(len(rows)) - offsets[req]  # 0 = the oldest event of the request's window
    from_end = lens[req] - 1 - pos
    ev = item_vectors(system, np.asarray(inter.item)[rows])  # (E, d)
    it = item_vectors(system, items.clip(0))  # (n, k, d)
    sim = torch.einsum("ed,ekd->ek", ev, it[torch.as_tensor(req)]).numpy()
    sim[np.broadcast_to(items[req] < 0, sim.shape)] = -np.inf
    padded = np.full((n, width, items.shape[1]), -np.inf, np.float32)
    padded[req, pos] = sim
    order = np.argsort(-padded, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(width)[None, :, None], axis=1)
    priority = rank.min(axis=2)[req, pos].astype(np.int64) + recent  # an item's best events first ...
    priority = np.where(from_end < recent, from_end, priority)  # ... after the latest events
    chosen = np.full((n, width), np.iinfo(np.int64).max, np.int64)
    chosen[req, pos] = priority * width + from_end  # ties: the more recent first
    keep_sorted = np.sort(chosen, axis=1)[:, min(max_events, width) - 1]
    keep = chosen[req, pos] <= keep_sorted[req]
    counts = np.bincount(req[keep], minlength=n)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), rows[keep]


def item_vectors(system, items) -> torch.Tensor:
    """float [..., d]: the items (long [...]) as the model reads them (the sum of their codes' input embeddings),
    unit norm. Only these items: nothing over the catalogue."""
    model = system.model
    device = model.code_emb[0].weight.device
    codes = system.codes.to(device)[torch.as_tensor(items, device=device)]
    with torch.no_grad():
        v = sum(table(codes[..., level]) for level, table in enumerate(model.code_emb)).float()
    return torch.nn.functional.normalize(v, dim=-1).cpu()


def model_window(system) -> int:
    """How many recent events the model reads: the data's history cap and the model's own, whichever is smaller."""
    return min(system.cfg.data.max_seq_len, system.cfg.model.max_tokens_per_seq)


@torch.no_grad()
def log_probs_under(system, histories, items: np.ndarray) -> np.ndarray:
    """float32 [B, k]: log P_gen of each history's items (int64 [B, k], -1: -inf) under `system`'s model."""
    model = system.model
    state = model.encode_histories(histories, system.codes)
    return model.item_log_probs(state.hidden, torch.as_tensor(items), system.codes, system.trie).cpu().numpy()


def _base(system, inter: Interactions, users: np.ndarray, ends: np.ndarray, items: np.ndarray) -> np.ndarray:
    """float32 [n, k]: each request's items' log-probabilities under its whole history (nothing removed)."""
    whole = histories_without(inter, users, ends, np.zeros(len(users) + 1, np.int64), np.zeros(0, np.int64),
                              model_window(system))
    return log_probs_under(system, whole, items)


def _drops(system, inter: Interactions, users: np.ndarray, ends: np.ndarray, items: np.ndarray, base: np.ndarray,
           variant_req: np.ndarray, offsets: np.ndarray, rows: np.ndarray, token_budget: int) -> np.ndarray:
    """float32 [V, k]: for variant v of request `variant_req[v]`, the drop of that request's items when its events
    `rows[offsets[v]:offsets[v + 1]]` are removed together. The occluded histories are encoded in batches of
    about `token_budget` tokens."""
    max_len = model_window(system)
    out = np.empty((len(variant_req), items.shape[1]), np.float32)
    step = max(1, token_budget // max(max_len, 1))
    for lo in range(0, len(variant_req), step):
        v = slice(lo, min(lo + step, len(variant_req)))
        req = variant_req[v]
        batch = histories_without(inter, users[req], ends[req], offsets[v.start:v.stop + 1] - offsets[v.start],
                                  rows[offsets[v.start]:offsets[v.stop]], max_len)
        out[v] = base[req] - log_probs_under(system, batch, items[req])
    return out


@torch.no_grad()
def occlusion(system, inter: Interactions, users: np.ndarray, ends: np.ndarray, items: np.ndarray,
              max_events: int = 0, recent: int = 0, token_budget: int = 1 << 16) -> Attribution:
    """Leave-one-out weights of each request's candidate events (`candidate_events`) for its items (int64 [n, k]),
    each event its own variant (`_drops`)."""
    users, ends, items = np.asarray(users, np.int64), np.asarray(ends, np.int64), np.asarray(items, np.int64)
    offsets, rows = candidate_events(system, inter, users, ends, items, max_events, recent)
    base = _base(system, inter, users, ends, items)
    variant_req = np.repeat(np.arange(len(users)), np.diff(offsets))
    weights = _drops(system, inter, users, ends, items, base, variant_req, np.arange(len(rows) + 1), rows,
                     token_budget)
    return Attribution(offsets, rows, weights, base)


@torch.no_grad()
def deletion_drop(system, inter: Interactions, users: np.ndarray, ends: np.ndarray, items: np.ndarray,
                  drop_rows: np.ndarray, base: np.ndarray | None = None, token_budget: int = 1 << 16) -> np.ndarray:
    """The drop of each item's log-probability when events are removed together: `drop_rows` int64 [n, S, m]
    (-1: none) holds S sets of events per request; returns float32 [n, S, k], the drop of every one of request i's
    items (int64 [n, k]) without set s. Identical sets of a request are encoded once (`_drops`)."""
    users, ends, items = np.asarray(users, np.int64), np.asarray(ends, np.int64), np.asarray(items, np.int64)
    n, n_sets, m = drop_rows.shape
    if base is None:
        base = _base(system, inter, users, ends, items)
    flat = np.sort(drop_rows.reshape(n * n_sets, m), axis=1)  # a set's order does not matter
    unique, inverse = np.unique(np.column_stack([np.repeat(np.arange(n), n_sets), flat]), axis=0,
                                return_inverse=True)
    v_rows = unique[:, 1:]
    offsets = np.concatenate([[0], np.cumsum((v_rows >= 0).sum(1))]).astype(np.int64)
    out = _drops(system, inter, users, ends, items, base, unique[:, 0], offsets, v_rows[v_rows >= 0], token_budget)
    return out[inverse.reshape(-1)].reshape(n, n_sets, items.shape[1])


def latest_events(inter: Interactions, users: np.ndarray, ends: np.ndarray, max_len: int, count: int) -> np.ndarray:
    """int64 [n, count]: each request's `count` latest events of the history the model reads, newest first (-1:
    a shorter history)."""
    ends = np.asarray(ends, np.int64)
    first = history_window(inter, users, ends, max_len)
    rows = ends[:, None] - 1 - np.arange(count)[None, :]
    return np.where(rows >= first[:, None], rows, -1)


@dataclass
class EventReasons:
    """The history events cited for each (request, item): rows int64 [n, k, top] (-1: none), each one's own
    occlusion weight float32 [n, k, top] (NaN: not occluded alone), `joint` float32 [n, k] (the drop of the item's log-probability without
    all of them together), `base` [n, k] (its log-probability under the whole history) and `latest` bool [n, k]
    (the cited set is the latest events, which jointly outweighed the single-event causes)."""

    rows: np.ndarray
    weights: np.ndarray
    joint: np.ndarray
    base: np.ndarray
    latest: np.ndarray


@torch.no_grad()
def explain_events(system, inter: Interactions, users: np.ndarray, ends: np.ndarray, items: np.ndarray,
                   top: int = 3, max_events: int = 5, recent: int = 2) -> EventReasons:
    """The `top` events that drove each item, in two steps.

    1. Occlusion of each candidate event (`candidate_events`: the latest `recent` and the items' most similar
       ones, `max_events` in all): the item's `top` best single causes (positive weights only).
    2. Events act together: the latest events often matter jointly far more than any one of them does alone (the
       model reads them as the user's current state). So both the single causes and the latest `top` events are
       removed together, and the set whose joint removal lowers the item's log-probability more is cited.
    Cost: max_events + (distinct cause sets, at most k) + 2 encoder passes of the history per request."""
    users, ends, items = np.asarray(users, np.int64), np.asarray(ends, np.int64), np.asarray(items, np.int64)
    k = items.shape[1]
    att = occlusion(system, inter, users, ends, items, max_events=max_events, recent=recent)
    causes, _ = att.top_rows(top, MIN_CAUSE_SHARE)  # (n, k, top)
    latest = latest_events(inter, users, ends, model_window(system), top)
    sets = np.concatenate([causes, latest[:, None, :]], axis=1)  # (n, k + 1, top)
    drops = deletion_drop(system, inter, users, ends, items, sets, att.base)  # (n, k + 1, k)
    own = drops[:, np.arange(k), np.arange(k)]  # item j without its own causes
    recent_drop = drops[:, k, :]
    use_latest = recent_drop > own
    joint = np.where(use_latest, recent_drop, own).astype(np.float32)
    # Neither set lowers the item's probability: no event explains it, and none is cited.
    rows = np.where(use_latest[..., None], latest[:, None, :], causes)
    rows = np.where((joint > 0)[..., None], rows, -1)
    return EventReasons(rows, _weights_of(att, rows), np.where(joint > 0, joint, 0).astype(np.float32), att.base,
                        use_latest & (joint > 0))


def _weights_of(att: Attribution, rows: np.ndarray) -> np.ndarray:
    """float32 like rows [n, k, m]: each event's occlusion weight for its item (0 for -1, NaN for an event that was
    not occluded alone: one of the latest events beyond the candidates)."""
    n, k, _ = rows.shape
    if len(att.rows) == 0:
        return np.zeros(rows.shape, np.float32)
    width = int(max(att.rows.max(), rows.max())) + 1
    key = np.repeat(np.arange(n), np.diff(att.offsets)) * width + att.rows  # sorted: requests, then rows
    query = np.arange(n)[:, None, None] * width + np.maximum(rows, 0)
    pos = np.minimum(np.searchsorted(key, query), len(key) - 1)
    hit = (key[pos] == query) & (rows >= 0)
    w = np.where(hit, att.weights[pos, np.arange(k)[None, :, None]], np.nan)
    return np.where(rows >= 0, w, 0).astype(np.float32)
