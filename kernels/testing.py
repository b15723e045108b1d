"""Input setup and the one comparison helper shared by tests/kernels and scripts/bench_attention.py."""

from __future__ import annotations

import math

import torch

# Max |impl - ref| over a tensor, relative to max |ref| of that tensor. fp32: summation order only. fp16/bf16:
# inputs are rounded once, outputs and grads are stored in the low precision (bf16 has 8 mantissa bits).
TOLERANCES = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def skewed_lengths(batch: int, max_len: int, mean_frac: float = 0.25, seed: int = 0) -> list[int]:
    """Lengths with mean ~= mean_frac * max_len and a long tail up to max_len, like user histories.

    Exponential draw (mean = mean_frac * max_len) clipped to [1, max_len]; one sequence is pinned at max_len so
    the batch's max is what the caller asked for.
    """
    g = torch.Generator().manual_seed(seed)
    draws = torch.empty(batch).exponential_(1.0 / (mean_frac * max_len), generator=g)
    lengths = draws.round().clamp(1, max_len).long().tolist()
    lengths[0] = max_len
    return lengths


def make_inputs(
    lengths, heads=2, dim=8, *, kind="softmax", dtype=torch.float32, device="cpu", targets=None, window=None,
    pos_buckets=0, time_buckets=0, seed=0, requires_grad=True,
) -> dict:
    """Keyword arguments for ``jagged_attention`` (q, k, v, offsets, max_len and options) on random data.

    targets: None, "random" (0..L per sequence), "all" (every token a target) or "none" (a zero tensor).
    Timestamps grow by gaps up to ~2^30 s, so time buckets up to 30 (and the float-rounding edge of floor_log2)
    are exercised.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = list(lengths)
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    total = int(offsets[-1])

    def leaf(*shape, scale=1.0):
        x = (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
        return x.requires_grad_(requires_grad)

    qkv = [leaf(total, heads, dim) for _ in range(3)]
    num_targets = None
    if targets == "random":
        num_targets = torch.tensor([int(torch.randint(0, n + 1, (1,), generator=g)) for n in lengths])
    elif targets == "all":
        num_targets = torch.tensor(lengths, dtype=torch.int64)
    elif targets == "none":
        num_targets = torch.zeros(len(lengths), dtype=torch.int64)
    timestamps = None
    if time_buckets:
        gaps = (2.0 ** (torch.rand(total, generator=g) * 30)).long() * (torch.rand(total, generator=g) < 0.7)
        timestamps = (1_700_000_000 + gaps.cumsum(0)).to(device)
    return {
        "q": qkv[0], "k": qkv[1], "v": qkv[2], "offsets": offsets.to(device), "max_len": max(lengths, default=0),
        "kind": kind,
        "num_targets": None if num_targets is None else num_targets.to(device), "timestamps": timestamps,
        "pos_bias": leaf(pos_buckets, heads, scale=0.5) if pos_buckets else None,
        "time_bias": leaf(time_buckets, heads, scale=0.5) if time_buckets else None,
        "window": window,
    }


def _grad_leaves(inputs):
    return {n: inputs[n] for n in ("q", "k", "v", "pos_bias", "time_bias") if inputs.get(n) is not None}


def run_with_grads(fn, inputs, dout=None, **kw):
    """out, {name: grad} for fn(**inputs); dout defaults to a fixed random upstream gradient."""
    leaves = _grad_leaves(inputs)
    for x in leaves.values():
        x.grad = None
    out = fn(**inputs, **kw)
    if dout is None:
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, list(leaves.values()), dout.to(out.dtype), allow_unused=True)
    return out, dict(zip(leaves, grads)), dout


def check(ref, impl, inputs, *, dtype=None, tol=None, **kw):
    """Compare impl (on inputs as given) with ref (on fp32 copies of the same values): output and every gradient.

    Error metric per tensor: max |impl - ref| / max(max |ref|, floor) <= tol (default: TOLERANCES[dtype]).
    The floor (1e-2; 1e-1 for bias tables, whose entries sum ds over many pairs) keeps exact-zero gradients (dq,
    dk, d_bias when every token sees only itself and softmax is constant) from turning fp32 rounding of
    ``dp - delta`` (~1e-7 per pair) into a huge relative error.
    Returns the errors so callers (benchmarks) can print them.
    """
    dtype = dtype or inputs["q"].dtype
    tol = TOLERANCES[dtype] if tol is None else tol
    ref_inputs = {
        n: (x.detach().float().requires_grad_(x.requires_grad) if torch.is_tensor(x) and x.is_floating_point() else x)
        for n, x in inputs.items()
    }
    out_i, grads_i, dout = run_with_grads(impl, inputs, **kw)
    out_r, grads_r, _ = run_with_grads(ref, ref_inputs, dout=dout.float(), **kw)
    assert out_i.shape == out_r.shape and out_i.dtype == inputs["q"].dtype
    errors = {}
    for name, a, b in [("out", out_i, out_r)] + [(n, grads_i[n], grads_r[n]) for n in grads_r]:
        if b is None:  # empty batch: nothing flows back
            continue
        a = torch.zeros_like(b) if a is None else a  # autograd's None means zero (e.g. an all-empty batch)
        a, b = a.float(), b.float()
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        floor = 1e-1 if name.endswith("_bias") else 1e-2
        err = (a - b).abs().max().item() / max(b.abs().max().item(), floor) if b.numel() else 0.0
        errors[name] = err
    bad = {n: e for n, e in errors.items() if not (e <= tol) or math.isnan(e)}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"
    return errors
