"""Damaged artifacts: a dataset cache or a semantic-ID cache rebuilds itself (it is derived data), an export or an
explicit artifact is refused with the file named, and `e2erec verify` finds what loading (sizes only on large
folders) would miss."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e2erec.data import load_dataset
from e2erec.data.config import DataConfig, SyntheticConfig
from e2erec.data.process import dataset_dir
from e2erec.errors import IntegrityError
from e2erec.utils.manifest import verify_manifest


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def _verify_cmd(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "e2erec", "verify", *map(str, paths)], capture_output=True,
                          text=True, check=False, timeout=120)


def test_a_flipped_byte_in_the_dataset_cache_is_found_and_the_cache_rebuilt(tmp_path, capsys):
    cfg = DataConfig(name="synthetic", source="synthetic", cache_dir=str(tmp_path / "cache"),
                     synthetic=SyntheticConfig(n_users=100, n_items=80, n_events=2_000, n_interests=4, dim=8))
    first = load_dataset(cfg, progress=False)
    want = np.asarray(first.item).copy()
    folder, _ = dataset_dir(cfg, False)
    verify_manifest(folder, checksums=True)
    _flip(folder / "events" / "data-00000-of-00001.arrow")
    proc = _verify_cmd(folder)
    assert proc.returncode == 1 and "events/data-00000-of-00001.arrow has SHA-256" in proc.stdout
    again = load_dataset(cfg, progress=False)  # lost: nothing (the cache is rebuilt from its source)
    assert "events/data-00000-of-00001.arrow" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(again.item), want)
    verify_manifest(folder, checksums=True)
    assert _verify_cmd(folder).returncode == 0


def test_a_cut_short_semantic_id_artifact_is_rebuilt_in_the_cache_and_refused_by_path(synthetic_small,
                                                                                    synthetic_small_split, tmp_path,
                                                                                    capsys):
    from e2erec.tokenizer.config import TokenizerConfig
    from e2erec.tokenizer.semantic_ids import SemanticIDs, load_or_build_semantic_ids

    cfg = TokenizerConfig(embedding="collaborative", quantizer="random", codebook_size=8, levels=2,
                          collaborative_dim=8)
    sids, folder, built = load_or_build_semantic_ids(synthetic_small, synthetic_small_split, cfg, tmp_path,
                                                     progress=False)
    assert built
    codes = folder / "codes.safetensors"
    codes.write_bytes(codes.read_bytes()[:-5])
    with pytest.raises(IntegrityError, match=r"semantic-ID artifact .* codes.safetensors is \d[\d,]* bytes"):
        SemanticIDs.load(folder, synthetic_small)  # an artifact named by path is the user's: refused, not rebuilt
    again, _, built = load_or_build_semantic_ids(synthetic_small, synthetic_small_split, cfg, tmp_path,
                                                 progress=False)
    assert built and "codes.safetensors" in capsys.readouterr().err
    assert (again.codes == sids.codes).all()


@pytest.mark.slow
def test_a_damaged_export_is_refused_naming_the_file(dist_info, sids_dir, tmp_path):
    from train.test_engine import make_trainer

    from e2erec.model.export import load_exported

    run = tmp_path / "run"
    assert make_trainer(dist_info, run, sids_dir, "train.max_steps=2", "train.ckpt_every=0").run() == 0
    export = run / "export"
    load_exported(export)
    assert _verify_cmd(export, run / "checkpoints" / "step_00000002").returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    _flip(broken / "model.safetensors", 0.9)
    with pytest.raises(IntegrityError, match=r"export .*broken failed verification: model.safetensors has SHA-256"):
        load_exported(broken)
    proc = _verify_cmd(export, broken)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0].startswith("ok ") and "FAILED" in proc.stdout.splitlines()[1]
