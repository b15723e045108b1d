"""Observability on rank 0: one JSON line per log step (`metrics.jsonl`), TensorBoard scalars, a tqdm bar with ETA.

Also the measurements behind the logged numbers: peak memory and model FLOPs utilisation (MFU, PaLM appendix B:
achieved model FLOP/s divided by the hardware peak; model FLOPs = 3 x forward FLOPs per token x tokens, i.e. the
6·N·D rule plus attention when the model's `flops_per_token` includes it).
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets; `train.peak_tflops` overrides.
GPU_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


def peak_tflops(device: torch.device, configured: float) -> float | None:
    """Per-device peak for MFU; None on CPU (no meaningful peak to divide by) or an unknown GPU."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_PEAK_BF16_TFLOPS.items() if k in name), None)


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory (GiB) on GPU; peak resident set size of this process (GiB) on CPU."""
    if device.type == "cuda":
        return {
            "mem/peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "mem/peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    return {"mem/peak_rss_gib": kib / 2**20}


class RunLogger:
    """Writes nothing on ranks other than 0, so callers need no `if rank == 0` around logging."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, total: int, unit: str = "step",
                 initial: int = 0):
        self.enabled = enabled
        self._tb = None
        self._bar = None
        self._jsonl = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        # Append: a resumed run continues the same file (steps after the checkpoint are logged again by the resume).
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"))
        from tqdm import tqdm

        self._bar = tqdm(total=total or None, initial=initial, unit=unit, dynamic_ncols=True, file=sys.stderr,
                         mininterval=1.0)

    def log(self, step: int, scalars: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, **{k: _jsonable(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)  # one namespace per kind: tags never collide

    def event(self, step: int, message: str, **fields: Any) -> None:
        """A non-scalar happening (skipped step, checkpoint, preemption): a JSON line and a line above the bar."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"kind": "event", "step": step, "event": message, **fields}, default=str) + "\n")
        self.write(f"[e2erec train] step {step}: {message}")

    def write(self, text: str) -> None:
        if self.enabled:
            (self._bar.write if self._bar is not None else print)(text, file=sys.stderr)

    def progress(self, advance: int, postfix: dict[str, Any]) -> None:
        if self.enabled and self._bar is not None:
            self._bar.update(advance)
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                  refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._jsonl.close()


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; "nan"/"inf" strings keep the line parseable everywhere
    return v
