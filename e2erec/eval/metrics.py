"""Offline metrics: full-ranking accuracy, calibration, beyond-accuracy, with bootstrap confidence intervals.

Conventions (the protocol is code, so every choice is written here once):

* Ranking is over the whole catalogue (no sampled negatives), minus the items already in the target's history.
  A system returns its top-K list; the target's 0-based position in it is its *rank*, `inf` when it is not in
  the list. With one held-out item per target event, HR@k and Recall@k are the same number:
  ``HR@k = 1[rank < k]``, ``NDCG@k = 1[rank < k] / log2(rank + 2)`` (one relevant item, so IDCG = 1),
  ``MRR@K = 1 / (rank + 1)`` truncated at the list length K (0 for a miss).
* Calibration scores the actual test item: ``p = P(positive | history, item)``, ``y`` = the event's label.
  AUC is the Mann-Whitney statistic with ties counted one half. GAUC (Zhou et al. 2018, DIN §4) is the
  event-weighted mean of per-user AUCs; users whose test events are all one class are skipped and counted.
  LogLoss clips p to [1e-7, 1 - 1e-7]. Normalised entropy (He et al. 2014, "Practical lessons from predicting
  clicks on ads at Facebook") is LogLoss divided by the entropy of the base rate. ECE (Guo et al. 2017) uses
  equal-width bins on [0, 1]: ``sum_b |sum_{i in b} (p_i - y_i)| / N``. Calibration ratio is ``sum p / sum y``.
* Bootstrap confidence intervals resample *users* with replacement (events of one user are not independent):
  every resample is a vector of per-user multiplicities, and every metric is written as a function of per-event
  weights, so all resamples are computed at once with matrix products.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-7


# ----------------------------------------------------------------------------------------------------------------
# ranking


def target_ranks(recs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target item in its top-K list; `inf` when absent.

    `recs` [n, K] item ids (a list may be padded with -1), `targets` [n] item ids. Returns float64 [n].
    """
    recs = np.asarray(recs)
    targets = np.asarray(targets)
    if recs.ndim != 2 or recs.shape[0] != targets.shape[0]:
        raise ValueError(f"recs must be [n_targets, K] with n_targets={targets.shape[0]}, got shape {recs.shape}")
    hit = recs == targets[:, None]  # [n, K]
    ranks = np.full(len(targets), np.inf)
    rows = hit.any(axis=1)
    ranks[rows] = hit[rows].argmax(axis=1)
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-event HR@k (= Recall@k with one held-out item)."""
    return (ranks < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-event NDCG@k with one relevant item: 1/log2(rank+2) inside the cutoff, else 0."""
    out = np.zeros(len(ranks))
    inside = ranks < k
    out[inside] = 1.0 / np.log2(ranks[inside] + 2.0)
    return out


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    """Per-event reciprocal rank, 0 beyond the returned list (MRR@K)."""
    return np.where(np.isfinite(ranks), 1.0 / (np.where(np.isfinite(ranks), ranks, 0.0) + 1.0), 0.0)


def ranking_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """Per-event ranking metrics by name: hr@k, recall@k (the same), ndcg@k for k >= 2, mrr."""
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
    for k in ks:
        out[f"recall@{k}"] = out[f"hr@{k}"]
    for k in ks:
        if k > 1:  # NDCG@1 equals HR@1
            out[f"ndcg@{k}"] = ndcg(ranks, k)
    out["mrr"] = reciprocal_rank(ranks)
    return out


# ----------------------------------------------------------------------------------------------------------------
# calibration (every function takes optional per-event weights [n] or [B, n] so the bootstrap can reuse it)


def _as_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    w = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=np.float64)
    return w[None, :] if w.ndim == 1 else w  # (B, n)


def _squeeze(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray | float:
    return float(values[0]) if weights is None or np.ndim(weights) == 1 else values


def auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Weighted Mann-Whitney AUC, ties counted 1/2; NaN when one class is absent.

    ``AUC = sum_{i pos} w_i (W^-(s < s_i) + W^-(s = s_i) / 2) / (W^+ W^-)`` with W^-(.) the weight of negatives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    w = _as_weights(weights, len(scores))
    order = np.argsort(scores, kind="stable")
    _, group_start = np.unique(scores[order], return_index=True)  # tie groups in ascending score order
    ws, ys = w[:, order], labels[order]
    if len(scores) == 0:
        return _squeeze(np.full(w.shape[0], np.nan), weights)
    pos = np.add.reduceat(ws * ys, group_start, axis=1)  # (B, n_groups)
    neg = np.add.reduceat(ws * ~ys, group_start, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return _squeeze(out, weights)


def per_user_auc(scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC of each user with both classes: (user ids, their AUCs, their event counts). One sort by (user, score),
    O(n log n): within a user, a positive's rank term is the negatives below its score plus half those tied."""
    scores = np.asarray(scores, dtype=np.float64)
    users = np.asarray(users)
    labels = np.asarray(labels).astype(bool)
    uniq, inverse = np.unique(users, return_inverse=True)
    n_pos = np.bincount(inverse, weights=labels, minlength=len(uniq))
    n_all = np.bincount(inverse, minlength=len(uniq))
    mixed = (n_pos > 0) & (n_pos < n_all)
    order = np.lexsort((scores, inverse))
    u, s, y = inverse[order], scores[order], labels[order]
    # Tie groups: runs of equal (user, score); negatives before each group within its user, and in it.
    new_group = np.ones(len(s), dtype=bool)
    new_group[1:] = (u[1:] != u[:-1]) | (s[1:] != s[:-1])
    group = np.cumsum(new_group) - 1
    neg_in_group = np.bincount(group, weights=~y)
    neg_cum = np.cumsum(~y) - ~y  # negatives before each event overall
    user_start = np.searchsorted(u, u, side="left")
    group_start = np.flatnonzero(new_group)[group]
    below = neg_cum[group_start] - neg_cum[user_start]  # negatives of the same user with a lower score
    term = np.where(y, below + 0.5 * neg_in_group[group], 0.0)
    num = np.bincount(u, weights=term, minlength=len(uniq))
    with np.errstate(invalid="ignore", divide="ignore"):
        aucs = num / (n_pos * (n_all - n_pos))
    return uniq[mixed], aucs[mixed], n_all[mixed].astype(np.float64)


def gauc(scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> tuple[float, int]:
    """Event-weighted mean of per-user AUCs; returns (GAUC, number of users skipped for having one class)."""
    _, aucs, counts = per_user_auc(scores, labels, users)
    skipped = len(np.unique(users)) - len(aucs)
    return (float(np.sum(aucs * counts) / counts.sum()) if len(aucs) else float("nan")), int(skipped)


def binary_cross_entropy(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-event binary cross-entropy [n], p clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def log_loss(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Weighted mean binary cross-entropy, p clipped to [1e-7, 1 - 1e-7]."""
    w = _as_weights(weights, len(p))
    return _squeeze((w @ binary_cross_entropy(p, y)) / w.sum(axis=1), weights)


def normalized_entropy(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """LogLoss / H(base rate): 1.0 is no better than always predicting the base rate, lower is better."""
    y = np.asarray(y, dtype=np.float64)
    w = _as_weights(weights, len(y))
    base = np.clip((w @ y) / w.sum(axis=1), EPS, 1 - EPS)
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    ll = np.atleast_1d(log_loss(p, y, w))
    return _squeeze(ll / entropy, weights)


def ece(p: np.ndarray, y: np.ndarray, bins: int = 15, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Expected calibration error over `bins` equal-width bins on [0, 1] (p = 1 falls in the last bin)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = _as_weights(weights, len(p))
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.zeros((len(p), bins))
    gap[np.arange(len(p)), b] = p - y  # (n, bins): each event's signed gap in its bin
    return _squeeze(np.abs(w @ gap).sum(axis=1) / w.sum(axis=1), weights)


def calibration_ratio(p: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """sum p / sum y: 1.0 when the predicted and observed positive counts agree."""
    w = _as_weights(weights, len(p))
    with np.errstate(divide="ignore", invalid="ignore"):
        return _squeeze((w @ np.asarray(p, np.float64)) / (w @ np.asarray(y, np.float64)), weights)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, list]:
    """Per-bin mean prediction, observed rate and count: the data of a reliability diagram."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    b = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(b, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_p = np.bincount(b, weights=p, minlength=bins) / count
        rate = np.bincount(b, weights=y, minlength=bins) / count
    keep = count > 0
    return {"mean_p": mean_p[keep].tolist(), "rate": rate[keep].tolist(), "count": count[keep].tolist()}


# ----------------------------------------------------------------------------------------------------------------
# beyond accuracy


def head_items(popularity: np.ndarray, long_tail_share: float = 0.8) -> np.ndarray:
    """Boolean [n_items]: the most popular ceil((1 - long_tail_share) * n_items) items (ties broken by item id)."""
    n = len(popularity)
    n_head = math.ceil((1.0 - long_tail_share) * n - 1e-9)
    order = np.lexsort((np.arange(n), -np.asarray(popularity)))  # by popularity descending, then id
    head = np.zeros(n, dtype=bool)
    head[order[:n_head]] = True
    return head


def coverage(recs: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one top-K list."""
    r = np.asarray(recs).ravel()
    return float(len(np.unique(r[r >= 0])) / n_items)


def long_tail_rate(recs: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Per-event share of recommended items that are long tail (not `head`)."""
    r = np.asarray(recs)
    valid = r >= 0
    tail = valid & ~head[np.where(valid, r, 0)]
    return tail.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def novelty(recs: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per-event mean self-information -log2(share) of the recommended items (Zhou et al. 2010).

    share = (popularity + 1) / (sum popularity + n_items): add-one smoothing keeps unseen items finite.
    """
    r = np.asarray(recs)
    pop = np.asarray(popularity, dtype=np.float64)
    info = -np.log2((pop + 1.0) / (pop.sum() + len(pop)))
    valid = r >= 0
    return np.where(valid, info[np.where(valid, r, 0)], 0.0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


# ----------------------------------------------------------------------------------------------------------------
# bootstrap over users


class UserBootstrap:
    """Resamples of the test users with replacement: `counts` [resamples, users] is each user's multiplicity.

    Memory grows with resamples x users, never resamples x events: a mean over events is a ratio of per-user sums
    (`means`); a metric that needs per-event weights (AUC, ECE, ...) gets them a chunk of resamples at a time
    (`event_weights`, at most `chunk_elements` weights in memory). Every system of a report shares one instance, so
    differences between systems are paired (the same users in each resample)."""

    def __init__(self, users: np.ndarray, n_resamples: int, seed: int = 0, chunk_elements: int = 1 << 24):
        self.users, self.inverse = np.unique(np.asarray(users), return_inverse=True)
        rng = np.random.default_rng(seed)
        n = len(self.users)
        self.counts = (rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples) if n else
                       np.zeros((n_resamples, 0))).astype(np.float64)
        self.chunk_elements = chunk_elements

    @property
    def n_resamples(self) -> int:
        return self.counts.shape[0]

    def subset(self, mask: np.ndarray) -> UserBootstrap:
        """The same resamples over the events in `mask` (a segment of the targets)."""
        out = object.__new__(UserBootstrap)
        out.users, out.counts, out.chunk_elements = self.users, self.counts, self.chunk_elements
        out.inverse = self.inverse[mask]
        return out

    def means(self, values: np.ndarray) -> np.ndarray:
        """Mean of per-event `values` under each resample [resamples] (NaN where a resample holds none of them)."""
        per_user = np.bincount(self.inverse, weights=values, minlength=len(self.users))
        events = np.bincount(self.inverse, minlength=len(self.users)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.counts @ per_user) / (self.counts @ events)

    def event_weights(self):
        """Per-event weights [chunk, n_events] (the event's user multiplicity), chunk after chunk of resamples."""
        step = max(1, self.chunk_elements // max(len(self.inverse), 1))
        for start in range(0, self.n_resamples, step):
            yield self.counts[start:start + step][:, self.inverse]

    def apply(self, fn) -> np.ndarray:
        """fn(weights [chunk, n_events]) -> [chunk], over every resample: [resamples]."""
        if self.n_resamples == 0:
            return np.zeros(0)
        return np.concatenate([np.atleast_1d(fn(w)) for w in self.event_weights()])

    def user_multiplicity(self, user_ids: np.ndarray) -> np.ndarray:
        """[resamples, len(user_ids)]: the multiplicity of each of these (test) users."""
        return self.counts[:, np.searchsorted(self.users, user_ids)]


def mean_with_ci(values: np.ndarray, boot: UserBootstrap | None, level: float = 0.95) -> dict[str, float]:
    """Mean of per-event values with a percentile bootstrap interval from `boot` (None: no interval)."""
    values = np.asarray(values, dtype=np.float64)
    point = float(values.mean()) if len(values) else float("nan")
    if boot is None or boot.n_resamples == 0 or len(values) == 0:
        return {"value": point, "lo": float("nan"), "hi": float("nan")}
    return interval(point, boot.means(values), level)


def interval(point: float, samples: np.ndarray, level: float = 0.95) -> dict[str, float]:
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return {"value": point, "lo": float("nan"), "hi": float("nan")}
    a = (1.0 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return {"value": point, "lo": float(lo), "hi": float(hi)}


def calibration_samples(
    p: np.ndarray, y: np.ndarray, bins: int = 15, boot: UserBootstrap | None = None
) -> dict[str, tuple[float, np.ndarray]]:
    """(point value, value under each resample in `boot`; empty without it) of AUC, LogLoss, NE, ECE and the
    calibration ratio. Differences of two systems' samples are paired comparisons (same users in each resample)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    fns = {"auc": auc, "logloss": log_loss, "ne": normalized_entropy, "ece": lambda p, y, w=None: ece(p, y, bins, w),
           "calibration_ratio": calibration_ratio}
    return {name: (float(fn(p, y)), boot.apply(lambda w, fn=fn: fn(p, y, w)) if boot is not None else np.zeros(0))
            for name, fn in fns.items()}


def calibration_metrics(
    p: np.ndarray, y: np.ndarray, users: np.ndarray, bins: int = 15, boot: UserBootstrap | None = None,
    samples: dict[str, tuple[float, np.ndarray]] | None = None,
) -> dict[str, dict[str, float] | int]:
    """AUC, GAUC, LogLoss, NE, ECE and calibration ratio, each as {value, lo, hi}; `boot` a `UserBootstrap` over
    `users`. `samples`: `calibration_samples(p, y, bins, boot)` when the caller already has them."""
    if samples is None:
        samples = calibration_samples(p, y, bins, boot)
    out: dict[str, dict[str, float] | int] = {name: interval(point, s) for name, (point, s) in samples.items()}
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ids, aucs, counts = per_user_auc(p, y, users)
    value = float(np.sum(aucs * counts) / counts.sum()) if len(aucs) else float("nan")
    out["gauc"] = interval(value, _gauc_bootstrap(ids, aucs, counts, boot) if boot is not None else [])
    out["gauc_users_used"] = len(ids)
    out["gauc_users_skipped"] = len(np.unique(users)) - len(ids)
    return out


def _gauc_bootstrap(ids: np.ndarray, aucs: np.ndarray, counts: np.ndarray, boot: UserBootstrap) -> np.ndarray:
    """GAUC under each user resample: per-user AUCs are fixed, only the users' multiplicities change."""
    if len(ids) == 0:
        return np.full(boot.n_resamples, np.nan)
    mult = boot.user_multiplicity(ids)  # (B, n_mixed_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (mult @ (counts * aucs)) / (mult @ counts)
