"""Quality of a semantic-ID assignment: codebook use, collisions, reconstruction, semantic coherence."""

from __future__ import annotations

import math

import numpy as np


def utilization(codes: np.ndarray, codebook_sizes: list[int]) -> list[dict]:
    """Per level: fraction of the K codes used, and normalised entropy H(code) / log K (1 = perfectly even use)."""
    out = []
    for level, k in enumerate(codebook_sizes):
        counts = np.bincount(codes[:, level], minlength=k)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log(p)).sum())
        out.append({"used": float((counts > 0).mean()), "entropy": entropy / math.log(k) if k > 1 else 1.0})
    return out


def collisions(codes: np.ndarray) -> dict:
    """TIGER's collision rate 1 - (#distinct code tuples / #items), and the largest group sharing one tuple."""
    _, counts = np.unique(codes, axis=0, return_counts=True)
    return {
        "collision_rate": 1.0 - len(counts) / max(len(codes), 1),
        "items_colliding": int(counts[counts > 1].sum()),
        "max_group": int(counts.max()) if len(counts) else 0,
    }


def genre_lift(first_codes: np.ndarray, categories: list[list[str]], *, max_exact: int = 20_000,
               samples: int = 1_000_000, seed: int = 0) -> float | None:
    """P(two items share a category | same first-level code) / P(two items share a category), over distinct pairs
    of items that have categories. Exact below `max_exact` such items, else estimated from `samples` pairs.
    None when fewer than two items have categories."""
    has = np.array([len(c) > 0 for c in categories])
    idx = np.flatnonzero(has)
    if len(idx) < 2:
        return None
    names = sorted({g for i in idx for g in categories[i]})
    col = {g: j for j, g in enumerate(names)}
    multi_hot = np.zeros((len(idx), len(names)), dtype=np.float32)
    for row, i in enumerate(idx):
        multi_hot[row, [col[g] for g in categories[i]]] = 1.0
    code = first_codes[idx]
    n = len(idx)
    if n <= max_exact:
        share = (multi_hot @ multi_hot.T) > 0  # (n, n)
        same = code[:, None] == code[None, :]
        off_diag = ~np.eye(n, dtype=bool)
        p_all = share[off_diag].mean()
        same &= off_diag
        if not same.any():
            return None
        return float(share[same].mean() / p_all)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(n, size=samples), rng.integers(n, size=samples)
    p_all = ((multi_hot[a] * multi_hot[b]).sum(1) > 0)[a != b].mean()
    # Same-code pairs: an item drawn with weight = its group's size, then a uniform member of its group; rejecting
    # b == a leaves every ordered pair of distinct same-code items equally likely, as in the exact count.
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    size = np.searchsorted(sorted_code, code, side="right") - np.searchsorted(sorted_code, code, side="left")
    a = rng.choice(n, size=samples, p=size / size.sum())
    starts = np.searchsorted(sorted_code, code[a], side="left")
    b2 = order[starts + (rng.random(samples) * size[a]).astype(np.int64)]
    ok = b2 != a
    if not ok.any():
        return None
    p_same = ((multi_hot[a[ok]] * multi_hot[b2[ok]]).sum(1) > 0).mean()
    return float(p_same / p_all)


def format_table(rows: dict[str, dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: one row per name, `columns` = [(key, header)]; floats to 3 decimals."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, list):
            return "/".join(fmt(x) for x in v)
        return str(v)

    header = ["", *[h for _, h in columns]]
    body = [[name, *[fmt(r.get(k)) for k, _ in columns]] for name, r in rows.items()]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
