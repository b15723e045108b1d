"""Synthetic interactions with planted structure, deterministic by seed, 1K to 100M events.

Generative story (all vectorised numpy; users are generated in chunks of ~1M events so temporaries stay small):

- K interest clusters with centres c_k ~ N(0, I_d). Item i belongs to cluster z_i (uniform) with factor
  f_i = c_{z_i} + 0.5 * N(0, I_d) and popularity weight w_i ∝ rank_i^(-popularity_exponent) (Zipf, random ranks).
- Text carries the cluster: each cluster has its own vocabulary of made-up words; an item's text samples 6 words
  from its cluster's vocabulary, 2 from a second random cluster and 2 shared words; its category is its cluster's
  genre (plus, for 20% of items, the second cluster's). Content-based semantic IDs can therefore recover clusters.
- User u has a mixture π_u over `interests_per_user` clusters (Dirichlet(1) weights). Its first event draws the
  current interest s ~ π_u; before every later event the interest is redrawn from π_u with probability `drift`.
- Event item: with probability `explore` from global popularity w, else from the current cluster's items ∝ w.
- Feedback: P(positive) = σ(3·(cos(f_i, c_s) − 0.5) + b_i), with item bias b_i ~ N(0, 0.5²); the label is drawn from
  it and the rating is 4–5 for a positive, 1–3 otherwise (so `positive_threshold: 4` recovers the label).
- Timestamps: a user starts at a uniform time in 2015–2020; gaps are 1 + Exponential(1 day) seconds.
- Arrivals (`arrival_share` > 0): that share of the items gets a release time r_i, uniform in the last
  `arrival_window` of 2015–2020 (r_i = 0 for the others). An event at time t takes item i with weight
  w_i · a_i(t), a_i(t) = clip((t − r_i) / ramp, 0, 1) (ramp = `arrival_ramp_days`): nothing before release, then
  a linear ramp to full popularity. Drawn by rejection (the usual draw, accepted with probability a_i(t), redrawn
  from a second seeded stream otherwise), so the log with `arrival_share` = 0 is the log without arrivals.
- Repeats (`repeat_share` > 0): that share of the items is consumable, item i with a repurchase cycle
  c_i ~ `repeat_cycle_days` · LogNormal(0, 0.5). A positive event on it at time t is, with probability
  `repeat_prob`, bought again: the user's first event at or after t + c_i · LogNormal(0, 0.2) becomes item i
  (its planted P(positive) the original's, its rating drawn from it), and so on for that repeat, a few rounds deep.
  Drawn from a third seeded stream, so the log with `repeat_share` = 0 is the log without repeats. The
  Bayes-optimal next-item formula below then no longer holds, and the report leaves its planted recall out.

Planted ground truth (`Interactions.planted`; contiguous ids, re-indexed by the pipeline):

    prob              float32 [n_events]  true P(positive) of the event — calibration can be checked against it
    user_interest     int64   [n_events]  the interest s the event was drawn under
    item_factors      float32 [n_items, dim];  interest_centers float32 [n_interests, dim]
    item_interest     int64   [n_items]   the item's cluster z_i
    item_weight       float64 [n_items]   popularity weight w_i (normalised over all generated items)
    item_release      int64   [n_items]   release time r_i in unix seconds, 0 = there from the start (arrivals only)
    item_cycle_days   float64 [n_items]   repurchase cycle c_i in days, 0 = not consumable (repeats only)
    interest_weight   float64 [n_interests]  W_k = Σ_{z_i = k} w_i over all generated items
    user_mixture      float32 [n_users, n_interests]  π_u

`planted_next_item_probs(inter, targets)` turns these into the Bayes-optimal next-item distribution for a target
event given the latent interest of the event before it (the ceiling any recommender can reach on this data);
`planted_affinity(inter, targets)` is the oracle item_factors · c_s ranking under the target's own interest.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from e2erec.data.config import SyntheticConfig
from e2erec.data.raw import RawData, make_item_table
from e2erec.data.types import Interactions

REPEAT_ROUNDS = 8  # repeat-of-a-repeat depth: after 8 cycles a chain stops (its later events are ordinary draws)
MAX_REDRAWS = 64  # rejection rounds for arrivals; events still unplaced then take an item there from the start
CHUNK_EVENTS = 1 << 20  # ~1M events per chunk: ~100 MB of temporaries, independent of the dataset size
_SYLLABLES = ["ka", "lo", "mi", "ra", "tu", "ve", "no", "si", "ba", "de", "fu", "gi", "ho", "ju", "ze", "pa", "qu",
              "ry", "sa", "to", "wi", "xe", "yo", "ni"]
WORDS_PER_INTEREST = 40
SHARED_WORDS = 60
T_START, T_SPAN = 1_420_070_400, 5 * 365 * 86_400  # 2015-01-01, five years


def _vocabulary(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct made-up words of 2-4 syllables."""
    words: dict[str, None] = {}
    while len(words) < n:
        k = int(rng.integers(2, 5))
        words["".join(rng.choice(_SYLLABLES, size=k))] = None
    return np.array(list(words), dtype=object)


def _items(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[pa.Table, dict[str, np.ndarray]]:
    K, d, n = cfg.n_interests, cfg.dim, cfg.n_items
    centers = rng.normal(size=(K, d)).astype(np.float32)
    cluster = rng.integers(0, K, n)
    factors = (centers[cluster] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    weight = (rng.permutation(n) + 1.0) ** -cfg.popularity_exponent
    weight /= weight.sum()
    vocab = _vocabulary(rng, K * WORDS_PER_INTEREST + SHARED_WORDS)
    own = vocab[:K * WORDS_PER_INTEREST].reshape(K, WORDS_PER_INTEREST)  # (K, words per interest)
    shared = vocab[K * WORDS_PER_INTEREST:]
    second = (cluster + rng.integers(1, max(K, 2), n)) % K  # another cluster (itself when K = 1)
    w_own = own[cluster[:, None], rng.integers(0, WORDS_PER_INTEREST, (n, 6))]  # (n, 6)
    w_second = own[second[:, None], rng.integers(0, WORDS_PER_INTEREST, (n, 2))]  # (n, 2)
    w_shared = shared[rng.integers(0, SHARED_WORDS, (n, 2))]  # (n, 2)
    words = np.concatenate([w_own, w_second, w_shared], axis=1)
    words = np.take_along_axis(words, rng.permuted(np.tile(np.arange(10), (n, 1)), axis=1), axis=1)
    text = [" ".join(row) for row in words.tolist()]
    title = [f"{a.capitalize()} {b}" for a, b in w_own[:, :2].tolist()]
    multi = rng.random(n) < 0.2
    cats = [[f"genre-{c:02d}"] + ([f"genre-{s:02d}"] if m and s != c else [])
            for c, s, m in zip(cluster.tolist(), second.tolist(), multi.tolist())]
    year = (1980 + cluster * 37 % 40 + rng.integers(0, 5, n)).tolist()
    table = make_item_table([str(i) for i in range(n)], title, text, cats, year)
    truth = {"item_factors": factors, "interest_centers": centers, "item_interest": cluster.astype(np.int64),
             "item_weight": weight, "interest_weight": np.bincount(cluster, weights=weight, minlength=K)}
    return table, truth


def generate(cfg: SyntheticConfig, progress: bool = True) -> RawData:
    """Generate `cfg.n_events` events (see the module docstring); deterministic given `cfg`."""
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    items, truth = _items(cfg, rng)
    U, K, E, m = cfg.n_users, cfg.n_interests, cfg.n_events, cfg.interests_per_user
    centers, factors, cluster, weight = truth["interest_centers"], truth["item_factors"], truth["item_interest"], truth["item_weight"]
    bias = rng.normal(0, 0.5, cfg.n_items).astype(np.float32)
    unit_f = factors / np.linalg.norm(factors, axis=1, keepdims=True)
    unit_c = centers / np.linalg.norm(centers, axis=1, keepdims=True)

    # Per-cluster inverse-CDF table: items sorted by cluster, cumulative weight normalised into (k, k+1].
    by_cluster = np.argsort(cluster, kind="stable")
    ctot = np.bincount(cluster, weights=weight, minlength=K)
    cstart = np.concatenate([[0.0], np.cumsum(ctot)[:-1]])
    table = cluster[by_cluster] + (np.cumsum(weight[by_cluster]) - cstart[cluster[by_cluster]]) / np.maximum(ctot, 1e-300)[cluster[by_cluster]]
    global_cdf = np.cumsum(weight)
    empty = ctot <= 0

    # Lengths: >= 3 per user (train/valid/test), the rest spread by log-normal activity.
    activity = rng.lognormal(0.0, 1.0, U)
    lens = 3 + rng.multinomial(E - 3 * U, activity / activity.sum())
    interests = np.argsort(rng.random((U, K)), axis=1)[:, :m]  # (U, m) distinct clusters per user
    mix_w = rng.dirichlet(np.ones(m), U).astype(np.float32)  # (U, m)
    mixture = np.zeros((U, K), np.float32)
    np.put_along_axis(mixture, interests, mix_w, axis=1)
    start_time = T_START + rng.integers(0, T_SPAN, U)
    arrivals = _arrivals(cfg) if cfg.arrival_share > 0 else None
    repeats = _repeats(cfg) if cfg.repeat_share > 0 else None

    def draw_items(rng: np.random.Generator, s: np.ndarray) -> np.ndarray:
        """One item per event under interest s: from global popularity with probability `explore`, else from the
        cluster's items by popularity (two uniforms per event, in this order)."""
        r = rng.random(len(s))
        in_cluster = by_cluster[np.minimum(np.searchsorted(table, s + r, side="left"), len(table) - 1)]
        popular = np.minimum(np.searchsorted(global_cdf, r * global_cdf[-1]), cfg.n_items - 1)
        return np.where((rng.random(len(s)) < cfg.explore) | empty[s], popular, in_cluster)

    def draw_feedback(rng: np.random.Generator, it: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(planted P(positive), rating) of each event's item under its interest."""
        cos = np.einsum("nd,nd->n", unit_f[it], unit_c[s])
        p = 1.0 / (1.0 + np.exp(-(3.0 * (cos - 0.5) + bias[it])))
        pos = rng.random(len(it)) < p
        return p, np.where(pos, 4 + (rng.random(len(it)) < 0.5), 1 + rng.integers(0, 3, len(it)))

    user = np.empty(E, np.int32)  # raw ids only (re-encoded by the pipeline): half the memory at 100M events
    item = np.empty(E, np.int64)
    ts = np.empty(E, np.int64)
    feedback = np.empty(E, np.float32)
    prob = np.empty(E, np.float32)
    state = np.empty(E, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    bounds = np.searchsorted(offsets, np.arange(0, E, CHUNK_EVENTS), side="right") - 1
    bounds = np.unique(np.concatenate([bounds, [U]]))
    for u0, u1 in tqdm(list(itertools.pairwise(bounds)), desc="synthetic", unit="chunk", disable=not progress):
        lo, hi = offsets[u0], offsets[u1]
        n = hi - lo
        uid = np.repeat(np.arange(u0, u1), lens[u0:u1])
        first = np.zeros(n, bool)
        first[offsets[u0:u1] - lo] = True
        switch = first | (rng.random(n) < cfg.drift)
        cdf = np.cumsum(mix_w[uid], axis=1)  # (n, m)
        pick = np.minimum((cdf < rng.random(n)[:, None] * cdf[:, -1:]).sum(axis=1), m - 1)
        draw = interests[uid, pick]
        # Carry each drawn interest forward until the next switch (every user's first event switches).
        s = draw[np.maximum.accumulate(np.where(switch, np.arange(n), 0))]
        it = draw_items(rng, s)
        p, rating = draw_feedback(rng, it, s)
        gaps = 1 + rng.exponential(86_400.0, n).astype(np.int64)
        gaps[first] = 0
        csum = np.cumsum(gaps)
        user_base = np.repeat(csum[offsets[u0:u1] - lo], lens[u0:u1])
        t = start_time[uid] + csum - user_base
        if arrivals is not None:
            it, p, rating = _place_arrivals(arrivals, it, p, rating, s, t, weight, draw_items, draw_feedback)
        if repeats is not None:
            it, p, rating = _place_repeats(repeats, uid - u0, it, p, rating, t)
        user[lo:hi], item[lo:hi], state[lo:hi] = uid, it, s
        ts[lo:hi] = t
        feedback[lo:hi], prob[lo:hi] = rating, p
    truth["user_mixture"] = mixture
    meta = {"drift": cfg.drift, "explore": cfg.explore, "seed": cfg.seed}
    if arrivals is not None:
        truth["item_release"] = arrivals["release"]
        meta.update(arrival_share=cfg.arrival_share, arrival_ramp_s=arrivals["ramp"])
    if repeats is not None:
        truth["item_cycle_days"] = repeats["cycle"] / 86_400.0
        meta.update(repeat_share=cfg.repeat_share, repeat_prob=cfg.repeat_prob)
    return RawData(
        user=pa.array(user), item=pa.array(item), timestamp=ts, feedback=feedback, items=items, source="synthetic",
        extra={"prob": prob, "user_interest": state}, planted_static=truth, meta={"synthetic": meta},
    )


def _arrivals(cfg: SyntheticConfig) -> dict:
    """Release times of the arriving items, and the random stream that places their events."""
    rng = np.random.default_rng([cfg.seed, 1])  # its own stream: the main one stays as without arrivals
    new = rng.choice(cfg.n_items, size=round(cfg.arrival_share * cfg.n_items), replace=False)
    release = np.zeros(cfg.n_items, np.int64)
    release[new] = T_START + ((1 - cfg.arrival_window + cfg.arrival_window * rng.random(len(new))) * T_SPAN).astype(np.int64)
    return {"rng": rng, "release": release, "ramp": max(cfg.arrival_ramp_days * 86_400.0, 1.0)}


def _repeats(cfg: SyntheticConfig) -> dict:
    """The consumable items' repurchase cycles (seconds, 0 = not consumable) and the stream that places repeats."""
    rng = np.random.default_rng([cfg.seed, 2])  # its own stream: the main one stays as without repeats
    cycle = np.zeros(cfg.n_items)
    consumable = rng.choice(cfg.n_items, size=round(cfg.repeat_share * cfg.n_items), replace=False)
    cycle[consumable] = cfg.repeat_cycle_days * 86_400.0 * rng.lognormal(0.0, 0.5, len(consumable))
    return {"rng": rng, "cycle": cycle, "prob": cfg.repeat_prob}


def _place_repeats(repeats, user, it, p, rating, t):
    """Repeat step (module docstring) on one chunk of events, grouped by `user` (chunk-local, ascending) and sorted
    by time inside a user: every round moves each live repurchase to the user's first event a cycle later, where
    that event is neither a repeat nor a source (the earliest source wins a contested event). O(rounds x n log n)."""
    rng, cycle = repeats["rng"], repeats["cycle"]
    it, p, rating = it.copy(), p.copy(), rating.copy()
    span = int(t.max() - t.min()) + int(cycle.max() * 2) + 2  # past the chunk's end too: a due time can overshoot
    key = user.astype(np.int64) * span + (t - t.min())
    taken = np.zeros(len(it), bool)
    src = np.flatnonzero((cycle[it] > 0) & (rating >= 4))
    for _ in range(REPEAT_ROUNDS):
        src = src[rng.random(len(src)) < repeats["prob"]]
        if len(src) == 0:
            break
        due = t[src] + (cycle[it[src]] * rng.lognormal(0.0, 0.2, len(src))).astype(np.int64) + 1
        dst = np.searchsorted(key, user[src].astype(np.int64) * span + (due - t.min()), side="left")
        ok = dst < len(it)
        ok[ok] &= (user[dst[ok]] == user[src[ok]]) & ~taken[dst[ok]]
        src, dst = src[ok], dst[ok]
        taken[src] = True  # a source keeps its item, so every repeat has its earlier purchase
        keep = ~taken[dst]
        src, dst = src[keep], dst[keep]
        dst, first = np.unique(dst, return_index=True)  # sources are in time order: the earliest wins
        src = src[first]
        it[dst], p[dst] = it[src], p[src]
        positive = rng.random(len(dst)) < p[dst]
        rating[dst] = np.where(positive, 4 + (rng.random(len(dst)) < 0.5), 1 + rng.integers(0, 3, len(dst)))
        taken[dst] = True
        src = dst[positive]
    return it, p, rating


def availability(release: np.ndarray, ramp: float, items: np.ndarray, t: np.ndarray) -> np.ndarray:
    """a_i(t) = clip((t - r_i) / ramp, 0, 1), 1 for an item there from the start (r_i = 0)."""
    r = release[items]
    return np.where(r == 0, 1.0, np.clip((t - r) / ramp, 0.0, 1.0))


def _place_arrivals(arrivals, it, p, rating, s, t, weight, draw_items, draw_feedback):
    """Rejection step of the arrivals (module docstring): each event keeps its item with probability a_i(t), else
    draws again (same interest, same explore rule) from the arrivals' stream; a redrawn event's feedback is drawn
    again for its new item."""
    rng, release, ramp = arrivals["rng"], arrivals["release"], arrivals["ramp"]
    it = it.copy()
    redo = availability(release, ramp, it, t) <= rng.random(len(it))
    moved = redo.copy()
    for _ in range(MAX_REDRAWS):
        idx = np.flatnonzero(redo)
        if len(idx) == 0:
            break
        it[idx] = draw_items(rng, s[idx])
        redo[idx] = availability(release, ramp, it[idx], t[idx]) <= rng.random(len(idx))
    if redo.any():  # rare (a cluster of mostly unreleased items): the most popular item there from the start
        from_start = np.flatnonzero(release == 0)
        it[redo] = from_start[np.argmax(weight[from_start])]
    idx = np.flatnonzero(moved)
    p, rating = p.copy(), rating.copy()
    p[idx], rating[idx] = draw_feedback(rng, it[idx], s[idx])
    return it, p, rating


def _previous_interest_probs(inter: Interactions, targets: np.ndarray) -> np.ndarray:
    """P(interest at target = k | interest of the event before it): float64 [n_targets, n_interests]."""
    drift = float(inter.meta["synthetic"]["drift"])
    targets = np.asarray(targets, np.int64)
    user = inter.user_of(targets)
    if np.any(targets <= np.asarray(inter.offsets)[user]):
        raise ValueError("every target needs an earlier event of its user")
    prev = np.asarray(inter.planted["user_interest"])[targets - 1]
    pz = drift * np.asarray(inter.planted["user_mixture"], np.float64)[user]  # (n, K)
    pz[np.arange(len(targets)), prev] += 1.0 - drift
    return pz


def planted_next_item_probs(inter: Interactions, targets: np.ndarray) -> np.ndarray:
    """Bayes-optimal P(next item) for target events, float32 [n_targets, n_items] (rank items by it).

    P(i) = Σ_k P(s_t = k | s_{t-1}) · P(i | k), with P(s_t = k | s_{t-1}) = (1 − drift)·[k = s_{t-1}] + drift·π_u[k]
    and P(i | k) = (1 − explore)·[z_i = k]·w_i / W_k + explore·w_i (W_k = Σ_{z_j = k} w_j). Items removed by the
    pipeline's filters are absent, so rows sum to <= 1.
    """
    explore = float(inter.meta["synthetic"]["explore"])
    w = np.asarray(inter.planted["item_weight"], np.float64)
    z = np.asarray(inter.planted["item_interest"])
    # Masses over all generated items: items never drawn (so absent here) keep their share of the normalisation.
    wk = np.asarray(inter.planted["interest_weight"], np.float64)
    K = len(wk)
    p_item_given_k = np.zeros((K, len(w)))
    p_item_given_k[z, np.arange(len(w))] = np.where(wk[z] > 0, (1 - explore) * w / np.maximum(wk[z], 1e-300), 0)
    p_item_given_k += explore * w[None, :]
    pz = _previous_interest_probs(inter, targets)
    if "item_release" not in inter.planted:
        return (pz @ p_item_given_k).astype(np.float32)
    return _with_arrivals(inter, np.asarray(targets, np.int64), pz, w, z, wk, explore).astype(np.float32)


def _with_arrivals(inter: Interactions, targets: np.ndarray, pz: np.ndarray, w: np.ndarray, z: np.ndarray,
                   wk: np.ndarray, explore: float) -> np.ndarray:
    """`planted_next_item_probs` under arrivals. The rejection draw gives, for interest k at time t,
    P(i | k, t) = a_i(t) (e w_i / W + (1 - e) [z_i = k] w_i / W_k) / Z_k(t) with Z_k(t) = e S(t) / W
    + (1 - e) S_k(t) / W_k, S the available weight a·w (over the items kept here; an item the pipeline dropped
    counts as available). Summed over k with weights pz, without a [targets, K, items] array."""
    a = availability(np.asarray(inter.planted["item_release"]), float(inter.meta["synthetic"]["arrival_ramp_s"]),
                     np.arange(len(w))[None, :], np.asarray(inter.timestamp)[targets][:, None])  # (T, n)
    wa = a * w[None, :]
    onehot = np.zeros((len(w), len(wk)))
    onehot[np.arange(len(w)), z] = 1.0
    # W = 1: item_weight is normalised over every generated item, so W - w.sum() is the dropped items' weight.
    s_all = wa.sum(1) + (1.0 - w.sum())  # (T,)
    s_k = wa @ onehot + (wk - np.bincount(z, weights=w, minlength=len(wk)))[None, :]  # (T, K)
    w_k = np.maximum(wk, 1e-300)[None, :]
    zk = explore * s_all[:, None] + (1 - explore) * s_k / w_k
    glob = explore * (pz / zk).sum(1)  # (T,)
    own = (1 - explore) * pz / (w_k * zk)  # (T, K)
    return wa * (glob[:, None] + own[:, z])


def planted_affinity(inter: Interactions, targets: np.ndarray) -> np.ndarray:
    """Oracle affinity item_factors · c_s under each target's own planted interest s: float32 [n_targets, n_items]."""
    s = np.asarray(inter.planted["user_interest"])[np.asarray(targets, np.int64)]
    return np.asarray(inter.planted["interest_centers"])[s] @ np.asarray(inter.planted["item_factors"]).T
