"""The synthetic generator: deterministic, planted structure that models can (and baselines cannot fully) find."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from e2erec.data import synthetic
from e2erec.data.config import SyntheticConfig
from e2erec.data.synthetic import generate, planted_affinity, planted_next_item_probs

SMALL = SyntheticConfig(n_users=100, n_items=200, n_events=3000, n_interests=6, dim=8, seed=3)


def test_deterministic_by_seed():
    a, b = generate(SMALL, progress=False), generate(SMALL, progress=False)
    for name in ("timestamp", "feedback"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.item.equals(b.item) and a.items.equals(b.items)
    c = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 4}), progress=False)
    assert not a.item.equals(c.item)


def test_chunked_generation_keeps_the_invariants(monkeypatch):
    monkeypatch.setattr(synthetic, "CHUNK_EVENTS", 257)  # many chunks, users never split across them
    raw = generate(SMALL, progress=False)
    user = np.asarray(raw.user)
    assert len(user) == SMALL.n_events and np.all(np.diff(user) >= 0)
    counts = np.bincount(user, minlength=SMALL.n_users)
    assert counts.min() >= 3 and counts.sum() == SMALL.n_events
    same = user[1:] == user[:-1]
    assert np.all(np.diff(raw.timestamp)[same] > 0)
    first = np.concatenate([[True], ~same])
    # the first event of each user switches interest from the user's own mixture
    mix = raw.planted_static["user_mixture"]
    assert np.all(mix[user[first], raw.extra["user_interest"][first]] > 0)


def test_planted_probabilities_are_calibrated(synthetic_small):
    prob = np.asarray(synthetic_small.planted["prob"])
    label = np.asarray(synthetic_small.label)
    bins = np.digitize(prob, [0.3, 0.5, 0.7, 0.85])
    for b in np.unique(bins):
        sel = bins == b
        if sel.sum() > 200:
            assert abs(label[sel].mean() - prob[sel].mean()) < 0.06
    assert prob.min() < 0.4 and prob.max() > 0.8  # not a constant


def test_text_and_categories_carry_the_cluster(synthetic_small):
    items = synthetic_small.items
    cluster = np.asarray(synthetic_small.planted["item_interest"])
    assert all(c[0] == f"genre-{k:02d}" for c, k in zip(items.categories, cluster))
    words = [set(t.split()) for t in items.text]
    same = [len(words[i] & words[j]) for i in range(60) for j in range(i) if cluster[i] == cluster[j]]
    diff = [len(words[i] & words[j]) for i in range(60) for j in range(i) if cluster[i] != cluster[j]]
    assert np.mean(same) > 3 * np.mean(diff)


def test_planted_ranking_beats_popularity(synthetic_small, synthetic_small_split):
    test = synthetic_small_split.test
    p = planted_next_item_probs(synthetic_small, test)
    assert p.shape == (len(test), synthetic_small.n_items)
    assert np.all(p.sum(axis=1) <= 1.0 + 1e-5) and np.all(p.sum(axis=1) > 0.9)
    target = np.asarray(synthetic_small.item)[test]

    def hit10(scores):
        return float(np.mean((scores > scores[np.arange(len(test)), target][:, None]).sum(1) < 10))

    pop = np.broadcast_to(synthetic_small.items.popularity.astype(float), p.shape)
    assert hit10(p) > hit10(pop) + 0.15
    assert planted_affinity(synthetic_small, test).shape == p.shape


def test_config_refuses_too_few_events():
    with pytest.raises(ValueError, match="n_events"):
        SyntheticConfig(n_users=100, n_events=200).validate()


ARRIVALS = SyntheticConfig(n_users=2_000, n_items=400, n_events=200_000, n_interests=8, dim=8, arrival_share=0.3,
                           arrival_window=0.5, arrival_ramp_days=60, seed=1)


def test_arrivals_are_deterministic_and_nothing_happens_before_release():
    a, b = generate(ARRIVALS, progress=False), generate(ARRIVALS, progress=False)
    np.testing.assert_array_equal(np.asarray(a.item), np.asarray(b.item))
    np.testing.assert_array_equal(a.feedback, b.feedback)
    release = a.planted_static["item_release"]
    item, ts = np.asarray(a.item), a.timestamp
    assert (release > 0).sum() == 120 and not (ts < release[item]).any()
    # Timestamps do not depend on the items, so the arrivals move items only.
    np.testing.assert_array_equal(ts, generate(dataclasses.replace(ARRIVALS, arrival_share=0.0), progress=False).timestamp)
    # The ramp: per day, a new item draws fewer events in its first 30 days than in days 60-90 after release.
    age = ((ts - release[item]) / 86_400)[release[item] > 0]
    assert (age < 30).sum() < 0.75 * ((age >= 60) & (age < 90)).sum()


def test_planted_next_item_probs_follow_the_arrivals():
    """Expected events on arriving items under the planted distribution match the observed count (a formula that
    ignored release times would put mass on unreleased items and miss by far)."""
    from e2erec.data import make_split, prepare
    from e2erec.data.config import DataConfig
    from e2erec.data.process import open_prepared

    cfg = DataConfig(name="synthetic-arrivals", source="synthetic", synthetic=ARRIVALS)
    inter = open_prepared(prepare(cfg, progress=False))
    make_split(inter, cfg)
    offsets = np.asarray(inter.offsets)
    rng = np.random.default_rng(0)
    rows = rng.choice(inter.n_events, 20_000, replace=False)
    rows = rows[rows > offsets[inter.user_of(rows)]]  # an earlier event of the user: the interest it follows
    p = planted_next_item_probs(inter, rows)
    release = np.asarray(inter.planted["item_release"])
    t = np.asarray(inter.timestamp)[rows]
    assert (p[release[None, :] > t[:, None]] == 0).all()
    new = release > 0
    expected, observed = p[:, new].sum(), new[np.asarray(inter.item)[rows]].sum()
    assert observed > 300 and abs(expected - observed) < 4 * np.sqrt(observed)
