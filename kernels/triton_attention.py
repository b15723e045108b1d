"""Triton kernels for jagged causal attention: softmax (FlashAttention-2 online softmax) and HSTU (silu, no softmax).

One forward kernel and two backward kernels (dq; dk+dv+bias tables) serve both kinds; ``KIND`` and the feature
flags are constexprs, so a plain causal launch compiles none of the target/window/bias code. Mask, buckets and
target semantics: ``reference.py``. Activation memory is O(total_tokens): the forward saves q, k, v, out and one
fp32 log-sum-exp per (token, head); scores are recomputed in the backward, never stored.

Grid: (batch * heads, blocks of max_len), longest-work blocks first. Each program finds its sequence through
``offsets`` and exits at once when its block lies past the sequence end, so ragged batches cost ~their real work.
Key ranges per query block skip blocks that the causal mask, the window, or the targets rule make fully masked.

Interpreter (``TRITON_INTERPRET=1``, CPU tensors): tiles are upcast to fp32 before ``tl.dot`` because bf16/fp16
dots return wrong numbers there (../shared/notes/cpu-toolchain.md), and the bare jit functions are launched with
``interpreter_blocks`` tiles because ``@triton.autotune`` cannot benchmark without a GPU.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

# The @triton.jit decorator picks interpreter or compiler once, at import; remember which one we got.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# ---------------------------------------------------------------------------------------------- configs


# The autotune configs on a GPU, (BLOCK_M, BLOCK_N, num_warps, num_stages): the FlashAttention-2 tutorial's
# Hopper/Ampere sweet spots plus smaller-N variants for the backward (its dk/dv kernel holds two (BLOCK_N, D) fp32
# accumulators). Untuned on a GPU yet; `scripts/compile_kernels.py` measures their registers and spills for sm_90,
# and the pruning below keeps only those that fit.
GPU_CONFIG_SHAPES = [(128, 64, 8, 2), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 64, 4, 2),
                     (128, 32, 4, 3), (64, 32, 4, 3), (64, 128, 4, 2)]


def _configs():
    if not torch.cuda.is_available():
        # Never used for launches (see _launch); a single config keeps @triton.autotune from benchmarking.
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in GPU_CONFIG_SHAPES]


# Which configs each kernel may autotune over, from what they compile to for sm_90 (H100 / H200): the model's variant
# (targets + position and time biases), bf16, registers and spills from ptxas (scripts/compile_kernels.py, measured
# in the issue-21 note):
# - head dim <= 64: the forward and dq kernels fit in 128x64/w8/s2, 64x64/w4/s3, 64x64/w4/s2 and 64x32/w4/s3, for
#   both kinds (the other four configs spill 3-20 KB per thread); dk/dv, which holds two fp32 accumulators, fits
#   only in 64x32/w4/s3 (the others spill 0.6-8.6 KB);
# - head dim 128: only 64x32/w4/s3 fits (HSTU forward and dq) or spills least (0.02-0.65 KB; the next best 1.3-2.1
#   KB, the rest up to 30 KB); larger heads get it too, untested.
# Every kernel still spills at head dim 128 in softmax and in dk/dv: fitting them is the kernels' open work.
FITTING_SMALL_HEAD = {"fwd": {(128, 64, 8, 2), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3)},
                      "bwd_dq": {(128, 64, 8, 2), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3)},
                      "bwd_dkdv": {(64, 32, 4, 3)}}
FITTING_LARGE_HEAD = {(64, 32, 4, 3)}


def kept_by_prune(kernel: str, shape: tuple[int, int, int, int], head_dim: int, len_bucket: int = 1 << 30) -> bool:
    """Whether `kernel`'s pruning keeps a config (BLOCK_M, BLOCK_N, num_warps, num_stages): one that fits at this
    head dim (the measurements above), with tiles no longer than every sequence (waste)."""
    block_m, block_n = shape[0], shape[1]
    fitting = FITTING_SMALL_HEAD[kernel] if head_dim <= 64 else FITTING_LARGE_HEAD
    return tuple(shape) in fitting and block_m <= max(64, len_bucket) and block_n <= max(32, len_bucket)


def _pruner(kernel: str):
    """The `early_config_prune` of one kernel: the configs `kept_by_prune` keeps (the smallest tile if none)."""

    def prune(configs, named_args, **kwargs):
        if len(configs) == 1:
            return configs
        head_dim = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
        len_bucket = kwargs.get("LEN_BUCKET", named_args.get("LEN_BUCKET", 1 << 30))
        kept = [c for c in configs if kept_by_prune(kernel, _shape(c), head_dim, len_bucket)]
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]

    return prune


def _shape(config) -> tuple[int, int, int, int]:
    return config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages


def interpreter_blocks(max_len: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) under the interpreter, where the cost is ~8 ms per loop iteration whatever the tile size
    (measured: one 1024-token sequence, H=1, D=16, fwd+bwd: 25 s with 32x16 tiles, 2.5 s with 128x64). Short
    batches keep small, unequal tiles so tests cross block boundaries in both dimensions; long ones take big tiles.
    """
    return (32, 16) if max_len <= 256 else (128, 64)


# Autotune key: heads, padded head dim and the power-of-two bucket of max_len, so ragged batches don't retune
# every step. Kernels that accumulate with atomics reset their buffers between tuning runs.
_KEY = ["H", "BLOCK_D", "LEN_BUCKET", "KIND"]

# ---------------------------------------------------------------------------------------------- jit kernels


@triton.jit
def _floor_log2(x):
    """Exact floor(log2(x)) for integer x >= 1: float exponent, corrected when float rounding went up."""
    e = ((x.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = e.to(x.dtype)
    return tl.where((x >> e) == 0, e - 1, e)


@triton.jit
def _scores(
    q, k, offs_m, offs_n, L, history, seq_start, head, H, TS, POS_BIAS, TIME_BIAS, P, T, window, scale,
    HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr, HAS_TIME: tl.constexpr,
    PREC: tl.constexpr,
):
    """Logits (BLOCK_M, BLOCK_N) fp32, the allowed mask, and the pos/time bucket of every pair."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
    i = offs_m[:, None]
    j = offs_n[None, :]
    allowed = (j <= i) & (i < L) & (j < L)
    if HAS_TARGETS:
        allowed = allowed & ~((i >= history) & (j >= history) & (i != j))
    d = tl.minimum(i, history) - tl.minimum(j, history)  # distance in effective positions
    if HAS_WINDOW:
        allowed = allowed & (d < window)
    pb = d
    tb = d.to(tl.int64)
    if HAS_POS:
        half = tl.maximum(P // 2, 1)
        d = tl.maximum(d, 0)
        far = half + _floor_log2(tl.maximum(d // half, 1))
        pb = tl.minimum(tl.where(d < half, d, far), P - 1)
        s += tl.load(POS_BIAS + pb * H + head, mask=allowed, other=0.0).to(tl.float32)
    if HAS_TIME:
        ts_i = tl.load(TS + seq_start + offs_m, mask=offs_m < L, other=0)
        ts_j = tl.load(TS + seq_start + offs_n, mask=offs_n < L, other=0)
        dt = tl.maximum(ts_i[:, None] - ts_j[None, :], 0)
        tb = tl.minimum(_floor_log2(dt + 1), T - 1)
        s += tl.load(TIME_BIAS + tb * H + head, mask=allowed, other=0.0).to(tl.float32)
    return s, allowed, pb, tb


@triton.jit
def _seq_info(OFFSETS, NUM_TARGETS, b, HAS_TARGETS: tl.constexpr):
    seq_start = tl.load(OFFSETS + b)
    L = (tl.load(OFFSETS + b + 1) - seq_start).to(tl.int32)
    history = L
    if HAS_TARGETS:
        history = L - tl.minimum(tl.maximum(tl.load(NUM_TARGETS + b).to(tl.int32), 0), L)
    return seq_start, L, history


@triton.jit
def _key_ranges(start_m, L, history, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Key blocks a query block needs: [lo, mid_end) then [mid_start, hi), BLOCK_N-aligned from lo, disjoint."""
    hi = tl.minimum(L, start_m + BLOCK_M)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(tl.minimum(start_m, history) - window + 1, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    mid_end = hi
    mid_start = hi
    if HAS_TARGETS and start_m >= history:
        # Only targets here: they see the history, then only themselves (the diagonal blocks).
        mid_end = history
        r1_end = lo + tl.cdiv(mid_end - lo, BLOCK_N) * BLOCK_N
        mid_start = tl.maximum((start_m // BLOCK_N) * BLOCK_N, r1_end)
    return lo, mid_end, mid_start, hi


@triton.jit
def _load_kv_tile(K, V, seq_start, offs_n, offs_d, L, D, head, skt, skh, svt, svh, UPCAST: tl.constexpr):
    """One key block's k and v (BLOCK_N, BLOCK_D), zero past the sequence end and the head dimension; the forward
    loop and both backward kernels read keys the same way."""
    kv_mask = (offs_n < L)[:, None] & (offs_d < D)[None, :]
    rows = (seq_start + offs_n)[:, None]
    k = tl.load(K + rows * skt + head * skh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + rows * svt + head * svh + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v


@triton.jit
def _fwd_inner(
    acc, m_i, l_i, q, start_n, offs_m, offs_d, L, history, seq_start, head, H, D,
    K, V, skt, skh, svt, svh, TS, POS_BIAS, TIME_BIAS, P, T, window, scale, norm,
    KIND: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k, v = _load_kv_tile(K, V, seq_start, offs_n, offs_d, L, D, head, skt, skh, svt, svh, UPCAST)
    s, allowed, _pb, _tb = _scores(
        q, k, offs_m, offs_n, L, history, seq_start, head, H, TS, POS_BIAS, TIME_BIAS, P, T, window, scale,
        HAS_TARGETS, HAS_WINDOW, HAS_POS, HAS_TIME, PREC,
    )
    if KIND == 0:
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    else:
        a = tl.where(allowed, s * tl.sigmoid(s), 0.0) / norm
        acc += tl.dot(a.to(v.dtype), v, input_precision=PREC)
    return acc, m_i, l_i


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _pruner("fwd")})
@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, OFFSETS, NUM_TARGETS, TS, POS_BIAS, TIME_BIAS,
    sqt, sqh, skt, skh, svt, svh, sot, soh,
    H, D, P, T, window, scale, norm, LEN_BUCKET,
    KIND: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    head = pid % H
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M  # longest causal rows first
    seq_start, L, history = _seq_info(OFFSETS, NUM_TARGETS, b, HAS_TARGETS)
    if start_m >= L:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_m < L)[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + (seq_start + offs_m)[:, None] * sqt + head * sqh + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Finite start so a fully masked first block gives exp(-inf - (-1e30)) = 0, not NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo, mid_end, mid_start, hi = _key_ranges(start_m, L, history, window, BLOCK_M, BLOCK_N, HAS_TARGETS, HAS_WINDOW)
    for start_n in range(lo, mid_end, BLOCK_N):
        acc, m_i, l_i = _fwd_inner(
            acc, m_i, l_i, q, start_n, offs_m, offs_d, L, history, seq_start, head, H, D,
            K, V, skt, skh, svt, svh, TS, POS_BIAS, TIME_BIAS, P, T, window, scale, norm,
            KIND, HAS_TARGETS, HAS_WINDOW, HAS_POS, HAS_TIME, UPCAST, PREC, BLOCK_N,
        )
    for start_n in range(mid_start, hi, BLOCK_N):
        acc, m_i, l_i = _fwd_inner(
            acc, m_i, l_i, q, start_n, offs_m, offs_d, L, history, seq_start, head, H, D,
            K, V, skt, skh, svt, svh, TS, POS_BIAS, TIME_BIAS, P, T, window, scale, norm,
            KIND, HAS_TARGETS, HAS_WINDOW, HAS_POS, HAS_TIME, UPCAST, PREC, BLOCK_N,
        )
    if KIND == 0:
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # only rows past the sequence end, never stored
        acc = acc / l_safe[:, None]
        tl.store(LSE + (seq_start + offs_m) * H + head, m_i + tl.log(l_safe), mask=offs_m < L)
    tl.store(O + (seq_start + offs_m)[:, None] * sot + head * soh + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=q_mask)


@triton.jit
def _ds(s, allowed, do, v, lse, delta, norm, KIND: tl.constexpr, PREC: tl.constexpr):
    """Attention weights w (BLOCK_M, BLOCK_N) and dL/ds, the gradient wrt the biased logits."""
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    if KIND == 0:
        w = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
        ds = w * (dp - delta[:, None])
    else:
        sig = tl.sigmoid(s)
        w = tl.where(allowed, s * sig, 0.0) / norm
        ds = tl.where(allowed, dp * sig * (1.0 + s * (1.0 - sig)), 0.0) / norm
    return w, ds


@triton.jit
def _load_query_tile(Q, DO, LSE, DELTA, seq_start, offs_m, offs_d, row_mask, q_mask, head, H, sqt, sqh, sdot, sdoh,
                     BLOCK_M: tl.constexpr, KIND: tl.constexpr, UPCAST: tl.constexpr):
    """One query tile's q and dO, plus the softmax row statistics (LSE, delta = rowsum(dO * O)) both backward
    kernels need; HSTU has no softmax, so its statistics stay zero."""
    rows = (seq_start + offs_m)[:, None]
    q = tl.load(Q + rows * sqt + head * sqh + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + rows * sdot + head * sdoh + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.zeros([BLOCK_M], dtype=tl.float32)
    delta = tl.zeros([BLOCK_M], dtype=tl.float32)
    if KIND == 0:
        lse = tl.load(LSE + (seq_start + offs_m) * H + head, mask=row_mask, other=0.0)
        delta = tl.load(DELTA + (seq_start + offs_m) * H + head, mask=row_mask, other=0.0)
    return q, do, lse, delta


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _pruner("bwd_dq")})
@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, OFFSETS, NUM_TARGETS, TS, POS_BIAS, TIME_BIAS,
    sqt, sqh, skt, skh, svt, svh, sdot, sdoh, sdqt, sdqh,
    H, D, P, T, window, scale, norm, LEN_BUCKET,
    KIND: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    head = pid % H
    start_m = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    seq_start, L, history = _seq_info(OFFSETS, NUM_TARGETS, b, HAS_TARGETS)
    if start_m >= L:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = offs_m < L
    q_mask = row_mask[:, None] & (offs_d < D)[None, :]
    q, do, lse, delta = _load_query_tile(Q, DO, LSE, DELTA, seq_start, offs_m, offs_d, row_mask, q_mask, head, H,
                                         sqt, sqh, sdot, sdoh, BLOCK_M, KIND, UPCAST)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, mid_end, mid_start, hi = _key_ranges(start_m, L, history, window, BLOCK_M, BLOCK_N, HAS_TARGETS, HAS_WINDOW)
    for phase in tl.static_range(2):
        if phase == 0:
            first = lo
            last = mid_end
        else:
            first = mid_start
            last = hi
        for start_n in range(first, last, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k, v = _load_kv_tile(K, V, seq_start, offs_n, offs_d, L, D, head, skt, skh, svt, svh, UPCAST)
            s, allowed, _pb, _tb = _scores(
                q, k, offs_m, offs_n, L, history, seq_start, head, H, TS, POS_BIAS, TIME_BIAS, P, T, window, scale,
                HAS_TARGETS, HAS_WINDOW, HAS_POS, HAS_TIME, PREC,
            )
            _w, ds = _ds(s, allowed, do, v, lse, delta, norm, KIND, PREC)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    dq = dq * scale
    rows = (seq_start + offs_m)[:, None]
    tl.store(DQ + rows * sdqt + head * sdqh + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask)


@triton.autotune(
    configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _pruner("bwd_dkdv")},
    reset_to_zero=["DPOS", "DTIME"],
)
@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, OFFSETS, NUM_TARGETS, TS, POS_BIAS, TIME_BIAS, DPOS, DTIME,
    sqt, sqh, skt, skh, svt, svh, sdot, sdoh, sdkt, sdkh, sdvt, sdvh,
    H, D, P, T, window, scale, norm, LEN_BUCKET,
    KIND: tl.constexpr, HAS_TARGETS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_POS: tl.constexpr,
    HAS_TIME: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    head = pid % H
    start_n = tl.program_id(1) * BLOCK_N
    seq_start, L, history = _seq_info(OFFSETS, NUM_TARGETS, b, HAS_TARGETS)
    if start_n >= L:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k, v = _load_kv_tile(K, V, seq_start, offs_n, offs_d, L, D, head, skt, skh, svt, svh, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Queries that can see this key block: causal from start_n; the window stops history queries at
    # last_key + window, and targets see it only if last_key is within the window of the history end;
    # a block of target keys is seen only by those targets themselves.
    hi = L
    if HAS_WINDOW:
        last_key = tl.minimum(start_n + BLOCK_N, L) - 1
        hi = tl.where(last_key + window > history, L, last_key + window)
    if HAS_TARGETS and start_n >= history:
        hi = tl.minimum(hi, start_n + BLOCK_N)
    for start_m in range((start_n // BLOCK_M) * BLOCK_M, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_mask = offs_m < L
        q_mask = row_mask[:, None] & (offs_d < D)[None, :]
        q, do, lse, delta = _load_query_tile(Q, DO, LSE, DELTA, seq_start, offs_m, offs_d, row_mask, q_mask, head, H,
                                             sqt, sqh, sdot, sdoh, BLOCK_M, KIND, UPCAST)
        s, allowed, pb, tb = _scores(
            q, k, offs_m, offs_n, L, history, seq_start, head, H, TS, POS_BIAS, TIME_BIAS, P, T, window, scale,
            HAS_TARGETS, HAS_WINDOW, HAS_POS, HAS_TIME, PREC,
        )
        w, ds = _ds(s, allowed, do, v, lse, delta, norm, KIND, PREC)
        dv += tl.dot(tl.trans(w).to(do.dtype), do, input_precision=PREC)
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC)
        # Bias tables: every pair adds ds to its bucket. Atomics contend on a small table; fine for tables of
        # tens of rows, the first thing to revisit if the backward profile shows it.
        if HAS_POS:
            tl.atomic_add(DPOS + pb * H + head, ds, mask=allowed)
        if HAS_TIME:
            tl.atomic_add(DTIME + tb * H + head, ds, mask=allowed)
    kv_mask = (offs_n < L)[:, None] & (offs_d < D)[None, :]
    krows = (seq_start + offs_n)[:, None]
    tl.store(DK + krows * sdkt + head * sdkh + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + krows * sdvt + head * sdvh + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


# ---------------------------------------------------------------------------------------------- launcher


def _rows(x):
    """Last dim must be unit-stride for the kernels; token/head strides may be anything (e.g. a split qkv)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch(kernel, grid, on_cuda, max_len, *args, **kwargs):
    """Autotuned launch on CUDA; under the interpreter, the bare jit function with interpreter_blocks tiles."""
    if on_cuda:
        kernel[grid](*args, **kwargs)
    else:
        block_m, block_n = interpreter_blocks(max_len)
        kernel.fn[grid](*args, BLOCK_M=block_m, BLOCK_N=block_n, **kwargs)


def _common(q, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window, scale, norm):
    """Kernel arguments shared by the three launches, and the grid builder."""
    batch, heads, dim = offsets.numel() - 1, q.shape[1], q.shape[2]
    dummy = offsets  # never read: the matching HAS_* flag is False
    args = {
        "OFFSETS": offsets,
        "NUM_TARGETS": dummy if num_targets is None else num_targets,
        "TS": dummy if timestamps is None else timestamps,
        "POS_BIAS": dummy if pos_bias is None else pos_bias,
        "TIME_BIAS": dummy if time_bias is None else time_bias,
        "H": heads, "D": dim,
        "P": 1 if pos_bias is None else pos_bias.shape[0],
        "T": 1 if time_bias is None else time_bias.shape[0],
        "window": 0 if window is None else int(window), "scale": float(scale), "norm": float(norm),
        "LEN_BUCKET": triton.next_power_of_2(max(max_len, 1)),
        "KIND": 0 if kind == "softmax" else 1,
        "HAS_TARGETS": num_targets is not None, "HAS_WINDOW": window is not None,
        "HAS_POS": pos_bias is not None, "HAS_TIME": time_bias is not None,
        "UPCAST": not q.is_cuda,
        "PREC": "ieee" if (q.dtype == torch.float32 or not q.is_cuda) else "tf32",
        "BLOCK_D": max(triton.next_power_of_2(dim), 16),
    }

    def grid(block):
        return lambda meta: (batch * heads, triton.cdiv(max(max_len, 1), meta[block]))

    return args, grid


def _forward(q, k, v, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window, scale, norm):
    q, k, v = _rows(q), _rows(k), _rows(v)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[0], q.shape[1], device=q.device, dtype=torch.float32)  # (total_tokens, heads)
    args, grid = _common(q, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window, scale, norm)
    if q.shape[0] > 0 and offsets.numel() > 1:
        _launch(
            _fwd_kernel, grid("BLOCK_M"), q.is_cuda, max_len, q, k, v, out, lse,
            sqt=q.stride(0), sqh=q.stride(1), skt=k.stride(0), skh=k.stride(1), svt=v.stride(0), svh=v.stride(1),
            sot=out.stride(0), soh=out.stride(1), **args,
        )
    return out, lse


def _backward(do, q, k, v, out, lse, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window,
              scale, norm):
    do = _rows(do)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dpos = None if pos_bias is None else torch.zeros(pos_bias.shape, device=q.device, dtype=torch.float32)
    dtime = None if time_bias is None else torch.zeros(time_bias.shape, device=q.device, dtype=torch.float32)
    # delta_i = rowsum(dO_i * O_i): the softmax Jacobian term of FlashAttention-2's backward; O(total_tokens).
    delta = (do.float() * out.float()).sum(-1) if kind == "softmax" else lse  # (total_tokens, heads)
    args, grid = _common(q, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window, scale, norm)
    if q.shape[0] > 0 and offsets.numel() > 1:
        strides = {
            "sqt": q.stride(0), "sqh": q.stride(1), "skt": k.stride(0), "skh": k.stride(1),
            "svt": v.stride(0), "svh": v.stride(1), "sdot": do.stride(0), "sdoh": do.stride(1),
        }
        _launch(
            _bwd_dq_kernel, grid("BLOCK_M"), q.is_cuda, max_len, q, k, v, do, dq, lse, delta,
            sdqt=dq.stride(0), sdqh=dq.stride(1), **strides, **args,
        )
        _launch(
            _bwd_dkdv_kernel, grid("BLOCK_N"), q.is_cuda, max_len, q, k, v, do, dk, dv, lse, delta,
            # Own dummies: the autotuner zeroes DPOS/DTIME between trials, which must not hit offsets.
            DPOS=torch.zeros(1, device=q.device) if dpos is None else dpos,
            DTIME=torch.zeros(1, device=q.device) if dtime is None else dtime,
            sdkt=dk.stride(0), sdkh=dk.stride(1), sdvt=dv.stride(0), sdvh=dv.stride(1), **strides, **args,
        )
    else:
        dq.zero_(), dk.zero_(), dv.zero_()
    return dq, dk, dv, dpos, dtime


# ---------------------------------------------------------------------------------------------- autograd


class _JaggedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, pos_bias, time_bias, offsets, max_len, kind, num_targets, timestamps, window, scale,
                norm):
        out, lse = _forward(q, k, v, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window,
                            scale, norm)
        ctx.save_for_backward(q, k, v, out, lse, offsets, num_targets, timestamps, pos_bias, time_bias)
        ctx.meta = (max_len, kind, window, scale, norm)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, offsets, num_targets, timestamps, pos_bias, time_bias = ctx.saved_tensors
        max_len, kind, window, scale, norm = ctx.meta
        dq, dk, dv, dpos, dtime = _backward(
            do, q, k, v, out, lse, offsets, max_len, kind, num_targets, timestamps, pos_bias, time_bias, window,
            scale, norm,
        )
        dpos = None if dpos is None else dpos.to(pos_bias.dtype)
        dtime = None if dtime is None else dtime.to(time_bias.dtype)
        return dq, dk, dv, dpos, dtime, None, None, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------- public


def jagged_attention_triton(
    q, k, v, offsets, max_len, *, kind="softmax", num_targets=None, timestamps=None, pos_bias=None,
    time_bias=None, window=None, scale=None, hstu_norm=None,
):
    """Triton backend of ``e2erec_kernels.jagged_attention`` (same arguments; semantics in reference.py)."""
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError(
            "the triton backend needs CUDA tensors, or TRITON_INTERPRET=1 set when e2erec_kernels.triton_attention "
            "was first imported (tests/kernels/conftest.py does this)"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    norm = float(max_len if hstu_norm is None else hstu_norm)
    offsets = offsets.to(q.device)
    if num_targets is not None:
        num_targets = num_targets.to(device=q.device, dtype=torch.int64).contiguous()
    if timestamps is not None:
        timestamps = timestamps.to(device=q.device, dtype=torch.int64).contiguous()
    if pos_bias is not None:
        pos_bias = pos_bias.contiguous()
    if time_bias is not None:
        time_bias = time_bias.contiguous()
    return _JaggedAttention.apply(
        q, k, v, pos_bias, time_bias, offsets.contiguous(), int(max_len), kind, num_targets, timestamps, window,
        scale, norm,
    )
