"""e2erec_kernels: jagged-sequence attention for generative recommenders.

One public function, ``jagged_attention``, with three backends taking the same arguments:

- ``"triton"``  — fused FlashAttention-style Triton kernels, forward and backward (``triton_attention.py``).
  Used on CUDA tensors, and on CPU when ``TRITON_INTERPRET=1`` (tests).
- ``"torch"``   — the CPU fast path: length-bucketed dense math (``torch_attention.py``; the measurement that
  picked it is in that file).
- ``"reference"`` — per-sequence fp32 loops (``reference.py``), the definition every backend is tested against.

Mask, position/time buckets and target semantics are defined once, in ``reference.py`` (module docstring).
"""

from __future__ import annotations

import os

import torch

from .reference import (
    check_inputs,
    effective_positions,
    jagged_attention_reference,
    jagged_mask,
    position_bucket,
    sequence_mask,
    time_bucket,
)

__all__ = [
    "effective_positions",
    "jagged_attention",
    "jagged_attention_reference",
    "jagged_mask",
    "position_bucket",
    "select_backend",
    "sequence_mask",
    "time_bucket",
]

BACKENDS = ("auto", "reference", "triton", "torch")


def select_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """``auto``: triton on CUDA, triton if TRITON_INTERPRET=1 (read now, at call time), else the torch CPU path."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return "triton"
    return "torch"


def jagged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_len: int,
    *,
    kind: str = "softmax",
    num_targets: torch.Tensor | None = None,
    timestamps: torch.Tensor | None = None,
    pos_bias: torch.Tensor | None = None,
    time_bias: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
    hstu_norm: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal attention within each sequence of a jagged batch; never across sequences. Returns q's shape and dtype.

    q, k, v: [total_tokens, heads, head_dim]; offsets: int64 [batch+1]; max_len >= every sequence length.
    kind: "softmax" (online-softmax attention) or "hstu" (``silu(s) / hstu_norm`` weights, no softmax).
    num_targets: int64 [batch]; the last num_targets[b] tokens of sequence b see the history and themselves only.
    timestamps: int64 [total_tokens] seconds, needed by time_bias. pos_bias / time_bias: learned [buckets, heads].
    window: a query sees keys fewer than ``window`` effective positions back. scale: default 1/sqrt(head_dim).
    hstu_norm: the n of HSTU, default max_len (pass a fixed value so outputs don't depend on the batch).
    Exact semantics, with a worked example: ``e2erec_kernels.reference`` docstring.
    """
    kwargs = {
        "kind": kind, "num_targets": num_targets, "timestamps": timestamps, "pos_bias": pos_bias,
        "time_bias": time_bias, "window": window, "scale": scale, "hstu_norm": hstu_norm,
    }
    chosen = select_backend(q, backend)
    if chosen == "reference":
        return jagged_attention_reference(q, k, v, offsets, max_len, **kwargs)
    check_inputs(q, k, v, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window)
    if chosen == "torch":
        from .torch_attention import jagged_attention_torch

        return jagged_attention_torch(q, k, v, offsets, max_len, **kwargs)
    from .triton_attention import jagged_attention_triton

    return jagged_attention_triton(q, k, v, offsets, max_len, **kwargs)
