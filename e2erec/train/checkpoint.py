"""Training checkpoints: atomic, the last K kept, refused when they belong to a different run shape.

Layout of one checkpoint (a step folder appears only once complete, by a single rename)::

    <run_dir>/checkpoints/step_00000300/
        ds/                    DeepSpeed engine state: module, optimizer (ZeRO shards), LR scheduler
        latest                 the tag ("ds"), DeepSpeed's convention: its tools find `ds/` unaided
        zero_to_fp32.py        DeepSpeed's converter (ZeRO stages 1-3), copied in by DeepSpeed
        trainer_state.json     step, tokens, data-sampler position, bad steps, elapsed time
        rng_rank{r}.pt         torch / CUDA / python / numpy RNG state of rank r (tensors only: weights_only=True)
        manifest.json          size and SHA-256 of every file above (e2erec/utils/manifest.py)
        identity.json          model parameter shapes, codebook sizes, data fingerprint, world size, ZeRO stage;
                               written last, so its presence marks a complete folder

Full fp32 weights from a ZeRO-1/2/3 checkpoint, with DeepSpeed's own tool:
`python step_00000300/zero_to_fp32.py step_00000300 out/ --safe_serialization`. At ZeRO stage 0 there is nothing to
consolidate (`ds/mp_rank_00_model_states.pt` holds the whole module under "module"; zero_to_fp32 does not apply), and
at every stage the run's `export/model.safetensors` holds the consolidated weights already.

Our own files load with `torch.load(weights_only=True)` / JSON. The `ds/` files are read by DeepSpeed's
`load_checkpoint`, which unpickles them itself (weights_only=False, inside deepspeed 0.19.8); resume only from
checkpoints your own runs wrote. The consolidated export (`export.py`) is safetensors and needs no unpickling.

Faults: a failed write (a full disk, a quota) removes its temporary folder and raises CheckpointWriteError, which
names the write, the space it needs and has, and the last good checkpoint. Resume verifies a checkpoint against its
manifest first (sizes always; digests when it is small or `train.verify_checkpoints`); `train.resume=auto` skips
one that fails, with a warning, and takes the next newest, the same one on every rank.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2erec.errors import ArtifactMismatchError, CheckpointWriteError, DataError
from e2erec.train import distributed as D
from e2erec.utils.io import atomic_write_json
from e2erec.utils.manifest import verify_manifest, write_manifest

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary `.step_*.tmp` folders are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / "identity.json").exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def resume_candidates(resume: str, root: Path) -> list[Path]:
    """Checkpoints to try, in order. `""` -> none; `auto` -> every checkpoint under `root`, newest first (none on a
    first start); else the given checkpoint, or the newest of a run or checkpoints folder."""
    if not resume:
        return []
    if resume == "auto":
        return list_checkpoints(root)[::-1]
    path = Path(resume)
    if path.is_dir() and not (path / "identity.json").exists():  # a run folder or a checkpoints folder
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if found:
            return [found[-1]]
    if not (path / "identity.json").exists():
        raise DataError(f"train.resume={resume}: not a checkpoint folder (no identity.json in {path})")
    return [path]


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete `.step_*.tmp` folders a killed run left behind (they hold disk space and are never complete)."""
    stale = sorted(root.glob(".step_*.tmp")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def verify_checkpoint(path: Path, *, checksums: bool | None = None) -> None:
    """Raise an E2ERecError naming what is wrong with checkpoint `path`: files missing, cut short or (with
    `checksums`; None = when it is small) corrupted against its manifest, or unreadable metadata. A checkpoint
    written before manifests existed is checked for its metadata only."""
    for name in ("identity.json", "trainer_state.json"):
        try:
            json.loads((path / name).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"checkpoint {path}: {name} is unreadable ({e})") from None
    verify_manifest(path, checksums=checksums, what="checkpoint", required=False)


# ----------------------------------------------------------------------------------------------------------------
# identity: what must match for a checkpoint to be resumable


def run_identity(model: torch.nn.Module, codebook_sizes: list[int], data_fingerprint: str, world_size: int,
                 zero_stage: int) -> dict[str, Any]:
    """Parameter shapes (from the module, so any shape-changing config is caught), codebook sizes, data fingerprint."""
    shapes = {}
    for name, p in model.named_parameters():
        # ZeRO-3 replaces partitioned parameters by empty tensors; `ds_shape` keeps the real shape.
        shapes[name] = list(getattr(p, "ds_shape", p.shape))
    return {
        "param_shapes": shapes,
        "codebook_sizes": [int(c) for c in codebook_sizes],
        "data_fingerprint": data_fingerprint,
        "world_size": world_size,
        "zero_stage": zero_stage,
    }


def check_identity(saved: dict, current: dict, where: Path) -> None:
    """Raise ArtifactMismatchError naming every mismatch between a checkpoint and the current run."""
    problems = []
    if saved.get("codebook_sizes") != current["codebook_sizes"]:
        problems.append(f"codebook sizes {saved.get('codebook_sizes')} vs {current['codebook_sizes']} now")
    if saved.get("data_fingerprint") != current["data_fingerprint"]:
        problems.append(f"data fingerprint {saved.get('data_fingerprint')} vs {current['data_fingerprint']} now")
    a, b = saved.get("param_shapes", {}), current["param_shapes"]
    for name in sorted(set(a) | set(b)):
        if name not in b:
            problems.append(f"parameter {name} {a[name]} is not in the current model")
        elif name not in a:
            problems.append(f"parameter {name} {b[name]} of the current model is not in the checkpoint")
        elif a[name] != b[name]:
            problems.append(f"parameter {name} has shape {a[name]} in the checkpoint vs {b[name]} now")
    for key, what in (("world_size", "ranks"), ("zero_stage", "ZeRO stage")):
        if saved.get(key) != current[key]:
            problems.append(f"{what} {saved.get(key)} vs {current[key]} now (resume with the same {what})")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ArtifactMismatchError(f"checkpoint {where} was written by a different run configuration: {shown}")


# ----------------------------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state((name, state["numpy_key"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(engine, root: Path, step: int, trainer_state: dict, identity: dict, info: D.DistInfo,
                    keep_last: int, min_free_gb: float = 0.0) -> Path:
    """Write `root/step_<step>` atomically from all ranks; keep the newest `keep_last`. Collective: call on every rank.

    All ranks write into one shared temporary folder (DeepSpeed writes a shard per rank), then rank 0 adds the
    metadata and the manifest and renames it into place: a crash at any point leaves either no new checkpoint or a
    complete one. A write that fails on any rank removes the folder and raises CheckpointWriteError on every rank
    (a failure inside DeepSpeed's own collective save can only be seen by the others at the collective timeout).
    `min_free_gb` > 0: first prune the checkpoints this save would prune anyway (never the newest), then refuse to
    start the write with less free space than that.
    """
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp"

    def agree_or_raise(error: str | None) -> None:
        if D.any_rank(error is not None, info.device):
            if info.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise _write_failed(final, root, error) from None

    # A failure is kept as its description, not as the exception: the exception's frames hold the half-written
    # file open, and on a full disk its space is only returned once that file is closed.
    error = None
    if info.is_main:
        try:
            shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a run killed mid-save
            root.mkdir(parents=True, exist_ok=True)
            _ensure_space(root, keep_last, min_free_gb)
            tmp.mkdir()
        except OSError as e:
            error = _describe(e, root)
    agree_or_raise(error)
    try:
        # `latest` names the tag, as DeepSpeed's own tools expect: zero_to_fp32 works on the step folder unaided.
        engine.save_checkpoint(str(tmp), tag="ds", client_state={}, save_latest=True)
        torch.save(rng_state(), tmp / f"rng_rank{info.rank}.pt")
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        error = _describe(e, root)
    agree_or_raise(error)
    if info.is_main:
        try:
            atomic_write_json(tmp / "trainer_state.json", trainer_state)
            write_manifest(tmp, exclude=("identity.json",))
            atomic_write_json(tmp / "identity.json", identity)  # written last: its presence marks a complete folder
        except OSError as e:
            error = _describe(e, root)
    agree_or_raise(error)
    if info.is_main:
        if final.exists():  # re-saving the same step (e.g. a stop right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier()
    return final


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _ensure_space(root: Path, keep_last: int, min_free_gb: float) -> None:
    if min_free_gb <= 0 or shutil.disk_usage(root).free >= min_free_gb * 2**30:
        return
    for old in list_checkpoints(root)[:-max(keep_last - 1, 1)]:  # pruned after this save anyway; the newest stays
        shutil.rmtree(old, ignore_errors=True)
    free = shutil.disk_usage(root).free
    if free < min_free_gb * 2**30:
        raise CheckpointWriteError(
            f"{free / 2**30:.2f} GB free on the filesystem of {root}, below train.min_free_gb={min_free_gb:g}, "
            f"after pruning to the checkpoints that must stay"
        )


def _free_bytes(root: Path) -> int:
    return shutil.disk_usage(root if root.exists() else root.parent).free


def _describe(error: BaseException, root: Path) -> str:
    """What failed, with the free space at that moment: torch.save reports a full disk as a RuntimeError about
    stream positions, without an errno."""
    if isinstance(error, CheckpointWriteError):
        return str(error)
    where = f" writing {error.filename}" if isinstance(error, OSError) and error.filename else ""
    free = _free_bytes(root)
    return (f"{type(error).__name__}{where}: {getattr(error, 'strerror', None) or error} "
            f"({free / 2**20:,.1f} MB were free when it failed)")


def _write_failed(final: Path, root: Path, error: str | None) -> CheckpointWriteError:
    """The one-paragraph report of a failed checkpoint write (for every rank: `error` is None where another failed)."""
    done = list_checkpoints(root)
    last = done[-1] if done else None
    free = _free_bytes(root)
    what = error or "another rank's part of the write failed (its own message says why)"
    need = f"about {_folder_bytes(last) / 2**20:,.1f} MB (the size of the last one)" if last else "an unknown size"
    return CheckpointWriteError(
        f"writing checkpoint {final.name} into {root} failed: {what}. A checkpoint needs {need}; "
        f"{free / 2**20:,.1f} MB are free there. The partial folder was removed. Last good checkpoint: "
        f"{last or 'none'}. Free space (or lower train.keep_last) and rerun with train.resume=auto."
    )


def load_checkpoint(engine, path: Path, identity: dict, info: D.DistInfo) -> dict:
    """Restore engine (module, optimizer, scheduler) and this rank's RNG; return the trainer state."""
    saved = json.loads((path / "identity.json").read_text())
    check_identity(saved, identity, path)
    load_path, _ = engine.load_checkpoint(str(path), tag="ds", load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if load_path is None:
        raise DataError(f"{path}/ds: DeepSpeed found no checkpoint to load")
    set_rng_state(torch.load(path / f"rng_rank{info.rank}.pt", weights_only=True))
    return json.loads((path / "trainer_state.json").read_text())
