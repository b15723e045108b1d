"""Are the reasons faithful? `e2erec eval --explain-bench`: the deletion test, the planted check and the cost.

On the test targets of sampled users, each user's top-10 (the export's joint order) is explained
(`e2erec.explain.explain_lists`), and for every recommended item with cited events:
- **deletion test:** the drop of the item's generation log-probability when its cited events are removed from the
  history, against removing the same number of random events of the history the model reads, and the same number
  of the most recent ones; means with user-bootstrap intervals, and the paired differences;
- **planted check** (synthetic data): the share of cited events whose item has the recommended item's planted
  interest, against the share among all the history's events (chance) and among the most recent ones;
- **cost:** seconds per user to explain the top-10 against seconds per user to generate it, timed in one run.

The cited set is chosen by its measured joint drop (`explain_events`), so the cited drop is what the reason
claims; random and recent deletions of the same size say whether that claim is specific to the cited events.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from e2erec.data.types import Interactions, Split
from e2erec.eval import metrics as M
from e2erec.eval.report import put_section
from e2erec.explain import explain_lists
from e2erec.explain.attribution import deletion_drop, explain_events, history_window, model_window
from e2erec.utils.io import atomic_write_text

TOP_K = 10
CHUNK_USERS = 64  # users explained at once: bounds the occluded histories in memory


def run_explain_bench(system, inter: Interactions, split: Split, *, max_users: int = 300, bootstrap: int = 200,
                      seed: int = 0) -> dict:
    """The bench's entry for one dataset (module docstring): a JSON-ready dict."""
    from e2erec.eval.steering_bench import sample_users

    targets = np.asarray(sample_users(inter, split, max_users, seed).test, np.int64)
    users = inter.user_of(targets)
    cfg = system.cfg.generate.explain
    rng = np.random.default_rng(seed)
    planted = inter.planted.get("item_interest")
    parts: dict[str, list] = {k: [] for k in ("user", "cited", "random", "recent", "n_cited", "latest",
                                              "planted", "chance", "recent_planted")}
    gen_s = explain_s = 0.0
    examples = []
    for lo in range(0, len(targets), CHUNK_USERS):
        u, e = users[lo:lo + CHUNK_USERS], targets[lo:lo + CHUNK_USERS]
        t0 = time.perf_counter()
        items, _ = system.generate_for(inter, u, e, TOP_K)
        gen_s += time.perf_counter() - t0
        p = system.p_positive(inter, u, e, items)
        t0 = time.perf_counter()  # what `explain_lists` costs, its events kept for the deletion test
        ev = explain_events(system, inter, u, e, items, top=cfg.top_events, max_events=cfg.max_events,
                            recent=cfg.recent_events)
        reasons = explain_lists(system, inter, u, e, items, p, events=ev)
        explain_s += time.perf_counter() - t0
        if not examples:
            examples = [[r.to_dict() for r in reasons[i]] for i in range(min(3, len(reasons)))]
        _deletion_sets(system, inter, u, e, items, ev, rng, planted, parts)
    return _summarise(parts, len(targets), gen_s, explain_s, bootstrap, seed, examples, cfg, planted is not None)


def _deletion_sets(system, inter, users, ends, items, ev, rng, planted, parts) -> None:
    """The cited, random and recent deletions of every (user, item) with cited events, appended to `parts`."""
    n, k, m = ev.rows.shape
    count = (ev.rows >= 0).sum(-1)  # (n, k)
    first = history_window(inter, users, ends, model_window(system))
    width = int((ends - first).max())
    offset = np.arange(width)[None, :]
    window = np.where(offset < (ends - first)[:, None], first[:, None] + offset, -1)  # (n, width) rows
    keys = rng.random((n, k, width))
    keys[np.broadcast_to((window < 0)[:, None, :], keys.shape)] = np.inf
    shuffled = np.take_along_axis(np.broadcast_to(window[:, None, :], keys.shape), np.argsort(keys, -1), -1)
    if width < m:
        shuffled = np.concatenate([shuffled, np.full((n, k, m - width), -1)], -1)
    take = np.arange(m)[None, None, :] < count[..., None]
    random_rows = np.where(take, shuffled[..., :m], -1)
    latest = ends[:, None, None] - 1 - np.arange(m)[None, None, :]
    recent_rows = np.where(take & (latest >= first[:, None, None]), latest, -1)
    sets = np.stack([ev.rows, random_rows, recent_rows], axis=2).reshape(n, k * 3, m)
    drops = deletion_drop(system, inter, users, ends, items, sets, ev.base).reshape(n, k, 3, k)
    own = drops[:, np.arange(k), :, np.arange(k)].transpose(1, 0, 2)  # (n, k, 3): item j without its own sets
    has = (count > 0) & (items >= 0)
    r, j = np.nonzero(has)
    parts["user"].append(users[r])
    for t, name in enumerate(("cited", "random", "recent")):
        parts[name].append(own[r, j, t])
    parts["n_cited"].append(count[r, j])
    parts["latest"].append(ev.latest[r, j])
    if planted is not None:
        interest = np.asarray(planted)
        item_interest = interest[items[r, j]]

        def share(rows):
            valid = rows >= 0
            same = (interest[np.asarray(inter.item)[np.maximum(rows, 0)]] == item_interest[:, None]) & valid
            return same.sum(1) / np.maximum(valid.sum(1), 1)

        parts["planted"].append(share(ev.rows[r, j]))
        parts["chance"].append(share(window[r]))
        parts["recent_planted"].append(share(recent_rows[r, j]))


def _summarise(parts, n_users, gen_s, explain_s, bootstrap, seed, examples, cfg, synthetic: bool) -> dict:
    cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    boot = M.UserBootstrap(cat["user"], bootstrap, seed) if bootstrap > 0 and len(cat["user"]) else None
    ci = {name: M.mean_with_ci(cat[name], boot) for name in ("cited", "random", "recent")}
    out = {
        "users": int(n_users), "top_k": TOP_K, "explained_items": len(cat["user"]),
        "no_reason_share": round(1 - len(cat["user"]) / max(n_users * TOP_K, 1), 4),
        "mean_cited_events": float(cat["n_cited"].mean()) if len(cat["n_cited"]) else 0.0,
        "latest_share": float(cat["latest"].mean()) if len(cat["latest"]) else 0.0,
        "settings": {"top_events": cfg.top_events, "max_events": cfg.max_events, "recent_events": cfg.recent_events},
        "cited_drop": ci["cited"], "random_drop": ci["random"], "recent_drop": ci["recent"],
        "cited_minus_random": M.mean_with_ci(cat["cited"] - cat["random"], boot),
        "cited_minus_recent": M.mean_with_ci(cat["cited"] - cat["recent"], boot),
        "cited_over_random": ci["cited"]["value"] / ci["random"]["value"] if ci["random"]["value"] > 0 else None,
        "explain_seconds_per_user": explain_s / max(n_users, 1),
        "generate_seconds_per_user": gen_s / max(n_users, 1),
        "cost_ratio": explain_s / gen_s if gen_s > 0 else None,
        "examples": examples,
    }
    if synthetic:
        out.update(planted_share=M.mean_with_ci(cat["planted"], boot), chance_share=M.mean_with_ci(cat["chance"], boot),
                   recent_planted_share=M.mean_with_ci(cat["recent_planted"], boot))
        out["planted_over_chance"] = (out["planted_share"]["value"] / out["chance_share"]["value"]
                                      if out["chance_share"]["value"] > 0 else None)
    return out


def _fmt(v: dict) -> str:
    return f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"


def render_markdown(entries: dict) -> str:
    lines = ["## Explanations: are the reasons faithful?", "",
             ("Deletion test: the drop of a recommended item's generation log-probability when its cited history "
              "events are removed, against removing as many random events or the most recent ones (mean, 95% user "
              "bootstrap interval). Cost: seconds per user to explain the top-10 against generating it."), "",
             ("| dataset | items | cited drop | random drop | recent drop | cited − recent | cited / random "
              "| planted share | chance share | explain s/user | generate s/user | ratio |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in entries.items():
        planted = (_fmt(e["planted_share"]), _fmt(e["chance_share"])) if "planted_share" in e else ("—", "—")
        ratio = f"{e['cited_over_random']:.1f}×" if e.get("cited_over_random") else "—"
        lines.append(f"| {name} | {e['explained_items']} | {_fmt(e['cited_drop'])} | {_fmt(e['random_drop'])} | "
                     f"{_fmt(e['recent_drop'])} | {_fmt(e['cited_minus_recent'])} | {ratio} | {planted[0]} | "
                     f"{planted[1]} | {e['explain_seconds_per_user']:.4f} | {e['generate_seconds_per_user']:.4f} | "
                     f"{e['cost_ratio']:.1f}× |")
    return "\n".join(lines) + "\n"


def write_explain_bench(entry: dict, out: Path, dataset: str) -> Path:
    """explain_bench.json (one entry per dataset: an earlier entry of another dataset is kept) and
    explain_bench.md in `out`, and the section into `out/report.md` when there is one; atomic writes."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "explain_bench.json"
    entries = {}
    if path.exists():
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError:
            entries = {}  # a bench file is a result cache: an unreadable one is replaced, not merged
    entries[dataset] = entry
    atomic_write_text(path, json.dumps(entries, indent=1))
    md = render_markdown(entries)
    atomic_write_text(out / "explain_bench.md", md)
    put_section(out / "report.md", "explain-bench", md)
    return path
