"""Each baseline beats Popularity on data with sequential structure; the protocol helpers do what they say."""

import numpy as np
import pytest
import torch

from e2erec.baselines import BASELINES, build_baseline
from e2erec.baselines.common import fit_early_stopping
from e2erec.baselines.config import BaselineConfig
from e2erec.config import ConfigError
from e2erec.eval.config import EvalConfig
from e2erec.eval.metrics import hit_rate, target_ranks
from e2erec.eval.protocol import FitContext, Recommender, history_csr
from e2erec.eval.stopping import STOP_REASONS, StoppingRule
from e2erec.eval.toy import item_vectors, markov_interactions, toy_split

CFG = FitContext(EvalConfig(top_k=10, ks=[1, 5, 10], baseline_epochs=3, patience=2),
                 BaselineConfig(sasrec_dim=16, cascade_dim=16, max_len=8, batch_size=32, lr=1e-2, threads=1,
                                cascade_candidates=20, cascade_negatives=32, semantic_candidates=10))


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


def test_sasrec_with_sampled_negatives_learns_and_draws_them_from_its_seed(toy, popularity_hr):
    """baseline.sasrec_negatives > 0 (the scale ladder's sampled softmax) still learns the ring; same seed, same model."""
    import dataclasses

    inter, split = toy
    cfg = dataclasses.replace(CFG, baseline=dataclasses.replace(CFG.baseline, sasrec_negatives=8))
    a, b = build_baseline("sasrec"), build_baseline("sasrec")
    a.fit(inter, split, cfg)
    b.fit(inter, split, cfg)
    assert _hr10(a, inter, split) > popularity_hr + 0.15
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(p, q)


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

    log = fit_early_stopping(module, train_epoch, lambda: next(scores), StoppingRule(patience=2, max_evals=5),
                             metric="ndcg@10")
    assert log.best_epoch == 2 and len(log.valid) == 4  # stopped after two epochs without improvement
    assert log.stop_reason == "converged"
    assert module.weight.item() == 2.0  # the best epoch's weights, not the last epoch's
    log = fit_early_stopping(module, train_epoch, iter([0.9, 0.5, 0.7]).__next__, StoppingRule(5, 3),
                             metric="logloss", higher_is_better=False)
    assert log.best_epoch == 2 and module.weight.item() == 2.0
    assert log.stop_reason == "max_epochs"  # still within patience when the cap came: not converged
    log = fit_early_stopping(module, train_epoch, lambda: 0.5, StoppingRule(5, 100, time_budget_s=1e-9),
                             metric="ndcg@10")
    assert log.stop_reason == "budget" and len(log.valid) == 1


def test_every_baseline_records_its_stop_under_the_one_rule(toy):
    """The shared rule object: every trained stage's fit log names its stop reason, best epoch, patience, measured
    FLOPs per example and parameter count (what the report's training section prints)."""
    inter, split = toy
    stages = []
    for name in ("sasrec", "cascade", "plugin_cascade"):
        system = build_baseline(name, **({"item_text": item_vectors(inter)} if name == "plugin_cascade" else {}))
        system.fit(inter, split, CFG)
        logs = system.fit_log.to_dict() if hasattr(system.fit_log, "to_dict") else system.fit_log
        logs = {"": logs} if "best_epoch" in logs else {k: v for k, v in logs.items() if "best_epoch" in v}
        stages += [(f"{name}{k}", v) for k, v in logs.items()]
    assert len(stages) == 5  # sasrec, and retrieval + ranker of both cascades
    for stage, log in stages:
        assert log["stop_reason"] in STOP_REASONS, stage
        assert 1 <= log["best_epoch"] <= len(log["valid"]) <= CFG.protocol.baseline_epochs, stage
        assert log["patience"] == CFG.protocol.patience and log["max_evals"] == CFG.protocol.baseline_epochs, stage
        assert log["params"] > 0 and log["flops_per_example"] > 0 and log["wall_s"] > 0, stage
        if log["stop_reason"] == "converged":
            assert len(log["valid"]) - log["best_epoch"] == CFG.protocol.patience, stage


def test_din_attention_factorisation_equals_the_concatenated_form(toy):
    """DINRanker.logits computes the attention MLP's first layer on [h, t, h - t, h * t] by parts; the result must
    be the plain concatenated form's."""
    from e2erec.baselines.cascade import DINRanker, _masked_mean
    from e2erec.baselines.common import ItemEncoder, category_matrix

    inter, _ = toy
    torch.manual_seed(0)
    ranker = DINRanker(ItemEncoder(inter.n_items, 8, category_matrix(inter)), 8)
    hist = torch.randint(-1, inter.n_items, (5, 7))
    labels = torch.randint(0, 2, (5, 7))
    item = torch.randint(0, inter.n_items, (5, 3))
    item_rate, user_rate = torch.randn(5, 3), torch.randn(5)
    got = ranker.logits(hist, labels, item, item_rate, user_rate)

    valid = (hist >= 0).unsqueeze(1).unsqueeze(-1)
    h = ranker.items(hist) + ranker.feedback(labels.clamp(0, 1)) * (hist >= 0).unsqueeze(-1)
    t = ranker.items(item)
    hb = h.unsqueeze(1).expand(-1, 3, -1, -1)
    tb = t.unsqueeze(2).expand_as(hb)
    w = ranker.att(torch.cat([hb, tb, hb - tb, hb * tb], dim=-1)) * valid
    pooled = (w * hb).sum(2)
    mean = _masked_mean(h, hist >= 0).unsqueeze(1).expand(-1, 3, -1)
    dense = torch.stack([item_rate, user_rate.unsqueeze(1).expand(-1, 3)], dim=-1)
    want = ranker.head(torch.cat([pooled, t, pooled * t, mean, dense], dim=-1)).squeeze(-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


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
