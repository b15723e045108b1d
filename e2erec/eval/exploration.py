"""Exploration efficiency: what a list's long-tail slots earn, against rolling dice and against the cascade.

Every system explores the same way, so the comparison is about rankings, not rules: at exploration share s, its
top-10 keeps the exploration positions of `e2erec.generate.explore` (floor(10 s) of them) for its own best long-tail
items (`recommend(..., among=long tail)`) and fills the others from its usual list, in order
(`e2erec.generate.explore.interleave`, the merge e2erec's beam search does itself under
`generate.steering.explore_share`). Long tail: the items outside the head by training popularity
(`eval.long_tail_share`), cold items included.

Per system and share:
- **hits per exploration slot**: hits in the exploration slots / those slots, over every test target;
- **rolling dice**: the same slots filled with uniformly random long-tail items (not in the history, not already in
  the list). Its expected hits per slot is exact, no sampling: 1 / (eligible items) for a target that is itself an
  eligible item, else 0;
- the cost to the rest of the list: NDCG@10 counting hits outside the exploration slots only, beside the list's
  NDCG@10 with and without exploration.
Intervals resample users like every other metric (a ratio of two means per resample), so differences are paired.
"""

from __future__ import annotations

import numpy as np
import torch

from e2erec.eval import metrics as M
from e2erec.eval.protocol import Recommender, history_counts, in_history
from e2erec.generate.explore import interleave, n_explore_slots, take_slots

CUT = 10  # exploration is measured in the top-10, the list a user sees first


def explore_lists(recs: np.ndarray, long_tail_recs: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(top-10 item ids [n, 10], -1 for an empty slot; bool [n, 10], the exploration slots holding an item)."""
    main, explore = torch.from_numpy(np.asarray(recs)), torch.from_numpy(np.asarray(long_tail_recs))
    col, from_x = interleave(main, explore, CUT, share)
    return take_slots(col, main, explore, -1).numpy(), from_x.numpy()


def _ratio(num: np.ndarray, den: np.ndarray, boot: M.UserBootstrap | None) -> tuple[dict, np.ndarray]:
    """sum num / sum den with its interval, and its value under each resample (empty without a bootstrap)."""
    point = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
    if boot is None or boot.n_resamples == 0:
        return {"value": point, "lo": float("nan"), "hi": float("nan")}, np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = boot.means(num) / boot.means(den)
    return M.interval(point, samples), samples


class ExplorationTargets:
    """What every system's exploration is measured against: the long tail, and per target how many long-tail items
    its history holds and whether the target itself could be a rolling-dice draw."""

    def __init__(self, ctx):
        self.long_tail = ~ctx.head
        # A repeated item is one item the dice cannot draw.
        self.history_long_tail = history_counts(ctx.inter, ctx.targets, self.long_tail)
        seen = in_history(ctx.inter, ctx.targets, ctx.items[:, None])[:, 0]
        self.target_drawable = self.long_tail[ctx.items] & ~seen


def evaluate_exploration(system: Recommender, ctx, recs: np.ndarray) -> tuple[dict | None, dict]:
    """The system's exploration at every share of `eval.explore_shares` (module docstring): (the JSON block, per
    share the resample values {"system", "rolling_dice"} of hits per slot that paired comparisons need)."""
    shares = list(ctx.cfg.explore_shares)
    if not shares:
        return None, {}
    xt = ctx.exploration
    long_tail_recs = np.asarray(system.recommend(ctx.inter, ctx.targets, CUT, among=xt.long_tail))
    plain = M.ndcg(M.target_ranks(recs[:, :CUT], ctx.items), CUT)
    by_share, samples = [], {}
    for share in shares:
        items, x_slot = explore_lists(recs, long_tail_recs, share)
        hit = items == ctx.items[:, None]
        slots = x_slot.sum(1).astype(np.float64)
        hits = (hit & x_slot).sum(1).astype(np.float64)
        # Rolling dice in the same slots: uniform over the long-tail items not in the history or the other slots.
        shown = (items >= 0) & ~x_slot
        shown_long_tail = (shown & xt.long_tail[np.maximum(items, 0)]).sum(1)
        eligible = xt.long_tail.sum() - xt.history_long_tail - shown_long_tail
        drawable = xt.target_drawable & ~(hit & shown).any(1)
        dice_hits = np.where(drawable & (eligible > 0), slots / np.maximum(eligible, 1), 0.0)
        system_rate, system_s = _ratio(hits, slots, ctx.boot)
        dice_rate, dice_s = _ratio(dice_hits, slots, ctx.boot)
        with np.errstate(invalid="ignore", divide="ignore"):
            times = M.interval(system_rate["value"] / dice_rate["value"], system_s / dice_s)
        ranks = M.target_ranks(items, ctx.items)
        outside = M.target_ranks(np.where(x_slot, -1, items), ctx.items)  # a hit in an exploration slot: a miss
        by_share.append({
            "share": share, "slots_per_list": n_explore_slots(CUT, share), "slots": int(slots.sum()),
            "hits": int(hits.sum()),
            "hits_per_slot": {"system": system_rate, "rolling_dice": dice_rate},
            "vs_rolling_dice": times,
            f"ndcg@{CUT}": M.mean_with_ci(M.ndcg(ranks, CUT), ctx.boot),
            f"ndcg@{CUT}_outside": M.mean_with_ci(M.ndcg(outside, CUT), ctx.boot),
            f"ndcg@{CUT}_no_exploration": M.mean_with_ci(plain, ctx.boot),
        })
        samples[share] = {"system": system_s, "rolling_dice": dice_s}
    return {"share": shares[0], **{k: v for k, v in by_share[0].items() if k != "share"}, "by_share": by_share}, samples


def add_cascade_references(results: list[dict], cascades: tuple[str, ...] = ("cascade", "plugin_cascade")) -> None:
    """Each system's block gains every cascade's hits per slot at each share, and the paired difference to it
    (system − cascade over the same user resamples), in place; the `_explore` samples are what pair them."""
    refs = [r for r in results if r["name"] in cascades and r.get("exploration")]
    for r in results:
        block = r.get("exploration")
        if not block:
            continue
        for row in block["by_share"]:
            for ref in refs:
                other = next(x for x in ref["exploration"]["by_share"] if x["share"] == row["share"])
                row["hits_per_slot"][ref["name"]] = other["hits_per_slot"]["system"]
                mine, theirs = r["_explore"][row["share"]]["system"], ref["_explore"][row["share"]]["system"]
                diff = row["hits_per_slot"]["system"]["value"] - other["hits_per_slot"]["system"]["value"]
                row.setdefault("vs", {})[ref["name"]] = M.interval(diff, mine - theirs)
        top = block["by_share"][0]
        block["hits_per_slot"], block["vs"] = top["hits_per_slot"], top.get("vs", {})
