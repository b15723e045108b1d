"""Run-to-run spread: one comparison repeated with N seeds, summarised as mean ± std per system and metric.

    write_seed_report([run/seed_0/eval/report.json, run/seed_1/eval/report.json, ...], run)  # seeds.md + .json

The bootstrap intervals of one report measure user-sampling noise with the models held fixed; the spread across
seeds measures training noise (initialisation, data order, dropout, sampled negatives) with the users held fixed.
A difference worth claiming clears both: the summary gives, for every pair on the headline metrics, the mean and
std over seeds of the paired difference, and in how many seeds its bootstrap interval excluded zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from e2erec.utils.io import atomic_write_json, atomic_write_text

RANKING = ("ndcg@10", "hr@10", "mrr", "planted_recall@10")
CALIBRATION = ("auc", "logloss", "ece")
PAIRED = ("ndcg@10", "logloss")


def _stats(values: list[float]) -> dict:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0, "values": values}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v),
            "values": values}


def summarize_seeds(reports: list[dict]) -> dict:
    """Mean ± std over seeds of every system's metrics, and of every paired difference, from report dicts."""
    systems: dict[str, dict[str, list]] = {}
    for rep in reports:
        for r in rep["systems"]:
            row = systems.setdefault(r["name"], {})
            for key in RANKING:
                if key in r["overall"]:
                    row.setdefault(key, []).append(r["overall"][key]["value"])
            for key in CALIBRATION:
                if r.get("calibration"):
                    row.setdefault(key, []).append(r["calibration"][key]["value"])
    pairs: dict[tuple[str, str, str], dict[str, list]] = {}
    for rep in reports:
        for c in rep["comparisons"]:
            if c["metric"] in PAIRED:
                p = pairs.setdefault((c["system"], c["vs"], c["metric"]), {"difference": [], "verdict": []})
                p["difference"].append(c["difference"]["value"])
                p["verdict"].append(c["verdict"])
    return {
        "n_seeds": len(reports),
        "systems": {name: {k: _stats(v) for k, v in metrics.items()} for name, metrics in systems.items()},
        "paired": [{"system": a, "vs": b, "metric": m, **_stats(p["difference"]),
                    "seeds_better": p["verdict"].count("better"), "seeds_worse": p["verdict"].count("worse")}
                   for (a, b, m), p in pairs.items()],
    }


def _pm(s: dict, digits: int = 4) -> str:
    return "—" if s is None or s["mean"] is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def render_seeds(summary: dict) -> str:
    n = summary["n_seeds"]
    keys = [k for k in (*RANKING, *CALIBRATION) if any(k in m for m in summary["systems"].values())]
    lines = [f"# {n}-seed summary", "",
             (f"Mean ± standard deviation over {n} seeds (seed, train.seed, eval.seed), each a whole run: every "
              "system retrained, the same data and split."), "",
             "| system | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, metrics in summary["systems"].items():
        lines.append(f"| {name} | " + " | ".join(_pm(metrics.get(k)) for k in keys) + " |")
    lines += ["", "## Paired differences across seeds", "",
              ("Row system − other system, per seed over the same targets; 'better/worse in' counts the seeds whose "
               "paired bootstrap interval excluded zero in that direction (lower is better for logloss)."), "",
              "| system | vs | metric | difference (mean ± std) | better in | worse in |", "|---|---|---|---|---|---|"]
    # The end-to-end rows against every other system (seeds.json holds every pair in both directions).
    pairs = [p for p in summary["paired"] if p["system"].startswith("e2erec") and not p["vs"].startswith("e2erec")]
    for p in pairs or summary["paired"]:
        lines.append(f"| {p['system']} | {p['vs']} | {p['metric']} | {_pm(p)} | {p['seeds_better']} of {n} | "
                     f"{p['seeds_worse']} of {n} |")
    return "\n".join(lines) + "\n"


def write_seed_report(report_paths: list[str | Path], out_dir: str | Path) -> Path:
    """Read each seed's report.json, write <out_dir>/seeds.json and seeds.md; returns the markdown path."""
    reports = []
    for path in report_paths:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            from e2erec.errors import DataError

            raise DataError(f"{path}: cannot read a seed's report ({e})") from None
    summary = summarize_seeds(reports)
    summary["reports"] = [str(p) for p in report_paths]
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "seeds.json", summary)
    atomic_write_text(out_dir / "seeds.md", render_seeds(summary))
    return out_dir / "seeds.md"
