"""Training checkpoints: atomic, the last K kept, refused when they belong to a different run shape.

Layout of one checkpoint (a step folder appears only once complete, by a single rename)::

    <run_dir>/checkpoints/step_00000300/
        ds/                    DeepSpeed engine state: module, optimizer (ZeRO shards), LR scheduler
        latest                 the tag ("ds"), DeepSpeed's convention: its tools find `ds/` unaided
        zero_to_fp32.py        DeepSpeed's converter (ZeRO stages 1-3), copied in by DeepSpeed
        trainer_state.json     step, tokens, data-sampler position, bad steps, elapsed time
        rng_rank{r}.pt         torch / CUDA / python / numpy RNG state of rank r (tensors only: weights_only=True)
        identity.json          model parameter shapes, codebook sizes, data fingerprint, world size, ZeRO stage

Full fp32 weights from a ZeRO-1/2/3 checkpoint, with DeepSpeed's own tool:
`python step_00000300/zero_to_fp32.py step_00000300 out/ --safe_serialization`. At ZeRO stage 0 there is nothing to
consolidate (`ds/mp_rank_00_model_states.pt` holds the whole module under "module"; zero_to_fp32 does not apply), and
at every stage the run's `export/model.safetensors` holds the consolidated weights already.

Our own files load with `torch.load(weights_only=True)` / JSON. The `ds/` files are read by DeepSpeed's
`load_checkpoint`, which unpickles them itself (weights_only=False, inside deepspeed 0.19.8); resume only from
checkpoints your own runs wrote. The consolidated export (`export.py`) is safetensors and needs no unpickling.
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

from e2erec.errors import ArtifactMismatchError, DataError
from e2erec.train import distributed as D
from e2erec.utils.io import atomic_write_json

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary `.step_*.tmp` folders are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / "identity.json").exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def resolve_resume(resume: str, root: Path) -> Path | None:
    """`""` -> None; `auto` -> newest checkpoint under `root` (None when there is none); else the given folder."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if path.is_dir() and not (path / "identity.json").exists():  # a run folder or a checkpoints folder
        found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
        if found:
            return found[-1]
    if not (path / "identity.json").exists():
        raise DataError(f"train.resume={resume}: not a checkpoint folder (no identity.json in {path})")
    return path


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
                    keep_last: int) -> Path:
    """Write `root/step_<step>` atomically from all ranks; keep the newest `keep_last`. Collective: call on every rank.

    All ranks write into one shared temporary folder (DeepSpeed writes a shard per rank), then rank 0 adds the
    metadata and renames it into place: a crash at any point leaves either no new checkpoint or a complete one.
    """
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a run killed mid-save
        tmp.mkdir(parents=True)
    D.barrier()
    # `latest` names the tag, as DeepSpeed's own tools expect: zero_to_fp32 works on the step folder unaided.
    engine.save_checkpoint(str(tmp), tag="ds", client_state={}, save_latest=True)
    torch.save(rng_state(), tmp / f"rng_rank{info.rank}.pt")
    D.barrier()
    if info.is_main:
        atomic_write_json(tmp / "trainer_state.json", trainer_state)
        atomic_write_json(tmp / "identity.json", identity)  # written last: its presence marks a complete folder
        if final.exists():  # re-saving the same step (e.g. a stop right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier()
    return final


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
