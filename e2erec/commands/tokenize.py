"""`e2erec tokenize [--config run.yaml] [key=value ...] [--compare]`: build a dataset's semantic IDs.

    e2erec tokenize                                       # ml-100k, MiniLM text embeddings, RQ-KMeans 3 x 256
    e2erec tokenize tokenizer.quantizer=rq_vae tokenizer.codebook_size=64
    e2erec tokenize data=ml-100k tokenizer.embedding=hybrid
    e2erec tokenize --compare                             # RQ-KMeans vs RQ-VAE vs random codes, same embeddings

The artifact is saved in the cache (`<cache>/semantic_ids/<dataset>-<key>/`, keyed by data fingerprint + split +
tokenizer config) with its metrics (in meta.json); an existing one is reused unless --force.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

HELP = "Build semantic IDs for a dataset's items."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="run config: a name under configs/run/ or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. tokenizer.codebook_size=64")
    parser.add_argument("--compare", action="store_true",
                        help="quantize the same embeddings with rq_kmeans, rq_vae and random; print one table")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached artifact exists")
    parser.add_argument("--out", default=None, help="also copy the artifact (or the --compare JSON) here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from e2erec.config import load_run_config
    from e2erec.data import load_dataset, make_split
    from e2erec.tokenizer.embed import embed_items
    from e2erec.tokenizer.semantic_ids import build_semantic_ids, load_or_build_semantic_ids, metrics_table
    from e2erec.utils.io import atomic_write_json, cache_root, fingerprint

    cfg = load_run_config(args.config, args.overrides)
    progress = not args.quiet
    inter = load_dataset(cfg.data, progress=progress)
    split = make_split(inter, cfg.data)
    cache = cache_root(cfg.data.cache_dir)

    if args.compare:
        emb, report = embed_items(inter, split, cfg.tokenizer, cache, progress=progress)
        rows = {}
        for quantizer in ("rq_kmeans", "rq_vae", "random"):
            tcfg = dataclasses.replace(cfg.tokenizer, quantizer=quantizer)
            _, rows[quantizer] = build_semantic_ids(inter, split, tcfg, cache, progress=progress, embeddings=emb)
        print(f"{inter.meta.get('name', 'data')}: {inter.n_items} items, {cfg.tokenizer.embedding} embeddings "
              f"({report.get('dim')}-d), {cfg.tokenizer.levels} levels x {cfg.tokenizer.codebook_size} codes")
        print(metrics_table(rows))
        key = fingerprint(inter.meta.get("fingerprint"), dataclasses.asdict(cfg.tokenizer))
        out = Path(args.out) if args.out else cache / "semantic_ids" / f"compare-{inter.meta.get('name')}-{key}.json"
        atomic_write_json(out, {"dataset": inter.meta.get("name"), "embedding": report, "quantizers": rows})
        print(f"saved {out}")
        return 0

    sem, directory, built = load_or_build_semantic_ids(inter, split, cfg.tokenizer, cache, force=args.force,
                                                       progress=progress)
    metrics = sem.meta.get("metrics", {})
    print(f"{'built' if built else 'cached'} semantic IDs: {sem.n_items} items, codebook_sizes {sem.codebook_sizes}"
          f" -> {directory}")
    if metrics.get("dedup_level_size"):
        print(f"{metrics['items_colliding']} items collided on all {cfg.tokenizer.levels} codes "
              f"(collision rate {metrics['collision_rate']:.3f}): added a disambiguation level of size "
              f"{metrics['dedup_level_size']}")
    print(metrics_table({cfg.tokenizer.quantizer: metrics}))
    if args.out:
        sem.save(args.out)
        print(f"copied to {args.out}")
    print(json.dumps({"artifact": str(directory)}))
    return 0
