#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and runs a command inside it.
#   bash scripts/bootstrap.sh e2erec run        # the main job
#   bash scripts/bootstrap.sh pytest            # the test suite
# Idempotent: the environment is rebuilt only when pyproject.toml or this script changes.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${E2EREC_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

stamp_of() { cat "$root/pyproject.toml" "$root/scripts/bootstrap.sh" | sha256sum | cut -c1-16; }
want="$(stamp_of)"

if [ ! -f "$venv/.e2erec-stamp" ] || [ "$(cat "$venv/.e2erec-stamp")" != "$want" ]; then
  echo "[bootstrap] setting up $venv (one-time, a few minutes)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned: on these CPU machines 2.13.0 is a local wheel; anything unpinned pulls a CUDA build.
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q -e "$root[dev]"
  echo "$want" > "$venv/.e2erec-stamp"
fi

# DeepSpeed JIT-builds its CPU communication op once per machine; keep the build with the environment.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$venv/torch_extensions}"
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
cd "$root"
exec "$@"
