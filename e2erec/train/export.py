"""Writes the consolidated model export (the format and its reader: `e2erec.model.export`), loadable without DeepSpeed.

    <run_dir>/export/   model.safetensors, config.yaml, meta.json

Under `train.select=best` the engine also writes each new best-validation state to `<run_dir>/best` in this format
(without the Platt scaling, which is fitted once training ends), and ends the run with those weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from e2erec.config import RunConfig, save_resolved
from e2erec.model.export import FORMAT_VERSION
from e2erec.train import distributed as D
from e2erec.utils.io import atomic_dir, atomic_write_json


def export_model(out_dir: Path, state: dict[str, torch.Tensor], meta: dict[str, Any], cfg: RunConfig,
                 is_main: bool) -> Path | None:
    """Write `state` (full, un-sharded weights, identical on every rank) with `meta` (what the run knows: codebook
    sizes, semantic-ID artifact, step, record) as an export. Every rank calls it; the main rank writes, atomically,
    so a reader never sees half an export."""
    if is_main:
        # clone(): tied or aliased tensors become separate entries, which safetensors requires.
        # Floating tensors as fp32; integer buffers (the calibration head's counts) keep their dtype.
        state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone().contiguous()
                 for k, v in state.items()}
        meta = {
            "format": FORMAT_VERSION,
            # The catalogue size the model was built with (its calibration counts, or its item-ID table).
            "num_items": int(state["item_count"].numel()) if "item_count" in state else (
                int(state["item_emb.weight"].shape[0]) if "item_emb.weight" in state else 0),
            **meta,
        }
        with atomic_dir(out_dir) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": str(FORMAT_VERSION)})
            save_resolved(cfg, tmp)
            atomic_write_json(tmp / "meta.json", meta)
    D.barrier()
    return out_dir if is_main else None
