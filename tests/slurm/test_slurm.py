"""The slurm/ scripts: static checks, and real submissions to a local single-node Slurm (CPU mode, gloo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHELL_FILES = sorted((REPO / "slurm").glob("*.sbatch")) + [REPO / "slurm" / "common.sh", REPO / "scripts" / "local_slurm.sh"]
# 2 ranks of a small real training run on synthetic data; checkpoints every 2 steps so preemption has one to keep.
TRAIN = [
    "data=synthetic", "data.synthetic.n_users=200", "data.synthetic.n_items=300", "data.synthetic.n_events=5000",
    "data.synthetic.n_interests=8", "data.max_seq_len=50", "tokenizer.embedding=collaborative",
    "tokenizer.quantizer=random", "tokenizer.codebook_size=16", "model=tiny", "train.batch_tokens=512",
    "train.warmup_steps=2", "train.max_steps=80", "train.eval_every=0", "train.ckpt_every=2",
    "train.tensorboard=false", "train.export=false",
]


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(path):
    assert subprocess.run(["bash", "-n", str(path)], check=False, capture_output=True).returncode == 0
    shellcheck = Path(sys.executable).parent / "shellcheck"
    res = subprocess.run([str(shellcheck), "-x", str(path)], check=False, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout


def test_scripts_requeue_on_the_trainers_exit_status():
    from e2erec.train.engine import EXIT_PREEMPTED

    assert f"EXIT_PREEMPTED={EXIT_PREEMPTED}\n" in (REPO / "slurm" / "common.sh").read_text()


def _sbatch(*args: str, env: dict | None = None) -> str:
    res = subprocess.run(["sbatch", "--parsable", *args], check=False, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _job_state(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], check=False, capture_output=True, text=True).stdout
    m = re.search(r"JobState=(\w+)", out)
    return m.group(1) if m else "GONE"


def _slurm_says(job: str | None) -> str:
    """What Slurm knows, for a timeout's message: the queue with each job's pending reason, the node, the job."""
    cmds = [["squeue", "-a", "-o", "%i %T %r %C %M %N"], ["sinfo", "-N", "-o", "%N %T %C %E"]]
    if job:
        cmds.append(["scontrol", "show", "job", job])
    out = []
    for cmd in cmds:
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
        out.append(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
    return "\n".join(out)


def _wait_for(cond, timeout: float, what: str, log: Path | None = None, job: str | None = None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (v := cond()):
            return v
        time.sleep(0.5)
    detail = log.read_text()[-3000:] if log is not None and log.exists() else f"(no job output: {log} not written)"
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{detail}\n{_slurm_says(job)}")


@pytest.mark.slurm
@pytest.mark.slow
def test_two_rank_training_is_preempted_requeued_and_resumes(slurm_cluster, tmp_path):
    """torchrun with 2 gloo ranks; USR1 to the batch shell -> checkpoint -> scontrol requeue -> resume -> finish."""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    job = _sbatch("--cpus-per-task=2", f"--output={out}", "slurm/train_torchrun.sbatch", *TRAIN,
                  f"out_dir={run_dir}", "name=preempt", env={"E2EREC_NPROC_PER_NODE": "2"})
    ckpts = run_dir / "checkpoints"
    _wait_for(lambda: ckpts.exists() and any(ckpts.glob("step_*")), 180, "the first checkpoint", out, job)
    # What --signal=B:USR1@120 does before a time limit, now.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    final = run_dir / "final.json"
    _wait_for(lambda: final.exists() and json.loads(final.read_text())["status"] == "completed"
              and _job_state(job) in ("COMPLETED", "GONE"), 240, "the requeued job to finish", out, job)
    log = out.read_text()
    info = json.loads(final.read_text())
    assert "requeueing job" in log and "(restart 1)" in log, log[-3000:]
    assert "resumed from" in log, log[-3000:]
    assert info["world_size"] == 2 and info["steps"] == 80
    assert any(p.name.startswith("final.") for p in run_dir.iterdir())
    assert (ckpts / "step_00000080").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_submits_an_array_of_three_points(slurm_cluster, tmp_path):
    """`e2erec sweep --slurm --wait`: one array task per point, each reading its point from points.json."""
    root = tmp_path / "sweep"
    res = subprocess.run([sys.executable, "-m", "e2erec.cli", "sweep", "configs/sweeps/smoke.yaml", f"out_dir={root}",
                          "--slurm", "--wait"], check=False, capture_output=True, text=True, cwd=REPO, timeout=400)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((root / "slurm").glob("*.out")))
    assert res.returncode == 0, res.stdout + res.stderr + logs
    assert re.search(r"submitted job array \d+ \(3 points\)", res.stdout)
    outs = sorted((root / "slurm").glob("*_*.out"))
    assert len(outs) == 3 and all("sweep point" in p.read_text() for p in outs)
    rows = json.loads((root / "results.json").read_text())
    assert sorted(r["size"] for r in rows) == ["d16", "d32", "d64"]
    assert all(r["tokens"] >= 4096 and r["eval_loss"] > 0 for r in rows)
    # Resumed sweep: nothing left to submit.
    again = subprocess.run([sys.executable, "-m", "e2erec.cli", "sweep", "configs/sweeps/smoke.yaml",
                            f"out_dir={root}", "--slurm"], check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 0 and "completed 3" in again.stdout and "submitted" not in again.stdout


@pytest.mark.slurm
@pytest.mark.slow
def test_deepspeed_launcher_variant_trains_two_ranks(slurm_cluster, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    train = [o for o in TRAIN if not o.startswith(("train.max_steps", "train.ckpt_every"))]
    job = _sbatch("--cpus-per-task=2", f"--output={out}", "slurm/train_deepspeed.sbatch", *train, "train.max_steps=4",
                  "train.ckpt_every=0", f"out_dir={run_dir}", "name=ds", env={"E2EREC_NPROC_PER_NODE": "2"})
    final = run_dir / "final.json"
    _wait_for(lambda: final.exists() and _job_state(job) in ("COMPLETED", "GONE"), 180, "the DeepSpeed job", out, job)
    info = json.loads(final.read_text())
    assert info["status"] == "completed" and info["world_size"] == 2, out.read_text()[-2000:]
    assert "step finished with exit status 0" in out.read_text()
