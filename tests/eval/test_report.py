"""The report: every system on the same targets, markdown + JSON + plots, planted-truth metrics on synthetic data."""

import json
import subprocess
import sys

import numpy as np
import pytest

from e2erec.baselines import build_baseline
from e2erec.eval.config import EvalConfig
from e2erec.eval.protocol import mask_history, top_k
from e2erec.eval.report import evaluate_systems


class PlantedOracle:
    """Ranks by the generator's Bayes-optimal next-item distribution and predicts the planted P(positive)."""

    name = "planted_oracle"

    def fit(self, inter, split, cfg):
        pass

    def recommend(self, inter, targets, k):
        from e2erec.data.synthetic import planted_next_item_probs

        return top_k(mask_history(planted_next_item_probs(inter, targets).astype(np.float64), inter, targets), k)

    def predict_proba(self, inter, targets, items):
        return np.asarray(inter.planted["prob"])[targets].astype(np.float64)


class Overconfident(PlantedOracle):
    """The oracle's ranking with its probabilities pushed away from 0.5: the same order, worse calibration."""

    name = "overconfident"

    def predict_proba(self, inter, targets, items):
        p = np.clip(super().predict_proba(inter, targets, items), 1e-6, 1 - 1e-6)
        return 1.0 / (1.0 + np.exp(-3.0 * np.log(p / (1 - p))))


CFG = EvalConfig(bootstrap=50, top_k=50)


@pytest.fixture(scope="module")
def report(synthetic_small, synthetic_small_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    pop = build_baseline("popularity")
    pop.fit(synthetic_small, synthetic_small_split, CFG)
    return out, evaluate_systems([pop, PlantedOracle(), Overconfident()], synthetic_small, synthetic_small_split,
                                 CFG, out, progress=False)


def test_report_files_exist_and_name_every_system(report):
    out, rep = report
    md = (out / "report.md").read_text()
    js = json.loads((out / "report.json").read_text())
    for name in ("popularity", "planted_oracle", "overconfident"):
        assert f"| {name} |" in md
    assert "- planted_oracle on ndcg@10 (paired bootstrap, 95%): better than popularity" in md
    assert "- planted_oracle on ece (paired bootstrap, 95%): better than overconfident." in md
    assert "- Lowest ECE: **planted_oracle** (" in md and "; lowest LogLoss: **planted_oracle** (" in md
    assert [s["name"] for s in js["systems"]] == ["popularity", "planted_oracle", "overconfident"]
    for png in ("metrics.png", "reliability.png", "history_length.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md
    assert not list(out.glob(".*tmp")), "a temporary file was left behind"
    assert js["setup"] == rep["setup"]


def test_report_numbers_are_consistent(report, synthetic_small_split):
    _, rep = report
    pop, oracle, _ = rep["systems"]
    assert rep["setup"]["n_test_targets"] == len(synthetic_small_split.test)
    for system in (pop, oracle):
        o = system["overall"]
        assert o["hr@1"]["value"] <= o["hr@5"]["value"] <= o["hr@10"]["value"] <= o["hr@50"]["value"]
        assert o["ndcg@10"]["value"] <= o["hr@10"]["value"]
        assert o["hr@10"]["lo"] <= o["hr@10"]["value"] <= o["hr@10"]["hi"]
        assert sum(system["by_history_length"]["n"]) == rep["setup"]["n_test_targets"]
    # the oracle's own top-10 IS the planted top-10, and it predicts the planted probabilities
    assert oracle["overall"]["planted_recall@10"]["value"] == pytest.approx(1.0)
    assert pop["overall"]["planted_recall@10"]["value"] < 0.9
    assert oracle["overall"]["hr@10"]["value"] > pop["overall"]["hr@10"]["value"]
    assert pop["calibration"] is None
    cal = oracle["calibration"]
    assert cal["calibration_ratio"]["lo"] < 1.0 < cal["calibration_ratio"]["hi"]  # planted probabilities are calibrated
    assert cal["gauc_users_used"] == 0 and cal["gauc_users_skipped"] == rep["setup"]["n_test_users"]  # one event each
    verdicts = {(c["system"], c["vs"], c["metric"]): c["verdict"] for c in rep["comparisons"]}
    assert verdicts[("planted_oracle", "popularity", "ndcg@10")] == "better"


def test_calibration_is_compared_paired(report):
    """Systems with probabilities are compared on AUC, LogLoss and ECE over the same resamples: the over-confident
    copy of the oracle has the same order (AUC difference exactly 0, on every resample) and is worse calibrated."""
    _, rep = report
    _, oracle, overconfident = rep["systems"]
    diffs = {(c["system"], c["vs"], c["metric"]): c for c in rep["comparisons"]}
    assert not any("popularity" in (c["system"], c["vs"]) and c["metric"] in ("auc", "ece", "logloss")
                   for c in rep["comparisons"])  # popularity predicts no probabilities
    auc = diffs[("planted_oracle", "overconfident", "auc")]
    assert auc["difference"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert auc["verdict"] == "not significantly different"
    for metric in ("ece", "logloss"):
        d = diffs[("planted_oracle", "overconfident", metric)]
        point = oracle["calibration"][metric]["value"] - overconfident["calibration"][metric]["value"]
        assert d["difference"]["value"] == pytest.approx(point)
        assert d["difference"]["hi"] < 0 and d["verdict"] == "better"
        assert diffs[("overconfident", "planted_oracle", metric)]["verdict"] == "worse"


@pytest.mark.slow
def test_eval_command_on_movielens(ml100k, tmp_path):
    """The real command on real ML-100K: fits, early-stops, writes the report; unknown systems are one clear line."""
    out = subprocess.run(
        [sys.executable, "-m", "e2erec.cli", "eval", "--systems", "popularity,sasrec", "--out", str(tmp_path),
         "eval=fast", "eval.baseline_epochs=1", "eval.bootstrap=20", "eval.baseline_max_len=20",
         "eval.baseline_dim=16"],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    md = (tmp_path / "report.md").read_text()
    assert "| popularity |" in md and "| sasrec |" in md and "943 test targets" in md
    assert (tmp_path / "config.yaml").exists()
    bad = subprocess.run([sys.executable, "-m", "e2erec.cli", "eval", "--systems", "popularity,sasrek"],
                         check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "did you mean 'sasrec'" in bad.stderr and "Traceback" not in bad.stderr


def test_training_section_names_every_stop_and_what_did_not_converge():
    from e2erec.eval.report import _training_section
    from e2erec.eval.stopping import StoppingRule

    rule = StoppingRule(patience=2, max_evals=10, time_budget_s=5.0)
    sasrec = rule.start("ndcg@10", True)
    for v in (0.1, 0.2, 0.15, 0.12):
        sasrec.record(v)
    sasrec.check(elapsed_s=1.0)
    sasrec.describe(1000, 2.5e6, 50, "next-item target")
    ranker = rule.start("logloss", False)
    ranker.record(0.6)
    ranker.check(elapsed_s=6.0)
    systems = [{"name": "sasrec", "fit_log": sasrec.to_dict()},
               {"name": "cascade", "fit_log": {"retrieval": sasrec.to_dict(), "ranker": ranker.to_dict()}}]
    md = "\n".join(_training_section(systems))
    assert "| sasrec | ndcg@10 | 4 epochs | epoch 2 | converged | 1 | 1,000 | 2.5M | 0.1000, 0.2000, 0.1500, 0.1200 |" in md
    assert "| cascade (ranker) | logloss | 1 epochs | epoch 1 | budget |" in md
    assert "**Not converged** (stopped before patience ran out): cascade (ranker) (budget)." in md
    assert "patience = 2 evaluations (one per epoch)" in md
