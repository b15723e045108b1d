"""Tune the baselines on validation from a small documented grid; print the table and write JSON.

    python scripts/tune_baselines.py                          # ml-100k, SASRec and cascade grids, 2 lanes
    python scripts/tune_baselines.py --only sasrec --lanes 1
    python scripts/tune_baselines.py --only sasrec --grid lr=2e-3,4e-3 sasrec_layers=1,2,3

Every grid point is a full fit under the protocol's early-stopping rule (`eval.patience` epochs, at most
`eval.baseline_epochs`), scored on the validation targets only — the test targets are never read — with the same
selection metric the fit stops on (`eval.select_metric`, NDCG@10). For the cascade the point's score is the whole
cascade's validation NDCG@10 (retrieval then ranking), with its ranker's validation LogLoss beside it. The winners
are the `baseline` section's defaults (e2erec/baselines/config.py); the run's table goes in the issue note. Points run in `--lanes` spawned
single-threaded processes (one per core). Writes <out>/tune_baselines.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import time
from pathlib import Path

GRIDS = {
    # SASRec: width, dropout and learning rate (2 blocks, 1 head as in the paper).
    "sasrec": {"sasrec_dim": [64, 128], "sasrec_dropout": [0.2, 0.5], "lr": [1e-3, 2e-3]},
    # The cascade (both stages share width and learning rate): its ranker's capacity and step size.
    "cascade": {"cascade_dim": [64, 128], "lr": [1e-3, 2e-3]},
}


def _point(job: tuple[str, str, list[str], dict]) -> dict:
    config, system_name, overrides, params = job
    import numpy as np
    import torch

    from e2erec.baselines import build_baseline
    from e2erec.baselines.common import select_score
    from e2erec.config import load_run_config
    from e2erec.data import load_dataset, make_split
    from e2erec.eval.metrics import log_loss
    from e2erec.eval.protocol import FitContext

    torch.set_num_threads(1)
    cfg = load_run_config(config, overrides + [f"baseline.{k}={v}" for k, v in params.items()])
    inter = load_dataset(cfg.data, progress=False)
    split = make_split(inter, cfg.data)
    system = build_baseline(system_name)
    t0 = time.perf_counter()
    system.fit(inter, split, FitContext.from_run(cfg))
    seconds = time.perf_counter() - t0
    valid = split.valid
    recs = system.recommend(inter, valid, cfg.eval.top_k)
    row = {"system": system_name, **params, "valid_" + cfg.eval.select_metric:
           select_score(recs, inter.item[valid], cfg.eval.select_metric), "fit_s": seconds}
    proba = system.predict_proba(inter, valid, inter.item[valid])
    if proba is not None:
        row["valid_logloss"] = float(log_loss(np.asarray(proba), inter.label[valid]))
    logs = system.fit_log if isinstance(system.fit_log, dict) else {"": system.fit_log.to_dict()}
    row["stages"] = {k or system_name: {"epochs": len(v["valid"]), "best_epoch": v["best_epoch"],
                                        "stop": v["stop_reason"]} for k, v in logs.items() if "best_epoch" in v}
    print(json.dumps(row), flush=True)
    return row


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="default", help="run config (its data and eval sections)")
    p.add_argument("--only", choices=sorted(GRIDS), default=None)
    p.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2",
                   help="replace the grid of --only's system with these baseline keys and values")
    p.add_argument("--lanes", type=int, default=2, help="parallel single-threaded fits (default 2)")
    p.add_argument("--out", default="bench_out")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every point")
    args = p.parse_args()
    if args.grid:
        if not args.only:
            p.error("--grid needs --only")
        GRIDS[args.only] = {k: [_number(v) for v in vs.split(",")]
                            for k, vs in (item.split("=", 1) for item in args.grid)}
    jobs = []
    for name, grid in GRIDS.items():
        if args.only and name != args.only:
            continue
        for values in itertools.product(*grid.values()):
            jobs.append((args.config, name, list(args.overrides), dict(zip(grid, values))))
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(max(1, args.lanes)) as pool:
        rows = pool.map(_point, jobs, chunksize=1)
    metric = next(k for k in rows[0] if k.startswith("valid_") and k != "valid_logloss")
    print(f"\n{len(rows)} fits in {(time.perf_counter() - t0) / 60:.1f} min; winner per system by {metric}:\n")
    keys = sorted({k for r in rows for k in GRIDS[r["system"]]})
    header = ["system", *keys, metric, "valid_logloss", "fit_s", "epochs (best, stop)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    best = {}
    for r in sorted(rows, key=lambda r: (r["system"], -r[metric])):
        best.setdefault(r["system"], r)
        stages = "; ".join(f"{k} {v['epochs']} ({v['best_epoch']}, {v['stop']})" for k, v in r["stages"].items())
        mark = " **(winner)**" if best[r["system"]] is r else ""
        print("| " + " | ".join([r["system"] + mark, *[str(r.get(k, "")) for k in keys], f"{r[metric]:.4f}",
                                 f"{r['valid_logloss']:.4f}" if "valid_logloss" in r else "—",
                                 f"{r['fit_s']:.0f}", stages]) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune_baselines.json").write_text(json.dumps({"grids": GRIDS, "rows": rows, "metric": metric,
                                                         "winners": best}, indent=1))
    print(f"\nwrote {out / 'tune_baselines.json'}")


if __name__ == "__main__":
    main()
