"""The one prepared GPU check (`bash scripts/gpu_check.sh`): everything a few minutes on one H100/H200 can prove.

Steps, each a subprocess with its own share of the time budget (default 480 s), stopped when its share runs out:
1. kernels:   the compiled Triton kernels against the reference on CUDA, fp32 and bf16
              (tests/kernels/test_kernels_cuda.py under E2EREC_KERNEL_TESTS=cuda);
2. attention: `bench_attention.py --gpu`, ms and TFLOP/s (causal, unpadded work only) forward and forward+backward,
              at mean/max 0.25 and 1.0, against FlexAttention, padded SDPA and varlen attention;
3. train:     `bench_train.py --mode gpu`, tokens/s and MFU of `base` and `1b` in bf16;
4. generate:  `bench_generate.py`, users/s of the beam search at beam 50.
Triton's compile and autotune caches live in <out>/triton_cache, so a rerun skips them.
Writes <out>/gpu_check.json (every step's status, seconds and numbers, and the issue-21 goals read from them) and
prints a table. `--dry-run` runs the same steps on the CPU at tiny sizes (interpreter kernels), so CI keeps the
script working; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Shares of the budget per step (they sum to 1); a step that finishes early leaves its time to the next ones.
SHARES = {"kernels": 0.25, "attention": 0.3, "train": 0.3, "generate": 0.15}


def commands(out: Path, dry_run: bool) -> dict[str, list[str]]:
    py = sys.executable
    if dry_run:
        return {
            "kernels": [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels/test_kernels_interpreter.py",
                        "-k", "test_matches_reference_fp32 and (plain or all)"],
            "attention": [py, "scripts/bench_attention.py", "--cpu", "--max-lens", "64", "--mean-fracs", "0.25", "1.0",
                          "--tokens", "256", "--reps", "1", "--no-memory", "--out", str(out)],
            "train": [py, "scripts/bench_train.py", "--mode", "cpu", "--models", "tiny", "--steps", "2", "--warmup", "1",
                      "--workers", "0", "--versus-seqs", "0", "--batch-tokens", "1024", "--out", str(out)],
            "generate": [py, "scripts/bench_generate.py", "--device", "cpu", "--model", "tiny", "--users", "32",
                         "--batch", "32", "--beam", "10", "--items", "2000", "--mean-len", "32", "--repeats", "1",
                         "--out", str(out)],
        }
    return {
        "kernels": [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels/test_kernels_cuda.py"],
        "attention": [py, "scripts/bench_attention.py", "--gpu", "--max-lens", "1024", "4096", "--mean-fracs", "0.25",
                      "1.0", "--out", str(out)],
        "train": [py, "scripts/bench_train.py", "--mode", "gpu", "--models", "base", "1b", "--steps", "10",
                  "--warmup", "3", "--workers", "0", "--out", str(out)],
        "generate": [py, "scripts/bench_generate.py", "--device", "cuda", "--model", "base", "--users", "4096",
                     "--beam", "50", "--out", str(out)],
    }


def run_step(name: str, cmd: list[str], timeout: float, env: dict, log: Path) -> dict:
    """Run one step in its own process group (a timeout stops its children too: compile workers, bench children);
    its output goes to `log`, its last lines into the summary."""
    t0 = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=max(timeout, 1)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, timed_out = 124, True
    seconds = time.perf_counter() - t0
    print(f"[gpu_check] {name}: {'ok' if rc == 0 else 'timed out' if timed_out else f'failed (exit {rc})'} "
          f"in {seconds:.0f} s (log: {log})", flush=True)
    return {"ok": rc == 0, "rc": rc, "timed_out": timed_out, "seconds": round(seconds, 1),
            "tail": log.read_text(errors="replace").strip().splitlines()[-5:]}


def read_results(out: Path, dry_run: bool) -> dict:
    """Each bench's JSON, as written."""
    mode = "cpu" if dry_run else "gpu"
    files = {"attention": out / f"bench_attention_{mode}.json", "train": out / f"bench_train_{mode}.json",
             "generate": out / f"bench_generate_{'cpu' if dry_run else 'cuda'}.json"}
    return {name: json.loads(path.read_text()) for name, path in files.items() if path.exists()}


def goals(results: dict) -> dict:
    """The issue-21 goals, read from the GPU numbers (None where a number is missing)."""
    rows = results.get("attention", [])

    def best(kind, method_prefix, frac, max_len=None):
        hits = [r for r in rows if r["kind"] == kind and r["method"].startswith(method_prefix)
                and r.get("mean_frac") == frac and (max_len is None or r["max_len"] == max_len)]
        return max((r["fwd_bwd_tflops"] for r in hits), default=None)

    ours, flex = best("softmax", "ours", 0.25), best("softmax", "FlexAttention", 0.25)
    padded = best("softmax", "padded SDPA", 0.25)
    hstu = best("hstu", "ours", 1.0, 4096) or best("hstu", "ours", 0.25, 4096)
    train = {r["model"]: r for r in (results.get("train") or {}).get("throughput", [])}
    mfu = train.get("1b", {}).get("mfu")
    return {
        "softmax_vs_flex": None if None in (ours, flex) else ours / flex,
        "softmax_vs_padded_sdpa": None if None in (ours, padded) else ours / padded,
        "hstu_tflops_4096": hstu,
        "mfu_1b": mfu,
        "targets": {"softmax_vs_flex": ">= 1", "softmax_vs_padded_sdpa": ">= 3",
                    "hstu_tflops_4096": ">= 350 (H100)", "mfu_1b": ">= 0.40"},
    }


def table(summary: dict) -> str:
    title = (f"GPU check ({summary['mode']}, {summary['device']}, budget {summary['budget_s']:.0f} s, "
             f"took {summary['seconds']:.0f} s)")
    lines = [title, "", f"{'step':<10}{'status':<12}{'seconds':>8}"]
    for name, step in summary["steps"].items():
        status = ("skipped" if step.get("skipped") else "ok" if step["ok"] else "timed out" if step["timed_out"]
                  else f"exit {step['rc']}")
        lines.append(f"{name:<10}{status:<12}{step['seconds']:>8.0f}")
    res = summary["results"]
    for r in res.get("attention", []):
        if r["mode"] == "gpu":
            lines.append(f"  attention {r['kind']:8s} L={r['max_len']:5d} m/M={r['mean_frac']:.2f} {r['method']:26s} "
                         f"fwd {r['fwd_tflops']:6.1f}  fwd+bwd {r['fwd_bwd_tflops']:6.1f} TFLOP/s")
    for r in (res.get("train") or {}).get("throughput", []):
        mfu = f"  MFU {r['mfu']:.1%}" if "mfu" in r else ""
        lines.append(f"  train {r['model']:6s} {r['precision']:5s} {r['tokens_per_s']:12,.0f} tokens/s{mfu}")
    if "generate" in res:
        g = res["generate"]
        lines.append(f"  generate {g['model']} beam {g['beam']}: {g['users_per_s']:,.0f} users/s")
    if summary["mode"] == "gpu":
        lines.append("")
        for key, target in summary["goals"]["targets"].items():
            value = summary["goals"][key]
            lines.append(f"  goal {key:24s} {'-' if value is None else f'{value:.3g}':>8}  (target {target})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes (for CI)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together (default 480)")
    p.add_argument("--out", type=Path, default=ROOT / "bench_out")
    p.add_argument("--steps", nargs="*", default=list(SHARES), choices=list(SHARES), help="a subset of the steps")
    args = p.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device is visible: run on a GPU machine, or pass --dry-run")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TRITON_CACHE_DIR": str(out / "triton_cache"), "TRITON_CACHE_AUTOTUNING": "1",
           "TRITON_DEFAULT_FP_FUSION": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                     os.environ.get("PYTHONPATH")]))}
    if not args.dry_run:
        env["E2EREC_KERNEL_TESTS"] = "cuda"
    t_start = time.perf_counter()
    steps, cmds = {}, commands(out, args.dry_run)
    for i, name in enumerate(SHARES):
        if name not in args.steps:
            steps[name] = {"ok": True, "skipped": True, "rc": 0, "timed_out": False, "seconds": 0.0, "tail": []}
            continue
        left = args.budget - (time.perf_counter() - t_start)
        later = sum(SHARES[n] for n in list(SHARES)[i:] if n in args.steps)
        share = left * SHARES[name] / later  # this step's part of what is left
        steps[name] = run_step(name, cmds[name], share, env, out / f"gpu_check_{name}.log")
    results = read_results(out, args.dry_run)
    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    summary = {"mode": "dry-run" if args.dry_run else "gpu", "device": device, "budget_s": args.budget,
               "seconds": round(time.perf_counter() - t_start, 1), "steps": steps, "results": results,
               "goals": goals(results) if not args.dry_run else {}}
    path = out / "gpu_check.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, path)
    print()
    print(table(summary))
    print(f"\nwrote {path}")
    return 0 if all(s["ok"] for s in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
