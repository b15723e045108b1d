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


def test_user_bootstrap_resamples_users():
    users = np.array([0, 0, 1, 2, 2, 2])
    boot = M.UserBootstrap(users, 50, seed=1)
    assert boot.counts.shape == (50, 3)  # resamples x users, not x events
    w = np.concatenate(list(M.UserBootstrap(users, 50, seed=1, chunk_elements=7).event_weights()))
    assert w.shape == (50, 6)
    # an event's weight is its user's multiplicity: equal within a user, users drawn 3 times per resample
    np.testing.assert_array_equal(w[:, 0], w[:, 1])
    np.testing.assert_array_equal(w[:, 3], w[:, 5])
    np.testing.assert_array_equal(w[:, [0, 2, 3]].sum(axis=1), 3)
    values = np.arange(6.0)
    np.testing.assert_allclose(boot.means(values), (w @ values) / w.sum(axis=1))
    ci = M.mean_with_ci(values, boot)
    assert ci["lo"] <= ci["value"] <= ci["hi"]
    seg = np.array([True, False, False, False, True, True])
    with np.errstate(invalid="ignore"):  # a resample without any of the segment's users: NaN in both
        expected = (w[:, seg] @ values[seg]) / w[:, seg].sum(1)
    np.testing.assert_allclose(boot.subset(seg).means(values[seg]), expected)


def test_vectorised_bootstrap_equals_replicated_data():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 3)
    p = rng.random(90)
    y = (rng.random(90) < p).astype(int)
    boot = M.UserBootstrap(users, 5, seed=0)
    w = boot.counts[:, boot.inverse]
    for b in range(5):
        rep = np.repeat(np.arange(90), w[b].astype(int))  # the resample written out event by event
        assert M.auc(p, y, w)[b] == pytest.approx(M.auc(p[rep], y[rep]))
        assert M.log_loss(p, y, w)[b] == pytest.approx(M.log_loss(p[rep], y[rep]))
        assert M.ece(p, y, 15, w)[b] == pytest.approx(M.ece(p[rep], y[rep], 15))
        assert M.normalized_entropy(p, y, w)[b] == pytest.approx(M.normalized_entropy(p[rep], y[rep]))
    w = boot
    cal = M.calibration_metrics(p, y, users, 15, w)
    assert cal["gauc_users_used"] + cal["gauc_users_skipped"] == 30
    assert set(cal) >= {"auc", "gauc", "logloss", "ne", "ece", "calibration_ratio"}


def _gauc_by_user_loop(p, y, users):
    """The reference: one AUC call per user (quadratic in users when done by masks, as before)."""
    total, weight = 0.0, 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            total += M.auc(p[m], y[m]) * m.sum()
            weight += m.sum()
    return total / weight


def test_streaming_gauc_and_bootstrap_equal_the_dense_references_on_ml100k(ml100k, ml100k_split):
    """On ml-100k's validation and test targets (rounded scores: many ties): one-sort GAUC equals the per-user
    loop, and the [resamples x users] bootstrap, chunked, equals dense [resamples x events] weights from the same
    draws."""
    from e2erec.eval.protocol import target_users

    targets = np.concatenate([ml100k_split.valid, ml100k_split.test])
    users = target_users(ml100k, targets)
    y = np.asarray(ml100k.label)[targets].astype(np.float64)
    p = np.round(np.random.default_rng(0).random(len(targets)) * 0.5 + 0.3 * y, 1)  # ties within users
    value, skipped = M.gauc(p, y, users)
    assert value == pytest.approx(_gauc_by_user_loop(p, y, users), rel=1e-12)
    assert skipped == len(np.unique(users)) - sum(0 < y[users == u].sum() < (users == u).sum()
                                                   for u in np.unique(users))
    boot = M.UserBootstrap(users, 40, seed=3, chunk_elements=5000)  # several chunks
    rng = np.random.default_rng(3)
    uniq, inverse = np.unique(users, return_inverse=True)
    dense = rng.multinomial(len(uniq), np.full(len(uniq), 1.0 / len(uniq)), size=40)[:, inverse].astype(float)
    np.testing.assert_allclose(boot.means(p), (dense @ p) / dense.sum(1))
    for name, (point, samples) in M.calibration_samples(p, y, 15, boot).items():
        fn = {"auc": M.auc, "logloss": M.log_loss, "ne": M.normalized_entropy, "calibration_ratio":
              M.calibration_ratio, "ece": lambda p, y, w: M.ece(p, y, 15, w)}[name]
        np.testing.assert_allclose(samples, fn(p, y, dense), err_msg=name)
    cal = M.calibration_metrics(p, y, users, 15, boot)
    ids, aucs, counts = M.per_user_auc(p, y, users)
    first_event = np.unique(inverse, return_index=True)[1]
    mult = dense[:, first_event[np.searchsorted(uniq, ids)]]  # each mixed user's multiplicity
    np.testing.assert_allclose(cal["gauc"]["lo"], np.quantile((mult @ (aucs * counts)) / (mult @ counts), 0.025))
    assert cal["gauc_users_used"] == len(ids) > 0
