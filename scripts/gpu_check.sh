#!/usr/bin/env bash
# The one prepared GPU check (issue 21): kernel tests on CUDA (fp32, bf16), the attention and training benchmarks,
# generation throughput, within a time budget (default 480 s), into bench_out/gpu_check.json and a table.
#   bash scripts/gpu_check.sh                   # on a machine with one H100 / H200
#   bash scripts/gpu_check.sh --dry-run         # the same steps on the CPU at tiny sizes (CI runs this)
#   bash scripts/gpu_check.sh --budget 300 --steps kernels attention
# Sets up .venv like every other command (scripts/bootstrap.sh); the steps are in scripts/gpu_check.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec bash "$root/scripts/bootstrap.sh" python "$root/scripts/gpu_check.py" "$@"
