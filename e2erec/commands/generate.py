"""`e2erec generate --export DIR [--users 1,2,3] [--k 10] [steering overrides]`: top-K items per user from a trained
model, by trie-constrained beam search (only real items), steered inside the search, ordered by the calibration
head. Users and items are named by the dataset's own ids. Prints a table (item, title, P(positive)) per user, JSON
lines with --json, or writes every list to --output (JSON lines or Parquet by extension).

    e2erec generate --export runs/default/export --users 1,2 --k 10          # raw user ids "1" and "2"
    e2erec generate --export runs/default/export --users 0,1 --user-index    # contiguous indices instead
    e2erec generate --export runs/default/export --users all --output top10.parquet
    e2erec generate --export runs/default/export generate.steering.include_categories=[Comedy]
    e2erec generate --export runs/default/export generate.steering.explore_share=0.3 generate.steering.freshness_weight=2
    e2erec generate --export runs/default/export generate.steering.history_days=3 generate.steering.min_year=1995
    e2erec generate --export runs/default/export --users 1,2 --explain      # a reason under every item
    e2erec generate --export runs/default/export --explain generate.explain.deny_categories=[Horror]

Every generate.steering key is an operator's instruction (e2erec/generate/config.py); e2erec/serve.py takes the
same keys per request.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

HELP = "Generate top-K items per user with trie-constrained, steerable beam search."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", required=True, help="an export folder written by `e2erec train` (<run>/export)")
    parser.add_argument("--users", default=None,
                        help="comma-separated user ids as in the dataset, or 'all' (default: the first user)")
    parser.add_argument("--user-index", action="store_true",
                        help="--users are contiguous user indices (0 .. n_users-1), not the dataset's ids")
    parser.add_argument("--k", type=int, default=10, help="items per user")
    parser.add_argument("--rank-by", choices=("calibration", "beam", "joint"), default="calibration",
                        help="order the generated items by the calibration head (default), by generation score, or "
                             "by log P_gen + log P_calib (joint, w = 1; `e2erec eval` chooses w on validation)")
    parser.add_argument("--device", default="auto",
                        help="where the model and the beam search run: auto (the GPU when there is one), cpu, cuda")
    parser.add_argument("--json", action="store_true", help="one JSON line per user")
    parser.add_argument("--explain", action="store_true",
                        help="a reason under every item: the history events that drove it, what its semantic-ID "
                             "cluster means, the steering that acted on it, its calibrated probability "
                             "(generate.explain.* sets the event counts and the deny-lists)")
    parser.add_argument("--output", default=None, metavar="PATH",
                        help="write every user's list to PATH (.jsonl or .parquet) instead of printing them")
    parser.add_argument("overrides", nargs="*", help="generate.steering.* (and other) overrides for this generation")


def select_users(spec: str | None, raw_ids: list[str], by_index: bool) -> np.ndarray:
    """User indices from --users: the dataset's ids (default), indices with --user-index, or 'all'."""
    import numpy as np

    from e2erec.errors import DataError

    n = len(raw_ids)
    if spec is None:
        return np.zeros(1, np.int64)
    if spec == "all":
        return np.arange(n)
    given = [u.strip() for u in spec.split(",") if u.strip()]
    if by_index:
        try:
            users = np.array([int(u) for u in given], np.int64)
        except ValueError:
            raise DataError(f"--users with --user-index: indices must be integers, got {spec!r}") from None
        if len(users) == 0 or users.min() < 0 or users.max() >= n:
            raise DataError(f"--users: user indices must be in [0, {n}), got {spec}")
        return users
    index = {raw: i for i, raw in enumerate(raw_ids)}
    unknown = [u for u in given if u not in index]
    if unknown or not given:
        hint = " (pass --user-index to give contiguous indices)" if all(u.isdigit() for u in unknown) else ""
        raise DataError(f"--users: no user {', '.join(map(repr, unknown[:5])) or repr(spec)} in the dataset{hint}")
    return np.array([index[u] for u in given], np.int64)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from e2erec.config import RunConfig, from_dict, parse_overrides, to_dict
    from e2erec.eval.predictions import prediction_format, write_predictions
    from e2erec.generate.system import GenerativeSystem
    from e2erec.train.distributed import join_launched_group

    if args.output and args.explain:
        from e2erec.errors import DataError

        raise DataError("--explain prints the reasons (a table, or JSON lines with --json); it does not write "
                        "--output")
    if args.output:
        prediction_format(args.output)  # a bad extension fails before the model loads
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
    users = select_users(args.users, inter.user_raw_id, args.user_index)
    # Generate for "now": each user's whole history (every event is history; the target row is one past the end).
    items, scores = system.generate_for(inter, users, inter.offsets[users + 1], args.k)
    if rank != 0:  # rank 0 has every user's list and writes them
        return 0
    raw_users = np.asarray(inter.user_raw_id, dtype=object)[users]
    if args.explain:
        return _print_reasons(system, inter, users, raw_users, items, args.json)
    if args.output:
        path = write_predictions(args.output, {"user": raw_users, "user_index": users}, items, scores,
                                 inter.items.raw_id)
        print(f"wrote the top {args.k} of {len(users)} users ({system.name}, scores: {args.rank_by}) to {path}")
        return 0
    titles, item_ids = inter.items.title, inter.items.raw_id
    for user, raw_user, row, score in zip(users, raw_users, items, scores):
        picks = [(int(i), float(s)) for i, s in zip(row, score) if i >= 0]
        if args.json:
            print(json.dumps({"user": raw_user, "user_index": int(user),
                              "items": [{"item": item_ids[i], "item_index": i, "title": titles[i], "score": s}
                                        for i, s in picks]}))
        else:
            print(f"user {raw_user} (index {user}):")
            for position, (i, s) in enumerate(picks, 1):
                print(f"  {position:3d}. {titles[i] or item_ids[i]:<60.60} {s:8.4f}")
    return 0


def _print_reasons(system, inter, users, raw_users, items, as_json: bool) -> int:
    """Every user's list with a reason under each item (`e2erec.explain.explain_lists`)."""
    from e2erec.explain import explain_lists
    from e2erec.explain.reasons import NO_REASON

    ends = inter.offsets[users + 1]
    p = system.p_positive(inter, users, ends, items)
    for user, raw_user, reasons in zip(users, raw_users, explain_lists(system, inter, users, ends, items, p)):
        if as_json:
            print(json.dumps({"user": raw_user, "user_index": int(user), "items": [r.to_dict() for r in reasons]}))
            continue
        print(f"user {raw_user} (index {user}):")
        for r in reasons:
            print(f"  {r.rank:3d}. {r.title or r.item:<60.60} {r.probability}")
            for cause in r.because:
                weight = "" if cause.weight is None else f"  weight {cause.weight:+.2f}"
                print(f"         because you watched {cause.title or cause.item:<48.48} {cause.when}  "
                      f"rated {cause.rating:g}{weight}")
            if r.because:
                print(f"         without them log P(item) falls by {r.together:.2f}"
                      + (" (your latest events, together)" if r.latest else ""))
            for line in ([f"its cluster: {r.cluster}"] if r.cluster else []) + r.steering:
                print(f"         {line}")
            if not (r.because or r.cluster or r.steering):
                print(f"         {NO_REASON}")
    return 0
