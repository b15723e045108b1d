"""`scripts/gpu_check.sh --dry-run`: the prepared GPU check runs every step on the CPU at tiny sizes and writes its
summary, so the script a GPU session runs first keeps working without a GPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_dry_run_runs_every_step(tmp_path):
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--budget", "400", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["mode"] == "dry-run" and set(summary["steps"]) == {"kernels", "attention", "train", "generate"}
    assert all(s["ok"] and not s["timed_out"] for s in summary["steps"].values()), summary["steps"]
    results = summary["results"]
    assert {r["mean_frac"] for r in results["attention"]} == {0.25, 1.0}
    assert results["train"]["throughput"][0]["tokens_per_s"] > 0
    assert results["generate"]["full_lists"] and results["generate"]["users_per_s"] > 0
    assert "GPU check (dry-run" in out.stdout


def test_the_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and "no CUDA device is visible" in out.stderr
