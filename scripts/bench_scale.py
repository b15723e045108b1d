"""The scale ladder: synthetic logs of growing size through every stage; per stage wall time, peak RSS and the
log-log slope of time against events between rungs. Table on stdout, JSON + plot in --out.

    python scripts/bench_scale.py                         # rungs 1m and 10m (~25 min on 2 cores)
    python scripts/bench_scale.py --rungs 1m 10m 100m     # the full ladder (100M events, 1M items)

Rungs (users = events / 100, as in configs/data/synthetic-10m.yaml; 100k: a one-minute smoke run):

    1m     1,000,000 events     10,000 items     10,000 users
    10m   10,000,000 events    100,000 items    100,000 users
    100m 100,000,000 events  1,000,000 items  1,000,000 users

Before its stages, each rung writes its log once (not timed): the synthetic generator's events in global time
order, as a real log arrives, to `<out>/<rung>/events.parquet` (user_id, item_id, timestamp, rating; 1M-row row
groups). Stages, each in its own process (so its peak RSS, VmHWM, is its own) over the rung's own cache:

    prepare   ingest the Parquet log into the Arrow cache (`load_dataset`: read, encode ids, sort by (user, time),
              dedupe, write); `arrow_mb` is the prepared data on disk, and the goal is a peak above the imports of
              at most 2x it
    tokenize  collaborative embedding (pairs at most --window events apart, --samples of them per event on
              average, so linear in events) + RQ-KMeans, 3 x 256 codes
    train     --train-steps steps of the tiny model (DeepSpeed, one process)
    generate  top 50 by trie-constrained beam search (beam 50) for --users sampled test users; s_per_user
    evaluate  the generation-order e2erec against Popularity on those users (and SASRec, 2 epochs with a sampled
              softmax over 1024 negatives, on rungs of at most --sasrec-max-events), full report with 200 bootstrap
              resamples

The model, beam and users are the same at every rung, so generation time per user compares catalogue sizes
directly (goal: at 1M items <= 1.5x its time at 10K items). Timings are from a shared 2-core machine: compare them
within one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

RUNGS = {"100k": (100_000, 1_000), "1m": (1_000_000, 10_000), "10m": (10_000_000, 100_000), "100m": (100_000_000, 1_000_000)}
STAGES = ("prepare", "tokenize", "train", "generate", "evaluate")
ROW_GROUP = 1 << 20


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def write_log(rung: str, path: Path) -> None:
    """The rung's synthetic events in time order as a Parquet file (atomic: a cut-short run leaves no file)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from e2erec.data.config import SyntheticConfig
    from e2erec.data.synthetic import generate

    events, items = RUNGS[rung]
    raw = generate(SyntheticConfig(n_events=events, n_items=items, n_users=events // 100, n_interests=64, dim=32),
                   progress=False)
    order = np.argsort(raw.timestamp, kind="stable")
    user = raw.user.to_numpy().astype(np.int32)
    item = raw.item.to_numpy().astype(np.int32)
    raw.user = raw.item = None
    schema = pa.schema([("user_id", pa.int32()), ("item_id", pa.int32()), ("timestamp", pa.int64()),
                        ("rating", pa.float32())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, events, ROW_GROUP):
            rows = order[start:start + ROW_GROUP]
            writer.write_table(pa.table([user[rows], item[rows], raw.timestamp[rows], raw.feedback[rows]],
                                        schema=schema))
    tmp.replace(path)


def _overrides(rung: str, work: Path, args) -> list[str]:
    return [
        "data.source=tabular", f"data.path={work / 'events.parquet'}", f"data.name=synthetic-{rung}",
        f"data.cache_dir={work / 'cache'}", "data.max_seq_len=200",
        "tokenizer.embedding=collaborative", f"tokenizer.cooccurrence_window={args.window}",
        f"tokenizer.cooccurrence_samples={args.samples}", "baseline.sasrec_negatives=1024",
        "model=tiny", f"train.max_steps={args.train_steps}", "train.eval_every=0", "train.ckpt_every=0",
        "train.tensorboard=false", "train.final_eval_max_targets=256", "train.calibration_targets=2048",
        "train.warmup_steps=10", f"out_dir={work / 'run'}",
        "generate.beam_size=50", "eval.top_k=50", "eval.ks=[10,50]", "eval.bootstrap=200",
    ]


def run_stage(stage: str, rung: str, work: Path, args) -> dict:
    """One stage in this process; returns its row (the parent process adds nothing but the table)."""
    import numpy as np

    from e2erec.config import load_run_config
    from e2erec.data import load_dataset, make_split
    from e2erec.tokenizer.semantic_ids import load_or_build_semantic_ids
    from e2erec.utils.io import cache_root

    base_rss = _status_mb("VmRSS")  # the interpreter, torch and numpy: what every stage pays before any data
    cfg = load_run_config(None, _overrides(rung, work, args))
    t0 = time.perf_counter()
    inter = load_dataset(cfg.data, progress=False)
    row: dict = {"stage": stage, "rung": rung, "events": len(inter.item), "items": int(inter.n_items)}
    if stage == "prepare":
        row["seconds"] = time.perf_counter() - t0
        row["arrow_mb"] = sum(f.stat().st_size for f in Path(cache_root(cfg.data.cache_dir)).rglob("*.arrow")) / 2**20
        row["peak_rss_mb"], row["base_rss_mb"] = _peak_rss_mb(), base_rss
        return row
    split = make_split(inter, cfg.data)
    cache = cache_root(cfg.data.cache_dir)
    if stage == "tokenize":
        t0 = time.perf_counter()
        sids, _, _ = load_or_build_semantic_ids(inter, split, cfg.tokenizer, cache, progress=False)
        row.update(seconds=time.perf_counter() - t0, codebook_sizes=list(sids.codebook_sizes))
    else:
        sids, sid_dir, _ = load_or_build_semantic_ids(inter, split, cfg.tokenizer, cache, progress=False)
        if stage == "train":
            from e2erec.train.engine import train

            cfg.train.semantic_ids = str(sid_dir)
            t0 = time.perf_counter()
            if train(cfg) != 0:
                raise RuntimeError("training failed")
            row["seconds"] = time.perf_counter() - t0
            row["steps"] = args.train_steps
        else:
            from e2erec.generate.system import GenerativeSystem

            rng = np.random.default_rng(0)
            test = np.asarray(split.test)
            users = np.sort(rng.choice(test, size=min(args.users, len(test)), replace=False))
            system, _ = GenerativeSystem.from_export(cfg.run_dir / "export", inter, cfg, device="cpu")
            if stage == "generate":
                t0 = time.perf_counter()
                items = system.recommend(inter, users, cfg.eval.top_k)
                row.update(seconds=time.perf_counter() - t0, users=len(users),
                           full_lists=float((items >= 0).all(axis=1).mean()))
                row["s_per_user"] = row["seconds"] / len(users)
            else:
                import dataclasses

                from e2erec.baselines import build_baseline
                from e2erec.eval.protocol import FitContext
                from e2erec.eval.report import evaluate_systems

                baselines = ["popularity"] + (["sasrec"] if row["events"] <= args.sasrec_max_events else [])
                cfg.eval.baseline_epochs = 2
                t0 = time.perf_counter()
                fitted, ctx = [], FitContext.from_run(cfg)
                for name in baselines:
                    b = build_baseline(name)
                    b.fit(inter, split, ctx)
                    fitted.append(b)
                row["fit_seconds"] = time.perf_counter() - t0
                sample = dataclasses.replace(split, test=users)
                t0 = time.perf_counter()
                report = evaluate_systems([system, *fitted], inter, sample, cfg.eval, work / "eval", progress=False)
                row["seconds"] = time.perf_counter() - t0
                row["ndcg@10"] = {s["name"]: s["overall"]["ndcg@10"]["value"] for s in report["systems"]}
    row["peak_rss_mb"] = _peak_rss_mb()
    return row


def slopes(rows: list[dict]) -> dict:
    """Per stage: d log(seconds) / d log(events) between consecutive rungs."""
    out = {}
    for stage in STAGES:
        pts = sorted((r["events"], r["seconds"]) for r in rows if r["stage"] == stage and r.get("seconds"))
        out[stage] = [math.log(t2 / t1) / math.log(e2 / e1) for (e1, t1), (e2, t2) in itertools.pairwise(pts)]
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for stage in STAGES:
        pts = sorted((r["events"], r["seconds"], r["peak_rss_mb"]) for r in rows if r["stage"] == stage)
        if pts:
            axes[0].loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=stage)
            axes[1].loglog([p[0] for p in pts], [p[2] / 1024 for p in pts], "o-", label=stage)
    axes[0].set_ylabel("wall seconds")
    axes[1].set_ylabel("peak RSS (GiB)")
    for ax in axes:
        ax.set_xlabel("events")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rungs", nargs="*", default=["1m", "10m"], choices=sorted(RUNGS))
    p.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    p.add_argument("--window", type=int, default=20, help="tokenizer.cooccurrence_window (default 20)")
    p.add_argument("--samples", type=int, default=4, help="tokenizer.cooccurrence_samples (default 4)")
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--users", type=int, default=10_000, help="sampled test users to generate for and evaluate")
    p.add_argument("--sasrec-max-events", type=int, default=10_000_000)
    p.add_argument("--out", type=Path, default=Path("bench_out/scale"))
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
    p.add_argument("--rung", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage == "log":
        write_log(args.rung, args.out / args.rung / "events.parquet")
        return
    if args.stage:
        row = run_stage(args.stage, args.rung, args.out / args.rung, args)
        print("ROW " + json.dumps(row), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rung in args.rungs:
        log_file = args.out / rung / "events.parquet"
        if not log_file.exists():
            print(f"[bench_scale] {rung}: writing the time-ordered log {log_file} (not timed) ...", flush=True)
            log_file.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, __file__, "--stage", "log", "--rung", rung, "--out", str(args.out)],
                           check=True)
        for stage in args.stages:
            cmd = [sys.executable, __file__, "--stage", stage, "--rung", rung, "--out", str(args.out),
                   "--window", str(args.window), "--samples", str(args.samples), "--train-steps",
                   str(args.train_steps), "--users", str(args.users),
                   "--sasrec-max-events", str(args.sasrec_max_events)]
            print(f"[bench_scale] {rung}: {stage} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
            if proc.returncode != 0 or not found:
                print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
                rows.append({"stage": stage, "rung": rung, "error": proc.stderr.strip().splitlines()[-1:]})
                break  # later stages of this rung need this one's output
            rows.append(json.loads(found[-1][4:]))
            r = rows[-1]
            print(f"[bench_scale] {rung}: {stage} {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    ok = [r for r in rows if "seconds" in r]
    fits = slopes(ok)
    print(f"\n| stage | {' | '.join(args.rungs)} | slope (log time / log events) |")
    print("|---|" + "---|" * (len(args.rungs) + 1))
    for stage in args.stages:
        cells = []
        for rung in args.rungs:
            r = next((x for x in rows if x["stage"] == stage and x["rung"] == rung), None)
            if r is None or "seconds" not in r:
                cells.append("failed" if r else "—")
                continue
            extra = (f", {r['arrow_mb']:.0f} MB Arrow (peak above imports "
                     f"{(r['peak_rss_mb'] - r['base_rss_mb']) / max(r['arrow_mb'], 1e-9):.1f}x)"
                     if "arrow_mb" in r else f", {r['s_per_user'] * 1e3:.1f} ms/user" if "s_per_user" in r else "")
            cells.append(f"{r['seconds']:.1f} s, {r['peak_rss_mb']:.0f} MB{extra}")
        print(f"| {stage} | {' | '.join(cells)} | {', '.join(f'{s:.2f}' for s in fits[stage]) or '—'} |")
    gen = [r for r in ok if r["stage"] == "generate"]
    if len(gen) > 1:
        print(f"\ngeneration per user, largest / smallest catalogue: "
              f"{gen[-1]['s_per_user'] / gen[0]['s_per_user']:.2f}x ({gen[0]['items']:,} -> {gen[-1]['items']:,} items)")
    (args.out / "bench_scale.json").write_text(json.dumps({"rows": rows, "slopes": fits, "argv": sys.argv[1:]},
                                                          indent=1))
    plot(ok, args.out / "bench_scale.png")
    print(f"\nwrote {args.out / 'bench_scale.json'} and .png")


if __name__ == "__main__":
    main()
