"""Benchmark jagged attention (softmax and HSTU) against the padded / document-masked alternatives.

    python scripts/bench_attention.py --cpu                       # this machine: CPU dispatch path vs padded
    python scripts/bench_attention.py --gpu --max-lens 256 1024 4096 8192

Batches: lengths from ``e2erec_kernels.testing.skewed_lengths`` (exponential, mean/max ~= 0.25, one sequence at
max_len), batch size chosen so a batch holds ~``--tokens`` real tokens. Prints a table; writes
``<out>/bench_attention_<mode>.json`` (one row per method x kind x max_len) and ``.png`` beside it.

FLOPs count only the causal, unpadded work: per sequence of length L and head, pairs = L(L+1)/2;
forward = 4 * D * pairs (QK^T and PV, 2 flops per multiply-add), forward+backward = 14 * D * pairs (the backward's
5 matmuls: recomputed QK^T, dV, dP, dQ, dK = 2.5x the forward, FlashAttention's convention). Padded baselines are
charged the same useful FLOPs, so their TFLOP/s show the cost of the padding.

GPU timings (triton.testing.do_bench, median) include padding/unpadding for padded baselines, and exclude building
FlexAttention's block mask and torch.compile warm-up. CPU timings: median wall time, torch.set_num_threads(1)
(the machine is shared, ratios within one run are what to read); CPU peak memory: each method runs forward+backward
in a fresh subprocess and reports the growth of peak RSS over its set-up (VmHWM after a reset), in MiB.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]


import e2erec_kernels as K
from e2erec_kernels.testing import check, make_inputs, skewed_lengths
from e2erec_kernels.torch_attention import jagged_attention_torch


def causal_pairs(lengths) -> int:
    return sum(n * (n + 1) // 2 for n in lengths)


def flops(lengths, heads, dim, backward: bool) -> float:
    return (14 if backward else 4) * dim * heads * causal_pairs(lengths)


def batch_for(max_len, tokens, mean_frac=0.25, seed=0):
    """Lengths of a batch of ~`tokens` real tokens: skewed with mean/max ~= mean_frac, or all max_len at 1."""
    batch = max(1, round(tokens / (mean_frac * max_len)))
    if mean_frac >= 1.0:
        return [max_len] * batch
    return skewed_lengths(batch, max_len, mean_frac, seed)


# ---------------------------------------------------------------------------------------------- methods
# Each method: fn(q, k, v, offsets, max_len, lengths, kind) -> out [total_tokens, heads, dim], same semantics as
# jagged_attention with plain causal masking (the baselines support nothing else).


def _pad(x, offsets, max_len, lengths):
    """[total, H, D] -> (B, H, max_len, D) zero-padded, and the bool (B, max_len) validity."""
    batch = len(lengths)
    valid = torch.arange(max_len, device=x.device)[None, :] < torch.tensor(lengths, device=x.device)[:, None]
    padded = x.new_zeros(batch, max_len, *x.shape[1:])
    padded[valid] = x
    return padded.transpose(1, 2), valid  # (B, max_len, H, D) -> (B, H, max_len, D)


def padded_sdpa(q, k, v, offsets, max_len, lengths, kind):
    qp, valid = _pad(q, offsets, max_len, lengths)
    kp, _ = _pad(k, offsets, max_len, lengths)
    vp, _ = _pad(v, offsets, max_len, lengths)
    o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
    return o.transpose(1, 2)[valid]  # (B, H, L, D) -> (B, L, H, D) -> (total, H, D)


def padded_hstu(q, k, v, offsets, max_len, lengths, kind):
    qp, valid = _pad(q, offsets, max_len, lengths)
    kp, _ = _pad(k, offsets, max_len, lengths)
    vp, _ = _pad(v, offsets, max_len, lengths)
    s = (qp @ kp.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, L, L)
    causal = torch.ones(max_len, max_len, dtype=torch.bool, device=q.device).tril()
    o = (F.silu(s) * causal / max_len) @ vp
    return o.transpose(1, 2)[valid]


def per_sequence_sdpa(q, k, v, offsets, max_len, lengths, kind):
    outs, start = [], 0
    for n in lengths:
        xs = [x[start : start + n].transpose(0, 1) for x in (q, k, v)]  # (H, n, D)
        outs.append(F.scaled_dot_product_attention(*xs, is_causal=True).transpose(0, 1))
        start += n
    return torch.cat(outs)


def dispatch(q, k, v, offsets, max_len, lengths, kind):
    return K.jagged_attention(q, k, v, offsets, max_len, kind=kind)


def torch_exact(q, k, v, offsets, max_len, lengths, kind):
    return jagged_attention_torch(q, k, v, offsets, max_len, kind=kind, bucketing="exact")


def cpu_methods(kind):
    if kind == "softmax":
        return {"dispatch (torch, ladder)": dispatch, "torch, exact-length groups": torch_exact,
                "per-sequence SDPA loop": per_sequence_sdpa, "padded SDPA is_causal": padded_sdpa}
    return {"dispatch (torch, ladder)": dispatch, "torch, exact-length groups": torch_exact,
            "padded dense": padded_hstu}


# ---------------------------------------------------------------------------------------------- CPU mode


def _inputs(lengths, heads, dim, dtype, device, seed=0):
    x = make_inputs(lengths, heads, dim, dtype=dtype, device=device, seed=seed)
    return x["q"], x["k"], x["v"], x["offsets"]


def _time_cpu(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _fwd_bwd(method, q, k, v, offsets, max_len, lengths, kind, dout):
    def run():
        for x in (q, k, v):
            x.grad = None
        method(q, k, v, offsets, max_len, lengths, kind).backward(dout)

    return run


def _proc_status_kib(field):
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child_memory(args):
    """Subprocess entry: peak RSS growth (MiB) over set-up during one method's forward+backward.

    The parent starts us with MALLOC_MMAP_THRESHOLD_ fixed at 128 KiB so every large tensor is its own mmap,
    returned to the OS when freed: RSS then follows live tensor memory. Writing 5 to /proc/self/clear_refs resets
    the high-water mark (VmHWM) after set-up, so import-time peaks don't hide the method's.
    """
    torch.set_num_threads(1)
    lengths = batch_for(args.max_len, args.tokens, args.mean_frac)
    q, k, v, offsets = _inputs(lengths, args.heads, args.dim, torch.float32, "cpu")
    dout = torch.randn_like(q)
    method = cpu_methods(args.kind)[args.method]
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    base = _proc_status_kib("VmRSS")
    _fwd_bwd(method, q, k, v, offsets, args.max_len, lengths, args.kind, dout)()
    print(json.dumps({"peak_mib": (_proc_status_kib("VmHWM") - base) / 1024}))


def run_cpu(args):
    torch.set_num_threads(1)
    rows = []
    for kind, max_len, frac in itertools.product(args.kinds, args.max_lens, args.mean_fracs):
        lengths = batch_for(max_len, args.tokens, frac)
        q, k, v, offsets = _inputs(lengths, args.heads, args.dim, torch.float32, "cpu")
        dout = torch.randn_like(q)
        ref = None
        for name, method in cpu_methods(kind).items():
            with torch.no_grad():
                out = method(q, k, v, offsets, max_len, lengths, kind)
            ref = out if ref is None else ref
            assert torch.allclose(out, ref, atol=1e-4, rtol=1e-3), f"{name} disagrees with the dispatch path"
            fwd = _time_cpu(functools.partial(method, q, k, v, offsets, max_len, lengths, kind), args.reps)
            fb = _time_cpu(_fwd_bwd(method, q, k, v, offsets, max_len, lengths, kind, dout), args.reps)
            peak = None
            if args.memory:
                mem = subprocess.run(
                    [sys.executable, __file__, "--_child-memory", "--kind", kind, "--method", name,
                     "--max-len", str(max_len), "--tokens", str(args.tokens), "--heads", str(args.heads),
                     "--dim", str(args.dim), "--mean-frac", str(frac)],
                    capture_output=True, text=True, check=True,
                    env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
                )
                peak = json.loads(mem.stdout.strip().splitlines()[-1])["peak_mib"]
            rows.append({
                "mode": "cpu", "kind": kind, "max_len": max_len, "mean_frac": frac, "batch": len(lengths),
                "tokens": sum(lengths),
                "heads": args.heads, "dim": args.dim, "dtype": "fp32", "method": name, "fwd_ms": fwd,
                "fwd_bwd_ms": fb,
                "peak_mib": peak,
            })
            print(_fmt_row(rows[-1]), flush=True)
    for r in rows:  # ratio of each method's time to the dispatch path's, same batch
        base = next(x for x in rows if x["kind"] == r["kind"] and x["max_len"] == r["max_len"]
                    and x["mean_frac"] == r["mean_frac"] and x["method"].startswith("dispatch"))
        r["fwd_bwd_vs_dispatch"] = r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
        r["fwd_vs_dispatch"] = r["fwd_ms"] / base["fwd_ms"]
    return rows


# ---------------------------------------------------------------------------------------------- GPU mode


def gpu_methods(kind, lengths, offsets, max_len, heads, device):
    methods = {"ours (triton)": lambda q, k, v: K.jagged_attention(q, k, v, offsets, max_len, kind=kind)}
    if kind == "softmax":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash_padded(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return padded_sdpa(q, k, v, offsets, max_len, lengths, kind)

        methods["padded SDPA (flash)"] = flash_padded
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), offsets.diff())
            total = int(offsets[-1])

            def document_causal(b, h, q_idx, kv_idx):
                return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

            block_mask = create_block_mask(document_causal, 1, 1, total, total, device=device)
            flex = torch.compile(flex_attention)

            def flex_doc(q, k, v):
                o = flex(*(x.transpose(0, 1)[None] for x in (q, k, v)), block_mask=block_mask)  # (1, H, T, D)
                return o[0].transpose(0, 1)

            methods["FlexAttention doc mask"] = flex_doc
        except Exception as e:  # noqa: BLE001 -- a missing baseline is reported, not fatal
            print(f"FlexAttention unavailable: {e}")
        try:
            from torch.nn.attention.varlen import varlen_attn

            cu = offsets.to(torch.int32)

            def varlen(q, k, v):
                return varlen_attn(q, k, v, cu, cu, max_len, max_len, window_size=(-1, 0))

            methods["torch varlen_attn"] = varlen
        except Exception as e:  # noqa: BLE001
            print(f"varlen_attn unavailable: {e}")
    else:
        def hstu_padded(q, k, v):
            return padded_hstu(q, k, v, offsets, max_len, lengths, kind)

        methods["padded PyTorch"] = hstu_padded
        methods["torch.compile(padded)"] = torch.compile(hstu_padded, dynamic=False)
    return methods


def _backward(fn, q, k, v, dout):
    fn(q, k, v).backward(dout)


def run_gpu(args):
    import triton.testing

    device = "cuda"
    dtype = torch.bfloat16
    # Correctness first, on the tests' inputs and reference (fp16 tolerances: bf16 is checked by the tests' CI only
    # on GPU machines, here with bf16 tolerances).
    for kind in args.kinds:
        x = make_inputs([0, 1, 17, 300, 64], 2, 64, kind=kind, dtype=dtype, device=device, targets="random",
                        window=100, pos_buckets=32, time_buckets=32)
        errs = check(K.jagged_attention_reference, K.jagged_attention, x)
        print(f"check {kind} bf16 vs reference: {errs}")
    rows = []
    for kind, max_len, frac in itertools.product(args.kinds, args.max_lens, args.mean_fracs):
        lengths = batch_for(max_len, args.tokens, frac)
        q, k, v, offsets = _inputs(lengths, args.heads, args.dim, dtype, device)
        dout = torch.randn_like(q)
        for name, fn in gpu_methods(kind, lengths, offsets, max_len, args.heads, device).items():
            try:
                fn(q, k, v).backward(dout)  # warm-up: compile, autotune
                fwd = triton.testing.do_bench(functools.partial(fn, q, k, v))
                fb = triton.testing.do_bench(
                    functools.partial(_backward, fn, q, k, v, dout), grad_to_none=[q, k, v]
                )
            except Exception as e:  # noqa: BLE001 -- e.g. OOM of a padded baseline at 8192
                print(f"{kind} {max_len} {name}: failed ({type(e).__name__}: {str(e)[:120]})")
                torch.cuda.empty_cache()
                continue
            rows.append({
                "mode": "gpu", "device": torch.cuda.get_device_name(), "kind": kind, "max_len": max_len,
                "mean_frac": frac,
                "batch": len(lengths), "tokens": sum(lengths), "heads": args.heads, "dim": args.dim,
                "dtype": "bf16",
                "method": name, "fwd_ms": fwd, "fwd_bwd_ms": fb,
                "fwd_tflops": flops(lengths, args.heads, args.dim, False) / fwd / 1e9,
                "fwd_bwd_tflops": flops(lengths, args.heads, args.dim, True) / fb / 1e9,
            })
            print(_fmt_row(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- output


def _fmt_row(r):
    extra = (f"{r['fwd_tflops']:7.1f} {r['fwd_bwd_tflops']:7.1f} TFLOP/s" if r["mode"] == "gpu"
             else "" if r["peak_mib"] is None else f"{r['peak_mib']:9.1f} MiB peak")
    return (f"{r['kind']:8s} L={r['max_len']:5d} m/M={r['mean_frac']:.2f} B={r['batch']:4d} {r['method']:28s} "
            f"fwd {r['fwd_ms']:9.2f} ms  fwd+bwd {r['fwd_bwd_ms']:9.2f} ms  {extra}")


def _table(rows):
    if rows[0]["mode"] == "cpu":
        head = "| kind | max_len | batch | method | fwd ms | fwd+bwd ms | fwd+bwd / dispatch | peak MiB (fwd+bwd) |"
        lines = [head, "|" + "---|" * 8]
        lines += [f"| {r['kind']} | {r['max_len']} | {r['batch']} | {r['method']} | {r['fwd_ms']:.1f} | "
                  f"{r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_vs_dispatch']:.2f} | "
                  f"{'-' if r['peak_mib'] is None else round(r['peak_mib'])} |" for r in rows]
    else:
        head = "| kind | max_len | batch | method | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |"
        lines = [head, "|" + "---|" * 8]
        lines += [f"| {r['kind']} | {r['max_len']} | {r['batch']} | {r['method']} | {r['fwd_ms']:.3f} | "
                  f"{r['fwd_tflops']:.1f} | {r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_tflops']:.1f} |" for r in rows]
    return "\n".join(lines)


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["kind"] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for method in dict.fromkeys(r["method"] for r in rows if r["kind"] == kind):
            pts = [(r["max_len"], r["fwd_bwd_ms"]) for r in rows if r["kind"] == kind and r["method"] == method]
            ax.plot(*zip(*pts), marker="o", label=method)
        ax.set(xscale="log", yscale="log", xlabel="max_len (batch ~ fixed real tokens)", ylabel="fwd+bwd ms",
               title=f"{kind} ({rows[0]['mode']})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true", help="CPU mode (default when no GPU)")
    mode.add_argument("--gpu", action="store_true")
    p.add_argument("--max-lens", type=int, nargs="+", default=None)
    p.add_argument("--mean-fracs", type=float, nargs="+", default=[0.25],
                   help="mean/max of the batch's lengths: skewed below 1, every sequence at max_len at 1")
    p.add_argument("--kinds", nargs="+", default=["softmax", "hstu"])
    p.add_argument("--tokens", type=int, default=None, help="real tokens per batch (default: cpu 8192, gpu 65536)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=None, help="head dim (default: cpu 32, gpu 64)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="CPU mode: skip the peak-memory subprocess per method (scripts/gpu_check.sh --dry-run)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_attention"))
    p.add_argument("--_child-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--max-len", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mean-frac", type=float, default=0.25, help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu = args.gpu or (not args.cpu and torch.cuda.is_available())
    args.tokens = args.tokens or (65536 if gpu else 8192)
    args.dim = args.dim or (64 if gpu else 32)
    if args._child_memory:
        return child_memory(args)
    args.max_lens = args.max_lens or ([256, 1024, 4096, 8192] if gpu else [256, 512, 1024])
    rows = run_gpu(args) if gpu else run_cpu(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_attention_{'gpu' if gpu else 'cpu'}"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    _plot(rows, stem.with_suffix(".png"))
    print()
    print(_table(rows))
    print(f"\nwrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
