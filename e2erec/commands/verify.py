"""`e2erec verify PATH [PATH ...]`: check folders against the manifests written with them, every byte.

    e2erec verify runs/default/checkpoints/step_00000300     # one checkpoint
    e2erec verify runs/default/checkpoints/*  runs/default/export
    e2erec verify ~/.cache/e2erec/datasets/ml-100k-*         # a prepared dataset cache

Checkpoints, exports, semantic-ID artifacts and prepared datasets each record the size and SHA-256 of their files
(`manifest.json`, e2erec/utils/manifest.py). Loading checks the sizes always and the digests of small folders; this
checks every digest, at the speed of a disk read (~1 GB/s). Prints one line per folder; exits 1 if any fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Check checkpoints, exports, semantic IDs or dataset caches against their manifests (sizes and SHA-256)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, help="folders that hold a manifest.json")


def run(args: argparse.Namespace) -> int:
    from e2erec.errors import IntegrityError
    from e2erec.utils.manifest import verify_manifest

    failed = 0
    for path in args.paths:
        try:
            size = verify_manifest(path, checksums=True, what="folder")
            print(f"ok      {path} ({size / 2**20:,.1f} MB)")
        except IntegrityError as e:
            failed += 1
            print(f"FAILED  {e}")
    return 1 if failed else 0
