"""A real single-node Slurm for the tests (scripts/local_slurm.sh), brought up once per session.

Skipped, with the reason, only where it cannot exist: not root, or neither Slurm nor apt-get present. On CI
(CI=true) those are failures too, and a failed bring-up always fails loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local_slurm.sh"


def _running() -> bool:
    out = subprocess.run(["bash", str(SCRIPT), "status"], check=False, capture_output=True, text=True).stdout if os.geteuid() == 0 else ""
    return "slurmctld: running" in out and "slurmd: running" in out


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = None
    if os.geteuid() != 0:
        reason = "the local Slurm needs root (it installs packages and starts daemons)"
    elif shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        reason = "neither Slurm nor apt-get is available to install it"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Slurm tests, but: {reason}")
        pytest.skip(reason)
    was_up = _running()
    up = subprocess.run(["bash", str(SCRIPT), "up"], check=False, capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        pytest.fail(f"local Slurm bring-up failed (exit {up.returncode}):\n{up.stdout}\n{up.stderr}")
    yield
    if not was_up:
        subprocess.run(["bash", str(SCRIPT), "down"], check=False, capture_output=True, timeout=120)
