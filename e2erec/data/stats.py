"""`e2erec data stats`: the numbers a reader checks before trusting a dataset."""

from __future__ import annotations

from typing import Any

import numpy as np

from e2erec.data.types import Interactions

PERCENTILES = (5, 25, 50, 75, 95, 99)


def dataset_stats(inter: Interactions) -> dict[str, Any]:
    lens = inter.lengths()
    ts = np.asarray(inter.timestamp)
    stats: dict[str, Any] = {
        "name": inter.meta.get("name", ""),
        "users": inter.n_users,
        "items": inter.n_items,
        "events": inter.n_events,
        # Fraction of the user x item matrix observed (1 - sparsity).
        "density": inter.n_events / max(inter.n_users * inter.n_items, 1),
        "positive_rate": float(np.asarray(inter.label).mean()) if inter.n_events else 0.0,
        "seq_len_mean": float(lens.mean()) if len(lens) else 0.0,
        "seq_len_min": int(lens.min()) if len(lens) else 0,
        "seq_len_max": int(lens.max()) if len(lens) else 0,
        **{f"seq_len_p{p}": float(np.percentile(lens, p)) if len(lens) else 0.0 for p in PERCENTILES},
        "time_min": int(ts.min()) if len(ts) else 0,
        "time_max": int(ts.max()) if len(ts) else 0,
        "items_without_text": int(sum(1 for t in inter.items.text if not t)),
    }
    if "n_raw_events" in inter.meta:
        stats["raw_events"] = inter.meta["n_raw_events"]
    return stats


def format_stats(stats: dict[str, Any], filters: list[dict] | None = None) -> str:
    import datetime as dt

    def when(t: int) -> str:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")

    rows = [
        ("dataset", stats["name"]),
        ("users", f"{stats['users']:,}"),
        ("items", f"{stats['items']:,}"),
        ("events", f"{stats['events']:,}" + (f" (raw {stats['raw_events']:,})" if "raw_events" in stats else "")),
        ("density", f"{stats['density']:.4%}"),
        ("positive rate", f"{stats['positive_rate']:.3f}"),
        ("sequence length", f"mean {stats['seq_len_mean']:.1f}, min {stats['seq_len_min']}, max {stats['seq_len_max']}"),
        ("  percentiles", ", ".join(f"p{p} {stats[f'seq_len_p{p}']:.0f}" for p in PERCENTILES)),
        ("time range", f"{when(stats['time_min'])} .. {when(stats['time_max'])}"),
        ("items without text", f"{stats['items_without_text']:,}"),
    ]
    for f in filters or []:
        before, after = f["events"]
        rows.append((f["filter"], f"events {before:,} -> {after:,}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
