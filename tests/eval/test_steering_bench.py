"""The schedulability benchmark's parts on hand-made cases: the cascade's post-filter (and how it runs short), the
compliance and fullness it reports, the repeat protocol's metrics, and synthetic repurchase cycles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from e2erec.data.config import SyntheticConfig
from e2erec.data.synthetic import generate
from e2erec.eval.evaluate import Context
from e2erec.eval.protocol import in_history, mask_history
from e2erec.eval.steering_bench import BenchContext, Instruction, _row_metrics, eligible_items_min, post_filter
from e2erec.eval.toy import markov_interactions, toy_split


@pytest.fixture(scope="module")
def toy():
    inter = markov_interactions(n_users=40, n_items=30, min_len=5, max_len=8, seed=3)
    return inter, toy_split(inter)


def test_post_filter_runs_short_when_few_items_qualify(toy):
    """A hard instruction that only 4 items satisfy: the cascade's top-N holds at most those 4, so its list is at
    most 4/10 full, and fewer where the user has seen some or its top-N misses them."""
    inter, split = toy
    targets = np.asarray(split.test)
    ok = np.zeros(inter.n_items, bool)
    ok[[3, 7, 11, 19]] = True
    hard = Instruction("only:4", "hard", {"include_items": ["3", "7", "11", "19"]}, ok)
    ranked = np.tile(np.arange(inter.n_items), (len(targets), 1))  # every item, in id order
    top = post_filter(hard, inter, targets, ranked)
    assert top.shape == (len(targets), 10)
    seen = in_history(inter, targets, np.tile([3, 7, 11, 19], (len(targets), 1)))
    assert ((top >= 0).sum(1) == 4 - seen.sum(1)).all()
    assert ok[top[top >= 0]].all() and not in_history(inter, targets, top).any()
    # A top-5 holds only items 3 (when unseen) of the four.
    short = post_filter(hard, inter, targets, ranked[:, :5])
    assert ((short >= 0).sum(1) <= 1).all()
    ctx = BenchContext(inter, split, bootstrap=0, seed=0)
    m = _row_metrics(hard, top, ctx)
    assert m["fullness"].max() <= 0.4 and np.nanmin(m["compliance"]) == 1.0
    assert eligible_items_min(hard, ctx) == int((4 - seen.sum(1)).min())


def test_sampled_users_keep_their_test_and_validation_targets(toy):
    from e2erec.eval.steering_bench import sample_users

    inter, split = toy
    sub = sample_users(inter, split, 7, seed=1)
    users = set(inter.user_of(sub.test).tolist())
    assert len(users) == 7 and users == set(inter.user_of(sub.valid).tolist())
    assert set(sub.test) <= set(split.test) and sample_users(inter, split, 0) is split


def test_soft_and_explore_post_filters(toy):
    inter, split = toy
    targets = np.asarray(split.test)[:5]
    ok = np.zeros(inter.n_items, bool)
    ok[20:] = True
    ranked = np.tile(np.arange(inter.n_items), (5, 1))
    ranked = np.where(in_history(inter, targets, ranked), -1, ranked)
    boost = post_filter(Instruction("b", "soft", {"boost_items": [], "item_boost": 50.0}, ok), inter, targets, ranked)
    assert ok[boost[:, 0]].all()  # a huge bonus moves the set to the front
    none = post_filter(Instruction("b", "soft", {"boost_categories": {"x": 0.0}}, ok), inter, targets, ranked)
    assert np.array_equal(none, np.stack([row[row >= 0][:10] for row in ranked]))  # no bonus: the cascade's order
    explore = post_filter(Instruction("x", "explore", {"explore_share": 0.2}, ok), inter, targets, ranked)
    assert ok[explore[:, [4, 9]]].all() and not ok[explore[:, [0, 1, 2, 3]]].any()


def test_repeat_protocol_metrics_on_a_hand_made_log(toy):
    inter, split = toy
    # User 0's test event repeats its first item; user 1's does not.
    item = inter.item.copy()
    t0, t1 = split.test[0], split.test[1]
    item[t0] = item[inter.offsets[0]]
    item[t1] = inter.n_items - 1
    item[inter.offsets[1]:t1][item[inter.offsets[1]:t1] == inter.n_items - 1] = 0
    inter = dataclasses.replace(inter, item=item)
    split = toy_split(inter)
    from e2erec.eval.config import EvalConfig

    ctx = Context(inter, split, EvalConfig(bootstrap=0))
    repeat = ctx.segments["repeat_target (test item already in the history)"]
    assert repeat[0] and not repeat[1]
    assert repeat.sum() == in_history(inter, ctx.targets, ctx.items[:, None]).sum()
    scores = np.zeros((2, inter.n_items))
    masked = mask_history(scores.copy(), inter, ctx.targets[:2])
    assert np.isneginf(masked[0, item[t0]]) and not np.isneginf(masked[1, item[t1]])
    assert not np.isneginf(mask_history(scores.copy(), inter, ctx.targets[:2], allow_repeats=True)).any()


def test_synthetic_repurchase_cycles():
    base = generate(SyntheticConfig(n_users=300, n_items=200, n_events=9000), progress=False)
    off = generate(SyntheticConfig(n_users=300, n_items=200, n_events=9000, repeat_share=0.0), progress=False)
    assert np.array_equal(np.asarray(base.item), np.asarray(off.item))  # 0 = the log without repeats
    raw = generate(SyntheticConfig(n_users=300, n_items=200, n_events=9000, repeat_share=0.3, repeat_prob=1.0),
                   progress=False)
    cycle = raw.planted_static["item_cycle_days"]
    assert (cycle > 0).sum() == 60
    user, item, ts = np.asarray(raw.user), np.asarray(raw.item), raw.timestamp
    changed = item != np.asarray(base.item)
    assert changed.any() and (cycle[item[changed]] > 0).all()  # only consumables are placed
    # Each placed repeat follows an earlier event of the same user and item about one cycle before it.
    gaps = []
    for e in np.flatnonzero(changed)[:200]:
        earlier = np.flatnonzero((user[:e] == user[e]) & (item[:e] == item[e]))
        assert len(earlier)
        gaps.append((ts[e] - ts[earlier[-1]]) / 86_400 / cycle[item[e]])
    assert 0.5 < np.median(gaps) < 2.0
