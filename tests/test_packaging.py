"""The built wheel: it carries configs/ and slurm/, and an installed (non-editable) copy runs from any folder.

The wheel is built from a copy of the working tree's files (setuptools writes build/ and *.egg-info next to the
sources), without build isolation (no network). It is installed into a fresh venv that sees the project venv's packages
(torch, ...) through a `.pth` line: a plain path line adds the folder to sys.path after the venv's own site-packages
but does not run that folder's `.pth` files, so the project's editable-install finder (which maps `e2erec` to the
checkout) is not installed and the venv's copy is the one imported. (`--system-site-packages` would not do: from a
venv's python it exposes the base interpreter's packages, not the venv's.)
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    # What a commit would hold: tracked and untracked files, not the ignored ones (.venv, .cache, runs, ...).
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist")],
         cwd=src)
    (whl,) = (tmp / "dist").glob("e2erec-*.whl")
    return whl


def test_wheel_ships_configs_and_slurm(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = REPO / "configs"
    expected = [f"e2erec/configs/{p.relative_to(configs).as_posix()}" for p in configs.rglob("*.yaml")]
    expected += [f"e2erec/slurm/{p.name}" for p in (REPO / "slurm").iterdir() if p.is_file()]
    assert "e2erec/configs/run/default.yaml" in expected and "e2erec/slurm/sweep_array.sbatch" in expected
    assert sorted(set(expected) - names) == []


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python, e2erec = env_dir / "bin" / "python", env_dir / "bin" / "e2erec"
    # The project's pip installs into the new venv; before the .pth below exists, so it sees no e2erec already there.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         cwd=tmp_path)
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        cwd=tmp_path).stdout.strip())
    (purelib / "_e2erec_test_project_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "E2EREC_CONFIGS", "E2EREC_ROOT")}
    probe = ("import e2erec, e2erec.config as c, e2erec.sweep.runner as r; "
             "print(e2erec.__file__); print(c.CONFIG_ROOT); print(r.ARRAY_SCRIPT)")
    where = _run([str(python), "-c", probe], cwd=work, env=env)
    package = purelib / "e2erec"
    assert where.stdout.split() == [str(package / "__init__.py"), str(package / "configs"),
                                    str(package / "slurm" / "sweep_array.sbatch")]

    plan = _run([str(e2erec), "plan", "model=1b"], cwd=work, env=env)
    assert plan.stdout.strip()
    _run([str(e2erec), "run", "--help"], cwd=work, env=env)
    assert sorted(p.name for p in work.iterdir()) == []  # neither command wrote into the working directory
