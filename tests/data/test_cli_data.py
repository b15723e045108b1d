"""`e2erec data prepare|stats` end to end in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _e2erec(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "e2erec.cli", "data", *args], capture_output=True, text=True, check=False,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_prepare_then_stats_on_a_recbole_folder(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    rows = [f"{u}\t{i}\t{(u + i) % 5 + 1}\t{100 * u + i}" for u in range(1, 6) for i in range(1, 5 + u)]
    (d / "toy.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    env = {"E2EREC_CACHE": str(tmp_path / "cache")}
    out = _e2erec("prepare", str(d), "data.min_item_events=2", env=env)
    assert out.returncode == 0, out.stderr
    assert "k-core" in out.stderr and "events 35 ->" in out.stderr  # the filter is never silent
    assert Path(out.stdout.strip()).parent == tmp_path / "cache" / "datasets"  # prints the cache folder
    out = _e2erec("stats", str(d), "data.min_item_events=2", "--json", "--quiet", env=env)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["users"] == 5 and stats["events"] < 35 and stats["seq_len_p50"] > 0
    assert stats["filters"][-1]["events"][0] == 35


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "broken.inter"
    bad.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\n")
    out = _e2erec("prepare", str(bad), env={"E2EREC_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 2 and "broken.inter:2: malformed line" in out.stderr
    assert "Traceback" not in out.stderr
