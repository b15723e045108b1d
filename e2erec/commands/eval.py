"""`e2erec eval [--config run.yaml] [key=value ...] [--systems popularity,sasrec,...]`: fit the chosen baselines on
the training split (early-stopped on validation), evaluate them all on the same test targets, write the report.

    e2erec eval                                                   # ml-100k, every baseline in eval.baselines
    e2erec eval --systems popularity,sasrec eval.baseline_epochs=5
    e2erec eval data=synthetic --out runs/synth-eval
    e2erec eval --export runs/default/export --systems sasrec     # a trained end-to-end model beside SASRec
    e2erec eval --steering-bench --export runs/default/export     # the schedulability benchmark against the cascade
    e2erec eval --explain-bench --export runs/default/export      # are the reasons faithful? (explain_bench.json)

The report (report.md, report.json, PNG plots) and the resolved config go to `--out`, default `<run dir>/eval`;
`--predictions top50.parquet` also writes every system's list per test target in the dataset's ids.
`--steering-bench` runs the schedulability benchmark instead (`e2erec/eval/steering_bench.py`): every operator
instruction inside the export's search and as a post-filter of each `--systems` cascade (default: cascade), written
to steering_bench.json, steering_bench.md and objective_curve.png in `--out`, and as a section of report.md there.

Under torchrun, srun or the deepspeed launcher every rank fits the (seeded, deterministic) baselines, then each
rank generates and scores a disjoint block of the test (and validation) users; rank 0 gathers them and writes the
report, whose numbers are the single-process run's:

    torchrun --nproc_per_node 8 -m e2erec eval --export runs/default/export
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

HELP = "Evaluate the end-to-end model and the baselines under one protocol; write a report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="run config: a name under configs/run/ or a YAML path")
    parser.add_argument("--systems", default=None,
                        help="comma-separated systems to fit and evaluate (default: eval.baselines from the config)")
    parser.add_argument("--export", action="append", default=[], metavar="DIR",
                        help="an `e2erec train` export to evaluate beside the baselines, in generation and "
                             "generation x calibration order (repeatable)")
    parser.add_argument("--device", default="auto",
                        help="where the model and the beam search run: auto (the GPU when there is one), cpu, cuda")
    parser.add_argument("--out", default=None, help="report folder (default: <run dir>/eval)")
    parser.add_argument("--predictions", default=None, metavar="PATH",
                        help="also write every system's top-K list per test target, in the dataset's ids, to PATH "
                             "(.jsonl or .parquet)")
    parser.add_argument("--steering-bench", action="store_true",
                        help="run the schedulability benchmark of --export against --systems (default: cascade) "
                             "post-filtering, instead of the report")
    parser.add_argument("--explain-bench", action="store_true",
                        help="measure the faithfulness and cost of --export's reasons (deletion test, planted check "
                             "on synthetic data) instead of the report: explain_bench.json in --out")
    parser.add_argument("--bench-users", type=int, default=None, metavar="N",
                        help="the bench on the test targets of N sampled users (default: all for --steering-bench, "
                             "300 for --explain-bench)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval.baseline_epochs=5 data=ml-1m")


def run(args: argparse.Namespace) -> int:
    from e2erec.baselines import build_baseline
    from e2erec.config import load_run_config, save_resolved
    from e2erec.eval.protocol import ShardedScoring
    from e2erec.eval.report import evaluate_systems
    from e2erec.train.distributed import join_launched_group

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.predictions:
        from e2erec.eval.predictions import prediction_format

        prediction_format(args.predictions)  # a bad extension fails before any work
    cfg = load_run_config(args.config, args.overrides)
    if args.steering_bench:
        return _steering_bench(args, cfg)
    if args.explain_bench:
        return _explain_bench(args, cfg)
    rank, world_size = join_launched_group(args.device)
    names = [n.strip() for n in args.systems.split(",") if n.strip()] if args.systems else list(cfg.eval.baselines)
    systems = [build_baseline(name) for name in names]  # unknown names fail here, before any data work
    inter, split, ctx = _fit_on_the_split(systems, cfg)
    generative = []
    for export in args.export:
        from e2erec.generate.system import GenerativeSystem

        pair, _ = GenerativeSystem.both_orders(export, inter, cfg, args.device)
        for system in pair:
            system.fit(inter, split, ctx)  # the joint order's weight (and any repeat bonus), on validation
            if len(args.export) > 1:  # tell the models apart by their run folder
                system.name = f"{system.name}:{Path(export).resolve().parent.name}"
        generative += pair
    if world_size > 1:  # each rank scores its block of the targets; the generative systems shard themselves
        systems = [ShardedScoring(s) for s in systems]
        print(f"rank {rank}: generation and scoring sharded over {world_size} ranks", flush=True)
    systems = generative + systems
    out = Path(args.out) if args.out else cfg.run_dir / "eval"
    if rank == 0:
        save_resolved(cfg, out)
    evaluate_systems(systems, inter, split, cfg.eval, out if rank == 0 else None, predictions=args.predictions)
    if rank == 0 and args.predictions:
        print(f"predictions: {args.predictions}")
    return 0


def _steering_bench(args: argparse.Namespace, cfg) -> int:
    """Fit the post-filtering systems and the export's joint order on validation, then run the benchmark."""
    from e2erec.baselines import build_baseline
    from e2erec.config import save_resolved
    from e2erec.errors import E2ERecError
    from e2erec.eval.steering_bench import run_bench, write_bench
    from e2erec.generate.system import GenerativeSystem

    if len(args.export) != 1:
        raise E2ERecError("--steering-bench needs exactly one --export (the model whose search follows the "
                          "instructions)")
    names = [n.strip() for n in (args.systems or "cascade").split(",") if n.strip()]
    cascades = [build_baseline(name) for name in names]
    from e2erec.baselines.cascade import Cascade

    missing = [s.name for s in cascades if not isinstance(s, Cascade)]
    if missing:
        raise E2ERecError(f"--steering-bench --systems: {missing} have no retrieval depth to post-filter; use "
                          "cascade or plugin_cascade")
    inter, split, ctx = _fit_on_the_split(cascades, cfg)
    _, joint = GenerativeSystem.both_orders(args.export[0], inter, cfg, args.device)[0]
    joint.fit(inter, split, ctx)
    bench = run_bench(joint, cascades, inter, split, bootstrap=cfg.eval.bootstrap, seed=cfg.eval.seed,
                      max_users=args.bench_users or 0)
    out = Path(args.out) if args.out else cfg.run_dir / "eval"
    save_resolved(cfg, out, "steering_bench_config.yaml")
    path = write_bench(bench, out, cfg.data.name)
    print(f"steering bench: {path}")
    return 0


def _explain_bench(args: argparse.Namespace, cfg) -> int:
    """The reasons of the export's top-10 lists (joint order, w = 1), tested for faithfulness and timed."""
    from e2erec.config import save_resolved
    from e2erec.errors import E2ERecError
    from e2erec.explain.bench import run_explain_bench, write_explain_bench
    from e2erec.generate.system import GenerativeSystem

    if len(args.export) != 1:
        raise E2ERecError("--explain-bench needs exactly one --export (the model whose reasons are tested)")
    inter, split, _ = _fit_on_the_split([], cfg)  # nothing to fit: the export's model is trained
    system, _ = GenerativeSystem.from_export(args.export[0], inter, cfg, args.device, rank_by="joint")
    entry = run_explain_bench(system, inter, split, max_users=300 if args.bench_users is None else args.bench_users,
                              bootstrap=cfg.eval.bootstrap, seed=cfg.eval.seed)
    out = Path(args.out) if args.out else cfg.run_dir / "eval"
    save_resolved(cfg, out, "explain_bench_config.yaml")
    path = write_explain_bench(entry, out, cfg.data.name)
    print(f"explain bench: {path}")
    for key in ("cited_drop", "random_drop", "recent_drop", "planted_share", "chance_share"):
        if key in entry:
            v = entry[key]
            print(f"  {key:14s} {v['value']:.4f} [{v['lo']:.4f}, {v['hi']:.4f}]")
    print(f"  explain {entry['explain_seconds_per_user']:.4f} s/user, generate {entry['generate_seconds_per_user']:.4f} "
          f"s/user ({entry['cost_ratio']:.2f}x)")
    return 0


def _fit_on_the_split(systems: list, cfg):
    """Load the dataset, split it, and fit each system (early-stopped on validation). Returns (inter, split, ctx)."""
    from e2erec.data import load_dataset, make_split
    from e2erec.eval.protocol import FitContext

    inter = load_dataset(cfg.data)
    split = make_split(inter, cfg.data)
    ctx = FitContext.from_run(cfg)
    for system in systems:
        t0 = time.perf_counter()
        system.fit(inter, split, ctx)
        print(f"fitted {system.name} in {time.perf_counter() - t0:.1f}s", flush=True)
    return inter, split, ctx
