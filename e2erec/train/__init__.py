"""Training: the DeepSpeed engine, checkpoints, export and observability.

    from e2erec.train import train, load_exported, deepspeed_config, EXIT_PREEMPTED
    train(cfg)                                   # the whole job under any launcher; returns the exit code
    model, cfg = load_exported("runs/x/export")  # no DeepSpeed needed
    deepspeed_config(cfg.train, world_size, on_gpu)  # the one DeepSpeed config builder (planner, Slurm scripts)

Run folder: config.yaml, metrics.jsonl, tb/, checkpoints/step_*/, export/, final.json (see engine.py).
Imported lazily so that `e2erec.config` (which reads `train/config.py`) does not pull in torch or DeepSpeed.
"""

from __future__ import annotations

_EXPORTS = {
    "train": "e2erec.train.engine",
    "Trainer": "e2erec.train.engine",
    "EXIT_PREEMPTED": "e2erec.train.engine",
    "TrainingAborted": "e2erec.train.engine",
    "load_exported": "e2erec.model.export",  # the export format's reader lives with the model (no training code)
    "export_meta": "e2erec.model.export",
    "deepspeed_config": "e2erec.train.ds_config",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'e2erec.train' has no attribute {name!r}")


__all__ = list(_EXPORTS)
