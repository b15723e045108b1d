"""Data pipeline throughput and memory: e2erec vs a straightforward pandas groupby, measured in the same run.

    python scripts/bench_data.py                      # 10M synthetic events (~2 min on 2 cores)
    python scripts/bench_data.py --events 1000000     # quicker

The source is a Parquet log of synthetic events in global time order (how logs arrive: not grouped by user), so both
implementations must group and sort. Stages, each timed:

    ingest     read Parquet -> dedupe, stable (user, time) sort, contiguous ids -> cached Arrow (e2erec)
               read Parquet -> drop_duplicates, sort_values, factorize (pandas)
    sequences  memory-map the cache, leave-one-out split, training lengths (e2erec)
               groupby(user) -> per-user Python lists of items/timestamps/ratings (pandas)
    batches    one epoch of training histories (last --max-len events) as JaggedBatch under a --max-tokens budget
               (e2erec) / as padded [B, max_len] tensors, B chosen for the same token budget (pandas)

Each implementation runs in its own process so peak RSS (ru_maxrss) is its own; RSS after imports is reported too.
Writes <out>/data_bench.json and <out>/data_bench.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: the latter carries the parent's peak across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_source(path: Path, events: int, users: int, items: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from e2erec.data.config import SyntheticConfig
    from e2erec.data.synthetic import generate

    raw = generate(SyntheticConfig(n_users=users, n_items=items, n_events=events, n_interests=64, dim=32, seed=seed))
    order = np.argsort(raw.timestamp, kind="stable")  # a log in arrival order, users interleaved
    table = pa.table({"user_id": np.asarray(raw.user)[order], "item_id": np.asarray(raw.item)[order],
                      "timestamp": raw.timestamp[order], "rating": raw.feedback[order]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def run_e2erec(source: Path, cache: Path, max_len: int, max_tokens: int) -> dict:
    os.environ["E2EREC_CACHE"] = str(cache)
    import datasets  # noqa: F401 - imported up front like pandas below: import time is not throughput
    import pyarrow.parquet  # noqa: F401

    from e2erec.data import HistoryLoader, make_split, open_prepared, prepare
    from e2erec.data.config import DataConfig

    base = _rss_mb()
    cfg = DataConfig(name="bench", path=str(source), source="tabular")
    t0 = time.perf_counter()
    folder = prepare(cfg, progress=False, force=True)
    t1 = time.perf_counter()
    inter = open_prepared(folder)
    split = make_split(inter, cfg)
    users = np.flatnonzero(split.train_end > inter.offsets[:-1])
    t2 = time.perf_counter()
    loader = HistoryLoader(inter, users, split.train_end[users], max_len, max_tokens, seed=0)
    n_batches = tokens = 0
    for batch in loader:
        n_batches += 1
        tokens += batch.num_tokens
    t3 = time.perf_counter()
    arrow_mb = sum(f.stat().st_size for f in folder.glob("*.arrow")) / 2**20
    return {"events": inter.n_events, "ingest_s": t1 - t0, "sequences_s": t2 - t1, "batches_s": t3 - t2,
            "n_batches": n_batches, "tokens": tokens, "rss_after_imports_mb": base, "peak_rss_mb": _rss_mb(),
            "arrow_mb": arrow_mb}


def run_e2erec_read(cache: Path, max_len: int, max_tokens: int) -> dict:
    """What a training process pays: memory-map the prepared cache, split, one epoch of batches (no ingest)."""
    os.environ["E2EREC_CACHE"] = str(cache)
    import datasets  # noqa: F401

    from e2erec.data import HistoryLoader, make_split, open_prepared
    from e2erec.data.config import DataConfig

    base = _rss_mb()
    folder = next(p for p in (cache / "datasets").iterdir() if p.is_dir() and p.name.startswith("bench-"))
    t0 = time.perf_counter()
    inter = open_prepared(folder)
    split = make_split(inter, DataConfig())
    users = np.flatnonzero(split.train_end > inter.offsets[:-1])
    for _ in HistoryLoader(inter, users, split.train_end[users], max_len, max_tokens, seed=0):
        pass
    return {"seconds": time.perf_counter() - t0, "rss_after_imports_mb": base, "peak_rss_mb": _rss_mb()}


def run_pandas(source: Path, max_len: int, max_tokens: int) -> dict:
    import pandas as pd
    import torch

    base = _rss_mb()
    t0 = time.perf_counter()
    df = pd.read_parquet(source)
    df = df.drop_duplicates(["user_id", "item_id", "timestamp"], keep="last")
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    df["item_id"] = pd.factorize(df["item_id"], sort=True)[0]
    t1 = time.perf_counter()
    groups = df.groupby("user_id", sort=True)
    seqs = groups["item_id"].apply(list)
    times = groups["timestamp"].apply(list)
    ratings = groups["rating"].apply(list)
    # leave-one-out training part: drop the last two events of users with >= 3
    train = [s[:-2] if len(s) >= 3 else s[:1] for s in seqs]
    train_t = [s[:-2] if len(s) >= 3 else s[:1] for s in times]
    train_r = [s[:-2] if len(s) >= 3 else s[:1] for s in ratings]
    t2 = time.perf_counter()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    per_batch = max(1, max_tokens // max_len)
    n_batches = tokens = 0
    for s in range(0, len(order), per_batch):
        idx = order[s:s + per_batch]
        item = torch.full((len(idx), max_len), -1, dtype=torch.int64)
        ts = torch.zeros((len(idx), max_len), dtype=torch.int64)
        rt = torch.zeros((len(idx), max_len), dtype=torch.float32)
        for row, u in enumerate(idx):
            seq = train[u][-max_len:]
            item[row, :len(seq)] = torch.tensor(seq)
            ts[row, :len(seq)] = torch.tensor(train_t[u][-max_len:])
            rt[row, :len(seq)] = torch.tensor(train_r[u][-max_len:])
            tokens += len(seq)
        n_batches += 1
    t3 = time.perf_counter()
    return {"events": len(df), "ingest_s": t1 - t0, "sequences_s": t2 - t1, "batches_s": t3 - t2,
            "n_batches": n_batches, "tokens": tokens, "rss_after_imports_mb": base, "peak_rss_mb": _rss_mb()}


def _child(args: argparse.Namespace, which: str) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--out", str(args.out), "--max-len", str(args.max_len),
           "--max-tokens", str(args.max_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["ingest", "sequences", "batches", "end to end"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, (name, r) in enumerate(results.items()):
        total = r["ingest_s"] + r["sequences_s"] + r["batches_s"]
        rates = [r["events"] / r[f"{s}_s"] / 1e6 for s in stages[:3]] + [r["events"] / total / 1e6]
        ax.bar(np.arange(4) + 0.4 * k, rates, width=0.4, label=name)
    ax.set_xticks(np.arange(4) + 0.2, stages)
    ax.set_ylabel("M events / s")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("data pipeline throughput (same run, shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=None, help="default: events / 100")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--child", choices=["e2erec", "e2erec_read", "pandas"], help=argparse.SUPPRESS)
    args = p.parse_args()
    source = args.out / "bench_source.parquet"
    if args.child == "e2erec":
        print(json.dumps(run_e2erec(source, args.out / "cache", args.max_len, args.max_tokens)))
        return 0
    if args.child == "e2erec_read":
        print(json.dumps(run_e2erec_read(args.out / "cache", args.max_len, args.max_tokens)))
        return 0
    if args.child == "pandas":
        print(json.dumps(run_pandas(source, args.max_len, args.max_tokens)))
        return 0
    users = args.users or max(1, args.events // 100)
    print(f"generating {args.events:,} synthetic events ({users:,} users, {args.items:,} items) -> {source}", flush=True)
    make_source(source, args.events, users, args.items, args.seed)
    results = {}
    for which in ("e2erec", "e2erec_read", "pandas"):
        print(f"running {which} ...", flush=True)
        results[which] = _child(args, which)
    read = results.pop("e2erec_read")
    ours, ref = results["e2erec"], results["pandas"]
    rows = []
    for stage in ("ingest", "sequences", "batches"):
        a, b = ours[f"{stage}_s"], ref[f"{stage}_s"]
        rows.append((stage, a, b, ours["events"] / a, ref["events"] / b, b / a))
    ta = sum(ours[f"{s}_s"] for s in ("ingest", "sequences", "batches"))
    tb = sum(ref[f"{s}_s"] for s in ("ingest", "sequences", "batches"))
    rows.append(("end to end", ta, tb, ours["events"] / ta, ref["events"] / tb, tb / ta))
    print(f"\n{ours['events']:,} events, max_len {args.max_len}, max_tokens {args.max_tokens}, {os.cpu_count()} CPUs "
          "(shared with other work: absolute numbers are noisy, ratios are within one run)\n")
    print("| stage | e2erec s | pandas s | e2erec events/s | pandas events/s | speed-up |")
    print("|---|---|---|---|---|---|")
    for stage, a, b, ra, rb, x in rows:
        print(f"| {stage} | {a:.2f} | {b:.2f} | {ra / 1e6:.2f} M | {rb / 1e6:.2f} M | {x:.1f}x |")
    print(f"| peak RSS | {ours['peak_rss_mb']:.0f} MB | {ref['peak_rss_mb']:.0f} MB | after imports "
          f"{ours['rss_after_imports_mb']:.0f} MB | after imports {ref['rss_after_imports_mb']:.0f} MB | |")
    growth = ours["peak_rss_mb"] - ours["rss_after_imports_mb"]
    print(f"\nArrow cache {ours['arrow_mb']:.0f} MB; e2erec peak RSS above imports {growth:.0f} MB "
          f"= {growth / ours['arrow_mb']:.2f}x the Arrow data (goal <= 2x); "
          f"end to end {ours['events'] / ta / 1e6:.2f} M events/s (goal >= 1 M)")
    read_growth = read["peak_rss_mb"] - read["rss_after_imports_mb"]
    print(f"a training process (memory-map the cache, split, one epoch of batches; no ingest): peak RSS above imports "
          f"{read_growth:.0f} MB = {read_growth / ours['arrow_mb']:.2f}x the Arrow data, {read['seconds']:.2f} s")
    summary = {"events": ours["events"], "max_len": args.max_len, "max_tokens": args.max_tokens, "results": results, "e2erec_read": read,
               "table": [dict(zip(["stage", "e2erec_s", "pandas_s", "e2erec_eps", "pandas_eps", "speedup"], r)) for r in rows]}
    (args.out / "data_bench.json").write_text(json.dumps(summary, indent=2))
    plot(results, args.out / "data_bench.png")
    print(f"wrote {args.out / 'data_bench.json'} and {args.out / 'data_bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
