"""The report: every system on the same targets, markdown + JSON + plots, planted-truth metrics on synthetic data."""

import json
import subprocess
import sys

import numpy as np
import pytest

from e2erec.baselines import build_baseline
from e2erec.eval.config import EvalConfig
from e2erec.eval.protocol import mask_history, top_k
from e2erec.eval.report import evaluate_systems, render_markdown


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


class OracleCopy(PlantedOracle):
    """The oracle under another name: every paired difference against it is exactly zero."""

    name = "oracle_copy"


CFG = EvalConfig(bootstrap=50, top_k=50)


@pytest.fixture(scope="module")
def report(synthetic_small, synthetic_small_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    pop = build_baseline("popularity")
    pop.fit(synthetic_small, synthetic_small_split)
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
    # The oracle beats the over-confident copy on calibration, not on its (identical) ranking: named best on ECE
    # and LogLoss only.
    assert "- Lowest test ECE: **planted_oracle** (" in md and "- Lowest test LogLoss: **planted_oracle** (" in md
    assert "- Test ndcg@10: no significant difference at the top" in md and "Best test ndcg@10" not in md
    assert [s["name"] for s in js["systems"]] == ["popularity", "planted_oracle", "overconfident"]
    for png in ("metrics.png", "reliability.png", "history_length.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md
    assert not list(out.glob(".*tmp")), "a temporary file was left behind"
    assert js["setup"] == rep["setup"]


@pytest.fixture(scope="module")
def tie_report(synthetic_small, synthetic_small_split):
    """Two systems that rank and predict alike; short_history=0 empties the short-history segment."""
    cfg = EvalConfig(bootstrap=50, top_k=50, short_history=0)
    rep = evaluate_systems([PlantedOracle(), OracleCopy()], synthetic_small, synthetic_small_split, cfg, None,
                           progress=False)
    return rep, render_markdown(rep)


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_no_significant_difference_names_no_best_system(tie_report):
    _, md = tie_report
    summary = _section(md, "Summary")
    for metric in ("hr@10", "ndcg@10", "mrr", "LogLoss", "ECE"):
        assert f"- Test {metric}: no significant difference at the top (paired bootstrap, 95%): planted_oracle (" in summary
    assert "Best" not in summary and "Lowest" not in summary and "**" not in summary


def test_empty_segment_is_left_out_with_one_line(tie_report):
    rep, md = tie_report
    empty, kept = list(rep["setup"]["segments"])[:2]  # short history, long-tail target (then repeat targets)
    assert rep["setup"]["segments"][empty] == 0 and rep["setup"]["segments"][kept] > 0
    segments = _section(md, "Segments")
    assert f"Left out, with no test targets: {empty}." in segments
    assert f"**{empty}**" not in segments and f"**{kept}** — " in segments
    assert "n/a" not in segments


def test_paired_table_shows_each_pair_once(report):
    _, rep = report
    md = (report[0] / "report.md").read_text()
    table = [line.split(" | ") for line in _section(md, "Paired comparisons").splitlines() if line.startswith("| ")]
    rows = [(a.removeprefix("| "), b, metric) for a, b, metric, *_ in table[1:]]
    order = [s["name"] for s in rep["systems"]]
    assert all(order.index(a) < order.index(b) for a, b, _ in rows)  # the system listed first is the row
    shown = {(c["system"], c["vs"], c["metric"]) for c in rep["comparisons"]
             if c["metric"] in ("ndcg@10", "auc", "logloss", "ece")}
    assert sorted(rows) == sorted((a, b, m) for a, b, m in shown if order.index(a) < order.index(b))
    assert len(rows) == 3 + 3  # three pairs on ndcg@10; one calibrated pair on auc, logloss and ece
    assert len(shown) == 2 * len(rows)  # report.json keeps both directions


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
    """The real command on real ML-100K: fits, early-stops, writes the report and the predictions in the dataset's
    own ids (checked against the raw file inside the RecBole wheel); unknown systems are one clear line."""
    import zipfile

    from e2erec.eval.predictions import read_predictions

    out = subprocess.run(
        [sys.executable, "-m", "e2erec.cli", "eval", "--systems", "popularity,sasrec", "--out", str(tmp_path),
         "--predictions", str(tmp_path / "top.parquet"),
         "eval=fast", "eval.baseline_epochs=1", "eval.bootstrap=20", "baseline.max_len=20",
         "baseline.sasrec_dim=16"],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    md = (tmp_path / "report.md").read_text()
    assert "| popularity |" in md and "| sasrec |" in md and "943 test targets" in md
    assert (tmp_path / "config.yaml").exists()
    rows = read_predictions(tmp_path / "top.parquet")
    assert len(rows) == 2 * 943 and {r["system"] for r in rows} == {"popularity", "sasrec"}
    with zipfile.ZipFile(ml100k.meta["files"][0]) as wheel:
        lines = wheel.read("recbole/dataset_example/ml-100k/ml-100k.inter").decode().splitlines()[1:]
    raw_pairs = {tuple(line.split("\t")[:2]) for line in lines}
    assert all((r["user"], r["target_item"]) in raw_pairs for r in rows)  # raw user and item ids, not indices
    raw_items = set(ml100k.items.raw_id)
    assert all(len(r["items"]) == 50 and set(r["items"]) <= raw_items for r in rows)
    # The report's numbers follow from the file alone.
    report = {s["name"]: s for s in json.loads((tmp_path / "report.json").read_text())["systems"]}
    for name in ("popularity", "sasrec"):
        mine = [r for r in rows if r["system"] == name]
        hits = np.mean([r["target_item"] in r["items"][:10] for r in mine])
        assert hits == pytest.approx(report[name]["overall"]["hr@10"]["value"])
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


def test_training_plot_shows_every_trained_stage():
    """Baselines per epoch, the cascade's retrieval and ranker, and the end-to-end record in steps (its two orders
    one curve), each metric in its own panel with integer ticks, and the kept evaluation starred."""
    import matplotlib.pyplot as plt

    from e2erec.eval.report import _plot_training, _training_figure
    from e2erec.eval.stopping import StoppingRule

    def log(metric, higher, values, unit="epoch"):
        fit = StoppingRule(patience=2, max_evals=10).start(metric, higher, unit)
        for v in values:
            fit.record(v)
        return fit.to_dict()

    e2e = {**log("eval_loss", False, [3.0, 2.5, 2.6], "100 steps"), "steps": 250, "selected_step": 200,
           "export": "/runs/a/export"}
    results = [
        {"name": "e2erec (generation order)", "fit_log": e2e},
        {"name": "e2erec (generation × calibration)", "fit_log": {**e2e, "joint_weight": 0.5}},
        {"name": "popularity", "fit_log": None},
        {"name": "sasrec", "fit_log": log("ndcg@10", True, [0.1, 0.2, 0.15, 0.12])},
        {"name": "cascade", "fit_log": {"retrieval": log("ndcg@10", True, [0.05, 0.08, 0.07]),
                                        "ranker": log("logloss", False, [0.7, 0.6, 0.65]),
                                        "merge": {"metric": "ndcg@10", "alpha": 0.5, "tau": 1.0, "valid": {}}}},
    ]
    fig = _training_figure(results)
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    panels = {(ax.get_ylabel(), ax.get_xlabel()): ax for ax in axes}
    assert set(panels) == {("validation eval_loss (lower is better)", "step"),
                           ("validation ndcg@10 (higher is better)", "epoch"),
                           ("validation logloss (lower is better)", "epoch")}

    def curves(ax):
        return {line.get_label(): line for line in ax.get_lines() if line.get_marker() == "o"}

    def stars(ax):
        return {(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in ax.get_lines()
                if line.get_marker() == "*" and len(line.get_xdata())}

    steps = panels[("validation eval_loss (lower is better)", "step")]
    (label, line), = curves(steps).items()
    assert label == "e2erec (generation order) / e2erec (generation × calibration)"
    assert list(line.get_xdata()) == [100, 200, 250] and stars(steps) == {(200.0, 2.5)}
    epochs = panels[("validation ndcg@10 (higher is better)", "epoch")]
    assert set(curves(epochs)) == {"sasrec", "cascade (retrieval)"} and stars(epochs) == {(2.0, 0.2), (2.0, 0.08)}
    ranker = panels[("validation logloss (lower is better)", "epoch")]
    assert set(curves(ranker)) == {"cascade (ranker)"} and stars(ranker) == {(2.0, 0.6)}
    for ax in axes:
        ticks = ax.get_xticks()
        assert np.array_equal(ticks, np.round(ticks)), (ax.get_xlabel(), ticks)
    plt.close(fig)
    assert _plot_training(results)[:8] == b"\x89PNG\r\n\x1a\n"
    assert _plot_training(results[2:3]) is None  # no trained stage, no plot
