"""`e2erec generate --export DIR [--users 1,2,3] [--k 10] [steering overrides]`: top-K items per user from a trained
model, by trie-constrained beam search (only real items), steered inside the search, ordered by the calibration
head. Prints a table (item, title, P(positive)) per user, or JSON lines with --json.

    e2erec generate --export runs/default/export --users 0,1 --k 10
    e2erec generate --export runs/default/export eval.steering.include_categories=[Comedy]
    e2erec generate --export runs/default/export eval.steering.explore_share=0.3 eval.steering.freshness_weight=2
"""

from __future__ import annotations

import argparse
import json

HELP = "Generate top-K items per user with trie-constrained, steerable beam search."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", required=True, help="an export folder written by `e2erec train` (<run>/export)")
    parser.add_argument("--users", default="0", help="comma-separated user indices (contiguous ids), or 'all'")
    parser.add_argument("--k", type=int, default=10, help="items per user")
    parser.add_argument("--rank-by", choices=("calibration", "beam", "joint"), default="calibration",
                        help="order the generated items by the calibration head (default), by generation score, or "
                             "by log P_gen + log P_calib (joint, w = 1; `e2erec eval` chooses w on validation)")
    parser.add_argument("--device", default="auto",
                        help="where the model and the beam search run: auto (the GPU when there is one), cpu, cuda")
    parser.add_argument("--json", action="store_true", help="one JSON line per user")
    parser.add_argument("overrides", nargs="*", help="eval.steering.* (and other) overrides for this generation")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from e2erec.config import RunConfig, from_dict, parse_overrides, to_dict
    from e2erec.errors import DataError
    from e2erec.generate.system import GenerativeSystem
    from e2erec.train.distributed import join_launched_group

    rank, _ = join_launched_group(args.device)  # under a launcher each rank generates a block of the users
    system, inter = GenerativeSystem.from_export(args.export, device=args.device, rank_by=args.rank_by)
    if args.overrides:  # re-validate the export's config with the steering overrides applied
        merged = to_dict(system.cfg)
        for key, value in parse_overrides(args.overrides):
            node = merged
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        system.cfg = from_dict(RunConfig, merged, source="command line")
    users = np.arange(inter.n_users) if args.users == "all" else np.array([int(u) for u in args.users.split(",")])
    if users.min() < 0 or users.max() >= inter.n_users:
        raise DataError(f"--users: user indices must be in [0, {inter.n_users}), got {args.users}")
    # Generate for "now": each user's whole history (every event is history; the target row is one past the end).
    items, scores = system.generate_for(inter, users, inter.offsets[users + 1], args.k)
    if rank != 0:  # rank 0 has every user's list and prints them
        return 0
    titles = inter.items.title
    for user, row, score in zip(users, items, scores):
        picks = [(int(i), titles[i], float(s)) for i, s in zip(row, score) if i >= 0]
        if args.json:
            print(json.dumps({"user": int(user), "raw_user": inter.user_raw_id[user],
                              "items": [{"item": i, "title": t, "score": s} for i, t, s in picks]}))
        else:
            print(f"user {user} ({inter.user_raw_id[user]}):")
            for rank, (i, t, s) in enumerate(picks, 1):
                print(f"  {rank:3d}. {t or inter.items.raw_id[i]:<60.60} {s:8.4f}")
    return 0
