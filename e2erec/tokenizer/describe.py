"""What each semantic-ID prefix means, in words, from the item table: "Comedy 71%, Romance 24% · 1990s 88%".

An item's first codes name a content cluster; the items sharing a prefix are that cluster. A prefix's description
is the share of its items in each category (an item with two categories counts in both) and in each decade of
release (among the items with a known year), the largest first. Computed when the artifact is built and stored
with it (`prefixes.json`), so a rebuilt artifact gets its own; the disambiguation level, which only numbers items
that share every code, is not described.
"""

from __future__ import annotations

import numpy as np

TOP_CATEGORIES = 3  # categories named per prefix
TOP_DECADES = 2
MIN_SHARE = 0.1  # a category or decade under this share of the prefix's items is not named


def prefix_key(codes) -> str:
    """The descriptions' key of a code prefix: its codes joined by '-' ("3-17")."""
    return "-".join(str(int(c)) for c in codes)


def describe_prefixes(codes: np.ndarray, categories: list[list[str]], years: np.ndarray,
                      levels: int) -> dict[str, dict]:
    """{prefix_key: {"depth", "n_items", "categories": [[name, share], ...], "decades": [[decade, share], ...],
    "text"}} for every prefix of depth 1..`levels` of `codes` (int [n_items, L]). O(items x levels + category
    pairs), sorted arrays only (no loop over prefixes)."""
    codes = np.asarray(codes, np.int64)
    years = np.asarray(years, np.int64)
    names = sorted({c for cats in categories for c in cats})
    col = {c: j for j, c in enumerate(names)}
    pair_item = np.repeat(np.arange(len(categories)), [len(c) for c in categories])
    pair_cat = np.array([col[c] for cats in categories for c in cats], np.int64)
    known = years >= 0
    decade = np.where(known, years // 10 * 10, -1)
    out: dict[str, dict] = {}
    for depth in range(1, levels + 1):
        prefixes, group = np.unique(codes[:, :depth], axis=0, return_inverse=True)
        group = group.reshape(-1)
        size = np.bincount(group, minlength=len(prefixes))
        cat_share = _shares(group[pair_item], pair_cat, size)
        dec_share = _shares(group[known], decade[known], np.bincount(group[known], minlength=len(prefixes)))
        for g, prefix in enumerate(prefixes):
            cats = [[names[c], s] for c, s in cat_share.get(g, [])][:TOP_CATEGORIES]
            decs = [[int(d), s] for d, s in dec_share.get(g, [])][:TOP_DECADES]
            out[prefix_key(prefix)] = {"depth": depth, "n_items": int(size[g]), "categories": cats,
                                       "decades": decs, "text": describe(cats, decs)}
    return out


def _shares(group: np.ndarray, value: np.ndarray, size: np.ndarray) -> dict[int, list[tuple[int, float]]]:
    """{group: [(value, share of the group's items), ...] largest first, shares >= MIN_SHARE} from (group, value)
    pairs, one per item and value."""
    if len(group) == 0:
        return {}
    key, count = np.unique(np.column_stack([group, value]), axis=0, return_counts=True)
    share = count / np.maximum(size[key[:, 0]], 1)
    order = np.lexsort((key[:, 1], -share, key[:, 0]))  # by group, then the largest share, then the value
    out: dict[int, list[tuple[int, float]]] = {}
    for (g, v), s in zip(key[order].tolist(), share[order].tolist()):
        if s >= MIN_SHARE:
            out.setdefault(g, []).append((v, round(s, 3)))
    return out


def describe(categories: list, decades: list) -> str:
    """"Comedy 71%, Romance 24% · 1990s 88%"; "" when nothing reaches MIN_SHARE."""
    parts = [", ".join(f"{name} {share:.0%}" for name, share in categories),
             ", ".join(f"{decade}s {share:.0%}" for decade, share in decades)]
    return " · ".join(p for p in parts if p)
