"""A rank killed with SIGKILL mid-training: the survivor exits within a bounded time with a message naming the
missing rank and the last checkpoint (never a hang), and the next launch resumes from that checkpoint."""

from __future__ import annotations

import json
import signal
import time

import pytest
from train.helpers import overrides
from train.test_distributed import final, logged_steps, srun_style, wait_all

pytestmark = pytest.mark.slow


def test_a_dead_rank_stops_the_survivor_with_its_name_and_the_next_launch_resumes(sids_dir, tmp_path):
    """Lost: the steps since the last checkpoint (at most train.ckpt_every = 3)."""
    run = tmp_path / "run"
    args = overrides(run, sids_dir, "train.max_steps=40", "train.ckpt_every=3", "train.export=false",
                     "train.collective_timeout_s=60")
    procs = srun_style(args)
    deadline = time.time() + 240
    while max(logged_steps(run), default=0) < 5 and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.2)
    assert max(logged_steps(run), default=0) >= 5, procs[0].communicate()[0][-3000:]
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    codes = wait_all(procs, timeout=120)
    assert codes == [75, -signal.SIGKILL]
    assert time.time() - t0 < 30  # well inside the collective timeout: gloo sees the closed connection
    out = procs[0].output
    assert "Traceback" not in out
    message = next(line for line in out.splitlines() if line.startswith("e2erec train: error:"))
    assert "a collective failed and rank 1 of 2 is gone" in message
    last = int(message.split("checkpoints/step_")[1][:8])
    assert last >= 3 and "relaunch the job with train.resume=auto" in message
    assert final(run)["status"] == "failed"

    procs = srun_style(overrides(run, sids_dir, f"train.max_steps={last + 3}", "train.ckpt_every=3",
                                 "train.export=false", "train.resume=auto"))
    assert wait_all(procs, timeout=240) == [0, 0], procs[0].output[-3000:]
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event", "").startswith(f"resumed from {run / 'checkpoints' / f'step_{last:08d}'}")
               for e in events)
    assert final(run)["status"] == "completed" and final(run)["steps"] == last + 3


def test_a_dead_rank_in_sharded_evaluation_fails_clearly_and_writes_no_report(sids_dir, tmp_path):
    import subprocess

    from train.helpers import REPO, e2erec_cmd, run_checked, subprocess_env
    from train.test_distributed import free_port

    run_checked(e2erec_cmd() + overrides(tmp_path / "m", sids_dir), subprocess_env())
    out = tmp_path / "report"
    port = free_port()
    procs = []
    for rank in range(2):
        env = subprocess_env()
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_ID="4243",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [*e2erec_cmd()[:-1], "eval", "--export", str(tmp_path / "m" / "export"), "--systems", "popularity",
             "eval.bootstrap=20", "generate.beam_size=10", "eval.top_k=10", "eval.ks=[1,5,10]", "--device", "cpu",
             "--out", str(out)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for line in procs[1].stdout:  # the ranks have joined and started to shard: kill one
        if "generation and scoring sharded over 2 ranks" in line:
            procs[1].send_signal(signal.SIGKILL)
            break
    t0 = time.time()
    codes = wait_all(procs, timeout=120)
    assert codes == [75, -signal.SIGKILL], procs[0].output[-3000:]
    assert time.time() - t0 < 60
    assert "Traceback" not in procs[0].output
    assert "e2erec eval: error: rank 0: a collective failed and rank 1 of 2 is gone" in procs[0].output
    assert not (out / "report.json").exists() and not (out / "report.md").exists()
