"""One evaluation -> one report: `report.md`, `report.json` and PNG plots, written atomically into `out_dir`.

    results = evaluate_systems([e2e, pop, sasrec, cascade], inter, split, cfg.eval, run_dir / "eval")

Systems arrive fitted; all are measured on the same test targets with the same bootstrap resamples, so the
"vs" table is a paired comparison. The report states every number, including those where a system loses.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from e2erec.data.types import Interactions, Split
from e2erec.eval.config import EvalConfig
from e2erec.eval.evaluate import (
    HEADLINE,
    PAIRED_CALIBRATION,
    Context,
    evaluate_system,
    paired_calibration_difference,
    paired_difference,
)
from e2erec.eval.exploration import add_cascade_references
from e2erec.eval.protocol import Recommender
from e2erec.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

CALIBRATION_KEYS = ("auc", "gauc", "logloss", "ne", "ece", "calibration_ratio")
BEYOND_KEYS = ("coverage", "long_tail_share", "novelty")
COMPARE_KEYS = ("hr@10", "ndcg@10", "mrr")
COLD_COMPARE_KEYS = ("recall@10", "ndcg@10")  # on the cold_item segment, under the cold-item protocol


def evaluate_systems(
    systems: list[Recommender], inter: Interactions, split: Split, cfg: EvalConfig, out_dir: str | Path | None,
    progress: bool = True, predictions: str | Path | None = None,
) -> dict:
    """Evaluate fitted `systems` on `split.test` and write report.md / report.json / *.png into `out_dir` (None:
    write nothing, e.g. on the ranks other than 0 of a sharded evaluation). `predictions`: also write every system's
    top-K list per test target there (`write_test_predictions`). List the systems under study first: the report's
    paired table shows each pair once, with the system listed earlier as the row system.

    Returns the report as a dict (what report.json holds); prints the path of report.md.
    """
    if not systems:
        raise ValueError("evaluate_systems needs at least one system")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"system names must be unique, got {names}")
    ctx = Context(inter, split, cfg)
    results = [evaluate_system(s, ctx) for s in tqdm(systems, desc="evaluate", disable=not progress)]
    comparisons = _comparisons(results, ctx)
    add_cascade_references(results)
    if predictions is not None and out_dir is not None:
        write_test_predictions(predictions, results, ctx)
    for r in results:
        for key in ("_per_event", "_calib_samples", "_recs", "_proba", "_explore"):
            r.pop(key)
    report = {"dataset": inter.meta.get("name", ""), "setup": ctx.summary(), "systems": results,
              "comparisons": comparisons, "ks": list(cfg.ks), "ece_bins": cfg.ece_bins}
    if out_dir is None:
        return report
    out_dir = Path(out_dir)
    plots = {
        "metrics.png": _plot_metrics(results),
        "reliability.png": _plot_reliability(results),
        "history_length.png": _plot_history(results),
        "training.png": _plot_training(results),
        "item_age.png": _plot_item_age(results),
        "new_users.png": _plot_new_users(results),
        "exploration.png": _plot_exploration(results),
    }
    for name, png in plots.items():
        if png is not None:
            atomic_write_bytes(out_dir / name, png)
    report["plots"] = [name for name, png in plots.items() if png is not None]
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    print(f"evaluation report: {out_dir / 'report.md'}")
    return report


def write_test_predictions(path: str | Path, results: list[dict], ctx: Context) -> Path:
    """One row per (system, test target): the user, the held-out item and its label, the system's P(positive) for
    it (calibrated systems), and its top-K list, all in the dataset's raw ids. An outside script recomputes the
    report's ranking metrics from these rows alone."""
    import pyarrow as pa

    from e2erec.eval.predictions import predictions_table, write_table

    inter, n = ctx.inter, len(ctx.targets)
    users = np.asarray(inter.user_raw_id, dtype=object)[ctx.users]  # gathers, not a loop per target
    targets = np.asarray(inter.items.raw_id, dtype=object)[ctx.items]
    tables = []
    for r in results:
        proba = r["_proba"] if r["_proba"] is not None else np.full(n, np.nan)
        tables.append(predictions_table(
            {"system": np.full(n, r["name"], dtype=object), "user": users, "target_item": targets, "label": ctx.labels.astype(int),
             "p_positive": proba}, r["_recs"], None, inter.items.raw_id))
    return write_table(path, pa.concat_tables(tables))


def _comparisons(results: list[dict], ctx: Context) -> list[dict]:
    """Every system against every other, paired (same targets, same user resamples): the headline ranking metrics,
    and the calibration metrics of every two systems that both predict probabilities."""
    out = []
    cold = ctx.segments.get("cold_item")
    cold_boot = None if cold is None or ctx.boot is None else ctx.boot.subset(cold)
    for a in results:
        for b in results:
            if a is b:
                continue
            for key in COMPARE_KEYS:
                if key in a["_per_event"]:
                    d = paired_difference(a["_per_event"][key], b["_per_event"][key], ctx.boot)
                    out.append(_verdict(a, b, key, d, higher_is_better=True))
            if cold is not None and cold.any():  # the cold-item protocol's question, paired on its own targets
                for key in COLD_COMPARE_KEYS:
                    d = paired_difference(a["_per_event"][key][cold], b["_per_event"][key][cold], cold_boot)
                    out.append(_verdict(a, b, f"cold_item:{key}", d, higher_is_better=True))
            if a["_calib_samples"] is None or b["_calib_samples"] is None:
                continue
            for key, higher in PAIRED_CALIBRATION.items():
                d = paired_calibration_difference(a["_calib_samples"][key], b["_calib_samples"][key])
                out.append(_verdict(a, b, key, d, higher_is_better=higher))
    return out


def _verdict(a: dict, b: dict, metric: str, d: dict, higher_is_better: bool) -> dict:
    if math.isnan(d["lo"]):
        verdict = "no interval (bootstrap off)"
    elif (d["lo"] > 0) if higher_is_better else (d["hi"] < 0):
        verdict = "better"
    elif (d["hi"] < 0) if higher_is_better else (d["lo"] > 0):
        verdict = "worse"
    else:
        verdict = "not significantly different"
    return {"system": a["name"], "vs": b["name"], "metric": metric, "difference": d, "verdict": verdict}


# ----------------------------------------------------------------------------------------------------------------
# markdown


def _fmt(m: dict | None, digits: int = 4) -> str:
    if m is None:
        return "—"
    v, lo, hi = m["value"], m["lo"], m["hi"]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if math.isnan(lo):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(report: dict) -> str:
    s, systems, ks = report["setup"], report["systems"], report["ks"]
    ranking_keys = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks if k > 1] + ["mrr"]
    lines = [
        f"# Evaluation report — {report['dataset'] or 'dataset'}",
        "",
        (f"Protocol: `{s['protocol']}` split, **{s['n_test_targets']} test targets** from {s['n_test_users']} users; "
        f"full ranking over all {s['n_items']} items minus each target's history (no sampled negatives). "
        f"Each system returns its top-{s['top_k']}; MRR is truncated at {s['top_k']} (a miss counts 0). "
        "With one held-out item per target, Recall@k equals HR@k. "
        f"Intervals: 95% percentile bootstrap over users ({s['bootstrap_resamples']} resamples). "
        "Baselines were early-stopped on the validation targets; test numbers come from their best-validation epoch."),
        "",
        "## Summary",
        "",
    ] + _summary(report) + [
        "",
        "## Accuracy (test, all targets)",
        "",
    ]
    lines += _table(["system"] + ranking_keys, [[r["name"]] + [_fmt(r["overall"].get(k)) for k in ranking_keys]
                                               for r in systems])
    if s["planted"]:
        lines += ["", "Synthetic data — Recall@10 against the planted Bayes-optimal next-item top-10 (history excluded):", ""]
        lines += _table(["system", "planted_recall@10"], [[r["name"], _fmt(r["overall"].get("planted_recall@10"))]
                                                          for r in systems])
    lines += ["", "## Calibration (the actual test item, label = the event's feedback label)", "",
              (f"Test positive rate: {s['test_positive_rate']:.4f}. ECE uses {report.get('ece_bins', 15)} equal-width bins. "
              "Systems without a calibrated head (—) are not scored. ECE is biased upward under resampling, so its "
              "interval can lie above the point estimate."), ""]
    rows = []
    for r in systems:
        c = r["calibration"]
        rows.append([r["name"]] + [_fmt(c[k] if c else None) for k in CALIBRATION_KEYS]
                    + [f"{c['gauc_users_used']} used / {c['gauc_users_skipped']} skipped" if c else "—"])
    lines += _table(["system", "AUC", "GAUC", "LogLoss", "NE", "ECE", "Σp/Σy", "GAUC users"], rows)
    if any(r["calibration"] and r["calibration"]["gauc_users_used"] == 0 for r in systems):
        lines += ["", ("GAUC is undefined here: every user's test events are a single class (leave-one-out gives one "
                      "test event per user), so all users are skipped.")]
    lines += ["", "## Beyond accuracy (top-K lists)", "",
              ("Coverage: share of the catalogue recommended to anyone (a catalogue-level number, no interval). "
              f"Long tail: items outside the top {s['head_items']} by training popularity. "
              "Novelty: mean −log2 of the item's smoothed training-popularity share."), ""]
    lines += _table(["system"] + list(BEYOND_KEYS), [[r["name"]] + [_fmt(r["overall"][k]) for k in BEYOND_KEYS]
                                                     for r in systems])
    lines += ["", "## Segments", ""]
    if "cold_items" in s:
        c = s["cold_items"]
        lines += [(f"Cold-item protocol (`data.cold_items`: {c['protocol']}): {c['n_items']} items held out of every "
                   f"training and validation input, histories included; each of their {c['n_targets']} events is a "
                   f"test target predicted from its user's warm history before it ({c['dropped_without_history']} "
                   "with no such history left out). ID-based baselines (SASRec, the two-tower retriever and DIN "
                   "ranker) have no trained embedding for these items and Popularity gives them none of its "
                   "counts: nothing special-cases them. e2erec reaches them through their content semantic IDs (the "
                   "hybrid embedding's collaborative half of an item without training events is predicted from its "
                   "text, `tokenizer.cold_collaborative`), and its calibration head's item rate falls back to its "
                   "prior (`model.prior_prefix_levels`: the rate of its code prefix, else the base rate)."),
                  ""]
        lines += _table(["system", "cold share of top-10 slots", "hit rate of those slots (slots)"],
                        [[r["name"], _fmt(r["overall"]["cold_slot_share@10"]),
                          f"{r['overall']['cold_slot_hit_rate@10']['value']:.4f} "
                          f"({r['overall']['cold_slot_hit_rate@10']['slots']})"] for r in systems]) + [""]
    if "new_users" in s:
        lines += _new_user_section(report) + [""]
    empty = [seg for seg, n in s["segments"].items() if n == 0]
    if empty:
        lines += [f"Left out, with no test targets: {'; '.join(empty)}.", ""]
    for seg, n in s["segments"].items():
        if n == 0:
            continue
        lines += [f"**{seg}** — {n} targets", ""]
        seg_keys = ["hr@10", "ndcg@10", "mrr", "logloss"]
        lines += _table(["system"] + seg_keys, [[r["name"]] + [_fmt(r["segments"][seg].get(k)) for k in seg_keys]
                                               for r in systems]) + [""]
    lines += ["## By history length (events before the target)", ""]
    buckets = systems[0]["by_history_length"]["buckets"]
    counts = systems[0]["by_history_length"]["n"]
    lines += _table(["system"] + [f"{b} (n={n})" for b, n in zip(buckets, counts)],
                    [[r["name"]] + [("n/a" if math.isnan(v) else f"{v:.4f}") for v in r["by_history_length"][HEADLINE]]
                     for r in systems])
    lines += ["", f"({HEADLINE} per bucket.)", ""]
    ages = systems[0]["by_item_age"]
    lines += ["## By item age (days from the item's release to the target event)", ""]
    lines += _table(["system"] + [f"{b} (n={n})" for b, n in zip(ages["buckets"], ages["n"])],
                    [[r["name"]] + [("n/a" if math.isnan(v) else f"{v:.4f}") for v in r["by_item_age"]["hr@10"]]
                     for r in systems])
    lines += ["", ("(Recall@10 per bucket. Release: the synthetic generator's planted release, else the item's "
                   "first event in the log.)"), ""]
    if any(r.get("exploration") for r in systems):
        lines += _exploration_section(systems) + [""]
    lines += ["## Paired comparisons", "",
              ("Each pair once, the system listed first as the row system (report.json holds both directions): "
               "difference = row system − other system over the same targets and the same user resamples."), ""]
    order = {r["name"]: i for i, r in enumerate(systems)}
    shown = [HEADLINE, *PAIRED_CALIBRATION, *(f"cold_item:{k}" for k in COLD_COMPARE_KEYS)]
    once = [c for c in report["comparisons"] if c["metric"] in shown and order[c["system"]] < order[c["vs"]]]
    rows = [[c["system"], c["vs"], c["metric"], _fmt(c["difference"]), c["verdict"]]
            for c in sorted(once, key=lambda c: shown.index(c["metric"]))]
    lines += _table(["system", "vs", "metric", "difference", "verdict"], rows)
    if any(c["metric"] in PAIRED_CALIBRATION for c in report["comparisons"]):
        lines += ["", ("Calibration rows: the metric is recomputed for both systems on each resample. Lower is better "
                       "for logloss and ece, so a negative difference there is the row system's advantage.")]
    lines += ["", "## Training", ""] + _training_section(systems)
    lines += ["", "## Time", ""]
    lines += _table(["system", "recommend (s)", "predict_proba (s)"],
                    [[r["name"], f"{r['seconds']['recommend']:.2f}", f"{r['seconds']['predict_proba']:.2f}"]
                     for r in systems])
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report.get("plots", [])]
    return "\n".join(lines) + "\n"


# Summary metrics and whether higher is better. LogLoss beside ECE: the proper scoring rule (calibration and
# discrimination in one number), less noisy than a 15-bin ECE on a few hundred labels.
SUMMARY_METRICS = {"hr@10": True, HEADLINE: True, "mrr": True, "logloss": False, "ece": False}
METRIC_LABELS = {"logloss": "LogLoss", "ece": "ECE"}


def _summary(report: dict) -> list[str]:
    """Per summary metric, the best system if the paired test finds one; then, for every system, which others it
    beats on the headline metric and on ECE."""
    systems = report["systems"]
    lines = [line for key, higher in SUMMARY_METRICS.items()
             if (line := _best_line(report, key, higher)) is not None]
    if any(r["calibration"] for r in systems):
        lines.append("- Systems without a calibrated head (not in the LogLoss and ECE lines): "
                     + (", ".join(r["name"] for r in systems if not r["calibration"]) or "none") + ".")
    for metric in (HEADLINE, "ece"):
        for r in systems:
            verdicts = {c["vs"]: c["verdict"] for c in report["comparisons"]
                        if c["system"] == r["name"] and c["metric"] == metric}
            if not verdicts:
                continue
            groups = {v: [k for k, x in verdicts.items() if x == v] for v in set(verdicts.values())}
            parts = [f"{verdict} than {', '.join(names)}" if verdict in ("better", "worse") else f"{verdict} from "
                     f"{', '.join(names)}" for verdict, names in sorted(groups.items())]
            lines.append(f"- {r['name']} on {metric} (paired bootstrap, 95%): " + "; ".join(parts) + ".")
    return lines


def _metric_value(system: dict, key: str) -> float | None:
    block = system["overall"] if key in system["overall"] else (system["calibration"] or {})
    value = block[key]["value"] if key in block else None
    return None if value is None or math.isnan(value) else value


def _best_line(report: dict, key: str, higher: bool) -> str | None:
    """A system is named best on `key` only when its paired interval against every other scored system excludes
    zero in its favour; a higher (lower) point value alone is not a lead worth naming."""
    scored = [(r["name"], v) for r in report["systems"] if (v := _metric_value(r, key)) is not None]
    if not scored:
        return None
    label = METRIC_LABELS.get(key, key)
    if len(scored) == 1:
        return f"- Test {label}: only {scored[0][0]} is scored ({scored[0][1]:.4f})."
    values = dict(scored)
    verdicts: dict[str, dict[str, str]] = {}
    for c in report["comparisons"]:
        if c["metric"] == key:
            verdicts.setdefault(c["system"], {})[c["vs"]] = c["verdict"]
    for name, v in scored:
        against = verdicts.get(name, {})
        if len(against) == len(scored) - 1 and all(x == "better" for x in against.values()):
            return (f"- {'Best' if higher else 'Lowest'} test {label}: **{name}** ({v:.4f}), significantly "
                    f"{'better' if higher else 'lower'} than every other system (paired bootstrap, 95%).")
    leader, v = (max if higher else min)(scored, key=lambda s: s[1])  # the first listed, on a tie
    level = "highest" if higher else "lowest"
    if any(x.startswith("no interval") for x in verdicts.get(leader, {}).values()):
        return f"- Test {label}: not tested (bootstrap off); {level} value {v:.4f} ({leader})."
    unbeaten = [b for b, x in verdicts.get(leader, {}).items() if x != "better"]
    return (f"- Test {label}: no significant difference at the top (paired bootstrap, 95%): {leader} ({v:.4f}) is "
            f"not significantly {'better' if higher else 'lower'} than "
            + ", ".join(f"{b} ({values[b]:.4f})" for b in unbeaten) + ".")


def _new_user_section(report: dict) -> list[str]:
    s, systems = report["setup"], report["systems"]
    info = s["new_users"]
    ks = info["protocol"]["ks"]
    lines = [(f"New-user protocol (`data.new_users`: {info['protocol']}): {info['n_users']} users held out of every "
              "training and validation input; each is evaluated from its first k events alone, predicting event "
              "k + 1 (targets per k: " + ", ".join(f"k={k}: {info['n_targets'][f'k{k}']}" for k in ks) + "). "
              "Held out rather than truncated: a trained user's event k + 1 was a training target of every system."),
             "", "NDCG@10 / Recall@10 by k:", ""]
    rows = [[r["name"]] + [f"{_fmt(r['segments'][f'new_user_k{k}']['ndcg@10'])} / "
                           f"{r['segments'][f'new_user_k{k}']['recall@10']['value']:.4f}" for k in ks]
            for r in systems]
    return lines + _table(["system"] + [f"k={k}" for k in ks], rows)


def _exploration_section(systems: list[dict]) -> list[str]:
    lines = ["## Exploration (top-10 slots given to each system's own best long-tail items)", "",
             ("At share s the positions where floor((j + 1) s) steps up are exploration slots (s = 0.2: 5th and "
              "10th); the others keep the system's list in order. Rolling dice: uniform long-tail items (not in "
              "the history or the list) in the same slots, its expected hits exact. Hits per slot with 95% "
              "bootstrap intervals; ×dice is the system's rate over rolling dice's; NDCG@10 outside counts hits "
              "outside the exploration slots only."), ""]
    rows = []
    for r in systems:
        for row in (r.get("exploration") or {}).get("by_share", []):
            h = row["hits_per_slot"]
            rows.append([r["name"], f"{row['share']:g}", str(row["slots"]), _fmt(h["system"]),
                         _fmt(h["rolling_dice"]), _fmt(row["vs_rolling_dice"], 2),
                         "; ".join(f"{name} {_fmt(d)}" for name, d in row.get("vs", {}).items()
                                   if name != r["name"]) or "—",
                         _fmt(row["ndcg@10_no_exploration"]), _fmt(row["ndcg@10"]), _fmt(row["ndcg@10_outside"])])
    return lines + _table(["system", "share", "slots", "hits/slot", "rolling dice", "×dice", "− cascade (paired)",
                           "NDCG@10 without", "NDCG@10 with", "NDCG@10 outside"], rows)


def _stage_logs(fit_log: dict | None) -> list[tuple[str, dict]]:
    if not fit_log:
        return []
    if ("valid" in fit_log and "metric" in fit_log and "best_epoch" in fit_log) or "selected_step" in fit_log:
        return [("", fit_log)]
    return [(f" ({stage})", log) for stage, log in fit_log.items() if isinstance(log, dict)]


def _trained_model(log: dict):
    """Which trained model a stage's log belongs to: the orders of one end-to-end export share it."""
    return log.get("export") or (tuple(log["valid"]), log.get("wall_s"))


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _training_section(systems: list[dict]) -> list[str]:
    """One row per trained stage under the protocol's early-stopping rule (`e2erec.eval.stopping`)."""
    rows, not_converged, rules, extras, seen = [], [], set(), [], {}
    for r in systems:
        for stage, log in _stage_logs(r["fit_log"]):
            name = f"{r['name']}{stage}"
            if "alpha" in log:
                extras.append(f"- {name}: channel weight a={log['alpha']}, tau={log['tau']} chosen on validation "
                              f"{log['metric']}")
                continue
            if "joint_weight" in log:
                extras.append(f"- {name}: weight w={log['joint_weight']:g} of log P_calib chosen on validation "
                              f"{log['joint_metric']} (" + ", ".join(f"w={w}: {v:.4f}" for w, v in
                                                                      log["joint_valid"].items()) + ")")
            if "best_epoch" not in log or not log.get("valid"):
                if "selected_step" in log:  # an export made before training records existed
                    rows.append([name, log.get("metric", ""), "—", f"step {log['selected_step']}", "—", "—", "—", "—",
                                 "—"])
                continue
            same = _trained_model(log)
            if same in seen:  # another order of the same trained model
                extras.append(f"- {name}: the trained model of {seen[same]} (above), in its own order")
                continue
            seen[same] = name
            reason = log.get("stop_reason") or "—"
            if reason not in ("converged", "—"):
                not_converged.append(f"{name} ({reason})")
            rules.add((log.get("patience"), log.get("unit", "epoch")))
            n = len(log["valid"])
            if "selected_step" in log:
                length = f"{log.get('steps', log.get('trained_steps'))} steps ({log.get('epochs', 0)} epochs)"
                best = f"step {log['selected_step']} (eval {log['best_epoch']})"
            else:
                length, best = f"{n} epochs", f"epoch {log['best_epoch']}"
            curve = ", ".join(f"{v:.4f}" for v in log["valid"])
            rows.append([name, log["metric"], length, best, reason, f"{log.get('wall_s', 0.0):.0f}",
                         f"{log.get('params', 0):,}" if log.get("params") else "—",
                         _si(log["flops_per_example"]) if log.get("flops_per_example") else "—", curve])
    if not rows:
        return ["No training records."]
    rule = "; ".join(f"{p} evaluations (one per {u})" for p, u in sorted(rules, key=str))
    lines = [("Every trained stage ran under one early-stopping rule (`e2erec.eval.stopping`): scored on the "
              f"validation targets after each evaluation interval, stopped after **patience = {rule}** without a "
              "better score (*converged*), at its epoch/step cap (*max_epochs*, *max_steps*) or its time budget "
              "(*budget*); test numbers use the kept (best-validation) weights. Metric: each stage's validation "
              "objective (retrieval: the ranking metric; rankers: LogLoss; e2erec: its validation loss). FLOPs/example: "
              "training FLOPs (forward + backward) per training example, counted by torch's FLOP counter on one "
              "batch for the baselines, and by e2erec's `flops_per_token` (tested against the same counter) over "
              "its training tokens."), ""]
    lines += _table(["stage", "metric", "trained", "kept", "stop", "wall s", "params", "FLOPs/example",
                     "validation per evaluation"], rows)
    lines += [""] + ([f"**Not converged** (stopped before patience ran out): {', '.join(not_converged)}."]
                     if not_converged else ["Every stage converged."])
    return lines + ([""] + extras if extras else [])


# ----------------------------------------------------------------------------------------------------------------
# plots (Agg backend: no display on clusters)


def put_section(report: Path, name: str, markdown: str) -> None:
    """Write `markdown` into `report` (a report.md, when there is one) between `<!-- name -->` markers, replacing
    that section if an earlier run put one there; atomic."""
    if not report.exists():
        return
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = report.read_text()
    if start in text and end in text:
        text = text[:text.index(start)] + text[text.index(end) + len(end):]
    atomic_write_text(report, f"{text.rstrip()}\n\n{start}\n{markdown}\n{end}\n")


def figure_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards), for an atomic write."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (reports are written on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_metrics(results: list[dict]) -> bytes:
    plt = pyplot()
    keys = [k for k in ("hr@10", "ndcg@10", "mrr", "hr@50") if k in results[0]["overall"]]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(keys) * len(results) / 2, 3.6))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        v = np.array([r["overall"][k]["value"] for k in keys])
        lo = np.array([r["overall"][k]["lo"] for k in keys])
        hi = np.array([r["overall"][k]["hi"] for k in keys])
        err = None if np.isnan(lo).all() else np.stack([v - lo, hi - v])
        ax.bar(np.arange(len(keys)) + i * width, v, width, yerr=err, capsize=3, label=r["name"])
    ax.set_xticks(np.arange(len(keys)) + width * (len(results) - 1) / 2, keys)
    ax.set_ylabel("test value (95% bootstrap CI)")
    ax.legend(fontsize=8)
    ax.set_title("Accuracy, full ranking")
    return figure_bytes(fig)


def _plot_reliability(results: list[dict]) -> bytes | None:
    calibrated = [r for r in results if r["reliability"]]
    if not calibrated:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for r in calibrated:
        rel = r["reliability"]
        ece = r["calibration"]["ece"]["value"]
        ax.plot(rel["mean_p"], rel["rate"], "o-", ms=3, label=f"{r['name']} (ECE {ece:.3f})")
    ax.set_xlabel("mean predicted P(positive)")
    ax.set_ylabel("observed positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Reliability (test items)")
    return figure_bytes(fig)


def _plot_history(results: list[dict]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    buckets = results[0]["by_history_length"]["buckets"]
    for r in results:
        ax.plot(range(len(buckets)), r["by_history_length"][HEADLINE], "o-", label=r["name"])
    counts = results[0]["by_history_length"]["n"]
    ax.set_xticks(range(len(buckets)), [f"{b}\n(n={n})" for b, n in zip(buckets, counts)], fontsize=7)
    ax.set_xlabel("history length (events before the target)")
    ax.set_ylabel(f"test {HEADLINE}")
    ax.legend(fontsize=8)
    return figure_bytes(fig)


def _plot_item_age(results: list[dict]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ages = results[0]["by_item_age"]
    for r in results:
        ax.plot(range(len(ages["buckets"])), r["by_item_age"]["hr@10"], "o-", label=r["name"])
    ax.set_xticks(range(len(ages["buckets"])), [f"{b}\n(n={n})" for b, n in zip(ages["buckets"], ages["n"])],
                  fontsize=7)
    ax.set_xlabel("item age at the target event (days since release)")
    ax.set_ylabel("test Recall@10")
    ax.legend(fontsize=8)
    return figure_bytes(fig)


def _plot_new_users(results: list[dict]) -> bytes | None:
    ks = sorted(int(name.removeprefix("new_user_k")) for name in results[0]["segments"] if name.startswith("new_user_k"))
    if not ks:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for r in results:
        seg = [r["segments"][f"new_user_k{k}"]["recall@10"] for k in ks]
        v = np.array([m["value"] for m in seg])
        err = np.stack([v - [m["lo"] for m in seg], [m["hi"] for m in seg] - v])
        ax.errorbar(ks, v, yerr=None if np.isnan(err).all() else err, fmt="o-", capsize=3, label=r["name"])
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("events of history (new users, held out of training)")
    ax.set_ylabel("test Recall@10 (95% bootstrap CI)")
    ax.legend(fontsize=8)
    return figure_bytes(fig)


def _plot_exploration(results: list[dict]) -> bytes | None:
    explored = [r for r in results if r.get("exploration")]
    if not explored:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in explored:
        rows = r["exploration"]["by_share"]
        ax.plot([x["share"] for x in rows], [x["hits_per_slot"]["system"]["value"] for x in rows], "o-",
                label=r["name"])
    rows = explored[0]["exploration"]["by_share"]
    ax.plot([x["share"] for x in rows], [x["hits_per_slot"]["rolling_dice"]["value"] for x in rows], "k--",
            label=f"rolling dice (in {explored[0]['name']}'s slots)")
    ax.set_xlabel("exploration share of the top-10")
    ax.set_ylabel("hits per exploration slot")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=7)
    return figure_bytes(fig)


def _validation_curves(results: list[dict]) -> list[tuple[str, dict]]:
    """(label, log) of every trained stage with a validation curve, one per trained model: the orders of one
    end-to-end export share a curve, labelled with all their names."""
    curves: dict = {}
    for r in results:
        for stage, log in _stage_logs(r["fit_log"]):
            if "best_epoch" in log and log.get("valid"):
                names, _ = curves.setdefault(_trained_model(log), ([], log))
                names.append(f"{r['name']}{stage}")
    return [(" / ".join(names), log) for names, log in curves.values()]


def _eval_positions(log: dict) -> tuple[np.ndarray, str]:
    """Where each validation score was taken and in what unit: epochs 1..n for a unit of "epoch", or steps for a
    unit of "N steps" (every N steps, and the last step when training stopped between two evaluations)."""
    n = len(log["valid"])
    every, _, unit = log.get("unit", "epoch").partition(" ")
    if not unit:
        return np.arange(1, n + 1), every
    steps = int(every) * np.arange(1, n + 1)
    return (np.minimum(steps, log["steps"]) if "steps" in log else steps), unit.removesuffix("s")


def _training_figure(results: list[dict]):
    """One panel per validation metric and unit (epoch or step), each trained stage's curve in it, the kept
    evaluation starred; None when no stage has a curve."""
    from matplotlib.ticker import MaxNLocator

    panels: dict[tuple[str, bool, str], list[tuple[str, dict, np.ndarray]]] = {}
    for label, log in _validation_curves(results):
        x, unit = _eval_positions(log)
        higher = log.get("higher_is_better", log["metric"] != "logloss")
        panels.setdefault((log["metric"], higher, unit), []).append((label, log, x))
    if not panels:
        return None
    plt = pyplot()
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, ((metric, higher, unit), curves) in zip(axes.flat, panels.items()):
        for label, log, x in curves:
            valid = np.array(log["valid"])
            (line,) = ax.plot(x, valid, "o-", ms=3, label=label)
            # The kept weights: the selected step where the log names one (select=last keeps the last step,
            # whatever scored best), else the best evaluation.
            kept = log.get("selected_step", x[log["best_epoch"] - 1])
            at = np.flatnonzero(x == kept)
            if len(at):
                ax.plot(x[at[-1]], valid[at[-1]], "*", ms=12, color=line.get_color(), mec="k")
        ax.plot([], [], "k*", ms=10, label="kept (test numbers)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(unit)
        ax.set_ylabel(f"validation {metric} ({'higher' if higher else 'lower'} is better)")
        ax.legend(fontsize=7)
    fig.suptitle("Validation score per evaluation")
    fig.tight_layout()
    return fig


def _plot_training(results: list[dict]) -> bytes | None:
    fig = _training_figure(results)
    return None if fig is None else figure_bytes(fig)
