"""The export format, read side: an `e2erec train` export loads here without DeepSpeed (or anything of training).

    <export>/
        model.safetensors   full (un-sharded) weights, fp32 (integer buffers keep their dtype)
        config.json         the model config, Hugging Face style
        config.yaml         the resolved run config
        meta.json           format, codebook sizes, catalogue size, the semantic-ID artifact reference (folder +
                            digest), the step whose weights these are, the steps trained, tokens, the training record
        semantic_ids/       the semantic-ID artifact (`SemanticIDs.load`)
        items.parquet       item index -> raw id, title, categories, year
        README.md           the model card

    model, cfg = load_exported("runs/default/export")
    sids_dir = semantic_ids_dir("runs/default/export")

The writer is `e2erec.train.export.export_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from e2erec.config import RunConfig, from_dict, upgrade_saved
from e2erec.errors import ArtifactMismatchError
from e2erec.model.model import GenerativeRecommender
from e2erec.utils.manifest import verify_manifest

FORMAT_VERSION = 1
SEMANTIC_IDS_DIR = "semantic_ids"
ITEMS_FILE = "items.parquet"


def export_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise ArtifactMismatchError(f"{path}: no such export folder" if not path.exists()
                                    else f"{path}: not a folder (an export is the folder `e2erec train` writes)")
    try:
        return json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise ArtifactMismatchError(f"{path}: not an e2erec export (no meta.json)") from None
    except json.JSONDecodeError as e:
        raise ArtifactMismatchError(f"{path}/meta.json: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") \
            from None


def semantic_ids_dir(path: str | Path) -> Path:
    """The semantic-ID artifact of an export: its own `semantic_ids/` (exports written before they were
    self-contained name an absolute path instead)."""
    path = Path(path)
    ref = Path(export_meta(path)["semantic_ids"]["path"])
    return ref if ref.is_absolute() else path / ref


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """(model in eval mode, run config) from an export folder; reads safetensors only (no pickle, no DeepSpeed)."""
    path = Path(path)
    meta = export_meta(path)
    verify_manifest(path, what="export", required=False)  # sizes; digests up to SMALL_BYTES (`e2erec verify`: all)
    if meta.get("format") != FORMAT_VERSION:
        raise ArtifactMismatchError(f"{path}/meta.json: export format {meta.get('format')}, expected {FORMAT_VERSION}")
    saved = upgrade_saved(yaml.safe_load((path / "config.yaml").read_text()))
    cfg = from_dict(RunConfig, saved, source=str(path / "config.yaml"))
    # Exports from before the calibration head's item statistics have no num_items: built without them.
    model = GenerativeRecommender(cfg.model, meta["codebook_sizes"], num_items=meta.get("num_items", 0)).to(device)
    return load_weights(path, model).eval(), cfg


def load_weights(path: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load an export's weights into `model`, which must have the export's shape; returns `model`."""
    from safetensors.torch import load_file

    path = Path(path)
    state = load_file(str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Exports written before post-hoc Platt scaling existed lack its two buffers: they keep the identity.
    missing = [k for k in missing if k not in ("calib_scale", "calib_shift")]
    if missing or unexpected:
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        raise ArtifactMismatchError(
            f"{path}/model.safetensors does not fit model config {name!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model
