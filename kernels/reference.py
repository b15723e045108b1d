"""Pure-PyTorch reference for jagged attention, and the one definition of its masks and bias buckets.

Everything else (the Triton kernels, the CPU fast path) must agree with this file; tests compare against it.
Clarity over speed: one Python loop over sequences, dense fp32 math per sequence.

Layout. A batch of B sequences is stored jagged: ``x[total_tokens, heads, head_dim]`` plus
``offsets[B+1]`` (int64), sequence ``b`` being ``x[offsets[b]:offsets[b+1]]``. Example: lengths (3, 0, 2)
give ``offsets = [0, 3, 3, 5]``; token 3 is position 0 of sequence 2.

Mask. Inside a sequence of length ``L`` with ``t = num_targets[b]`` candidate targets (clamped to [0, L]) the
first ``h = L - t`` tokens are the history and the last ``t`` are targets. Every token gets an *effective
position*: its index for history tokens, ``h`` (the slot just after the history) for every target. Query ``i``
may attend key ``j`` iff

    j <= i                                   (causal, never across sequences)
    and not (i >= h and j >= h and i != j)   (targets see the history and themselves, not each other)
    and pos(i) - pos(j) < window             (local window, counted in effective positions; None = no window)

so each query always sees itself and softmax rows are never empty. Worked example, L = 5, t = 2, window = 3:
pos = [0, 1, 2, 3, 3]; token 1 sees {0, 1}; token 2 sees {0, 1, 2}; token 3 (target) sees {1, 2, 3}
(distances 2, 1, 0; token 0 is at distance 3, outside the window); token 4 (target) sees {1, 2, 4}.
A target's output therefore does not depend on which other candidates share its pass.

Bias. The logit of a pair is ``s = scale * q_i·k_j + pos_bias[pb, head] + time_bias[tb, head]`` with
``pb = position_bucket(pos(i) - pos(j), P)`` and ``tb = time_bucket(ts_i - ts_j, T)``, ``P``/``T`` being the
tables' first dimension. Buckets use exact integer math (``floor_log2``) so every backend agrees bit for bit.

Kinds. ``softmax``: ``out_i = sum_j softmax_j(s_ij) v_j`` over allowed ``j``.
``hstu`` (HSTU, Zhai et al. 2024, "Actions Speak Louder than Words", eq. 2): ``out_i = sum_j silu(s_ij) / n * v_j``
over allowed ``j``, ``n = hstu_norm`` (default ``max_len``; a model should pass a fixed value).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("softmax", "hstu")


# ---------------------------------------------------------------------------------------------- buckets


def floor_log2(x: torch.Tensor) -> torch.Tensor:
    """floor(log2(x)) for integer x >= 1, exact (frexp of a float64 is exact below 2**53)."""
    return torch.frexp(x.to(torch.float64))[1].to(torch.int64) - 1


def position_bucket(d: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket of a relative distance ``d >= 0`` (in effective positions) for a table of ``num_buckets`` rows.

    Linear for ``d < h`` with ``h = max(num_buckets // 2, 1)``, then one bucket per octave:
    ``h + floor_log2(d // h)``, capped at ``num_buckets - 1``. With 64 buckets: d = 0..31 -> 0..31,
    32..63 -> 32, 64..127 -> 33, ..., so 64 rows reach distances beyond 2**31.
    """
    h = max(num_buckets // 2, 1)
    d = d.clamp(min=0).to(torch.int64)
    far = h + floor_log2(torch.clamp(d // h, min=1))
    return torch.where(d < h, d, far).clamp(max=num_buckets - 1)


def time_bucket(dt: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket of a timestamp gap ``dt = ts_query - ts_key`` (seconds): ``min(floor_log2(1 + max(dt, 0)), T - 1)``.

    Bucket 0 is "same second", 1 is 1 s, 2 is 2-3 s, ..., 16 is ~18 h-36 h, 24 is ~6 months; 32 rows cover any gap.
    """
    return floor_log2(1 + dt.clamp(min=0).to(torch.int64)).clamp(max=num_buckets - 1)


# ---------------------------------------------------------------------------------------------- masks


def effective_positions(length: int, num_targets: int = 0, device=None) -> torch.Tensor:
    """Index for history tokens, ``length - num_targets`` for every target. int64 [length]."""
    history = length - min(max(num_targets, 0), length)
    return torch.arange(length, device=device).clamp(max=history)


def sequence_mask(length: int, num_targets: int = 0, window: int | None = None, device=None) -> torch.Tensor:
    """bool [length, length]: ``mask[i, j]`` is True iff query ``i`` may attend key ``j`` (see module docstring)."""
    history = length - min(max(num_targets, 0), length)
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    allowed = (j <= i) & ~((i >= history) & (j >= history) & (i != j))
    if window is not None:
        pos = effective_positions(length, num_targets, device)
        allowed &= (pos[:, None] - pos[None, :]) < window
    return allowed


def jagged_mask(offsets: torch.Tensor, num_targets=None, window: int | None = None) -> torch.Tensor:
    """bool [total_tokens, total_tokens] over the whole jagged batch: block-diagonal ``sequence_mask``s.

    For tests only (it is N^2): e.g. check that no True entry lies above the diagonal or across sequences.
    """
    offsets = offsets.cpu()
    total = int(offsets[-1])
    mask = torch.zeros(total, total, dtype=torch.bool)
    for b in range(len(offsets) - 1):
        s, e = int(offsets[b]), int(offsets[b + 1])
        t = 0 if num_targets is None else int(num_targets[b])
        mask[s:e, s:e] = sequence_mask(e - s, t, window)
    return mask


def pair_bias(
    pos: torch.Tensor, ts: torch.Tensor | None, pos_bias: torch.Tensor | None, time_bias: torch.Tensor | None
) -> torch.Tensor | None:
    """Additive bias (heads, Lq, Lk) for one sequence (or (..., heads, Lq, Lk) for a leading batch of them).

    ``pos`` / ``ts`` are effective positions / timestamps shaped (..., L); masked pairs get finite garbage.
    """
    bias = None
    if pos_bias is not None:
        b = position_bucket(pos[..., :, None] - pos[..., None, :], pos_bias.shape[0])
        bias = pos_bias[b].movedim(-1, -3)  # (..., L, L, heads) -> (..., heads, L, L)
    if time_bias is not None:
        b = time_bucket(ts[..., :, None] - ts[..., None, :], time_bias.shape[0])
        tb = time_bias[b].movedim(-1, -3)  # (..., heads, L, L)
        bias = tb if bias is None else bias + tb
    return bias


# ---------------------------------------------------------------------------------------------- validation


def check_inputs(q, k, v, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window):
    """Shape/dtype checks shared by every backend; cheap (no device sync)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share shape [total_tokens, heads, head_dim]; got {q.shape} {k.shape} {v.shape}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype} {k.dtype} {v.dtype}")
    if offsets.dim() != 1 or offsets.dtype != torch.int64 or offsets.numel() < 1:
        raise ValueError("offsets must be a 1-D int64 tensor [batch+1]")
    if num_targets is not None and num_targets.shape != (offsets.numel() - 1,):
        raise ValueError(f"num_targets must be [batch]={offsets.numel() - 1}, got {tuple(num_targets.shape)}")
    if time_bias is not None and timestamps is None:
        raise ValueError("time_bias needs timestamps")
    if timestamps is not None and timestamps.shape != (q.shape[0],):
        raise ValueError(f"timestamps must be [total_tokens]={q.shape[0]}, got {tuple(timestamps.shape)}")
    for name, table in (("pos_bias", pos_bias), ("time_bias", time_bias)):
        if table is not None and (table.dim() != 2 or table.shape[1] != q.shape[1]):
            raise ValueError(f"{name} must be [num_buckets, heads={q.shape[1]}], got {tuple(table.shape)}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 (a token always sees itself), got {window}")
    if max_len < 0:
        raise ValueError("max_len must be >= 0")


# ---------------------------------------------------------------------------------------------- reference


def jagged_attention_reference(
    q, k, v, offsets, max_len, *, kind="softmax", num_targets=None, timestamps=None, pos_bias=None,
    time_bias=None, window=None, scale=None, hstu_norm=None,
):
    """Reference of ``e2erec_kernels.jagged_attention``: per-sequence dense fp32 math. Returns q.dtype."""
    check_inputs(q, k, v, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    norm = float(max_len if hstu_norm is None else hstu_norm)
    pb = None if pos_bias is None else pos_bias.float()
    tb = None if time_bias is None else time_bias.float()
    outs = []
    for b in range(offsets.numel() - 1):
        s, e = int(offsets[b]), int(offsets[b + 1])
        length, t = e - s, (0 if num_targets is None else int(num_targets[b]))
        qs, ks, vs = (x[s:e].float().transpose(0, 1) for x in (q, k, v))  # (heads, L, head_dim)
        logits = scale * qs @ ks.transpose(1, 2)  # (heads, L, L)
        pos = effective_positions(length, t, q.device)
        ts = None if timestamps is None else timestamps[s:e]
        bias = pair_bias(pos, ts, pb, tb)
        if bias is not None:
            logits = logits + bias
        allowed = sequence_mask(length, t, window, q.device)
        if kind == "softmax":
            weights = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        else:
            weights = F.silu(logits) * allowed / norm
        outs.append((weights @ vs).transpose(0, 1))  # (L, heads, head_dim)
    out = torch.cat(outs) if outs else q.float()[:0]
    return out.to(q.dtype)
