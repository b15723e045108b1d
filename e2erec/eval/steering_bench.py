"""The schedulability benchmark: operators' instructions followed inside generation, against a cascade that can only
post-filter (`e2erec eval --steering-bench`).

Each instruction is a `generate.steering` setting (`e2erec.generate.config.SteeringConfig`). e2erec applies it
inside its beam search; the cascade ranks its usual top-N (N = its retrieval depth, 100, and a deeper N) and then
applies the same instruction to that list, as a cascade in production does:

- **hard** (restrict to a topic, an item list, recent items; exclude seen items): drop the items that break it;
- **soft** (boost a topic or an item list by b nats): re-rank the top-N by log(1 / rank) + b (its rank is the only
  score a post-filter sees, and log(1 / rank) is a Zipf log-probability, the scale of e2erec's bonus);
- **explore** (reserve a share of the slots for a category): the category's best items of the top-N go into the
  reserved slots (`e2erec.generate.explore.interleave`, the merge e2erec's search does itself);
- **input** (a history window): the cascade reads the windowed history (`e2erec.data.window.windowed_view`), so
  this one is not a post-filter; both systems still never show an item of the whole history.

Per (instruction, system): compliance (the share of the shown top-10 items that satisfy a hard instruction and are
not in the history, of the reserved slots holding such a category item for exploration, of the items in the boosted
set for a soft one; none for a window), fullness (the share of the 10 slots filled), NDCG@10 on the eligible users (those whose test item
satisfies the instruction and is not in the history) with e2erec's paired difference to each cascade, NDCG@10 on
every target (what the instruction costs the others), the eligible users, the wall seconds, and the fewest
eligible items any user had. Instructions are built from the training log only (`instructions`).
Besides: the objective curve (log P(next) + w log P(positive) over w, `objective_curve`) and the repeat comparison
(the model's own repeats against the hard exclude-seen rule, `repeat_comparison`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from e2erec.data.types import Interactions, Split
from e2erec.data.window import DAY_S, window_mask, windowed_view
from e2erec.eval import metrics as M
from e2erec.eval.protocol import history_counts, in_history, target_users, training_targets
from e2erec.generate.beam import ItemInfo
from e2erec.generate.config import SteeringConfig
from e2erec.generate.explore import explore_slots, interleave, take_slots
from e2erec.utils.io import atomic_write_bytes, atomic_write_text

CUT = 10  # the list a user sees first
DEEP_N = 500  # the deeper cascade: its retrieval hands this many candidates to its ranker
OBJECTIVE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
RECENT_DAYS = 7  # "today's hot topic" and the trending items: the last week of the training log


@dataclass
class Instruction:
    """One operator instruction: its steering, its kind, and the items that satisfy it (bool [n_items])."""

    name: str
    kind: str  # hard | soft | explore | input
    steering: dict
    ok: np.ndarray | None = None  # items that satisfy it (None: an input instruction)
    note: str = ""  # for an input instruction, `steering` holds its history_days / history_events

    @property
    def hard(self) -> bool:
        return self.kind == "hard"


def instructions(inter: Interactions, split: Split) -> list[Instruction]:
    """The benchmark's instructions, chosen from the training events only (no test information):

    - the hot topic: the category whose share of the last week's training events rose most over its all-time share
      (among categories with at least 5% of the items), boosted and restricted to;
    - the trending items: the 100 items with most training events in the last week, boosted and restricted to;
    - recent items: released in or after the year of the newest quarter of the catalogue;
    - the hot topic and recent items together (few eligible items: where a post-filter empties the list);
    - explore a category: the one with the fewest training events per item (at least 2% of the items), in 20% of the
      slots;
    - history windows: the last 3 days, the last 20 events; and exclude seen items (the default of every row).
    """
    rows = training_targets(inter, split, min_history=0)
    items, ts = np.asarray(inter.item)[rows], np.asarray(inter.timestamp)[rows]
    recent = ts >= ts.max() - RECENT_DAYS * DAY_S
    n = inter.n_items
    out = [Instruction("exclude_seen", "hard", {"exclude_seen": True}, np.ones(n, bool),
                       "never an item of the user's history")]
    for label, window in (("window_3_days", {"history_days": 3.0}), ("window_20_events", {"history_events": 20})):
        out.append(Instruction(label, "input", window, None, "the model reads only this part of the history"))
    info = ItemInfo.from_table(inter.items)
    names = info.categories
    if names:
        share_items = {c: info.multi_hot[:, j].numpy() for j, c in enumerate(names)}
        big = [c for c in names if share_items[c].mean() >= 0.05]
        all_share = {c: share_items[c][items].mean() for c in big}
        week_share = {c: share_items[c][items[recent]].mean() for c in big}
        hot = max(big, key=lambda c: (week_share[c] / max(all_share[c], 1e-12), c))
        out += [Instruction(f"boost_topic:{hot}", "soft", {"boost_categories": {hot: 1.0}}, share_items[hot],
                            "today's hot topic, +1 nat"),
                Instruction(f"only_topic:{hot}", "hard", {"include_categories": [hot]}, share_items[hot],
                            "today's hot topic only")]
    trending = np.argsort(-np.bincount(items[recent], minlength=n), kind="stable")[:100]
    trending_mask = np.zeros(n, bool)
    trending_mask[trending] = True
    raw = [inter.items.raw_id[i] for i in trending.tolist()]
    out += [Instruction("boost_items:trending100", "soft", {"boost_items": raw, "item_boost": 1.0}, trending_mask,
                        "the week's 100 trending items, +1 nat"),
            Instruction("only_items:trending100", "hard", {"include_items": raw}, trending_mask,
                        "the week's 100 trending items only")]
    year = np.asarray(inter.items.year)
    if (year >= 0).any():
        cut = int(np.quantile(year[year >= 0], 0.75))
        fresh = year >= cut
        out.append(Instruction(f"min_year:{cut}", "hard", {"min_year": cut}, fresh,
                               "no items older than the newest quarter"))
        if names:
            out.append(Instruction(f"only_topic:{hot}+min_year:{cut}", "hard",
                                   {"include_categories": [hot], "min_year": cut}, share_items[hot] & fresh,
                                   "the hot topic's recent items only"))
    if names:
        pop = np.bincount(items, minlength=n)
        small = [c for c in names if share_items[c].mean() >= 0.02]
        rare = min(small, key=lambda c: (pop[share_items[c]].sum() / share_items[c].sum(), c))
        out.append(Instruction(f"explore:{rare}", "explore",
                               {"explore_share": 0.2, "explore_categories": [rare]}, share_items[rare],
                               "2 of the 10 slots for the least-consumed category"))
    return out


# ---------------------------------------------------------------------------------------------------- the systems


def post_filter(instruction: Instruction, inter: Interactions, targets: np.ndarray, ranked: np.ndarray) -> np.ndarray:
    """A cascade's top-N [n, N] with the instruction applied after ranking: the top-10 [n, 10], -1 where the list
    runs short (module docstring)."""
    ranked = np.where(in_history(inter, targets, ranked), -1, ranked)  # the whole history, windowed input or not
    s = instruction.steering
    if instruction.kind in ("hard", "input"):
        keep = ranked >= 0
        if instruction.kind == "hard":
            keep &= instruction.ok[np.maximum(ranked, 0)]
        return _compact(ranked, keep)[:, :CUT]
    if instruction.kind == "soft":
        bonus = s.get("item_boost", 1.0) if "boost_items" in s else next(iter(s["boost_categories"].values()))
        score = -np.log1p(np.arange(ranked.shape[1]))[None, :] + bonus * instruction.ok[np.maximum(ranked, 0)]
        score = np.where(ranked >= 0, score, -np.inf)
        order = np.argsort(-score, axis=1, kind="stable")[:, :CUT]
        return np.where(np.take_along_axis(score, order, 1) > -np.inf, np.take_along_axis(ranked, order, 1), -1)
    main = torch.from_numpy(_compact(ranked, ranked >= 0))
    pool = torch.from_numpy(_compact(ranked, (ranked >= 0) & instruction.ok[np.maximum(ranked, 0)]))
    col, _ = interleave(main, pool, CUT, s["explore_share"])
    return take_slots(col, main, pool, -1).numpy()


def _compact(ranked: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Each row's kept items first, in order; -1 after."""
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(ranked, order, 1), -1)


def steered(base: SteeringConfig, instruction: Instruction) -> SteeringConfig:
    return dataclasses.replace(base, **{"exclude_seen": True, **instruction.steering})


# ---------------------------------------------------------------------------------------------------- the metrics


def _row_metrics(instruction: Instruction, lists: np.ndarray, ctx) -> dict[str, np.ndarray]:
    """Per target: compliance (nan where nothing is shown or nothing to check), fullness, NDCG@10."""
    shown = lists >= 0
    fullness = shown.mean(1)
    compliance = np.full(len(lists), np.nan)
    if instruction.ok is not None:
        good = instruction.ok[np.maximum(lists, 0)] & shown
        if instruction.kind != "soft":  # a hard or exploration row also promises no item of the history
            good &= ~in_history(ctx.inter, ctx.targets, lists)
        if instruction.kind == "explore":
            slots = explore_slots(CUT, instruction.steering["explore_share"]).numpy()
            good, shown = good[:, slots], shown[:, slots]
        with np.errstate(invalid="ignore"):
            compliance = np.where(shown.any(1), good.sum(1) / shown.sum(1), np.nan)
    ranks = M.target_ranks(lists, ctx.items)
    return {"compliance": compliance, "fullness": fullness, "ndcg@10": M.ndcg(ranks, CUT)}


def eligible_items_min(instruction: Instruction, ctx) -> int:
    """The fewest items any test user could be shown in the slots the instruction governs: those satisfying it
    (every item for a boost or a window), less its history's."""
    pool = instruction.ok if instruction.kind in ("hard", "explore") else np.ones(ctx.inter.n_items, bool)
    return int((pool.sum() - history_counts(ctx.inter, ctx.targets, pool)).min())


class BenchContext:
    """The test targets, their users, and one shared bootstrap (so e2erec-vs-cascade differences are paired)."""

    def __init__(self, inter: Interactions, split: Split, bootstrap: int, seed: int):
        self.inter, self.split = inter, split
        self.targets = np.asarray(split.test, np.int64)
        self.items = np.asarray(inter.item)[self.targets]
        self.labels = np.asarray(inter.label)[self.targets]
        self.users = target_users(inter, self.targets)
        people = self.users if inter.cold is None else inter.cold.origin[self.users]
        self.boot = M.UserBootstrap(people, bootstrap, seed) if bootstrap > 0 else None
        self.repeat = in_history(inter, self.targets, self.items[:, None])[:, 0]  # the test item is already seen

    def eligible(self, instruction: Instruction) -> np.ndarray:
        """The targets an instruction can serve: the test item satisfies it and is not in the history (every row
        excludes seen items); for a window, the window holds an event."""
        fresh = ~self.repeat
        if instruction.kind == "input":
            return fresh & window_mask(self.inter, self.users, self.targets, **instruction.steering)
        return fresh & instruction.ok[self.items]

    def mean(self, values: np.ndarray, mask: np.ndarray) -> dict:
        if not mask.any():
            return {"value": float("nan"), "lo": float("nan"), "hi": float("nan")}
        return M.mean_with_ci(values[mask], None if self.boot is None else self.boot.subset(mask))


def _cascade_lists(cascade, instruction: Instruction, ctx: BenchContext, n: int, cache: dict):
    """The cascade's top-n with the instruction applied after ranking, and the seconds a request pays for both
    (its ranking of the unwindowed log is computed once per n and reused: the instruction does not change it)."""
    depth = cascade.n_candidates
    cascade.n_candidates = n  # the retrieval stage hands n candidates to the ranker
    try:
        t0 = time.perf_counter()
        if instruction.kind == "input":
            view, view_targets = windowed_view(ctx.inter, ctx.targets, **instruction.steering)
            ranked, rank_seconds = np.asarray(cascade.recommend(view, view_targets, n)), time.perf_counter() - t0
        else:
            if (cascade.name, n) not in cache:
                cache[(cascade.name, n)] = (np.asarray(cascade.recommend(ctx.inter, ctx.targets, n)),
                                            time.perf_counter() - t0)
            ranked, rank_seconds = cache[(cascade.name, n)]
    finally:
        cascade.n_candidates = depth
    t1 = time.perf_counter()
    lists = post_filter(instruction, ctx.inter, ctx.targets, ranked)
    return lists, rank_seconds + time.perf_counter() - t1


def sample_users(inter: Interactions, split: Split, max_users: int, seed: int = 0) -> Split:
    """The split's test and validation targets of a seeded sample of `max_users` users (0 or more users than
    there are: all). The bench's cost is instructions x systems x targets, so a large catalogue's users are
    sampled; every system sees the same sample."""
    users = np.unique(inter.user_of(np.asarray(split.test)))
    if max_users <= 0 or max_users >= len(users):
        return split
    keep = np.zeros(inter.n_users, bool)
    keep[np.random.default_rng(seed).choice(users, max_users, replace=False)] = True
    test, valid = np.asarray(split.test), np.asarray(split.valid)
    return dataclasses.replace(split, test=test[keep[inter.user_of(test)]], valid=valid[keep[inter.user_of(valid)]])


def run_bench(e2erec, cascades: list, inter: Interactions, split: Split, *, bootstrap: int = 200, seed: int = 0,
              max_users: int = 0, progress: bool = True) -> dict:
    """Every instruction on e2erec (a `GenerativeSystem`, joint order) and on each fitted cascade at N = its depth
    and DEEP_N; plus the objective curve and the repeat comparison, on the test targets of `max_users` sampled
    users (0: all; `sample_users`). A JSON-ready dict."""
    split = sample_users(inter, split, max_users, seed)
    ctx = BenchContext(inter, split, bootstrap, seed)
    base = e2erec.cfg.generate.steering
    rows, cache = [], {}
    for instruction in instructions(inter, split):
        eligible = ctx.eligible(instruction)
        t0 = time.perf_counter()
        lists, _ = e2erec.generate_for(inter, ctx.users, ctx.targets, CUT, steered(base, instruction))
        per = {e2erec.name: (lists, time.perf_counter() - t0)}
        for cascade in cascades:
            for n in dict.fromkeys((cascade.n_candidates, DEEP_N)):
                per[f"{cascade.name} post-filter top-{n}"] = _cascade_lists(cascade, instruction, ctx, n, cache)
        n_min = eligible_items_min(instruction, ctx)
        metrics = {name: _row_metrics(instruction, lists, ctx) for name, (lists, _) in per.items()}
        for name, (lists, seconds) in per.items():
            m = metrics[name]
            checked = not np.isnan(m["compliance"]).all()
            row = {"instruction": instruction.name, "system": name, "hard": instruction.hard,
                   "kind": instruction.kind, "note": instruction.note,
                   "compliance": float(np.nanmean(m["compliance"])) if checked else None,
                   "compliance_min": float(np.nanmin(m["compliance"])) if checked else None,
                   "fullness": float(m["fullness"].mean()),
                   "full_lists": float((m["fullness"] == 1).mean()),
                   "ndcg@10": ctx.mean(m["ndcg@10"], eligible),
                   "ndcg@10_all": ctx.mean(m["ndcg@10"], np.ones(len(lists), bool)),  # what it costs everyone
                   "eligible_users": int(eligible.sum()), "seconds": float(seconds),
                   "eligible_items_min": n_min}
            if name == e2erec.name:
                row["vs"] = {other: ctx.mean(m["ndcg@10"] - metrics[other]["ndcg@10"], eligible)
                             for other in metrics if other != name}
            rows.append(row)
        if progress:
            print(f"steering bench: {instruction.name} ({int(eligible.sum())} eligible users)", flush=True)
    return {"n_test_targets": len(ctx.targets), "sampled_users": max_users or None, "rows": rows, "objective_curve": objective_curve(e2erec, ctx),
            "repeats": repeat_comparison(e2erec, ctx)}


def objective_curve(e2erec, ctx: BenchContext, weights=OBJECTIVE_WEIGHTS) -> dict:
    """The joint order at each w of log P(next) + w log P(positive), over the same retrieved top-50: NDCG@10 on every
    test target, the list's mean P(positive) (the calibration head's), and on the test targets the realised
    positive rate: the share of the top-10's hits whose feedback was positive, and positive hits per target."""
    k = max(e2erec.cfg.eval.top_k, CUT)
    items, log_gen, probs = e2erec.candidates(ctx.inter, ctx.users, ctx.targets, k)
    points = []
    for w in weights:
        ordered, _ = e2erec.joint_order(items, log_gen, probs, w)
        top = ordered[:, :CUT].numpy()
        hit = top == ctx.items[:, None]
        prob_of = _probs_of(items.numpy(), probs.numpy(), top)
        shown = top >= 0
        points.append({"w": w, "ndcg@10": ctx.mean(M.ndcg(M.target_ranks(top, ctx.items), CUT),
                                                   np.ones(len(top), bool)),
                       "mean_p_positive@10": float(prob_of[shown].mean()),
                       "hit_positive_rate@10": float((hit.any(1) & (ctx.labels > 0)).sum() / max(hit.any(1).sum(), 1)),
                       "positive_hits@10": float((hit.any(1) & (ctx.labels > 0)).mean())})
    ndcg = [pt["ndcg@10"]["value"] for pt in points]
    mean_p = [pt["mean_p_positive@10"] for pt in points]
    return {"points": points, "candidates": k,
            "monotone": {"ndcg_non_increasing": bool(np.all(np.diff(ndcg) <= 1e-12)),
                         "p_positive_non_decreasing": bool(np.all(np.diff(mean_p) >= -1e-12))},
            "validated_w": e2erec.calib_weight}


def _probs_of(items: np.ndarray, probs: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """The calibrated probability of each shown item [n, m], looked up in its row's candidates (0 for -1)."""
    match = shown[:, :, None] == items[:, None, :]
    return np.where(match.any(-1), (match * probs[:, None, :]).sum(-1), 0.0)


def repeat_comparison(e2erec, ctx: BenchContext) -> dict:
    """The hard exclude-seen rule against the model's own repeats (exclude_seen off, bonus 0: it re-recommends an
    item when its history makes that likely) and against the learned rule (the repeat bonus chosen on the
    validation targets, `GenerativeSystem.choose_repeat_bonus`), on every test target, on the repeat targets (the
    test item is already in the history) and on the others; paired differences to the rule."""
    is_repeat = ctx.repeat
    base = e2erec.cfg.generate.steering
    chosen = "repeat_valid" in (e2erec.fit_log or {})  # `fit` chose it already (under eval.allow_repeats)
    bonus = e2erec.repeat_bonus if chosen else e2erec.choose_repeat_bonus(ctx.inter, ctx.split)
    out = {"repeat_targets": int(is_repeat.sum()), "repeat_target_share": float(is_repeat.mean()),
           "chosen_bonus": None if np.isinf(bonus) else bonus,
           "valid": (e2erec.fit_log or {}).get("repeat_valid")}
    rules = {"exclude_seen": dataclasses.replace(base, exclude_seen=True),
             "model_repeats": dataclasses.replace(base, exclude_seen=False, repeat_bonus=0.0),
             "learned_repeats": dataclasses.replace(base, exclude_seen=bool(np.isinf(bonus)),
                                                    repeat_bonus=None if np.isinf(bonus) else bonus)}
    ndcg = {}
    everyone = np.ones(len(ctx.targets), bool)
    for label, steering in rules.items():
        t0 = time.perf_counter()
        lists, _ = e2erec.generate_for(ctx.inter, ctx.users, ctx.targets, CUT, steering)
        ndcg[label] = M.ndcg(M.target_ranks(lists, ctx.items), CUT)
        out[label] = {"ndcg@10": ctx.mean(ndcg[label], everyone),
                      "ndcg@10_repeat_targets": ctx.mean(ndcg[label], is_repeat) if is_repeat.any() else None,
                      "ndcg@10_new_targets": ctx.mean(ndcg[label], ~is_repeat),
                      "repeat_slot_share@10": float(in_history(ctx.inter, ctx.targets, lists).mean()),
                      "seconds": time.perf_counter() - t0}
    for label in ("model_repeats", "learned_repeats"):
        out[f"{label}_minus_rule"] = {"ndcg@10": ctx.mean(ndcg[label] - ndcg["exclude_seen"], everyone),
                                      "ndcg@10_new_targets": ctx.mean(ndcg[label] - ndcg["exclude_seen"],
                                                                      ~is_repeat)}
    return out


# ---------------------------------------------------------------------------------------------------- the output


def _fmt(m) -> str:
    if m is None:
        return "—"
    if isinstance(m, dict):
        lo, hi = m.get("lo"), m.get("hi")
        ci = "" if lo is None or np.isnan(lo) else f" [{lo:.4f}, {hi:.4f}]"
        return f"{m['value']:.4f}{ci}"
    return f"{m:.3f}"


def render_markdown(bench: dict, dataset: str) -> str:
    lines = [f"## Schedulability ({dataset}, {bench['n_test_targets']} test targets)", "",
             ("Each instruction inside e2erec's beam search, against the cascade applying it after ranking its "
             "top-N (`e2erec/eval/steering_bench.py`). Compliance: share of the shown top-10 that satisfies a hard "
             "instruction (of the reserved slots, for exploration; of the boosted set, for a boost); fullness: share "
             "of the 10 slots filled; NDCG@10 on the users whose test item satisfies the instruction, with e2erec's "
             "paired difference to each cascade row."), "",
             ("| instruction | kind | system | compliance | fullness | full lists | NDCG@10 (eligible) | e2erec − this "
             "| NDCG@10 (all) | eligible users | fewest eligible items | seconds |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    vs = {}
    for row in bench["rows"]:
        if "vs" in row:
            vs = row["vs"]
        diff = "—" if "vs" in row else _fmt(vs.get(row["system"]))
        lines.append(f"| {row['instruction']} | {row['kind']} | {row['system']} | {_fmt(row['compliance'])} | "
                     f"{row['fullness']:.3f} | {row['full_lists']:.3f} | {_fmt(row['ndcg@10'])} | {diff} | "
                     f"{row['ndcg@10_all']['value']:.4f} | "
                     f"{row['eligible_users']} | {row['eligible_items_min']} | {row['seconds']:.1f} |")
    curve = bench["objective_curve"]
    lines += ["", "### The objective knob: log P(next) + w · log P(positive)", "",
              (f"The same retrieved top-{curve['candidates']} re-ordered at each w (validation chose "
              f"w = {curve['validated_w']}); monotone: {curve['monotone']}. `objective_curve.png` plots it."), "",
              "| w | NDCG@10 | mean P(positive) of the top-10 | positive share of hits | positive hits per target |",
              "|---|---|---|---|---|"]
    for pt in curve["points"]:
        lines.append(f"| {pt['w']} | {_fmt(pt['ndcg@10'])} | {pt['mean_p_positive@10']:.4f} | "
                     f"{pt['hit_positive_rate@10']:.4f} | {pt['positive_hits@10']:.4f} |")
    rep = bench["repeats"]
    chosen = "the hard rule (-inf)" if rep["chosen_bonus"] is None else f"{rep['chosen_bonus']:+g} nats"
    lines += ["", "### Repeats: the model's own against the hard exclude-seen rule", "",
              (f"{rep['repeat_targets']} of the test targets ({rep['repeat_target_share']:.1%}) repeat an item of "
              f"their history. The learned rule's bonus on history items, chosen on validation: {chosen}."), "",
              "| rule | NDCG@10 | on repeat targets | on new targets | top-10 slots holding a history item |",
              "|---|---|---|---|---|"]
    for label in ("exclude_seen", "model_repeats", "learned_repeats"):
        r = rep[label]
        lines.append(f"| {label} | {_fmt(r['ndcg@10'])} | {_fmt(r['ndcg@10_repeat_targets'])} | "
                     f"{_fmt(r['ndcg@10_new_targets'])} | {r['repeat_slot_share@10']:.3f} |")
    lines.append("")
    for label in ("model_repeats", "learned_repeats"):
        d = rep[f"{label}_minus_rule"]
        lines.append(f"{label} − exclude_seen, paired: NDCG@10 {_fmt(d['ndcg@10'])}; on new targets "
                     f"{_fmt(d['ndcg@10_new_targets'])}.")
    lines.append("")
    return "\n".join(lines)


def plot_objective_curve(curve: dict) -> bytes:
    """NDCG@10 against the list's mean P(positive) (the calibration head's) and against the realised positive share
    of its hits on the test targets, one point per w."""
    from e2erec.eval.report import figure_bytes, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    y = [pt["ndcg@10"]["value"] for pt in curve["points"]]
    for ax, key, label in ((axes[0], "mean_p_positive@10", "mean P(positive) of the top-10 (calibration head)"),
                           (axes[1], "hit_positive_rate@10", "realised: positive share of the top-10's test hits")):
        x = [pt[key] for pt in curve["points"]]
        ax.plot(x, y, "o-")
        for j, (pt, xi, yi) in enumerate(zip(curve["points"], x, y)):
            ax.annotate(f"w={pt['w']:g}", (xi, yi), textcoords="offset points", xytext=(4, 5 if j % 2 else -11),
                        fontsize=7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NDCG@10 (all test targets)")
    fig.suptitle("Engagement vs satisfaction: order by log P(next) + w log P(positive)")
    return figure_bytes(fig)


SECTION = "steering-bench"  # its report.md section's marker


def write_bench(bench: dict, out: Path, dataset: str) -> Path:
    """steering_bench.json, steering_bench.md and objective_curve.png in `out`; the section also goes into
    `out/report.md` when there is one (replacing an earlier bench section). Every file is written atomically."""
    from e2erec.eval.report import put_section

    out.mkdir(parents=True, exist_ok=True)
    path = out / "steering_bench.json"
    atomic_write_text(path, json.dumps({"dataset": dataset, **bench}, indent=1))
    md = render_markdown(bench, dataset)
    atomic_write_text(out / "steering_bench.md", md)
    atomic_write_bytes(out / "objective_curve.png", plot_objective_curve(bench["objective_curve"]))
    put_section(out / "report.md", SECTION, md)
    return path
