"""CPU fast path for jagged attention: length-bucketed dense math, never the batch's padded N^2.

Sequences are grouped by a rounded-up length ``Lb``; each group is gathered into a dense
``(n, heads, Lb, head_dim)`` block, run through SDPA (softmax) or explicit silu math (HSTU) with a mask/bias built
per sequence, and scattered back. Groups are chunked so one score tensor stays under ``_SCORE_BUDGET`` elements.
Semantics are those of ``reference.py``; autograd flows to q, k, v and the bias tables.

Why this shape. A per-sequence SDPA loop beats padded SDPA on skewed lengths (../shared/notes/cpu-toolchain.md)
but pays Python/dispatch overhead per sequence; grouping sequences of similar length keeps the padding small
(<= 1.5x per dimension with the 2^k / 1.5*2^k "ladder") while batching many short sequences into one call.
Measured with ``scripts/bench_attention.py --cpu`` (8192 real tokens, mean/max length 0.25, H=4, D=32, fp32,
1 thread, on a loaded 2-core machine, so read the ratios), fwd+bwd ms at max_len 256 / 512 / 1024:

    softmax  ladder groups (this file)   375 /  491 /  534
             exact-length groups        1366 /  957 /  534
             per-sequence SDPA loop     1695 /  928 /  847
             padded SDPA, is_causal     1066 / 2020 / 1936
    hstu     ladder groups (this file)   132 /  217 /  325
             exact-length groups         482 /  318 /  629
             padded dense               1410 / 3971 / 9379   (peak memory 5-8x the ladder's)

FlexAttention is no alternative here: no backward on CPU; nested-tensor SDPA has no causal backend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .reference import pair_bias

# One (n, heads, Lb, Lb) score tensor stays under this many elements (64 MiB in fp32) so a huge group is chunked.
_SCORE_BUDGET = 1 << 24


def _bucket_length(length: int, mode: str) -> int:
    """Padded length a sequence is grouped under.

    "exact": groups only equal lengths (no padding, most groups). "ladder": next of 8, 12, 16, 24, 32, 48, 64, ...
    (2^k and 1.5*2^k), padding <= 1.5x per dimension; faster in every measured case (module docstring).
    """
    if mode == "exact" or length <= 8:
        return max(length, 1) if mode == "exact" else 8
    p = 1 << (length - 1).bit_length()  # next power of two
    return p * 3 // 4 if length <= p * 3 // 4 else p


def jagged_attention_torch(
    q, k, v, offsets, max_len, *, kind="softmax", num_targets=None, timestamps=None, pos_bias=None,
    time_bias=None, window=None, scale=None, hstu_norm=None, bucketing: str = "ladder",
):
    _total, heads, dim = q.shape
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    norm = float(max_len if hstu_norm is None else hstu_norm)
    lengths = offsets.diff().tolist()
    starts = offsets[:-1].tolist()
    targets = [0] * len(lengths) if num_targets is None else num_targets.tolist()
    plain = num_targets is None and window is None and pos_bias is None and time_bias is None

    groups: dict[int, list[int]] = {}
    for b, length in enumerate(lengths):
        if length > 0:
            groups.setdefault(_bucket_length(length, bucketing), []).append(b)

    pieces, order = [], []
    for lb, seqs in sorted(groups.items()):
        step = max(1, _SCORE_BUDGET // (heads * lb * lb))
        for c in range(0, len(seqs), step):
            chunk = seqs[c : c + step]
            o, tok = _group(
                q, k, v, lb, [starts[b] for b in chunk], [lengths[b] for b in chunk], [targets[b] for b in chunk],
                kind, timestamps, pos_bias, time_bias, window, scale, norm, plain,
            )
            pieces.append(o)
            order.append(tok)
    if not pieces:
        return q * 0  # every sequence empty: keep the autograd graph, shape [0 or total, heads, dim]
    order = torch.cat(order)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(pieces).index_select(0, inverse)


def _group(q, k, v, lb, starts, lengths, targets, kind, timestamps, pos_bias, time_bias, window, scale, norm, plain):
    """Dense attention over n sequences padded to lb. Returns (out (tokens, heads, dim), their token indices)."""
    dev = q.device
    ar = torch.arange(lb, device=dev)
    length = torch.tensor(lengths, device=dev)[:, None]  # (n, 1)
    valid = ar[None, :] < length  # (n, lb)
    idx = torch.tensor(starts, device=dev)[:, None] + ar[None, :]
    idx = torch.where(valid, idx, 0)  # padding reads token 0 (any valid row): it is masked or dropped
    qg, kg, vg = (x[idx].transpose(1, 2) for x in (q, k, v))  # (n, lb, heads, dim) -> (n, heads, lb, dim)

    if plain and kind == "softmax":
        # Padding sits after every real key, so is_causal alone keeps real queries off it.
        o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, scale=scale)
    else:
        history = length - torch.tensor(targets, device=dev)[:, None].clamp(min=0).minimum(length)  # (n, 1)
        pos = torch.minimum(ar[None, :], history)  # (n, lb) effective positions
        i, j = ar[:, None], ar[None, :]
        h3 = history[:, :, None]  # (n, 1, 1)
        allowed = (j <= i) & ~((i >= h3) & (j >= h3) & (i != j))  # (n, lb, lb)
        if window is not None:
            allowed &= (pos[:, :, None] - pos[:, None, :]) < window
        allowed &= valid[:, None, :]
        allowed |= (i == j) & ~valid[:, :, None]  # padded queries see themselves: no empty softmax row, no NaN
        ts = None if timestamps is None else timestamps[idx]
        bias = pair_bias(pos, ts, pos_bias, time_bias)  # (n, heads, lb, lb) or None
        if kind == "softmax":
            if bias is None:
                o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=allowed[:, None], scale=scale)
            else:
                mask = bias.to(q.dtype).masked_fill(~allowed[:, None], float("-inf"))
                o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, scale=scale)
        else:
            s = scale * (qg @ kg.transpose(-1, -2))  # (n, heads, lb, lb)
            if bias is not None:
                s = s + bias.to(s.dtype)
            o = (F.silu(s) * (allowed[:, None] / norm).to(s.dtype)) @ vg
    o = o.transpose(1, 2)[valid]  # (n, lb, heads, dim) -> (tokens, heads, dim)
    return o, idx[valid]
