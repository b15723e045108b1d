"""Evaluate fitted systems on the same test targets: every metric with a bootstrap interval, per segment.

`evaluate_system` returns a plain dict (JSON-ready); `e2erec.eval.report.evaluate_systems` runs it for every system
with one shared set of bootstrap resamples, so differences between systems are paired.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from e2erec.data.types import Interactions, Split
from e2erec.eval import metrics as M
from e2erec.eval.config import EvalConfig
from e2erec.eval.exploration import ExplorationTargets, evaluate_exploration
from e2erec.eval.protocol import Recommender, in_history, mask_history, target_chunks, target_users, top_k

HISTORY_BUCKETS = (1, 6, 11, 21, 51, 101, 201)  # lower edges of the history-length buckets (events before target)
AGE_BUCKETS_DAYS = (0, 7, 30, 90, 180, 365)  # lower edges of the item-age buckets (days since the item's release)
HEADLINE = "ndcg@10"


def history_bucket_labels() -> list[str]:
    edges = list(HISTORY_BUCKETS)
    return [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)] + [f">={edges[-1]}"]


def age_bucket_labels() -> list[str]:
    edges = list(AGE_BUCKETS_DAYS)
    return [f"{lo}-{hi}d" for lo, hi in itertools.pairwise(edges)] + [f">={edges[-1]}d"]


def item_release(inter: Interactions) -> np.ndarray:
    """int64 [n_items] release time of every item: the synthetic generator's planted release where it has one
    (0, there from the start, counts from the log's first event), else the item's first event in the whole log
    (held-out events included: a release date is not a training signal)."""
    ts = np.asarray(inter.timestamp)
    if "item_release" in inter.planted:
        return np.maximum(np.asarray(inter.planted["item_release"], np.int64), ts.min())
    first = np.full(inter.n_items, ts.max(), np.int64)
    np.minimum.at(first, np.asarray(inter.item), ts)
    return first


class Context:
    """What every system is measured against: targets, users, segments, bootstrap weights, planted truth."""

    def __init__(self, inter: Interactions, split: Split, cfg: EvalConfig):
        self.inter, self.split, self.cfg = inter, split, cfg
        self.targets = np.asarray(split.test, dtype=np.int64)
        if len(self.targets) == 0:
            from e2erec.errors import DataError

            raise DataError("the split has no test targets: nothing to evaluate")
        self.items = np.asarray(inter.item)[self.targets]
        self.labels = np.asarray(inter.label)[self.targets].astype(np.float64)
        self.users = target_users(inter, self.targets)  # the row's user: a probe user for a cold-item target
        # The real person behind each target (e2erec.data.cold): what the bootstrap resamples and GAUC groups by.
        self.people = self.users if inter.cold is None else inter.cold.origin[self.users]
        offsets = np.asarray(inter.offsets)
        self.history_len = self.targets - offsets[self.users]
        train_len = np.asarray(split.train_end)[self.people] - offsets[self.people]
        self.popularity = np.asarray(inter.items.popularity, dtype=np.float64)
        self.head = M.head_items(self.popularity, cfg.long_tail_share)
        self.segments = {
            f"short_history (<= {cfg.short_history} training events)": train_len <= cfg.short_history,
            "long_tail_target (test item outside the head)": ~self.head[self.items],
        }
        new_user = (np.zeros(len(self.targets), bool) if inter.new_users is None else
                    inter.new_users.users[self.users])
        if inter.cold is not None:  # the cold-item protocol: held-out items, never in any training input
            # Warm and long-tail warm: the known users' targets, comparable with a run without new users.
            cold = inter.cold.items[self.items]
            self.segments.update({"cold_item": cold, "warm_item": ~cold & ~new_user,
                                  "long_tail_warm": ~cold & ~new_user & ~self.head[self.items]})
        repeat = in_history(inter, self.targets, self.items[:, None])[:, 0]
        if repeat.any():  # unreachable for a system that excludes seen items (unless eval.allow_repeats)
            self.segments["repeat_target (test item already in the history)"] = repeat
        if inter.new_users is not None:  # the new-user protocol: held-out users, from their first k events
            self.segments.update({f"new_user_k{k}": new_user & (self.history_len == k) for k in inter.new_users.ks})
        self.bucket = np.searchsorted(np.array(HISTORY_BUCKETS), self.history_len, side="right") - 1
        age_days = (np.asarray(inter.timestamp)[self.targets] - item_release(inter)[self.items]) / 86_400
        self.age_bucket = np.searchsorted(np.array(AGE_BUCKETS_DAYS), np.maximum(age_days, 0), side="right") - 1
        self.boot = M.UserBootstrap(self.people, cfg.bootstrap, cfg.seed) if cfg.bootstrap > 0 else None
        self.k = max(cfg.top_k, max(cfg.ks))
        self.planted_top = self._planted_top(10)
        self.exploration = ExplorationTargets(self) if cfg.explore_shares else None

    def _planted_top(self, k: int) -> np.ndarray | None:
        """Top-k items of the planted Bayes-optimal next-item distribution (synthetic data only), history excluded."""
        if "item_weight" not in self.inter.planted or "synthetic" not in self.inter.meta:
            return None
        if self.inter.meta["synthetic"].get("repeat_share", 0) > 0:  # repeats: the planted formula does not hold
            return None
        from e2erec.data.synthetic import planted_next_item_probs

        out = []
        for t in target_chunks(self.targets, self.inter.n_items, cap=2048):
            scores = planted_next_item_probs(self.inter, t).astype(np.float64)
            out.append(top_k(mask_history(scores, self.inter, t), k))
        return np.concatenate(out)

    def summary(self) -> dict:
        return {
            "n_test_targets": len(self.targets),
            "n_test_users": len(np.unique(self.people)),
            "n_items": int(self.inter.n_items),
            "protocol": self.split.protocol,
            "top_k": int(self.k),
            "test_positive_rate": float(self.labels.mean()),
            "bootstrap_resamples": int(self.cfg.bootstrap),
            "segments": {name: int(mask.sum()) for name, mask in self.segments.items()},
            "head_items": int(self.head.sum()),
            "planted": self.planted_top is not None,
            **({"cold_items": self.inter.meta["cold_items"]} if self.inter.cold is not None else {}),
            **({"new_users": self.inter.meta["new_users"]} if self.inter.new_users is not None else {}),
        }


def _ranking_block(per_event: dict[str, np.ndarray], mask: np.ndarray | None, boot: M.UserBootstrap | None) -> dict:
    if mask is None:
        return {name: M.mean_with_ci(v, boot) for name, v in per_event.items()}
    sub = None if boot is None else boot.subset(mask)
    return {name: M.mean_with_ci(v[mask], sub) for name, v in per_event.items()}


def evaluate_system(system: Recommender, ctx: Context) -> dict:
    """All metrics of one fitted system on `ctx.targets`."""
    cfg = ctx.cfg
    t0 = time.perf_counter()
    recs = np.asarray(system.recommend(ctx.inter, ctx.targets, ctx.k))
    rec_seconds = time.perf_counter() - t0
    if recs.shape != (len(ctx.targets), ctx.k):
        raise ValueError(f"{system.name}.recommend returned shape {recs.shape}, expected {(len(ctx.targets), ctx.k)}")
    ranks = M.target_ranks(recs, ctx.items)
    per_event = M.ranking_metrics(ranks, cfg.ks)
    per_event["long_tail_share"] = M.long_tail_rate(recs, ctx.head)
    per_event["novelty"] = M.novelty(recs, ctx.popularity)
    if ctx.planted_top is not None:
        cut = ctx.planted_top.shape[1]
        hits = (recs[:, :cut, None] == ctx.planted_top[:, None, :]) & (ctx.planted_top[:, None, :] >= 0)
        per_event["planted_recall@10"] = hits.any(axis=1).sum(axis=1) / np.maximum((ctx.planted_top >= 0).sum(1), 1)

    cold_slots = None
    if ctx.inter.cold is not None:  # how much of each top-10 goes to held-out items, and how often those slots hit
        cold_slots = ctx.inter.cold.items[np.maximum(recs[:, :10], 0)] & (recs[:, :10] >= 0)
        per_event["cold_slot_share@10"] = cold_slots.mean(axis=1)

    overall = _ranking_block(per_event, None, ctx.boot)
    if cold_slots is not None:
        hits = (cold_slots & (recs[:, :10] == ctx.items[:, None])).sum()
        overall["cold_slot_hit_rate@10"] = {"value": float(hits / max(cold_slots.sum(), 1)), "lo": float("nan"),
                                            "hi": float("nan"), "slots": int(cold_slots.sum())}
    overall["coverage"] = {"value": M.coverage(recs, ctx.inter.n_items), "lo": float("nan"), "hi": float("nan")}
    segments = {name: {"n": int(mask.sum()), **_ranking_block(per_event, mask, ctx.boot)}
                for name, mask in ctx.segments.items()}
    by_length = _by_bucket(ranks, ctx.bucket, history_bucket_labels())
    by_age = _by_bucket(ranks, ctx.age_bucket, age_bucket_labels())
    exploration, explore_samples = evaluate_exploration(system, ctx, recs)

    t0 = time.perf_counter()
    proba = system.predict_proba(ctx.inter, ctx.targets, ctx.items)
    proba_seconds = time.perf_counter() - t0
    calibration, reliability, samples = None, None, None
    if proba is not None:
        proba = np.asarray(proba, dtype=np.float64).reshape(-1)
        if proba.shape != (len(ctx.targets),) or not np.all((proba >= 0) & (proba <= 1)):
            raise ValueError(f"{system.name}.predict_proba must return [n_targets] probabilities in [0, 1]")
        samples = M.calibration_samples(proba, ctx.labels, cfg.ece_bins, ctx.boot)
        calibration = M.calibration_metrics(proba, ctx.labels, ctx.people, cfg.ece_bins, ctx.boot, samples)
        reliability = M.reliability(proba, ctx.labels, cfg.ece_bins)
        # Per segment too (a cold item's probability has no item statistics behind it): LogLoss is a mean of
        # per-event losses, so its interval comes from the same resamples.
        loss = M.binary_cross_entropy(proba, ctx.labels)
        for name, mask in ctx.segments.items():
            segments[name]["logloss"] = M.mean_with_ci(loss[mask], None if ctx.boot is None else ctx.boot.subset(mask))
    fit_log = getattr(system, "fit_log", None)
    if fit_log is not None and hasattr(fit_log, "to_dict"):
        fit_log = fit_log.to_dict()
    return {
        "name": system.name,
        "overall": overall,
        "calibration": calibration,
        "reliability": reliability,
        "segments": segments,
        "by_history_length": by_length,
        "by_item_age": by_age,
        "exploration": exploration,
        "fit_log": fit_log,
        "seconds": {"recommend": rec_seconds, "predict_proba": proba_seconds},
        "_per_event": per_event,  # kept in memory for paired comparisons; dropped from the JSON
        "_calib_samples": samples,  # likewise
        "_recs": recs,  # the lists, for --predictions; likewise
        "_proba": proba,
        "_explore": explore_samples,
    }


def _by_bucket(ranks: np.ndarray, bucket: np.ndarray, labels: list[str]) -> dict:
    """HR@10 (= Recall@10) and NDCG@10 of the targets in each bucket, with their counts."""
    out = {"buckets": labels, "n": [], "hr@10": [], HEADLINE: []}
    for b in range(len(labels)):
        m = bucket == b
        out["n"].append(int(m.sum()))
        out["hr@10"].append(float(M.hit_rate(ranks[m], 10).mean()) if m.any() else float("nan"))
        out[HEADLINE].append(float(M.ndcg(ranks[m], 10).mean()) if m.any() else float("nan"))
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, boot: M.UserBootstrap | None) -> dict[str, float]:
    """Mean of a - b over the same targets with a bootstrap interval from the same user resamples."""
    return M.mean_with_ci(np.asarray(a) - np.asarray(b), boot)


# Calibration metrics compared pairwise -> whether higher is better.
PAIRED_CALIBRATION = {"auc": True, "logloss": False, "ece": False}


def paired_calibration_difference(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> dict[str, float]:
    """metric(a) - metric(b) from two systems' `calibration_samples` entries, with a bootstrap interval from the
    same user resamples. ECE and AUC are not means of per-event values, so each resample holds both systems' metric
    recomputed; their shared resample noise cancels in the difference, which is what makes a small gap testable."""
    return M.interval(a[0] - b[0], a[1] - b[1])
