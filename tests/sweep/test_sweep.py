"""The sweep: spec expansion, resumable local runs (failed and killed points are reported and rerun), the report."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from e2erec.config import ConfigError
from e2erec.sweep import fit as F
from e2erec.sweep.spec import expand, load_spec

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "sweeps" / "smoke.yaml"


def _spec_file(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load(SMOKE.read_text())
    spec.update(out_dir=str(tmp_path / "sweep"), **changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_shipped_specs_load_and_the_cpu_sweep_spans_30x():
    for path in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        assert expand(load_spec(path)), path
    cpu = load_spec(REPO / "configs" / "sweeps" / "cpu.yaml")
    from e2erec.sweep.spec import estimate_params

    sizes = [estimate_params(cpu.run_config, [*cpu.overrides, *s.overrides]) for s in cpu.sizes]
    assert len(sizes) >= 5 and max(sizes) / min(sizes) >= 30


def test_grid_and_isoflop_expansion(tmp_path):
    spec = load_spec(_spec_file(tmp_path), ["tokens=[1000, 2000]", "lrs=[0.001, 0.003]"])
    points = expand(spec)
    assert len(points) == 3 * 2 * 2 and len({p.run_dir for p in points}) == 12
    p = points[1]
    assert p.id == "d16_t1e3_lr0.003" and "train.max_tokens=1000" in p.overrides and "train.lr=0.003" in p.overrides
    assert p.overrides[-3:] == [f"name={p.id}", f"out_dir={p.run_dir}", "train.resume=auto"]
    iso = expand(load_spec(_spec_file(tmp_path, mode="isoflop", budgets=[1e9, 1e10], min_tokens=1000)))
    # D = C / (6 N): a fixed budget gives the smaller model more tokens.
    by_budget = [pt for pt in iso if pt.id.startswith("d16")], [pt for pt in iso if pt.id.startswith("d64")]
    assert by_budget[0][0].tokens > by_budget[1][0].tokens


def test_bad_spec_names_the_key_and_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"spec.yaml.*tokns.*did you mean 'tokens'"):
        load_spec(_spec_file(tmp_path, tokns=[1]))
    with pytest.raises(ConfigError, match="a grid sweep needs at least one token count"):
        load_spec(_spec_file(tmp_path, tokens=[]))


def test_points_file_gives_one_points_arguments(tmp_path):
    from e2erec.sweep.runner import write_points

    spec = load_spec(_spec_file(tmp_path))
    points = expand(spec)
    path = write_points(spec, points)
    out = subprocess.run([sys.executable, "-m", "e2erec.sweep", str(path), "2"], check=False, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.splitlines() == points[2].train_argv(spec.run_config)
    bad = subprocess.run([sys.executable, "-m", "e2erec.sweep", str(path), "7"], check=False, capture_output=True, text=True)
    assert bad.returncode == 2 and "no point with index 7" in bad.stderr


def test_report_from_a_known_law(tmp_path):
    from e2erec.sweep.report import write_report

    law = F.ChinchillaFit(E=2.0, A=30.0, B=80.0, alpha=0.5, beta=0.4)
    rng = np.random.default_rng(0)
    rows = []
    for n in np.geomspace(1e4, 1e6, 5):
        for d in np.geomspace(1e5, 1e7, 3):
            rows.append({"id": f"{n:.0f}_{d:.0f}", "tokens_target": d, "non_embedding_params": n, "tokens": d,
                         "flops": 6 * n * d, "eval_loss": float(law.predict(n, d) * np.exp(rng.normal(0, 0.003)))})
    result = write_report(tmp_path, "law", rows, {"completed": 15}, bootstrap=4)
    assert result["chinchilla"]["alpha"] == pytest.approx(0.5, abs=0.05)
    assert result["holdout"]["mean_abs_rel_error"] < 0.02
    assert {"sweep_report.md", "fit.json", "loss_vs_params.png", "loss_vs_compute.png", "residuals.png"} <= {
        p.name for p in tmp_path.iterdir()}
    text = (tmp_path / "sweep_report.md").read_text()
    assert re.search(r"\| alpha \| 0\.[45]\d* \[0\.\d+, 0\.\d+\] \|", text) and "Hold-out" in text


def _sweep(spec_path: Path, *extra: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "e2erec.cli", "sweep", str(spec_path), "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


@pytest.mark.slow
def test_failed_and_killed_points_are_reported_and_rerun(tmp_path):
    """A point whose training is SIGKILLed after a checkpoint, and a point that fails, are both listed on the next
    run and run again; the killed one resumes from its checkpoint; the completed one is not rerun."""
    spec_path = _spec_file(tmp_path, sizes=[
        {"name": "ok", "overrides": ["model.d_model=16", "model.n_layers=1", "model.n_heads=2"]},
        {"name": "broken", "overrides": ["model.d_model=16", "model.n_heads=3"]},  # 16 % 3: fails in the trainer
    ], tokens=[12288], overrides=yaml.safe_load(SMOKE.read_text())["overrides"] + ["train.ckpt_every=2"])
    ok_dir = tmp_path / "sweep" / "points" / "ok_t1.23e4"
    proc = _sweep(spec_path)
    ckpts = ok_dir / "checkpoints"
    t0 = time.time()
    while not (ckpts.exists() and any(ckpts.glob("step_*"))):
        assert proc.poll() is None and time.time() - t0 < 120, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    pid = json.loads((ok_dir / "sweep_attempt.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # the training process dies mid-run, as on an OOM kill or a lost node
    first = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, first
    assert "ok_t1.23e4 (exit -9)" in first and "broken_t1.23e4 (exit 2)" in first

    second = _sweep(spec_path).communicate(timeout=180)[0]
    assert "ok_t1.23e4: killed last time (killed by SIGKILL without final.json) -> rerun" in second, second
    assert "broken_t1.23e4: failed last time (exit status 2" in second, second
    assert "resumed from" in (ok_dir / "train.log").read_text()
    assert json.loads((ok_dir / "final.json").read_text())["status"] == "completed"
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [r["id"] for r in rows] == ["ok_t1.23e4"]  # the failed point has no row, and is not silently dropped:
    assert "failed 1" in second

    third = _sweep(spec_path, "--status").communicate(timeout=60)[0]
    assert "ok_t1.23e4\tcompleted" in third and "broken_t1.23e4\tfailed" in third
