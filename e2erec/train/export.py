"""Consolidated model export for evaluation and inference, loadable without DeepSpeed.

    <run_dir>/export/
        model.safetensors   full (un-sharded) weights, fp32
        config.yaml         the resolved run config
        meta.json           codebook sizes, the semantic-ID artifact reference (path + digest), step, tokens

    model, cfg = load_exported("runs/default/export")
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


def export_model(trainer: Trainer, out_dir: Path) -> Path | None:
    """Write the export from a live engine. Collective under ZeRO-3 (parameters are gathered): call on every rank."""
    from safetensors.torch import save_file

    from e2erec.config import save_resolved

    # clone(): tied or aliased tensors become separate entries, which safetensors requires.
    state = {k: v.detach().to("cpu", torch.float32).clone().contiguous()
             for k, v in trainer.full_state_dict().items()}
    if trainer.info.is_main:
        meta = {
            "format": FORMAT_VERSION,
            "codebook_sizes": list(trainer.task.codebook_sizes),
            "semantic_ids": trainer.task.artifact_ref(),
            "data_fingerprint": trainer.task.data_fingerprint,
            "step": trainer.step,
            "tokens": trainer.tokens,
            "params": trainer.n_params,
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
    from safetensors.torch import load_file

    from e2erec.config import RunConfig, from_dict
    from e2erec.model import GenerativeRecommender

    path = Path(path)
    meta = export_meta(path)
    if meta.get("format") != FORMAT_VERSION:
        raise ArtifactMismatchError(f"{path}/meta.json: export format {meta.get('format')}, expected {FORMAT_VERSION}")
    cfg = from_dict(RunConfig, yaml.safe_load((path / "config.yaml").read_text()), source=str(path / "config.yaml"))
    model = GenerativeRecommender(cfg.model, meta["codebook_sizes"])
    state = load_file(str(path / "model.safetensors"), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Exports written before post-hoc Platt scaling existed lack its two buffers: they keep the identity.
    missing = [k for k in missing if k not in ("calib_scale", "calib_shift")]
    if missing or unexpected:
        raise ArtifactMismatchError(
            f"{path}/model.safetensors does not fit model config {cfg.model.name!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval(), cfg
