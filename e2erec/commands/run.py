"""`e2erec run`: the whole pipeline on one dataset, in one command, within a time budget.

    e2erec run                                    # MovieLens-100K (offline), mini model, 15-minute budget
    e2erec run --dataset synthetic --model-size small --time-budget 60
    e2erec run --config my_run.yaml train.lr=3e-4

Stages: prepare data -> semantic IDs -> train the end-to-end model (DeepSpeed, one process) -> fit the baselines
-> evaluate everything under one protocol -> report (markdown + JSON + plots). Training gets a share of the
budget that is left after the cheap stages; it stops (and exports) when its share is spent.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "The whole pipeline on a dataset: prepare -> tokenize -> train -> evaluate -> report."

# Measured on ml-100k on a 2-core CPU (see the README): data + semantic IDs take ~1 minute, the baselines with
# eval=fast ~2-4 minutes, generation + evaluation ~1 minute; training gets half of what remains.
TRAIN_SHARE = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="run config: a name under configs/run/ or a YAML path")
    parser.add_argument("--dataset", default=None, help="a data config under configs/data/ (ml-100k, synthetic, ...)")
    parser.add_argument("--model-size", default=None, help="a model config under configs/model/ (tiny, small, ...)")
    parser.add_argument("--time-budget", type=float, default=15.0, help="minutes for the whole pipeline (default 15)")
    parser.add_argument("--systems", default=None, help="comma-separated baselines (default: eval.baselines)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 eval.bootstrap=100")


def _stage(name: str, start: float) -> None:
    print(f"\n== {name} (t+{time.perf_counter() - start:.0f}s)", flush=True)


def run(args: argparse.Namespace) -> int:
    from e2erec.baselines import build_baseline
    from e2erec.config import load_run_config, save_resolved
    from e2erec.data import load_dataset, make_split
    from e2erec.data.stats import dataset_stats, format_stats
    from e2erec.eval.report import evaluate_systems
    from e2erec.generate.system import GenerativeSystem
    from e2erec.tokenizer.semantic_ids import load_or_build_semantic_ids
    from e2erec.train.engine import train
    from e2erec.utils.io import cache_root

    start = time.perf_counter()
    budget_s = args.time_budget * 60
    sections = [f"data={args.dataset}"] if args.dataset else []
    sections += [f"model={args.model_size}"] if args.model_size else []
    cfg = load_run_config(args.config, sections + list(args.overrides))
    names = [n.strip() for n in args.systems.split(",") if n.strip()] if args.systems else list(cfg.eval.baselines)
    baselines = [build_baseline(name) for name in names]  # unknown names fail before any work
    run_dir = cfg.run_dir
    save_resolved(cfg, run_dir)

    _stage(f"data: {cfg.data.name}", start)
    inter = load_dataset(cfg.data)
    split = make_split(inter, cfg.data)
    print(format_stats(dataset_stats(inter), inter.meta.get("filters")))

    _stage(f"semantic IDs: {cfg.tokenizer.quantizer}, {cfg.tokenizer.levels} levels x {cfg.tokenizer.codebook_size}",
           start)
    sids, sid_dir, built = load_or_build_semantic_ids(inter, split, cfg.tokenizer, cache_root(cfg.data.cache_dir))
    print(f"{'built' if built else 'reused'} {sid_dir} (codebook sizes {sids.codebook_sizes})")

    remaining = budget_s - (time.perf_counter() - start)
    train_budget = max(30.0, TRAIN_SHARE * remaining)
    if cfg.train.time_budget_s > 0:
        train_budget = min(train_budget, cfg.train.time_budget_s)
    _stage(f"train: {cfg.model.name} ({cfg.model.backbone}), up to {train_budget:.0f}s", start)
    cfg.train.time_budget_s = train_budget
    cfg.train.semantic_ids = str(sid_dir)
    status = train(cfg)
    export = run_dir / "export"
    if status != 0 or not (export / "meta.json").exists():
        print(f"training ended with status {status}; see {run_dir / 'metrics.jsonl'}")
        return status or 1

    _stage(f"baselines: {', '.join(names) or 'none'}", start)
    for system in baselines:
        t0 = time.perf_counter()
        system.fit(inter, split, cfg)
        print(f"fitted {system.name} in {time.perf_counter() - t0:.0f}s", flush=True)

    _stage("generate + evaluate", start)
    systems, _ = GenerativeSystem.both_orders(export, inter)
    report_dir = run_dir / "eval"
    evaluate_systems(systems + baselines, inter, split, cfg.eval, report_dir)
    elapsed = time.perf_counter() - start
    print(f"\nDone in {elapsed / 60:.1f} min (budget {args.time_budget:g} min). Report: {Path(report_dir) / 'report.md'}")
    return 0
