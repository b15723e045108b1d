"""The one place a DeepSpeed config is built: ZeRO stage, precision, gradient accumulation, clipping.

The training engine, the planner (`e2erec plan`) and the Slurm scripts all call `deepspeed_config`, so the memory the
planner predicts and the batch the cluster runs are the ones the engine uses.

Batching: a micro-batch is one packed jagged batch of at most `train.batch_tokens` tokens per rank (not a number of
sequences), so DeepSpeed sees `train_micro_batch_size_per_gpu = 1` and
`train_batch_size = grad_accum * world_size` micro-batches per optimizer step;
tokens per optimizer step <= batch_tokens * grad_accum * world_size.
"""

from __future__ import annotations

from typing import Any

from e2erec.train.config import TrainConfig


def resolve_precision(precision: str, on_gpu: bool) -> str:
    """`auto` -> bf16 on GPU, fp32 on CPU (bf16 works on CPU but is opt-in: CPU bf16 matmuls are not always faster)."""
    if precision == "auto":
        return "bf16" if on_gpu else "fp32"
    return precision


def deepspeed_config(train: TrainConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config for a run. The optimizer and LR schedule are torch objects passed to
    `deepspeed.initialize` (no `optimizer`/`scheduler` section): that avoids the ~95 s JIT build of fused_adam on CPU
    (shared/notes/cpu-toolchain.md) and keeps the schedule a plain function of the step."""
    precision = resolve_precision(train.precision, on_gpu)
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage >= 2:
        # Overlapping reduction with backward needs CUDA streams; on gloo it only adds copies.
        zero.update(overlap_comm=on_gpu, contiguous_gradients=True)
    if train.zero_stage == 3:
        # Parameters smaller than this stay replicated (DeepSpeed's default 1e5 would replicate a whole tiny model).
        zero["stage3_param_persistence_threshold"] = train.zero3_persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # The torch AdamW we pass is not on DeepSpeed's ZeRO allow-list, but it is what ZeRO wraps anyway.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # e2erec does its own logging
        "wall_clock_breakdown": False,
    }
