"""Metric functions against hand-computed cases (ties, misses, one-class users) and brute-force references."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2erec.eval import metrics as M


def test_ranks_hits_ndcg_mrr_by_hand():
    recs = np.array([[3, 1, 2], [5, 6, 7], [1, -1, -1]])
    ranks = M.target_ranks(recs, np.array([1, 9, 1]))
    assert ranks[0] == 1 and np.isinf(ranks[1]) and ranks[2] == 0
    np.testing.assert_allclose(M.hit_rate(ranks, 1), [0, 0, 1])
    np.testing.assert_allclose(M.hit_rate(ranks, 2), [1, 0, 1])
    np.testing.assert_allclose(M.ndcg(ranks, 2), [1 / math.log2(3), 0, 1])
    np.testing.assert_allclose(M.ndcg(ranks, 1), [0, 0, 1])  # rank 1 is outside a cutoff of 1
    np.testing.assert_allclose(M.reciprocal_rank(ranks), [0.5, 0, 1])
    per = M.ranking_metrics(ranks, [1, 2])
    assert set(per) == {"hr@1", "hr@2", "recall@1", "recall@2", "ndcg@2", "mrr"}
    np.testing.assert_array_equal(per["recall@2"], per["hr@2"])


def test_ranks_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="n_targets"):
        M.target_ranks(np.zeros((2, 3), int), np.zeros(3, int))


def test_auc_by_hand_with_ties():
    assert M.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # positives {0.5, 0.9}, negatives {0.5, 0.2}: pairs 0.5 (tie) + 1 + 1 + 1 over 4
    assert M.auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert M.auc([0.3, 0.3, 0.3], [1, 0, 1]) == pytest.approx(0.5)  # all tied
    assert math.isnan(M.auc([0.1, 0.2], [1, 1]))  # no negatives
    assert math.isnan(M.auc([0.1, 0.2], [0, 0]))  # no positives


def _brute_auc(s, y, w):
    num = den = 0.0
    for i in range(len(s)):
        for j in range(len(s)):
            if y[i] and not y[j]:
                den += w[i] * w[j]
                num += w[i] * w[j] * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return num / den if den else float("nan")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans(), st.integers(0, 3)), min_size=1, max_size=25))
def test_weighted_auc_matches_brute_force(rows):
    s = np.array([r[0] / 4 for r in rows])  # few distinct values: many ties
    y = np.array([r[1] for r in rows])
    w = np.array([float(r[2]) for r in rows])
    got, want = M.auc(s, y, w), _brute_auc(s, y, w)
    assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)


def test_gauc_skips_one_class_users_and_weights_by_events():
    users = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    labels = np.array([1, 0, 1, 0, 0, 1, 1, 0])  # user 1: no positives; user 2: a single event
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.4, 0.7, 0.2, 0.8])
    value, skipped = M.gauc(scores, labels, users)
    assert skipped == 2
    assert value == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)  # user 0 AUC 1 (3 events), user 3 AUC 0 (2 events)
    value, skipped = M.gauc(scores[3:5], labels[3:5], users[3:5])
    assert math.isnan(value) and skipped == 1


def test_logloss_ne_ratio_by_hand():
    p, y = np.array([0.8, 0.3]), np.array([1, 0])
    ll = -(math.log(0.8) + math.log(0.7)) / 2
    assert M.log_loss(p, y) == pytest.approx(ll)
    assert M.normalized_entropy(p, y) == pytest.approx(ll / math.log(2))  # base rate 0.5
    assert M.calibration_ratio(p, y) == pytest.approx(1.1)
    assert np.isfinite(M.log_loss([0.0, 1.0], [1, 0]))  # clipped, not inf


def test_ece_by_hand_and_bin_edges():
    # 0.1 -> bin 1 (gap 0.2 - 1 = -0.8), 0.9 -> bin 13 (gap 1.8 - 2 = -0.2): ECE = (0.8 + 0.2) / 4
    assert M.ece([0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1], bins=15) == pytest.approx(0.25)
    assert M.ece([1.0, 1.0], [1, 1], bins=15) == pytest.approx(0.0)  # p = 1 lands in the last bin
    assert M.ece([0.5, 0.5], [0, 1], bins=1) == pytest.approx(0.0)  # over- and under-shoot cancel inside a bin
    assert M.ece([0.2, 0.8], [0, 1], bins=1) == pytest.approx(0.0)
    assert M.ece([0.2, 0.8], [0, 1], bins=2) == pytest.approx(0.2)


def test_perfectly_calibrated_predictor():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(len(p)) < p).astype(int)
    assert M.ece(p, y, 15) < 0.01
    assert M.calibration_ratio(p, y) == pytest.approx(1.0, abs=0.01)
    rel = M.reliability(p, y, 15)
    np.testing.assert_allclose(rel["rate"], rel["mean_p"], atol=0.02)
    # a predictor that is 0.2 too high everywhere is visibly miscalibrated
    assert M.ece(np.clip(p + 0.2, 0, 1), y, 15) > 0.15


def test_beyond_accuracy_by_hand():
    pop = np.array([10, 5, 5, 1, 0])
    head = M.head_items(pop, long_tail_share=0.6)  # ceil(0.4 * 5) = 2 head items: 0, then 1 (tie with 2, lower id)
    np.testing.assert_array_equal(head, [True, True, False, False, False])
    recs = np.array([[0, 3, -1], [2, 4, 1]])
    assert M.coverage(recs, 5) == pytest.approx(1.0)
    assert M.coverage(recs[:1], 5) == pytest.approx(0.4)
    np.testing.assert_allclose(M.long_tail_rate(recs, head), [0.5, 2 / 3])
    info = -np.log2((pop + 1) / (pop.sum() + 5))
    np.testing.assert_allclose(M.novelty(recs, pop), [(info[0] + info[3]) / 2, (info[2] + info[4] + info[1]) / 3])


def test_bootstrap_weights_resample_users():
    users = np.array([0, 0, 1, 2, 2, 2])
    w = M.bootstrap_weights(users, 50, seed=1)
    assert w.shape == (50, 6)
    # an event's weight is its user's multiplicity: equal within a user, users drawn 3 times per resample
    np.testing.assert_array_equal(w[:, 0], w[:, 1])
    np.testing.assert_array_equal(w[:, 3], w[:, 5])
    np.testing.assert_array_equal(w[:, [0, 2, 3]].sum(axis=1), 3)
    ci = M.mean_with_ci(np.arange(6.0), w)
    assert ci["lo"] <= ci["value"] <= ci["hi"]


def test_vectorised_bootstrap_equals_replicated_data():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 3)
    p = rng.random(90)
    y = (rng.random(90) < p).astype(int)
    w = M.bootstrap_weights(users, 5, seed=0)
    for b in range(5):
        rep = np.repeat(np.arange(90), w[b].astype(int))  # the resample written out event by event
        assert M.auc(p, y, w)[b] == pytest.approx(M.auc(p[rep], y[rep]))
        assert M.log_loss(p, y, w)[b] == pytest.approx(M.log_loss(p[rep], y[rep]))
        assert M.ece(p, y, 15, w)[b] == pytest.approx(M.ece(p[rep], y[rep], 15))
        assert M.normalized_entropy(p, y, w)[b] == pytest.approx(M.normalized_entropy(p[rep], y[rep]))
    cal = M.calibration_metrics(p, y, users, 15, w)
    assert cal["gauc_users_used"] + cal["gauc_users_skipped"] == 30
    assert set(cal) >= {"auc", "gauc", "logloss", "ne", "ece", "calibration_ratio"}
