"""Checkpoints that fail: a damaged newest checkpoint is skipped (one interval lost), a full disk stops the run with
one clear paragraph and exit code 74 and leaves nothing partial, and the next launch resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from train.helpers import e2erec_cmd, overrides, subprocess_env, train_losses
from train.test_engine import RESUME_RTOL, make_trainer

from e2erec.errors import CheckpointWriteError, IntegrityError
from e2erec.train.checkpoint import verify_checkpoint


def _events(run_dir: Path) -> list[str]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["event"] for r in rows if r["kind"] == "event"]


def _damage(ckpt: Path, fault: str) -> Path:
    """Cut the largest file of the checkpoint in half, or flip one bit in its middle (same size)."""
    victim = max((p for p in ckpt.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    if fault == "truncated":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    return victim


@pytest.fixture(scope="module")
def reference(dist_info, sids_dir, tmp_path_factory) -> tuple[Path, dict[int, float]]:
    """An uninterrupted 6-step run with checkpoints at steps 3 and 6: the losses every recovery must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert make_trainer(dist_info, run, sids_dir, "train.export=false").run() == 0
    return run, train_losses(run)


@pytest.mark.parametrize("fault", ["truncated", "flipped"])
def test_resume_auto_skips_a_damaged_newest_checkpoint(dist_info, sids_dir, reference, tmp_path, capsys, fault):
    """Lost: the 3 steps since the previous checkpoint (one interval); they are retrained to the same losses."""
    ref_run, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref_run, run)
    victim = _damage(run / "checkpoints" / "step_00000006", fault)
    tr = make_trainer(dist_info, run, sids_dir, "train.export=false", "train.resume=auto")
    assert tr.run() == 0
    err = capsys.readouterr().err
    why = "cut short" if fault == "truncated" else "corrupted"
    rel = victim.relative_to(run / "checkpoints" / "step_00000006").as_posix()
    assert f"skipping checkpoint {run / 'checkpoints' / 'step_00000006'}" in err and rel in err and why in err
    events = _events(run)
    assert any(e.startswith("skipped checkpoint") and why in e for e in events)
    assert f"resumed from {run / 'checkpoints' / 'step_00000003'}" in events
    got = train_losses(run)  # the last logging of each step: the resumed run's
    assert [got[s] for s in (4, 5, 6)] == pytest.approx([ref[s] for s in (4, 5, 6)], rel=RESUME_RTOL)
    verify_checkpoint(run / "checkpoints" / "step_00000006", checksums=True)  # rewritten whole


def test_a_kill_during_a_checkpoint_write_leaves_a_temporary_that_the_next_launch_removes(dist_info, sids_dir,
                                                                                        reference, tmp_path):
    """A SIGKILL inside the step-6 write leaves `.step_00000006.tmp` without identity.json (written last). Lost: the 3
    steps since step 3."""
    ref_run, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref_run, run)
    partial = run / "checkpoints" / ".step_00000006.tmp"
    (run / "checkpoints" / "step_00000006").rename(partial)
    (partial / "identity.json").unlink()
    assert make_trainer(dist_info, run, sids_dir, "train.export=false", "train.resume=auto").run() == 0
    events = _events(run)
    assert f"removed {partial}, the unfinished checkpoint of an earlier run" in events
    assert f"resumed from {run / 'checkpoints' / 'step_00000003'}" in events
    assert not partial.exists()
    got = train_losses(run)
    assert [got[s] for s in (4, 5, 6)] == pytest.approx([ref[s] for s in (4, 5, 6)], rel=RESUME_RTOL)


@pytest.mark.slow
def test_a_sigkill_mid_step_resumes_with_the_same_losses(sids_dir, reference, tmp_path):
    """`e2erec train` killed with SIGKILL after step 4 (checkpoint at 3), relaunched: lost 1 step, same losses."""
    import signal
    import time

    from train.test_distributed import logged_steps

    _, ref = reference
    run = tmp_path / "run"
    cmd = [*e2erec_cmd(), *overrides(run, sids_dir, "train.export=false", "train.resume=auto")]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while max(logged_steps(run), default=0) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 4 <= max(logged_steps(run)) < 6
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step_00000003'}" in _events(run)
    got = train_losses(run)
    assert [got[s] for s in range(1, 7)] == pytest.approx([ref[s] for s in range(1, 7)], rel=RESUME_RTOL)


def test_no_valid_checkpoint_names_them_all_and_an_explicit_path_is_not_replaced(dist_info, sids_dir, reference,
                                                                                  tmp_path):
    ref_run, _ = reference
    run = tmp_path / "run"
    shutil.copytree(ref_run, run)
    for step in (3, 6):
        _damage(run / "checkpoints" / f"step_{step:08d}", "truncated")
    with pytest.raises(IntegrityError, match=r"no checkpoint under .* is valid \(step_00000006: .*; step_00000003: "):
        make_trainer(dist_info, run, sids_dir, "train.export=false", "train.resume=auto").run()
    explicit = run / "checkpoints" / "step_00000003"
    with pytest.raises(IntegrityError, match=rf"train.resume={explicit}: checkpoint .* failed verification"):
        make_trainer(dist_info, tmp_path / "other", sids_dir, f"train.resume={explicit}").run()


def test_min_free_gb_refuses_the_write_before_it_starts(dist_info, sids_dir, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointWriteError, match=r"below train.min_free_gb=1e\+06.*Last good checkpoint: none"):
        make_trainer(dist_info, run, sids_dir, "train.export=false", "train.min_free_gb=1e6").run()
    assert not list((run / "checkpoints").glob(".step_*"))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 MB tmpfs: a filesystem that really fills (root and mount(8) needed; skipped where the machine forbids)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_cleanly_and_the_next_launch_resumes(sids_dir, reference, small_filesystem):
    """The disk holds the step-3 checkpoint and half of another: the step-6 write fails. Lost: 3 steps."""
    ref_run, ref = reference
    size = sum(p.stat().st_size for p in (ref_run / "checkpoints" / "step_00000003").rglob("*") if p.is_file())
    run = small_filesystem / "run"
    run.mkdir()
    filler = small_filesystem / "filler"
    free = shutil.disk_usage(small_filesystem).free
    with open(filler, "wb") as f:  # leave room for one and a half checkpoints and the logs
        f.truncate(0)
        f.write(b"\0" * max(0, free - int(1.5 * size) - (1 << 20)))
    cmd = [*e2erec_cmd(), *overrides(run, sids_dir, "train.export=false")]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 74, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("e2erec train: error: writing checkpoint step_00000006 into")
    assert "MB were free when it failed" in message and "MB are free there" in message
    assert f"Last good checkpoint: {run / 'checkpoints' / 'step_00000003'}" in message
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003"]  # no temporary left behind
    verify_checkpoint(run / "checkpoints" / "step_00000003", checksums=True)
    assert json.loads((run / "final.json").read_text())["status"] == "failed"

    filler.unlink()
    cmd = [*e2erec_cmd(), *overrides(run, sids_dir, "train.export=false", "train.resume=auto")]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = train_losses(run)
    assert [got[s] for s in (4, 5, 6)] == pytest.approx([ref[s] for s in (4, 5, 6)], rel=RESUME_RTOL)
