"""The `train` section: optimisation, distribution, checkpoints and logging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 100
    max_steps: int = 1000
    max_tokens: int = 0  # stop after this many training tokens (0 = use max_steps)
    time_budget_s: float = 0.0  # stop (and checkpoint) after this much wall time (0 = none)
    batch_tokens: int = 8192  # token budget of one micro-batch (sequences are packed, never padded)
    grad_accum: int = 1
    grad_clip: float = 1.0
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gen_loss_weight: float = 1.0
    calib_loss_weight: float = 1.0
    num_candidates: int = 4  # candidate targets appended per sequence for the calibration head
    log_every: int = 10
    eval_every: int = 200
    ckpt_every: int = 500
    keep_last: int = 3
    max_bad_steps: int = 10  # NaN/inf losses tolerated (each skipped) before aborting
    num_workers: int = 0
    seed: int = 0
