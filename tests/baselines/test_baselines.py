"""Each baseline beats Popularity on data with sequential structure; the protocol helpers do what they say."""

import numpy as np
import pytest
import torch

from e2erec.baselines import BASELINES, build_baseline
from e2erec.baselines.common import fit_early_stopping
from e2erec.config import ConfigError
from e2erec.eval.config import EvalConfig
from e2erec.eval.metrics import hit_rate, target_ranks
from e2erec.eval.protocol import Recommender, history_csr
from e2erec.eval.toy import item_vectors, markov_interactions, toy_split

CFG = EvalConfig(top_k=10, ks=[1, 5, 10], baseline_epochs=3, patience=2, baseline_dim=16, baseline_max_len=8,
                 baseline_batch_size=32, baseline_lr=1e-2, baseline_threads=1, cascade_candidates=20,
                 cascade_negatives=32, semantic_candidates=10)


@pytest.fixture(scope="module")
def toy():
    inter = markov_interactions(n_users=150, n_items=50, min_len=10, max_len=20, seed=1)
    return inter, toy_split(inter)


@pytest.fixture(scope="module")
def popularity_hr(toy):
    inter, split = toy
    pop = build_baseline("popularity")
    pop.fit(inter, split, CFG)
    return _hr10(pop, inter, split)


def _hr10(system, inter, split) -> float:
    return float(hit_rate(target_ranks(system.recommend(inter, split.test, 10), inter.item[split.test]), 10).mean())


def _assert_excludes_history(recs, inter, targets):
    rows, items = history_csr(inter, targets)
    seen = np.zeros((len(targets), inter.n_items), bool)
    seen[rows, items] = True
    picked = np.take_along_axis(seen, np.maximum(recs, 0), axis=1) & (recs >= 0)
    assert not picked.any(), "a recommendation repeats an item of the target's history"


@pytest.mark.parametrize("name", ["sasrec", "cascade", "plugin_cascade"])
def test_baseline_beats_popularity_on_markov_data(name, toy, popularity_hr):
    inter, split = toy
    system = build_baseline(name, **({"item_text": item_vectors(inter)} if name == "plugin_cascade" else {}))
    assert isinstance(system, Recommender)
    system.fit(inter, split, CFG)
    recs = system.recommend(inter, split.test, 10)
    assert recs.shape == (len(split.test), 10)
    _assert_excludes_history(recs, inter, split.test)
    hr = _hr10(system, inter, split)
    # the next item is usually 1-3 steps along the ring: a sequence model finds it, popularity cannot
    assert hr > popularity_hr + 0.15, f"{name} HR@10 {hr:.3f} vs popularity {popularity_hr:.3f}"
    proba = system.predict_proba(inter, split.test, inter.item[split.test])
    if name == "sasrec":
        assert proba is None
        return
    assert proba.shape == (len(split.test),) and np.all((proba > 0) & (proba < 1))
    grid = system.predict_proba(inter, split.test[:5], np.tile(np.arange(4), (5, 1)))
    assert grid.shape == (5, 4)
    np.testing.assert_allclose(grid[:, 0], system.predict_proba(inter, split.test[:5], np.zeros(5, int)), rtol=1e-5)
    # the head learned something about feedback: better than the base rate on the test labels
    y = inter.label[split.test]
    base = np.clip(y.mean(), 1e-3, 1 - 1e-3)
    ll = -np.mean(y * np.log(proba) + (1 - y) * np.log(1 - proba))
    ll_base = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    assert ll < ll_base


def test_popularity_excludes_history_and_has_no_head(toy):
    inter, split = toy
    pop = build_baseline("popularity")
    pop.fit(inter, split, CFG)
    recs = pop.recommend(inter, split.test, 10)
    _assert_excludes_history(recs, inter, split.test)
    counts = np.bincount(inter.item[np.concatenate([np.arange(s, e) for s, e in zip(inter.offsets[:-1], split.train_end)])],
                         minlength=inter.n_items)
    assert counts[recs[0, 0]] >= counts[recs[0, -1]]
    assert pop.predict_proba(inter, split.test, inter.item[split.test]) is None


def test_early_stopping_restores_the_best_epoch():
    module = torch.nn.Linear(1, 1)
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.9])
    weights = []

    def train_epoch(epoch):
        with torch.no_grad():
            module.weight.fill_(float(epoch))
        weights.append(epoch)
        return 1.0 / epoch

    log = fit_early_stopping(module, train_epoch, lambda: next(scores), epochs=5, patience=2, metric="ndcg@10")
    assert log.best_epoch == 2 and len(log.valid) == 4  # stopped after two epochs without improvement
    assert module.weight.item() == 2.0  # the best epoch's weights, not the last epoch's
    log = fit_early_stopping(module, train_epoch, iter([0.9, 0.5, 0.7]).__next__, epochs=3, patience=5,
                             metric="logloss", higher_is_better=False)
    assert log.best_epoch == 2 and module.weight.item() == 2.0


def test_unknown_system_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'sasrec'"):
        build_baseline("sasrek")
    assert set(BASELINES) == {"popularity", "sasrec", "cascade", "plugin_cascade"}


def test_ranker_rate_features_leave_a_training_targets_own_label_out(toy):
    """The DIN ranker's item rate of a counted training target uses the other events' counts only (so the ranker
    cannot read its label there); held-out targets and candidates use the full training counts."""
    from e2erec.baselines.cascade import Cascade
    from e2erec.eval.protocol import padded_histories, training_targets
    from e2erec.model.model import smoothed_rate_logit

    inter, split = toy
    cascade = Cascade()
    cascade._fit_stats(inter, split)
    rows = training_targets(inter, split, min_history=1)[:64]
    items = inter.item[rows][:, None]
    _, labels, lengths = padded_histories(inter, rows, 8)
    counted, _ = cascade.rate_features(inter, rows, items, labels, lengths, counted=True)
    full, user = cascade.rate_features(inter, rows, items, labels, lengths)
    counted_rows = training_targets(inter, split, min_history=0)
    y = inter.label[rows].astype(np.float64)
    pos = np.array([inter.label[counted_rows][inter.item[counted_rows] == i].sum() for i in items[:, 0]])
    n = np.array([(inter.item[counted_rows] == i).sum() for i in items[:, 0]], dtype=np.float64)
    base = float(inter.label[counted_rows].mean())
    want = smoothed_rate_logit(torch.from_numpy(pos - y), torch.from_numpy(n - 1), base)
    torch.testing.assert_close(counted[:, 0], want)
    torch.testing.assert_close(full[:, 0], smoothed_rate_logit(torch.from_numpy(pos), torch.from_numpy(n), base))
    assert ((counted[:, 0] < full[:, 0]) == (y > 0)).all()  # a positive's own label raised its item's full rate
    torch.testing.assert_close(user, smoothed_rate_logit(torch.from_numpy(labels.sum(1)), torch.from_numpy(lengths), base))
