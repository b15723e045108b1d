"""The `e2erec` command: every subcommand answers --help; config errors are one clear line with exit status 2."""

import subprocess
import sys

import pytest

from e2erec.cli import COMMANDS


def _e2erec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "e2erec.cli", *args], check=False, capture_output=True, text=True,
                          timeout=120)


def test_top_level_help_lists_every_command():
    out = _e2erec("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help(name):
    out = _e2erec(name, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: e2erec" in out.stdout


def test_config_error_is_one_clear_line():
    out = _e2erec("data", "stats", "ml-100k", "train.lrr=1")
    assert out.returncode == 2
    assert "did you mean 'lr'" in out.stderr
    assert "Traceback" not in out.stderr
