"""One evaluation -> one report: `report.md`, `report.json` and PNG plots, written atomically into `out_dir`.

    results = evaluate_systems([pop, sasrec, cascade, e2e], inter, split, cfg.eval, run_dir / "eval")

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
from e2erec.eval.protocol import Recommender
from e2erec.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

CALIBRATION_KEYS = ("auc", "gauc", "logloss", "ne", "ece", "calibration_ratio")
BEYOND_KEYS = ("coverage", "long_tail_share", "novelty")
COMPARE_KEYS = ("hr@10", "ndcg@10", "mrr")


def evaluate_systems(
    systems: list[Recommender], inter: Interactions, split: Split, cfg: EvalConfig, out_dir: str | Path | None,
    progress: bool = True,
) -> dict:
    """Evaluate fitted `systems` on `split.test` and write report.md / report.json / *.png into `out_dir` (None:
    write nothing, e.g. on the ranks other than 0 of a sharded evaluation).

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
    for r in results:
        r.pop("_per_event")
        r.pop("_calib_samples")
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
    }
    for name, png in plots.items():
        if png is not None:
            atomic_write_bytes(out_dir / name, png)
    report["plots"] = [name for name, png in plots.items() if png is not None]
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    print(f"evaluation report: {out_dir / 'report.md'}")
    return report


def _comparisons(results: list[dict], ctx: Context) -> list[dict]:
    """Every system against every other, paired (same targets, same user resamples): the headline ranking metrics,
    and the calibration metrics of every two systems that both predict probabilities."""
    out = []
    for a in results:
        for b in results:
            if a is b:
                continue
            for key in COMPARE_KEYS:
                if key in a["_per_event"]:
                    d = paired_difference(a["_per_event"][key], b["_per_event"][key], ctx.boot)
                    out.append(_verdict(a, b, key, d, higher_is_better=True))
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
    for seg, n in s["segments"].items():
        lines += [f"**{seg}** — {n} targets", ""]
        seg_keys = ["hr@10", "ndcg@10", "mrr"]
        lines += _table(["system"] + seg_keys, [[r["name"]] + [_fmt(r["segments"][seg].get(k)) for k in seg_keys]
                                               for r in systems]) + [""]
    lines += ["## By history length (events before the target)", ""]
    buckets = systems[0]["by_history_length"]["buckets"]
    counts = systems[0]["by_history_length"]["n"]
    lines += _table(["system"] + [f"{b} (n={n})" for b, n in zip(buckets, counts)],
                    [[r["name"]] + [("n/a" if math.isnan(v) else f"{v:.4f}") for v in r["by_history_length"][HEADLINE]]
                     for r in systems])
    lines += ["", f"({HEADLINE} per bucket.)", "", "## Paired comparisons", "",
              "Difference = row system − other system over the same targets and the same user resamples.", ""]
    rows = [[c["system"], c["vs"], c["metric"], _fmt(c["difference"]), c["verdict"]]
            for c in report["comparisons"] if c["metric"] in (HEADLINE, *PAIRED_CALIBRATION)]
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


def _summary(report: dict) -> list[str]:
    """Best system per headline metric, and for every system which others it beats on the headline metric."""
    systems = report["systems"]
    lines = []
    for key, higher in (("hr@10", True), (HEADLINE, True), ("mrr", True)):
        vals = [(r["overall"][key]["value"], r["name"]) for r in systems if key in r["overall"]]
        if vals:
            v, name = (max if higher else min)(vals)
            lines.append(f"- Best test {key}: **{name}** ({v:.4f}).")
    # LogLoss beside ECE: the proper scoring rule (calibration and discrimination in one number), less noisy than
    # a 15-bin ECE on a few hundred labels.
    best = {}
    for key in ("logloss", "ece"):
        calibrated = [(r["calibration"][key]["value"], r["name"]) for r in systems if r["calibration"]]
        if calibrated:
            best[key] = min(calibrated)
    if best:
        lines.append(f"- Lowest ECE: **{best['ece'][1]}** ({best['ece'][0]:.4f}); lowest LogLoss: "
                     f"**{best['logloss'][1]}** ({best['logloss'][0]:.4f}); systems without a calibrated head: "
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


def _stage_logs(fit_log: dict | None) -> list[tuple[str, dict]]:
    if not fit_log:
        return []
    if ("valid" in fit_log and "metric" in fit_log and "best_epoch" in fit_log) or "selected_step" in fit_log:
        return [("", fit_log)]
    return [(f" ({stage})", log) for stage, log in fit_log.items() if isinstance(log, dict)]


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
            same = log.get("export") or (tuple(log["valid"]), log.get("wall_s"))  # which trained model this is
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


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_metrics(results: list[dict]) -> bytes:
    plt = _pyplot()
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
    return _figure_bytes(fig)


def _plot_reliability(results: list[dict]) -> bytes | None:
    calibrated = [r for r in results if r["reliability"]]
    if not calibrated:
        return None
    plt = _pyplot()
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
    return _figure_bytes(fig)


def _plot_history(results: list[dict]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    buckets = results[0]["by_history_length"]["buckets"]
    for r in results:
        ax.plot(range(len(buckets)), r["by_history_length"][HEADLINE], "o-", label=r["name"])
    counts = results[0]["by_history_length"]["n"]
    ax.set_xticks(range(len(buckets)), [f"{b}\n(n={n})" for b, n in zip(buckets, counts)], fontsize=7)
    ax.set_xlabel("history length (events before the target)")
    ax.set_ylabel(f"test {HEADLINE}")
    ax.legend(fontsize=8)
    return _figure_bytes(fig)


def _plot_training(results: list[dict]) -> bytes | None:
    # Retrieval-type scores only (higher is better); the rankers' LogLoss curves are listed in report.md.
    curves = [(f"{r['name']}{stage}", log) for r in results for stage, log in _stage_logs(r["fit_log"])
              if "best_epoch" in log and log["valid"] and log.get("higher_is_better", log["metric"] != "logloss")]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, log in curves:
        valid = np.array(log["valid"])
        ax.plot(np.arange(1, len(valid) + 1), valid, "o-", ms=3, label=label)
        ax.plot([log["best_epoch"]], [valid[log["best_epoch"] - 1]], "k*", ms=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation score (* = kept epoch)")
    ax.legend(fontsize=8)
    return _figure_bytes(fig)
