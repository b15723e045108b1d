"""`python -m e2erec.sweep POINTS_FILE INDEX`: the `e2erec` arguments (`train ...`) of one sweep point, one per line.

Used by slurm/sweep_array.sbatch (`mapfile -t args < <(python -m e2erec.sweep "$E2EREC_POINTS" "$SLURM_ARRAY_TASK_ID")`),
so the shell never parses JSON or re-splits overrides that contain spaces.
"""

from __future__ import annotations

import sys

from e2erec.errors import E2ERecError
from e2erec.sweep.runner import read_point


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m e2erec.sweep POINTS_FILE INDEX", file=sys.stderr)
        return 2
    try:
        run_config, point = read_point(argv[0], int(argv[1]))
    except E2ERecError as e:
        print(f"e2erec sweep: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(point.train_argv(run_config)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
