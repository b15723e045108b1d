"""Exploration slots: where in a list the long-tail items go, and how two ranked lists are merged into one.

A list of length k with exploration share s reserves the positions j (0-based) where floor((j + 1) s) steps up: at
s = 0.2 positions 4, 9, 14, ...; at s = 0.3 positions 3, 6, 9, ... So every prefix of the list, the top-10 a user
sees first included, holds floor(n s) exploration slots, and the evaluation knows which slots they are without
being told (`e2erec.eval.exploration`). The main ranking fills the other positions in its order; the exploration
ranking (the same model's best long-tail items) fills the reserved ones. Beam search merges its main and
exploration beams with `interleave`, and the evaluation builds every system's exploration list the same way.
"""

from __future__ import annotations

import math

import torch


def explore_slots(k: int, share: float) -> torch.Tensor:
    """bool [k]: the exploration positions of a list of length k (module docstring)."""
    steps = torch.floor(torch.arange(k + 1, dtype=torch.float64) * share + 1e-9)  # 1e-9: 0.3 * 10 is 3, not 2.99..
    return steps[1:] > steps[:-1]


def n_explore_slots(k: int, share: float) -> int:
    return math.floor(k * share + 1e-9)


def _in_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bool like `a` [B, n]: a[r, i] is one of b[r, :] [B, m] (O(n m) per row: lists of tens of items)."""
    return (a[:, :, None] == b[:, None, :]).any(-1)


def _first(cols: torch.Tensor, drop: torch.Tensor, n: int) -> torch.Tensor:
    """Each row's first n columns of `cols` [B, m] not dropped, in their order; -1 where a row has fewer."""
    order = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices
    kept = torch.where(drop.gather(1, order), torch.full_like(cols, -1), cols.gather(1, order))
    if kept.shape[1] < n:
        kept = torch.cat([kept, kept.new_full((kept.shape[0], n - kept.shape[1]), -1)], 1)
    return kept[:, :n]


def _take(cols: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """cols [B, m] at per-slot ranks [B, k]; -1 where the rank is past the end."""
    return torch.where(rank < cols.shape[1], cols.gather(1, rank.clamp(0, max(cols.shape[1] - 1, 0))),
                       torch.full_like(rank, -1))


def take_slots(col: torch.Tensor, main: torch.Tensor, explore: torch.Tensor, fill: float) -> torch.Tensor:
    """What `interleave`'s columns point at: concat(main, explore) [B, m + e] at `col` [B, k], `fill` where a slot is
    empty. Pass items, or the scores beside them."""
    pool = torch.cat([main, explore], 1)
    return torch.where(col >= 0, pool.gather(1, col.clamp_min(0)), torch.full_like(col, fill, dtype=pool.dtype))


def interleave(main: torch.Tensor, explore: torch.Tensor, k: int, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two ranked item lists per row ([B, m] and [B, e], -1 pads, each duplicate-free) into k slots: the
    exploration slots (`explore_slots`) take `explore`'s best items not already in a main slot, the others `main`'s
    in order. Where one list runs short the other fills in, so the list stays full while either has items, and no
    item appears twice. Returns (column [B, k] of each slot's item in concat(main, explore), -1 for an empty slot;
    bool [B, k], True where the slot holds an item of the exploration ranking in a reserved slot)."""
    b, m = main.shape
    n_x = n_explore_slots(k, share)
    cols = torch.arange(m + explore.shape[1], device=main.device).expand(b, -1)
    # The exploration stream: `explore`'s real items that are not shown in the main slots proper, in its order.
    x_cols = _first(cols[:, m:], (explore < 0) | _in_rows(explore, main[:, :k - n_x]), k)
    x_items = torch.where(x_cols >= 0, torch.cat([main, explore], 1).gather(1, x_cols.clamp_min(0)), -1)
    # The main stream: `main`'s real items; past the main slots proper (when exploration runs short), none of the
    # exploration stream's.
    r_cols = _first(cols[:, :m], (main < 0) | ((cols[:, :m] >= k - n_x) & _in_rows(main, x_items)), k)
    # Slot j: reserved slots take the exploration items and the others the rest, until one of the two runs out at
    # slot j_x (the first reserved slot without an exploration item) or j_r (the first other slot without a rest
    # item); from there every slot takes the other, so the list stays full while either has items.
    slot = explore_slots(k, share).to(main.device)[None, :].expand(b, -1)
    n_x_ok, n_r_ok = (x_cols >= 0).sum(1, keepdim=True), (r_cols >= 0).sum(1, keepdim=True)
    j = torch.arange(k, device=main.device).expand(b, -1)
    never = torch.full((b, 1), k, device=main.device)
    j_x = torch.where(slot & (torch.cumsum(slot.long(), 1) > n_x_ok), j, never).amin(1, keepdim=True)
    j_r = torch.where(~slot & (torch.cumsum((~slot).long(), 1) > n_r_ok), j, never).amin(1, keepdim=True)
    from_x = torch.where(j < torch.minimum(j_x, j_r), slot, j_r < j_x)
    picked = torch.where(from_x, _take(x_cols, torch.cumsum(from_x.long(), 1) - 1),
                         _take(r_cols, torch.cumsum((~from_x).long(), 1) - 1))
    return picked, from_x & (picked >= 0)
