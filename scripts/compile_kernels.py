"""Compile every Triton attention kernel for a GPU on this machine (no GPU needed) and record what it costs.

    python scripts/compile_kernels.py                          # the full matrix, sm_90 (H100 / H200)
    python scripts/compile_kernels.py --kernels fwd --kinds softmax --head-dims 64 --dtypes bf16

For each entry kernel (forward, backward dq, backward dk/dv), kind (softmax, HSTU), head dim, dtype and autotune
config, `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` produces PTX and a cubin on the CPU
(../shared/notes/cpu-toolchain.md). `ptxas -v` on that PTX (the wheel's own, `ptxas-blackwell` for sm_90+, which
Triton itself calls) reports registers and spills; shared memory is the compiled kernel's metadata. The variant is
the model's: targets + position bias + time bias, no window, the GPU's precision flags, and the divisibility
specialisation a real launch gets (`divisibility`).

Writes `bench_out/compile_kernels.json`: one row per (kernel, kind, head_dim, dtype, config) with `ok`,
`registers`, `spill_bytes` (spill stores + loads), `shared_bytes`, `kept` (whether `_prune` keeps the config for
that head dim) and `error`; prints a table. ~2-20 s per compile on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[1]

from e2erec_kernels import triton_attention as T

KERNELS = {"fwd": T._fwd_kernel, "bwd_dq": T._bwd_dq_kernel, "bwd_dkdv": T._bwd_dkdv_kernel}
# The autotune configs a GPU run sees (`_configs` returns them only when CUDA is visible): (M, N, warps, stages).
GPU_SHAPES = T.GPU_CONFIG_SHAPES
FP32_POINTERS = {"LSE", "DELTA", "DPOS", "DTIME"}
I64_POINTERS = {"OFFSETS", "NUM_TARGETS", "TS"}
INTS = {"H", "D", "P", "T", "window", "LEN_BUCKET"}
FLOATS = {"scale", "norm"}
H100_SHARED_BYTES = 227 * 1024  # opt-in shared memory per block on sm_90


def signature(fn, dtype: str) -> dict[str, str]:
    """Triton type of every argument: tensors by role, strides and sizes as i32, scales as fp32."""
    out = {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            out[name] = "constexpr"
        elif name in FP32_POINTERS:
            out[name] = "*fp32"
        elif name in I64_POINTERS:
            out[name] = "*i64"
        elif name in INTS or name.startswith("s"):
            out[name] = "i32"
        elif name in FLOATS:
            out[name] = "fp32"
        else:
            out[name] = f"*{dtype}"  # q, k, v, o, their gradients, the bias tables
    return out


def divisibility(fn, sig: dict[str, str]) -> dict:
    """The specialisation a real launch gets (Triton's `tt.divisibility` 16): every tensor pointer (torch allocates
    16-byte aligned), every stride and the sizes that are multiples of 16 at the model's shapes (head dim, bucket
    counts, the length bucket). Without it the compiler cannot vectorise loads and its index math spills (measured:
    the 128x64/w8/s2 forward at head dim 64 goes from 2,528 spilled bytes to none)."""
    divisible = {"D", "P", "T", "LEN_BUCKET"}
    return {(i,): [["tt.divisibility", 16]] for i, param in enumerate(fn.params)
            if sig[param.name].startswith("*") or (sig[param.name] == "i32" and (param.name.startswith("s")
                                                                                or param.name in divisible))}


def constexprs(kind: str, head_dim: int, dtype: str, block_m: int, block_n: int) -> dict:
    """The model's launch: targets + position and time biases, no window, on CUDA (no upcast)."""
    return {"KIND": 0 if kind == "softmax" else 1, "HAS_TARGETS": True, "HAS_WINDOW": False, "HAS_POS": True,
            "HAS_TIME": True, "UPCAST": False, "PREC": "ieee" if dtype == "fp32" else "tf32", "BLOCK_D": head_dim,
            "BLOCK_M": block_m, "BLOCK_N": block_n}


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) from the wheel's ptxas -v on the PTX."""
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = bin_dir / ("ptxas-blackwell" if (bin_dir / "ptxas-blackwell").exists() else "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([str(ptxas), "-v", f"--gpu-name=sm_{arch}a", str(src), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True, check=True)
    text = res.stderr + res.stdout
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", text))
    return regs, spills


def compile_one(kernel: str, kind: str, head_dim: int, dtype: str, shape: tuple, arch: int) -> dict:
    block_m, block_n, warps, stages = shape
    fn = KERNELS[kernel].fn
    row = {"kernel": kernel, "kind": kind, "head_dim": head_dim, "dtype": dtype,
           "config": f"{block_m}x{block_n}/w{warps}/s{stages}", "arch": f"sm_{arch}",
           "kept": T.kept_by_prune(kernel, shape, head_dim), "ok": False, "registers": None, "spill_bytes": None,
           "shared_bytes": None, "error": None}
    t0 = time.perf_counter()
    try:
        sig = signature(fn, dtype)
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs(kind, head_dim, dtype, block_m, block_n),
                        attrs=divisibility(fn, sig))
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps, "num_stages": stages})
        row["registers"], row["spill_bytes"] = ptxas_usage(compiled.asm["ptx"], arch)
        row["shared_bytes"] = int(compiled.metadata.shared)
        row["wgmma"] = "wgmma" in compiled.asm["ptx"]
        row["ok"] = True
    except Exception as e:  # noqa: BLE001 -- a failed compile is a row, not the end of the sweep
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--kinds", nargs="+", default=["softmax", "hstu"], choices=["softmax", "hstu"])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=["bf16", "fp16", "fp32"])
    p.add_argument("--configs", nargs="+", default=None, help="e.g. 128x64/w8/s2 (default: every autotune config)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200, 100: B200)")
    p.add_argument("--out", type=Path, default=ROOT / "bench_out" / "compile_kernels.json")
    args = p.parse_args(argv)
    shapes = [s for s in GPU_SHAPES if args.configs is None or f"{s[0]}x{s[1]}/w{s[2]}/s{s[3]}" in args.configs]
    rows = []
    for kernel, kind, head_dim, dtype, shape in itertools.product(args.kernels, args.kinds, args.head_dims,
                                                                  args.dtypes, shapes):
        rows.append(compile_one(kernel, kind, head_dim, dtype, shape, args.arch))
        r = rows[-1]
        status = (f"regs {r['registers']:3d}  spill {r['spill_bytes']:6d} B  shared {r['shared_bytes'] // 1024:3d} KiB"
                  if r["ok"] else f"FAILED {r['error']}")
        print(f"{kernel:9s} {kind:8s} d={head_dim:3d} {dtype:5s} {r['config']:14s} {'kept' if r['kept'] else '    '}  "
              f"{status}  ({r['seconds']:.1f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, args.out)
    ok = [r for r in rows if r["ok"]]
    spilling = [r for r in ok if r["spill_bytes"]]
    kept_bad = [r for r in ok if r["kept"] and (r["spill_bytes"] or r["shared_bytes"] > H100_SHARED_BYTES)]
    print(f"\n{len(ok)}/{len(rows)} compiled; {len(spilling)} spill; {len(kept_bad)} of the configs `_prune` keeps "
          f"spill or exceed shared memory; wrote {args.out}")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
