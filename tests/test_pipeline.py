"""`e2erec run` end to end on real MovieLens-100K with a tiny budget, then `e2erec generate` on its export.

The run trains the real model through the DeepSpeed engine, fits a baseline, evaluates both under one protocol and
writes the report; generation then checks the steering constraints hold on real items.
"""

import json
import subprocess
import sys

import numpy as np
import pytest


def _e2erec(*args, timeout=600):
    out = subprocess.run([sys.executable, "-m", "e2erec", *args], check=False, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    stdout = _e2erec(
        "run", "--time-budget", "3", "--systems", "popularity",
        f"out_dir={run_dir}", "train.max_steps=40", "train.eval_every=20", "train.ckpt_every=20",
        "eval.bootstrap=10", "eval.beam_size=20", "eval.top_k=20", "eval.ks=[1,5,10,20]",
    )
    return run_dir, stdout


@pytest.mark.slow
def test_run_produces_a_complete_report(tiny_run):
    run_dir, stdout = tiny_run
    report_dir = run_dir / "eval"
    assert f"Report: {report_dir / 'report.md'}" in stdout
    for name in ("report.md", "report.json", "metrics.png", "reliability.png", "history_length.png"):
        assert (report_dir / name).stat().st_size > 0, name
    report = json.loads((report_dir / "report.json").read_text())
    systems = {s["name"]: s for s in report["systems"]}
    assert set(systems) == {"e2erec", "e2erec_calibrated", "popularity"}
    assert report["setup"]["n_test_targets"] == 943
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 40
    assert final["calibration"]["n_targets"] == 943  # Platt scaling fitted on every validation target
    # The run config keeps the best-validation weights (steps 20 and 40 were evaluated), and the report says which.
    assert final["selected_step"] in (20, 40)
    md = (report_dir / "report.md").read_text()
    assert (f"- e2erec: weights of step {final['selected_step']} of 40, the best validation eval_loss "
            "(train.select=best)") in md
    assert (run_dir / "config.yaml").exists() and (run_dir / "export" / "model.safetensors").exists()
    # Both orders rank the same retrieved items, so their hit rate at the full list length agrees.
    beam, calibrated = systems["e2erec"]["overall"], systems["e2erec_calibrated"]["overall"]
    assert beam["hr@20"]["value"] == pytest.approx(calibrated["hr@20"]["value"])


@pytest.mark.slow
def test_eval_of_an_export_reproduces_the_run_report(tiny_run, tmp_path):
    """`e2erec eval --export` puts a trained model beside the baselines; same model and protocol, same numbers."""
    run_dir, _ = tiny_run
    _e2erec("eval", "--export", str(run_dir / "export"), "--systems", "popularity", "--out", str(tmp_path),
            f"out_dir={run_dir}", "eval.bootstrap=10", "eval.beam_size=20", "eval.top_k=20", "eval.ks=[1,5,10,20]")
    ran = {s["name"]: s["overall"] for s in json.loads((run_dir / "eval" / "report.json").read_text())["systems"]}
    again = {s["name"]: s["overall"] for s in json.loads((tmp_path / "report.json").read_text())["systems"]}
    assert set(again) == {"e2erec", "e2erec_calibrated", "popularity"}
    for name in again:
        for metric in ("ndcg@10", "hr@20", "logloss"):
            if metric in ran[name]:
                assert again[name][metric]["value"] == pytest.approx(ran[name][metric]["value"]), (name, metric)


@pytest.mark.slow
def test_the_evaluating_commands_eval_section_reaches_the_export(tiny_run, ml100k):
    """`e2erec eval --export X eval.steering...` must steer X's search, not the settings X was trained with."""
    from e2erec.eval.config import EvalConfig, SteeringConfig
    from e2erec.generate.system import GenerativeSystem

    run_dir, _ = tiny_run
    eval_cfg = EvalConfig(beam_size=20, top_k=20, steering=SteeringConfig(include_categories=["Comedy"]))
    systems, inter = GenerativeSystem.both_orders(run_dir / "export", ml100k, eval_cfg)
    for system in systems:
        assert system.cfg.eval is eval_cfg
        items, _ = system.generate_for(inter, np.array([0, 1]), inter.offsets[[1, 2]], 10)
        assert (items >= 0).all() and all("Comedy" in inter.items.categories[i] for i in items.ravel())


@pytest.mark.slow
def test_generate_respects_steering_on_real_items(tiny_run, ml100k):
    run_dir, _ = tiny_run
    export = str(run_dir / "export")
    lines = _e2erec("generate", "--export", export, "--users", "0,1,2", "--k", "10", "--json",
                    "eval.steering.include_categories=[Comedy]")
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [r["user"] for r in rows] == [0, 1, 2]
    for row in rows:
        items = [x["item"] for x in row["items"]]
        assert len(items) == 10 and len(set(items)) == 10  # a full K, no duplicates
        assert all("Comedy" in ml100k.items.categories[i] for i in items)
        seen = set(ml100k.item[ml100k.offsets[row["user"]] : ml100k.offsets[row["user"] + 1]].tolist())
        assert not seen & set(items)  # already-seen items are excluded inside the search
        probs = [x["score"] for x in row["items"]]
        assert all(0.0 <= p <= 1.0 for p in probs) and probs == sorted(probs, reverse=True)


def test_generate_rejects_bad_users(tmp_path):
    out = subprocess.run([sys.executable, "-m", "e2erec", "generate", "--export", str(tmp_path)],
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "not an e2erec export" in out.stderr
