"""White-box recommendations: a faithful reason for every recommended item (`explain_lists`), what each
semantic-ID prefix means (`e2erec.tokenizer.describe`), a reasons filter (`e2erec.explain.reasons`), and the
faithfulness bench (`e2erec.explain.bench`: `e2erec eval --explain-bench`)."""

from __future__ import annotations

import datetime

import numpy as np

from e2erec.data.types import Interactions
from e2erec.eval.protocol import in_histories
from e2erec.explain.attribution import explain_events
from e2erec.explain.reasons import (
    Cause,
    Reason,
    ReasonFilter,
    cluster_text,
    probability_meaning,
    render,
    steering_rules,
)


def explain_lists(system, inter: Interactions, users: np.ndarray, ends: np.ndarray, items: np.ndarray,
                  p_positive: np.ndarray, steering=None, meaning: str | None = None,
                  events=None) -> list[list[Reason]]:
    """The filtered reasons of each request's list: `items` int64 [n, k] (-1 pads) generated for the histories
    `offsets[u]:ends` of `users`, `p_positive` [n, k] their calibrated probabilities, `steering` the instructions
    the lists were generated under (default: the system's), `meaning` what the probability is (default: read from
    `inter`'s feedback, `probability_meaning`), `events` the lists' `explain_events` when the caller has them.
    Settings: `generate.explain`."""
    cfg = system.cfg.generate.explain
    steering = steering if steering is not None else system.cfg.generate.steering
    users, ends, items = np.asarray(users, np.int64), np.asarray(ends, np.int64), np.asarray(items, np.int64)
    n, k = items.shape
    if events is None:
        events = explain_events(system, inter, users, ends, items, top=cfg.top_events, max_events=cfg.max_events,
                                recent=cfg.recent_events)
    filt = ReasonFilter(cfg.deny_categories, cfg.deny_attributes)
    table = inter.items
    clusters = cluster_text(system.sids.describe(table), system.codes, items.reshape(-1), filt,
                            system.sids.described_levels)
    rules = steering_rules(steering, system.item_info(inter), items, in_histories(inter, users, ends, items),
                           steering.explore_share, k)
    meaning = meaning or probability_meaning(inter, system.cfg.data.positive_threshold)
    out = []
    for r in range(n):
        reasons = []
        for j in range(k):
            item = int(items[r, j])
            if item < 0:
                continue
            causes = [_cause(inter, row, float(w), filt)
                      for row, w in zip(events.rows[r, j].tolist(), events.weights[r, j].tolist()) if row >= 0]
            if any(c is None for c in causes):  # a cited event that may not be named: the set is not shown
                causes = []
            reason = Reason(item=table.raw_id[item], title=table.title[item], rank=j + 1,
                            p_positive=float(p_positive[r, j]),
                            probability=f"{meaning} = {float(p_positive[r, j]):.2f}", because=causes,
                            together=float(events.joint[r, j]) if causes else 0.0,
                            latest=bool(events.latest[r, j]) and bool(causes), cluster=clusters[r * k + j],
                            steering=rules[r][j])
            if not filt.allows_item(table.categories[item]):
                reason.cluster = ""
            reasons.append(filt.apply(reason))
        out.append(reasons)
    return out


def _cause(inter: Interactions, row: int, weight: float, filt: ReasonFilter) -> Cause | None:
    """The cited history event as the user sees it; None when its item may not be named (a denied category)."""
    table = inter.items
    item = int(inter.item[row])
    if not filt.allows_item(table.categories[item]):
        return None
    when = datetime.datetime.fromtimestamp(int(inter.timestamp[row]), datetime.UTC).strftime("%Y-%m-%d")
    return Cause(item=table.raw_id[item], title=table.title[item], when=when, rating=float(inter.feedback[row]),
                 weight=None if np.isnan(weight) else round(weight, 4))


__all__ = ["Reason", "ReasonFilter", "explain_lists", "render"]
