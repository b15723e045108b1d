"""Exploration efficiency: the slots, a system's hits in them, rolling dice's exact expectation and the cascade
reference, against hand-built lists on the toy ring."""

from __future__ import annotations

import numpy as np
import pytest

from e2erec.eval.config import EvalConfig
from e2erec.eval.evaluate import Context, evaluate_system
from e2erec.eval.exploration import add_cascade_references
from e2erec.eval.protocol import history_csr
from e2erec.eval.report import render_markdown
from e2erec.eval.toy import markov_interactions, toy_split


class Lists:
    """Main list: the most popular items outside the history, never the target. Long-tail list: the target first
    when it is long tail (a perfect explorer), else long-tail items in id order."""

    def __init__(self, name: str, perfect: bool):
        self.name, self.perfect = name, perfect

    def recommend(self, inter, targets, k, among=None):
        pop = np.asarray(inter.items.popularity, np.float64)
        rows, items = history_csr(inter, targets)
        out = np.full((len(targets), k), -1)
        target = np.asarray(inter.item)[targets]
        for i in range(len(targets)):  # a test stand-in: small lists, clarity over speed
            seen = set(items[rows == i].tolist()) | {int(target[i])}
            allowed = np.ones(inter.n_items, bool) if among is None else np.asarray(among)
            order = [j for j in np.argsort(-pop, kind="stable") if allowed[j] and j not in seen]
            if among is not None and self.perfect and allowed[target[i]] and target[i] not in set(items[rows == i]):
                order = [int(target[i])] + order
            out[i, :min(k, len(order))] = order[:k]
        return out

    def predict_proba(self, inter, targets, items):
        return None


@pytest.fixture(scope="module")
def toy():
    inter = markov_interactions(n_users=60, n_items=50, seed=3)
    split = toy_split(inter)
    return inter, split, Context(inter, split, EvalConfig(bootstrap=30, explore_shares=[0.1, 0.2, 0.3]))


def test_hits_per_slot_and_rolling_dice_by_hand(toy):
    inter, _, ctx = toy
    r = evaluate_system(Lists("explorer", perfect=True), ctx)
    long_tail = ~ctx.head
    rows, items = history_csr(inter, ctx.targets)
    for row in r["exploration"]["by_share"]:
        n_slots = int(np.floor(10 * row["share"] + 1e-9))
        assert row["slots_per_list"] == n_slots and row["slots"] == n_slots * len(ctx.targets)
        # The main list never holds the target, so every long-tail target not in its history is one hit.
        drawable = [long_tail[t] and t not in set(items[rows == i]) for i, t in enumerate(ctx.items)]
        assert row["hits"] == sum(drawable)
        assert row["hits_per_slot"]["system"]["value"] == pytest.approx(sum(drawable) / row["slots"])
        # Rolling dice: per target, 1 / (long-tail items neither in its history nor in the list's other slots).
        main = Lists("x", perfect=False).recommend(inter, ctx.targets, 10)
        expected = 0.0
        for i, t in enumerate(ctx.items):
            shown = set(main[i, :10 - n_slots].tolist())
            eligible = {j for j in np.flatnonzero(long_tail)} - set(items[rows == i].tolist()) - shown
            expected += n_slots * (t in eligible) / len(eligible)
        assert row["hits_per_slot"]["rolling_dice"]["value"] == pytest.approx(expected / row["slots"])
        assert row["vs_rolling_dice"]["value"] == pytest.approx(
            row["hits_per_slot"]["system"]["value"] / row["hits_per_slot"]["rolling_dice"]["value"])
        # The main list never hits: NDCG@10 outside the exploration slots is 0, with or without exploration.
        assert row["ndcg@10_outside"]["value"] == 0 and row["ndcg@10_no_exploration"]["value"] == 0
        assert row["ndcg@10"]["value"] > 0
    assert r["exploration"]["share"] == 0.1 and r["exploration"]["hits"] == r["exploration"]["by_share"][0]["hits"]


def test_the_cascade_reference_is_paired_and_reported(toy):
    inter, _, ctx = toy
    results = [evaluate_system(Lists("e2erec", perfect=True), ctx),
               evaluate_system(Lists("cascade", perfect=False), ctx)]
    add_cascade_references(results)
    mine, theirs = results[0]["exploration"], results[1]["exploration"]
    assert mine["hits_per_slot"]["cascade"] == theirs["hits_per_slot"]["system"]
    d = mine["vs"]["cascade"]
    assert d["value"] == pytest.approx(mine["hits_per_slot"]["system"]["value"]
                                       - theirs["hits_per_slot"]["system"]["value"])
    assert d["lo"] > 0  # the perfect explorer beats a popularity-ordered tail on every resample
    for r in results:
        r.pop("_explore")
        for key in ("_per_event", "_calib_samples", "_recs", "_proba"):
            r.pop(key)
    report = {"dataset": "toy", "setup": ctx.summary(), "systems": results, "comparisons": [], "ks": [1, 5, 10, 50],
              "ece_bins": 15}
    md = render_markdown(report)
    section = md.split("## Exploration", 1)[1].split("\n## ", 1)[0]
    assert section.count("| e2erec | ") == 3 and "cascade " in section
