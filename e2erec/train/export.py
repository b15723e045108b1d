"""Consolidated model export for evaluation and inference, loadable without DeepSpeed.

    <run_dir>/export/
        model.safetensors   full (un-sharded) weights, fp32
        config.yaml         the resolved run config
        meta.json           codebook sizes, catalogue size, the semantic-ID artifact reference (path + digest), the step whose
                            weights these are, the steps trained, tokens

    model, cfg = load_exported("runs/default/export")

Under `train.select=best` the engine also writes each new best-validation state to `<run_dir>/best` in this format
(without the Platt scaling, which is fitted once training ends), and ends the run with those weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from e2erec.errors import ArtifactMismatchError
from e2erec.train import distributed as D
from e2erec.utils.io import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    from e2erec.config import RunConfig
    from e2erec.train.engine import Trainer

FORMAT_VERSION = 1


def export_model(trainer: Trainer, out_dir: Path, state: dict[str, torch.Tensor], step: int) -> Path | None:
    """Write `state` (full, un-sharded weights, identical on every rank) as the export of `step`. Every rank calls
    it; the main rank writes, atomically, so a reader never sees half an export."""
    from safetensors.torch import save_file

    from e2erec.config import save_resolved

    if trainer.info.is_main:
        # clone(): tied or aliased tensors become separate entries, which safetensors requires.
        # Floating tensors as fp32; integer buffers (the calibration head's counts) keep their dtype.
        state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone().contiguous()
                 for k, v in state.items()}
        meta = {
            "format": FORMAT_VERSION,
            "codebook_sizes": list(trainer.task.codebook_sizes),
            # The catalogue size the model was built with (its calibration counts, or its item-ID table).
            "num_items": int(state["item_count"].numel()) if "item_count" in state else (
                int(state["item_emb.weight"].shape[0]) if "item_emb.weight" in state else 0),
            "semantic_ids": trainer.task.artifact_ref(),
            "data_fingerprint": trainer.task.data_fingerprint,
            "step": step,
            "trained_steps": trainer.step,
            "tokens": trainer.tokens,
            "params": trainer.n_params,
            "fit_log": trainer.training_record(),  # the evaluations so far under the early-stopping rule
        }
        with atomic_dir(out_dir) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": str(FORMAT_VERSION)})
            save_resolved(trainer.cfg, tmp)
            atomic_write_json(tmp / "meta.json", meta)
    D.barrier()
    return out_dir if trainer.info.is_main else None


def export_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise ArtifactMismatchError(f"{path}: not an e2erec export (no meta.json)") from None


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """(model in eval mode, run config) from an export folder; reads safetensors only (no pickle, no DeepSpeed)."""
    from e2erec.config import RunConfig, from_dict
    from e2erec.model import GenerativeRecommender

    path = Path(path)
    meta = export_meta(path)
    if meta.get("format") != FORMAT_VERSION:
        raise ArtifactMismatchError(f"{path}/meta.json: export format {meta.get('format')}, expected {FORMAT_VERSION}")
    cfg = from_dict(RunConfig, yaml.safe_load((path / "config.yaml").read_text()), source=str(path / "config.yaml"))
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
