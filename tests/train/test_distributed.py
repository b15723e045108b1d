"""Real 2-process DeepSpeed runs on CPU (gloo): ZeRO-2 under torchrun, ZeRO-3 launched the way Slurm's srun does
(one process per task, rank from SLURM_PROCID), preemption by signal, and resumes that reproduce the losses."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .helpers import REPO, e2erec_cmd, overrides, run_checked, subprocess_env, train_losses
from .test_engine import RESUME_RTOL

pytestmark = pytest.mark.slow
EXIT_PREEMPTED = 85


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "e2erec", "train", *args]


def srun_style(args: list[str], n: int = 2) -> list[subprocess.Popen]:
    """What `srun --ntasks=2 python -m e2erec train ...` starts: n processes told their rank by SLURM_* variables."""
    port = free_port()
    procs = []
    for rank in range(n):
        env = subprocess_env()
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(n), SLURM_LOCALID=str(rank), SLURM_JOB_ID="4242",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(e2erec_cmd() + args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    codes = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        codes.append(p.returncode)
        p.output = out
    return codes


def logged_steps(run_dir: Path) -> set[int]:
    """Training steps logged so far by a running job (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    steps = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["kind"] == "train":
            steps.add(row["step"])
    return steps


def final(run_dir: Path) -> dict:
    return json.loads((run_dir / "final.json").read_text())


def zero_to_fp32(step_dir: Path, out: Path) -> dict:
    """DeepSpeed's own converter, run as a user runs it: the script DeepSpeed copied into the checkpoint, on the step
    folder alone (its `latest` file names the tag). Returns the consolidated fp32 state dict."""
    from safetensors.torch import load_file

    script = step_dir / "zero_to_fp32.py"
    assert script.exists() and (step_dir / "latest").read_text().strip() == "ds"
    run_checked([sys.executable, str(script), str(step_dir), str(out), "--safe_serialization"], subprocess_env())
    state = {}
    for shard in sorted(out.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def test_zero2_torchrun_resume_matches(sids_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_checked(torchrun(overrides(a, sids_dir, "train.zero_stage=2")), subprocess_env())
    fa = final(a)
    assert (fa["status"], fa["steps"], fa["world_size"], fa["zero_stage"]) == ("completed", 6, 2, 2)
    ref = train_losses(a)
    assert sorted(ref) == list(range(1, 7))
    # Two ranks write their ZeRO-2 optimizer shards into one atomic checkpoint folder.
    shards = sorted(p.name for p in (a / "checkpoints" / "step_00000003" / "ds").iterdir())
    assert sum("optim_states" in s for s in shards) == 2, shards
    # DeepSpeed's zero_to_fp32 consolidates the last checkpoint into the weights the export holds.
    from safetensors.torch import load_file

    consolidated = zero_to_fp32(a / "checkpoints" / "step_00000006", tmp_path / "fp32")
    exported = load_file(str(a / "export" / "model.safetensors"))
    assert consolidated and set(consolidated) <= set(exported)
    platt = {"calib_scale", "calib_shift"}  # fitted after the last checkpoint, when training has ended
    assert platt <= set(consolidated)
    for name in set(consolidated) - platt:
        torch.testing.assert_close(consolidated[name].to(exported[name].dtype), exported[name], msg=name)

    resume = f"train.resume={a / 'checkpoints' / 'step_00000003'}"
    run_checked(torchrun(overrides(b, sids_dir, "train.zero_stage=2", resume, "train.export=false")),
                subprocess_env())
    got = train_losses(b)
    assert [got[s] for s in (4, 5, 6)] == pytest.approx([ref[s] for s in (4, 5, 6)], rel=RESUME_RTOL)


def test_zero3_srun_preempt_and_resume_matches(sids_dir, tmp_path):
    # Parameters under 128 elements (norm gains, the 1-element output bias) stay replicated; the rest is sharded.
    zero3 = ["train.zero_stage=3", "train.zero3_persistence_threshold=128", "train.max_steps=8"]
    c, d = tmp_path / "c", tmp_path / "d"
    # select=best: the periodic evaluations gather the partitions to score them and to write <run_dir>/best.
    best = ["train.select=best", "train.eval_every=4", "train.eval_max_targets=32"]
    procs = srun_style(overrides(c, sids_dir, *zero3, *best, "train.export=true"))
    assert wait_all(procs) == [0, 0], procs[0].output[-4000:]
    ref = train_losses(c)
    assert sorted(ref) == list(range(1, 9)) and final(c)["zero_stage"] == 3
    # The export gathered the ZeRO-3 partitions: full shapes, loadable without DeepSpeed.
    from e2erec.model.export import export_meta, load_exported

    model, _ = load_exported(c / "export")
    assert model.num_params() == final(c)["params"]
    assert final(c)["selected_step"] in (4, 8) and export_meta(c / "export")["step"] == final(c)["selected_step"]
    assert export_meta(c / "best")["step"] == final(c)["selected_step"]
    # DeepSpeed's zero_to_fp32 reassembles the ZeRO-3 partitions of the last checkpoint: every parameter, full shape.
    consolidated = zero_to_fp32(c / "checkpoints" / "step_00000008", tmp_path / "fp32")
    params = dict(model.named_parameters())
    assert set(params) <= set(consolidated)
    assert all(consolidated[n].shape == p.shape for n, p in params.items())
    if final(c)["selected_step"] == 8:  # the export holds the last step's weights: the same numbers
        for name, p in params.items():
            torch.testing.assert_close(consolidated[name].float(), p.detach(), msg=name)

    # Resume from step 3 (as after a kill -9 at any later step), then preempt: SIGTERM reaches rank 1 only; both
    # ranks agree at the next step boundary, checkpoint, and exit 85.
    args = overrides(d, sids_dir, *zero3, f"train.resume={c / 'checkpoints' / 'step_00000003'}", "train.export=false")
    procs = srun_style(args)
    deadline = time.time() + 180
    while 4 not in logged_steps(d):
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "no rank logged step 4"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    codes = wait_all(procs)
    fd = final(d)
    assert fd["status"] == "preempted" and codes == [EXIT_PREEMPTED] * 2, (codes, procs[0].output[-3000:])
    stopped = fd["steps"]
    assert 4 <= stopped < 8 and (d / "checkpoints" / f"step_{stopped:08d}" / "identity.json").exists()

    procs = srun_style([*args[:-2], "train.resume=auto", "train.export=false"])
    assert wait_all(procs) == [0, 0], procs[0].output[-4000:]
    got = train_losses(d)
    assert final(d)["status"] == "completed" and sorted(got) == list(range(4, 9))
    assert [got[s] for s in range(4, 9)] == pytest.approx([ref[s] for s in range(4, 9)], rel=RESUME_RTOL)


def test_sharded_eval_on_two_ranks_equals_the_single_process_report(sids_dir, tmp_path):
    """`e2erec eval` under torchrun: each rank generates and scores half of the users (validation for the joint
    weight, then test), rank 0 writes the report, and its numbers are the single-process run's."""
    run_checked(e2erec_cmd() + overrides(tmp_path / "m", sids_dir), subprocess_env())
    args = ["--export", str(tmp_path / "m" / "export"), "--systems", "popularity", "eval.bootstrap=20",
            "generate.beam_size=10", "eval.top_k=10", "eval.ks=[1,5,10]", "--device", "cpu"]
    run_checked([sys.executable, "-m", "e2erec", "eval", *args, "--out", str(tmp_path / "single")], subprocess_env())
    proc = run_checked([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={free_port()}", "-m", "e2erec", "eval", *args, "--out", str(tmp_path / "sharded")],
                       subprocess_env())
    assert all(f"rank {r}: generation and scoring sharded over 2 ranks" in proc.stdout for r in (0, 1)), proc.stdout[-2000:]
    single, sharded = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("single", "sharded"))
    assert [s["name"] for s in sharded["systems"]] == [s["name"] for s in single["systems"]]
    for a, b in zip(single["systems"], sharded["systems"]):
        for block in ("overall", "calibration", "segments"):
            want, got = _leaves(a[block]), _leaves(b[block])
            assert got.keys() == want.keys() and (len(want) > 10 or block == "calibration"), (a["name"], block)
            numbers = [k for k, v in want.items() if isinstance(v, float)]
            assert {k: got[k] for k in numbers} == pytest.approx({k: want[k] for k in numbers}, rel=1e-6,
                                                                 nan_ok=True), (a["name"], block)
            assert {k: v for k, v in got.items() if k not in numbers} == {
                k: v for k, v in want.items() if k not in numbers}, (a["name"], block)
        assert (b["fit_log"] or {}).get("joint_weight") == (a["fit_log"] or {}).get("joint_weight")
    assert sharded["setup"] == single["setup"]


def _leaves(tree, prefix: str = "") -> dict:
    """A nested report block as {dotted key: number}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in (tree or {}).items() for k, v in _leaves(sub, f"{prefix}.{key}").items()}
