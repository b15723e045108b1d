"""File manifests: the size and SHA-256 of every file of an artifact folder, recorded when it is written.

A fingerprint names an artifact's inputs; the manifest vouches for the bytes on disk. A copy cut short changes a
size (checked on every load, for the cost of a stat per file); a flipped byte changes a digest (checked where the
folder is small, or when asked: SHA-256 reads ~1 GB/s on one core).

    manifest.json  {"version": 1, "files": {"<relative path>": {"size": <bytes>, "sha256": "<hex>"}}}
"""

from __future__ import annotations

import json
from pathlib import Path

from e2erec.errors import IntegrityError
from e2erec.utils.io import atomic_write_json, file_digest

MANIFEST = "manifest.json"
VERSION = 1
SMALL_BYTES = 256 << 20  # folders up to this size are checksummed on every load


def _files(folder: Path, exclude: set[str]) -> list[Path]:
    skip = exclude | {MANIFEST}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in skip
                  and not p.name.startswith("."))


def write_manifest(folder: str | Path, *, exclude: tuple[str, ...] = ()) -> dict:
    """Record every file under `folder` (hidden temporaries and `exclude`d relative paths aside); atomic."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)}
             for p in _files(folder, set(exclude))}
    manifest = {"version": VERSION, "files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def _read(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("version") != VERSION or not isinstance(files, dict):
            raise ValueError(f"version {manifest.get('version')!r}, expected {VERSION}")
        return manifest
    except FileNotFoundError:
        raise IntegrityError(f"{path}: missing (the folder has no record of its files)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path}: unreadable manifest ({e})") from None


def verify_manifest(folder: str | Path, *, checksums: bool | None = None, what: str = "artifact",
                    required: bool = True) -> int:
    """Raise IntegrityError naming every file that is missing, of the wrong size or (with `checksums`) of the wrong
    content; returns the bytes the manifest records. `checksums=None`: digests are checked when the folder holds at
    most SMALL_BYTES. `required=False`: a folder written before manifests existed passes (0 bytes vouched for)."""
    folder = Path(folder)
    if not required and not (folder / MANIFEST).is_file():
        return 0
    files = _read(folder)["files"]
    problems = []
    for rel, want in files.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        size = path.stat().st_size
        if size != want["size"]:
            problems.append(f"{rel} is {size:,} bytes, the manifest says {want['size']:,} (cut short or overwritten)")
    total = sum(int(f["size"]) for f in files.values())
    if checksums is None:
        checksums = total <= SMALL_BYTES
    if checksums and not problems:
        problems += [f"{rel} has SHA-256 {digest[:12]}..., the manifest says {want['sha256'][:12]}... (corrupted)"
                     for rel, want in files.items() if (digest := file_digest(folder / rel)) != want["sha256"]]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise IntegrityError(f"{what} {folder} failed verification: {shown}")
    return total
