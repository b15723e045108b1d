"""`e2erec run`: the whole pipeline on one dataset, in one command, within a time budget.

    e2erec run                                    # MovieLens-100K (offline), mini model, 15-minute budget
    e2erec run --dataset synthetic --model-size small --time-budget 60
    e2erec run --config my_run.yaml train.lr=3e-4

Stages: prepare data -> semantic IDs -> train the end-to-end model (DeepSpeed, one process) while the baselines fit
beside it (`e2erec.baselines.lanes`: one single-threaded lane per core) -> evaluate everything under one protocol ->
report (markdown + JSON + plots). Every trained system runs under the protocol's early-stopping rule
(`e2erec.eval.stopping`); the time left after the cheap stages, less what evaluation needs, bounds them all, and a
system that the bound stops before it converged says so in the report's training section.

`--seeds N` runs the whole comparison N times (seed, train.seed and eval.seed = seed, seed + 1, ...) into
<run_dir>/seed_<s>/ and writes <run_dir>/seeds.md and seeds.json: mean ± std over seeds per system and metric.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HELP = "The whole pipeline on a dataset: prepare -> tokenize -> train -> evaluate -> report."

# Wall time kept back for generation, the joint order's weight choice and the report (ml-100k, 2-core CPU: ~1 min).
EVAL_RESERVE_S = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="run config: a name under configs/run/ or a YAML path")
    parser.add_argument("--dataset", default=None, help="a data config under configs/data/ (ml-100k, synthetic, ...)")
    parser.add_argument("--model-size", default=None, help="a model config under configs/model/ (tiny, small, ...)")
    parser.add_argument("--time-budget", type=float, default=15.0, help="minutes for the whole pipeline (default 15)")
    parser.add_argument("--systems", default=None, help="comma-separated baselines (default: eval.baselines)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="run the whole comparison with this many seeds and report mean ± std (default 1)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 eval.bootstrap=100")


def _stage(name: str, start: float) -> None:
    print(f"\n== {name} (t+{time.perf_counter() - start:.0f}s)", flush=True)


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        from e2erec.config import ConfigError

        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}", key="--seeds")
    if args.seeds == 1:
        return run_once(args)
    from e2erec.config import load_run_config
    from e2erec.eval.seeds import write_seed_report

    base = load_run_config(args.config, _sections(args) + list(args.overrides))
    reports = []
    for i in range(args.seeds):
        seed = base.seed + i
        print(f"\n######## seed {seed} ({i + 1} of {args.seeds})", flush=True)
        run_dir = base.run_dir / f"seed_{seed}"
        # The model's initialisation (seed), the batch order (train.seed), the baselines and the bootstrap (eval.seed).
        extra = [f"seed={seed}", f"train.seed={seed}", f"eval.seed={seed}", f"out_dir={run_dir}"]
        # Each seed in a fresh process, as a user would run it: DeepSpeed keeps process-group state per process.
        status = subprocess.run([sys.executable, "-m", "e2erec", "run", *_passthrough(args), *extra], check=False)
        if status.returncode != 0:
            return status.returncode
        reports.append(run_dir / "eval" / "report.json")
    out = write_seed_report(reports, base.run_dir)
    print(f"\n{args.seeds}-seed summary: {out}")
    return 0


def _passthrough(args: argparse.Namespace) -> list[str]:
    """This command's arguments, less --seeds, for one seed's run."""
    out = ["--time-budget", str(args.time_budget)]
    for flag, value in (("--config", args.config), ("--dataset", args.dataset), ("--model-size", args.model_size),
                        ("--systems", args.systems)):
        out += [flag, value] if value is not None else []
    return out + list(args.overrides)


def _sections(args: argparse.Namespace) -> list[str]:
    return ([f"data={args.dataset}"] if args.dataset else []) + ([f"model={args.model_size}"] if args.model_size else [])


def run_once(args: argparse.Namespace, extra: list[str] = ()) -> int:
    import os

    import torch

    from e2erec.baselines import build_baseline
    from e2erec.baselines.lanes import BaselineLanes
    from e2erec.config import load_run_config, save_resolved
    from e2erec.data import load_dataset, make_split
    from e2erec.data.stats import dataset_stats, format_stats
    from e2erec.eval.protocol import FitContext
    from e2erec.eval.report import evaluate_systems
    from e2erec.generate.system import GenerativeSystem
    from e2erec.tokenizer.semantic_ids import load_or_build_semantic_ids
    from e2erec.train.engine import train
    from e2erec.utils.io import cache_root

    start = time.perf_counter()
    budget_s = args.time_budget * 60
    cfg = load_run_config(args.config, _sections(args) + list(args.overrides) + list(extra))
    names = [n.strip() for n in args.systems.split(",") if n.strip()] if args.systems else list(cfg.eval.baselines)
    for name in names:
        build_baseline(name)  # unknown names fail before any work
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

    # Everything trained shares the time left before evaluation: the end-to-end model here, the baselines in the
    # helper lane beside it and then here too.
    train_budget = max(30.0, budget_s - (time.perf_counter() - start) - EVAL_RESERVE_S)
    if cfg.train.time_budget_s > 0:
        train_budget = min(train_budget, cfg.train.time_budget_s)
    cores = os.cpu_count() or 1
    helper = bool(names) and cores >= 2
    lanes = BaselineLanes(names, cfg, deadline_s=train_budget, helper=helper)
    _stage(f"train: {cfg.model.name} ({cfg.model.backbone}), up to {train_budget:.0f}s"
           + (f"; baselines beside it: {', '.join(names)}" if helper else ""), start)
    cfg.train.time_budget_s = train_budget
    cfg.train.semantic_ids = str(sid_dir)
    if helper and cfg.train.threads == 0:
        cfg.train.threads = max(1, cores - 1)
    try:
        status = train(cfg)
        export = run_dir / "export"
        if status != 0 or not (export / "meta.json").exists():
            print(f"training ended with status {status}; see {run_dir / 'metrics.jsonl'}")
            return status or 1
        _stage(f"baselines: {', '.join(names) or 'none'}", start)
        baselines = lanes.finish(inter, split)
    finally:
        lanes.close()
    torch.set_num_threads(cores)

    _stage("generate + evaluate", start)
    systems, _ = GenerativeSystem.both_orders(export, inter, device=cfg.train.device)
    ctx = FitContext.from_run(cfg)
    for system in systems:
        system.fit(inter, split, ctx)
    report_dir = run_dir / "eval"
    evaluate_systems(systems + baselines, inter, split, cfg.eval, report_dir)
    elapsed = time.perf_counter() - start
    print(f"\nDone in {elapsed / 60:.1f} min (budget {args.time_budget:g} min). Report: {Path(report_dir) / 'report.md'}")
    return 0
