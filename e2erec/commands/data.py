"""`e2erec data prepare|stats <name|path> [--config run.yaml] [key=value ...]`.

    e2erec data prepare ml-100k                      # offline: MovieLens-100K out of the RecBole wheel
    e2erec data prepare ml-1m                        # files.grouplens.org (sha256 recorded at first download)
    e2erec data prepare synthetic data.synthetic.n_events=10000000
    e2erec data prepare ./my.inter                   # RecBole atomic files; also a MovieLens folder/zip, Amazon
                                                     # .json(.gz), CSV/TSV/Parquet/JSON lines (see data.columns)
    e2erec data stats ml-100k data.min_user_events=5 # users, items, events, length percentiles, density, filters

A name with a file under configs/data/ selects that section; a registered name (ml-100k, ml-1m, ml-20m, synthetic)
sets data.name; anything else is a path (data.path). Overrides on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "Prepare datasets and print their statistics."
REGISTERED = ("ml-100k", "ml-1m", "ml-20m", "synthetic")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a dataset name (ml-100k, ml-1m, ml-20m, synthetic, configs/data/<name>) or a path")
    p.add_argument("--config", default=None, help="run config: a name under configs/run/ or a YAML path")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.min_user_events=5")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    prep = sub.add_parser("prepare", help="read, clean and cache a dataset (memory-mapped Arrow)",
                          description="Read a dataset, dedupe/filter/sort it and write its cache (atomically).")
    _common(prep)
    prep.add_argument("--force", action="store_true", help="rebuild the cache even if it exists")
    stats = sub.add_parser("stats", help="print users, items, events, sequence-length percentiles, density",
                           description="Print a dataset's statistics (prepares it first if needed).")
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")


def _data_config(args: argparse.Namespace):
    from pathlib import Path

    from e2erec.config import CONFIG_ROOT, load_run_config

    target = args.target
    if (CONFIG_ROOT / "data" / f"{target}.yaml").exists():
        pre = [f"data={target}"]
    elif target in REGISTERED:
        pre = [f"data.name={target}"]
    else:
        pre = [f"data.name={Path(target).name}", f"data.path={target}"]
    return load_run_config(args.config, pre + list(args.overrides)).data


def run(args: argparse.Namespace) -> int:
    from e2erec.data import dataset_stats, format_stats, load_dataset, prepare

    cfg = _data_config(args)
    progress = not args.quiet
    if args.action == "prepare":
        path = prepare(cfg, progress=progress, force=args.force)
        print(path)
        return 0
    inter = load_dataset(cfg, progress=progress)
    stats = dataset_stats(inter)
    if args.json:
        json.dump({**stats, "filters": inter.meta.get("filters", []), "cache_dir": inter.meta["cache_dir"]},
                  sys.stdout, indent=2)
        print()
    else:
        print(format_stats(stats, inter.meta.get("filters")))
    return 0
