"""Fast checks of the pieces the engine is built from: DeepSpeed config, LR schedule, config validation,
checkpoint identity and resume resolution, and the command's error path."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from e2erec.config import ConfigError, load_run_config
from e2erec.errors import ArtifactMismatchError, DataError, IntegrityError
from e2erec.train.checkpoint import check_identity, remove_stale_temporaries, resume_candidates, verify_checkpoint
from e2erec.train.config import TrainConfig
from e2erec.train.ds_config import deepspeed_config, resolve_precision
from e2erec.train.optim import lr_factor
from e2erec.utils.manifest import verify_manifest, write_manifest

from .helpers import REPO, subprocess_env


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("on_gpu", [False, True])
def test_deepspeed_config(stage, on_gpu):
    t = TrainConfig(zero_stage=stage, grad_accum=4, grad_clip=0.5, precision="auto")
    ds = deepspeed_config(t, world_size=8, on_gpu=on_gpu)
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"], ds["train_micro_batch_size_per_gpu"]) == (32, 4, 1)
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is on_gpu and not ds["fp16"]["enabled"]
    assert "optimizer" not in ds and "scheduler" not in ds  # torch objects: no fused_adam JIT build
    assert ("stage3_param_persistence_threshold" in ds["zero_optimization"]) == (stage == 3)
    assert resolve_precision("bf16", on_gpu=False) == "bf16"


def test_warmup_cosine_schedule():
    t = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, t, 110) == pytest.approx(0.1)
    assert lr_factor(9, t, 110) == pytest.approx(1.0)
    assert lr_factor(10, t, 110) == pytest.approx(1.0)
    assert lr_factor(60, t, 110) == pytest.approx(0.55)  # half-way down the cosine: r + (1 - r) / 2
    assert lr_factor(110, t, 110) == pytest.approx(0.1) and lr_factor(500, t, 110) == pytest.approx(0.1)
    factors = [lr_factor(s, t, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(factors))


@pytest.mark.parametrize("override, message", [
    ("train.keep_last=0", "keep_last must be >= 1"),
    ("train.zero_stage=4", "train.zero_stage: 4 is not one of 0 | 1 | 2 | 3"),
    ("train.max_steps=0", "stopping rule"),
    ("train.zero_stag=2", "did you mean 'zero_stage'"),
    ("train.select_metric=ndcg", "select_metric must be one of"),
    ("train.calib_recent_share=1.5", "calib_recent_share must be in"),
])
def test_bad_train_config_is_named(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_run_config(None, override.split())
    assert "command line" in str(e.value) or "train" in str(e.value)


def test_identity_mismatch_names_codebook_and_data():
    saved = {"param_shapes": {"w": [4, 4]}, "codebook_sizes": [16, 16], "data_fingerprint": "aaa",
             "world_size": 2, "zero_stage": 2}
    now = dict(saved, codebook_sizes=[16, 32], data_fingerprint="bbb")
    check_identity(saved, saved, "ckpt")
    with pytest.raises(ArtifactMismatchError, match=r"codebook sizes \[16, 16\] vs \[16, 32\].*data fingerprint aaa"):
        check_identity(saved, now, "ckpt")
    with pytest.raises(ArtifactMismatchError, match="ranks 2 vs 4 now"):
        check_identity(saved, dict(saved, world_size=4), "ckpt")


def test_resume_candidates_newest_first_and_stale_temporaries_removed(tmp_path):
    root = tmp_path / "checkpoints"
    assert resume_candidates("", root) == []
    assert resume_candidates("auto", root) == []  # first start of a requeued job
    for step in (3, 12):
        (root / f"step_{step:08d}").mkdir(parents=True)
        (root / f"step_{step:08d}" / "identity.json").write_text("{}")
    (root / ".step_00000015.tmp").mkdir()  # a save killed half-way is never picked
    assert [p.name for p in resume_candidates("auto", root)] == ["step_00000012", "step_00000003"]
    assert [p.name for p in resume_candidates(str(tmp_path), tmp_path / "other")] == ["step_00000012"]  # a run folder
    with pytest.raises(DataError, match="not a checkpoint folder"):
        resume_candidates(str(tmp_path / "nope"), tmp_path)
    assert [p.name for p in remove_stale_temporaries(root)] == [".step_00000015.tmp"]
    assert not (root / ".step_00000015.tmp").exists() and (root / "step_00000012").exists()


def test_manifest_names_the_missing_short_and_corrupted_file(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "model.pt").write_bytes(b"x" * 1000)
    (tmp_path / "state.json").write_text("{}")
    (tmp_path / ".tmpfile").write_text("not recorded")
    manifest = write_manifest(tmp_path, exclude=("state.json",))
    assert sorted(manifest["files"]) == ["ds/model.pt"]
    verify_manifest(tmp_path, checksums=True)
    data = bytearray((tmp_path / "ds" / "model.pt").read_bytes())
    data[500] ^= 1  # one flipped bit: same size
    (tmp_path / "ds" / "model.pt").write_bytes(bytes(data))
    verify_manifest(tmp_path, checksums=False)  # sizes only: passes
    with pytest.raises(IntegrityError, match=r"ds/model.pt has SHA-256 .* \(corrupted\)"):
        verify_manifest(tmp_path)  # small folder: digests checked by default
    (tmp_path / "ds" / "model.pt").write_bytes(b"x" * 10)
    with pytest.raises(IntegrityError, match=r"ds/model.pt is 10 bytes, the manifest says 1,000 \(cut short"):
        verify_manifest(tmp_path, checksums=False)
    (tmp_path / "ds" / "model.pt").unlink()
    with pytest.raises(IntegrityError, match="ds/model.pt is missing"):
        verify_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{trunc")
    with pytest.raises(IntegrityError, match="unreadable manifest"):
        verify_manifest(tmp_path)


def test_verify_checkpoint_reads_metadata_and_manifest(tmp_path):
    ckpt = tmp_path / "step_00000010"
    ckpt.mkdir()
    (ckpt / "identity.json").write_text("{}")
    (ckpt / "trainer_state.json").write_text('{"step": 10')
    with pytest.raises(DataError, match="trainer_state.json is unreadable"):
        verify_checkpoint(ckpt)
    (ckpt / "trainer_state.json").write_text('{"step": 10}')
    verify_checkpoint(ckpt)  # written before manifests: metadata only
    (ckpt / "rng_rank0.pt").write_bytes(b"r" * 64)
    write_manifest(ckpt, exclude=("identity.json",))
    verify_checkpoint(ckpt)
    (ckpt / "rng_rank0.pt").write_bytes(b"r" * 63)
    with pytest.raises(IntegrityError, match="checkpoint .*step_00000010 failed verification: rng_rank0.pt is 63"):
        verify_checkpoint(ckpt)


def test_command_reports_bad_config_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "e2erec", "train", "train.lr=fast"], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "e2erec train: config error: command line: train.lr: expected a number, got 'fast'"
    ]


def test_training_units_cover_every_training_event_once():
    """Users with 7, 1, 0 and 3 training events (plus held-out rows after train_end), windows of 3: user 0 gives
    windows [4, 7), [1, 4), [0, 1); user 3 gives one; users 1 and 2 are too short; one calibration unit per user
    with >= 2 training events, ending at train_end."""
    from e2erec.train.task import training_units

    offsets = np.array([0, 9, 11, 12, 16])
    train_end = np.array([7, 10, 11, 15])
    users, ends, calib, tokens = training_units(offsets, train_end, max_len=3)
    gen = ~calib
    assert users[gen].tolist() == [0, 0, 0, 3] and ends[gen].tolist() == [7, 4, 1, 15]
    assert tokens[gen].tolist() == [4, 4, 2, 4]  # BOS + events
    covered = sorted(r for e, n in zip(ends[gen], tokens[gen] - 1) for r in range(e - n, e))
    assert covered == [0, 1, 2, 3, 4, 5, 6, 12, 13, 14]
    assert users[calib].tolist() == [0, 3] and ends[calib].tolist() == [7, 15] and tokens[calib].tolist() == [4, 4]
    users, _, calib, _ = training_units(offsets, train_end, max_len=3, calibration=False)
    assert not calib.any() and len(users) == 4


def test_calibration_ends_stay_inside_the_unit():
    """Calibration sequences end at the unit's end (share 1) or at a drawn earlier event that leaves >= 2 events
    (share 0), never past the unit's end; generative units are never moved; every allowed end gets drawn."""
    import torch

    from e2erec.train.task import calibration_ends

    first = np.array([0, 10, 10, 40])
    ends = np.array([8, 30, 20, 42])
    is_calib = np.array([True, True, False, True])
    gen = torch.Generator().manual_seed(0)
    assert (calibration_ends(first, ends, is_calib, 1.0, gen) == ends).all()
    drawn = np.stack([calibration_ends(first, ends, is_calib, 0.0, gen) for _ in range(2000)])
    assert (drawn[:, 2] == 20).all()  # not a calibration unit
    for col in (0, 1, 3):
        assert set(drawn[:, col]) == set(range(first[col] + 2, ends[col] + 1))
    half = np.stack([calibration_ends(first, ends, is_calib, 0.5, gen) for _ in range(2000)])
    assert 0.45 < (half[:, 1] == 30).mean() < 0.6  # 0.5 recent + 0.5 / 19 drawn at the end itself
