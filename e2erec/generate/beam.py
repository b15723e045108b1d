"""Trie-constrained, steerable beam search over semantic IDs, generic over the model.

The model is a `step_fn(level, prefix_codes [B, beams, level], state) -> log-probs [B, beams, K_level]` (on a compact
trie level, optionally the logits of `state.pairs` only: see `BeamState`); the search keeps `beam_size` prefixes per user, extends each by every code the trie allows, and keeps the best. Only real items
come out, because a code is allowed only where the trie has a child. Each level's log-probabilities are renormalised
over the allowed codes, so log P(item codes) is the item's log-probability among real items (what the generative
loss trains, `e2erec.model.model`).

Steering is applied INSIDE the search (so top-K stays full) by propagating per-item values up the trie:
value(item) = bonus(item) where the item is allowed, -inf where not; value(node) = max over the items below it.
A candidate prefix is ranked by log P(prefix) + value(node): a node without an allowed item below is never entered,
and the bonus term is the best bonus still reachable — an admissible (optimistic) heuristic, as in A*; the final
score of an item is log P(item codes) + bonus(item). Exploration reserves a share of the list's positions for
long-tail items (`e2erec.generate.explore`: floor(n x explore_share) of every top-n): a second group of beams
searches only long-tail items, and the two ranked lists are interleaved into those positions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from e2erec.errors import DataError
from e2erec.generate.config import SteeringConfig
from e2erec.generate.explore import interleave, take_slots
from e2erec.tokenizer.trie import PrefixTrie, segments

NEG_INF = float("-inf")


@dataclass
class BeamState:
    """What the search tells `step_fn` besides the prefixes, so a model can reorder its per-beam caches.

    parent: long [B, beams], the beam (at the previous level) each current beam extends; None at level 0.
    alive:  bool [B, beams], False for padding beams (their log-probs are ignored).
    group:  long [beams], 0 = main beams, 1 = exploration beams.
    pairs:  on a compact trie level, (row, beam, code) long [P] each: the only codes the search will read. A step_fn
            may return their logits [P] (normalised or not: the search renormalises over them) instead of [B, beams, K].
    """

    parent: torch.Tensor | None
    alive: torch.Tensor
    group: torch.Tensor
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


@dataclass
class ItemInfo:
    """Per-item side information steering needs, as tensors: a category multi-hot, release year, long-tail flag."""

    categories: list[str]  # column names of `multi_hot`
    multi_hot: torch.Tensor  # bool [n_items, n_categories]
    year: torch.Tensor  # long [n_items], -1 = unknown
    long_tail: torch.Tensor  # bool [n_items]: outside the most popular (1 - long_tail_share) of the catalogue
    raw_id: list[str] | None = None  # the dataset's item ids, which item-list instructions name

    def item_index(self, raw_ids: list[str], key: str) -> torch.Tensor:
        """long indices of the named items; an unknown id is an error that names the instruction."""
        if self.raw_id is None:
            raise DataError(f"generate.steering.{key}: item ids need ItemInfo.raw_id (ItemInfo.from_table)")
        unknown = [r for r in map(str, raw_ids) if r not in self._raw_index]
        if unknown:
            raise DataError(f"generate.steering.{key}: unknown item id(s) {unknown[:5]} (of {len(unknown)})")
        return torch.tensor([self._raw_index[str(r)] for r in raw_ids], dtype=torch.long)

    @functools.cached_property
    def _raw_index(self) -> dict[str, int]:
        return {raw: i for i, raw in enumerate(self.raw_id)}

    def category_mask(self, names: list[str], key: str) -> torch.Tensor:
        """bool [n_items]: items in any of the named categories; an unknown name is an error that names the key."""
        col = {c: j for j, c in enumerate(self.categories)}
        unknown = [n for n in names if n not in col]
        if unknown:
            raise DataError(f"generate.steering.{key}: unknown category {unknown[0]!r}; the items have "
                            f"{self.categories}")
        return self.multi_hot[:, [col[c] for c in names]].any(1)

    @classmethod
    def from_table(cls, items, long_tail_share: float = 0.8) -> ItemInfo:
        """From an `ItemTable`; long tail = the `long_tail_share` least popular items (by training popularity)."""
        names = sorted({c for cats in items.categories for c in cats})
        col = {c: j for j, c in enumerate(names)}
        multi_hot = torch.zeros(items.n_items, len(names), dtype=torch.bool)
        for i, cats in enumerate(items.categories):
            multi_hot[i, [col[c] for c in cats]] = True
        from e2erec.eval.metrics import head_items  # the evaluation's own long tail, so its slots are the same

        long_tail = ~head_items(np.asarray(items.popularity, dtype=np.int64), long_tail_share)
        return cls(names, multi_hot, torch.as_tensor(np.asarray(items.year, dtype=np.int64)),
                   torch.from_numpy(long_tail), list(items.raw_id))


def item_values(steering: SteeringConfig | None, info: ItemInfo | None, n_items: int) -> torch.Tensor:
    """Per-item value float [n_items] from the user-independent steering: bonus, or -inf where excluded."""
    value = torch.zeros(n_items)
    if steering is None:
        return value
    needs_info = steering.include_categories or steering.boost_categories or steering.freshness_weight \
        or steering.explore_share or steering.include_items or steering.boost_items or steering.min_year
    if needs_info and info is None:
        raise DataError("steering by category, item list, year or exploration needs item_info (ItemInfo.from_table)")
    if not needs_info:
        return value
    if steering.include_categories:
        value[~info.category_mask(steering.include_categories, "include_categories")] = NEG_INF
    for name, bonus in steering.boost_categories.items():
        value += bonus * info.category_mask([name], "boost_categories").float()
    if steering.include_items:
        allowed = torch.zeros(n_items, dtype=torch.bool)
        allowed[info.item_index(steering.include_items, "include_items")] = True
        value[~allowed] = NEG_INF
    if steering.boost_items:
        boosted = torch.zeros(n_items, dtype=torch.bool)
        boosted[info.item_index(steering.boost_items, "boost_items")] = True
        value += steering.item_boost * boosted.float()
    if steering.min_year:
        value[info.year < steering.min_year] = NEG_INF  # an unknown year (-1) is not known to be recent enough
    if steering.freshness_weight:
        known = info.year >= 0
        if known.any():
            lo, hi = info.year[known].min(), info.year[known].max()
            fresh = ((info.year - lo).float() / max(int(hi - lo), 1)).clamp(0, 1)
            value += steering.freshness_weight * torch.where(known, fresh, torch.zeros_like(fresh))
    return value


def explore_pool(steering: SteeringConfig, info: ItemInfo) -> torch.Tensor:
    """bool [n_items]: the items exploration slots may hold: the named categories' ("explore snacks"), else the
    long tail."""
    if steering.explore_categories:
        return info.category_mask(steering.explore_categories, "explore_categories")
    return info.long_tail


def node_values(trie: PrefixTrie, item_value: torch.Tensor) -> list[torch.Tensor]:
    """Propagate per-item values [G, n_items] up the trie: per depth 1..n_levels, float [G, n_nodes(depth)] =
    the max value over the items below each node (-inf: no allowed item below)."""
    out = []
    for depth in range(1, trie.n_levels + 1):
        idx = trie.item_node[depth].to(item_value.device).expand_as(item_value)
        v = torch.full((item_value.shape[0], trie.n_nodes(depth)), NEG_INF, device=item_value.device)
        out.append(v.scatter_reduce_(1, idx, item_value, reduce="amax", include_self=True))
    return out


class NodeValues:
    """The heuristic of one search: per depth 1..n_levels, the value of each node for each user and beam group.

    User-independent steering gives `static` [G, n_nodes(depth)], shared by every user. Excluding a user's seen items
    changes only the ancestors of those items, so each depth also holds sparse per-user overrides: sorted keys
    `user * n_nodes(depth) + node` [P] with their values [G, P], P <= users x history. Nothing is [users, n_items],
    and a user costs O(history x levels) whatever the catalogue's size or the number of children a node has.

    `ranked` caches, per depth, each parent's children ordered by static value (best first), built on first use;
    pass the same dict to every search with these static values (`static_node_values` memoises it)."""

    def __init__(self, trie: PrefixTrie, static: list[torch.Tensor], ranked: dict | None = None):
        self.trie = trie
        self.static = static
        self.ranked = {} if ranked is None else ranked
        self.keys: list[torch.Tensor | None] = [None] * trie.n_levels
        self.override: list[torch.Tensor | None] = [None] * trie.n_levels

    def lookup(self, depth: int, group: torch.Tensor, user: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        """Values of depth-`depth` nodes (long, >= 0), for broadcastable group / user / node indices."""
        value = self.static[depth - 1][group, node]
        keys = self.keys[depth - 1]
        if keys is None or keys.numel() == 0:
            return value
        query = user * self.trie.n_nodes(depth) + node
        pos = torch.searchsorted(keys, query.contiguous()).clamp_max(keys.numel() - 1)
        return torch.where(keys[pos] == query, self.override[depth - 1][group, pos], value)

    def of_children(self, depth: int, group: torch.Tensor, node: torch.Tensor, child: torch.Tensor) -> torch.Tensor:
        """Values [B, beams, K] of every child `child` (long [B, beams, K], the depth-`depth` children of each beam's
        `node` [B, beams], -1 = dead beam; any value where there is no child) for beam groups `group` [beams]. The
        static values are read densely; the overrides of user b are read per beam, as the run of keys inside its
        node's children block (two binary searches per beam, not one per child)."""
        value = self.static[depth - 1][group[None, :, None], child.clamp_min(0)]
        keys = self.keys[depth - 1]
        if keys is None or keys.numel() == 0:
            return value
        _, code, start, count = self.trie.child_blocks(depth)
        n = self.trie.n_nodes(depth)
        row, beam = (node >= 0).nonzero(as_tuple=True)
        first = row * n + start[node[row, beam]]
        lo = torch.searchsorted(keys, first)
        hits = torch.searchsorted(keys, first + count[node[row, beam]]) - lo
        which, offset = segments(hits)
        at = lo[which] + offset
        value[row[which], beam[which], code[keys[at] % n]] = self.override[depth - 1][group[beam[which]], at]
        return value

    def _ranked(self, depth: int) -> torch.Tensor:
        """long [G, n_nodes(depth)]: position start[p] + r holds parent p's r-th best child by static value (a parent's
        children are a consecutive block, so sorting by (parent, -value) keeps every block in place)."""
        if depth not in self.ranked:
            parent = self.trie.child_blocks(depth)[0]
            rows = []
            for value in self.static[depth - 1]:
                order = torch.argsort(-value, stable=True)  # best first; -inf last
                rows.append(order[torch.argsort(parent[order], stable=True)])
            self.ranked[depth] = torch.stack(rows)
        return self.ranked[depth]

    def exclude(self, users: torch.Tensor, items: torch.Tensor, bonus: float = NEG_INF) -> NodeValues:
        """Make each (user, item) pair's item unreachable for that user (or, with a finite `bonus`, add it to that
        item's value): its leaf gets -inf (its static value + bonus), and every ancestor the max over its children,
        bottom-up (exact: the same values as masking a dense [users, n_items] table).

        A node with o overridden children takes the max of their overrides and of its best child that has no
        override, which is among its o + 1 best children by static value: O(o + 1) work, never O(children)."""
        trie, n_groups = self.trie, self.static[0].shape[0]
        users, items = users.long(), items.long()
        for depth in range(trie.n_levels, 0, -1):
            n = trie.n_nodes(depth)
            keys = torch.unique(users * n + trie.item_node[depth][items])  # sorted
            values = torch.full((n_groups, keys.numel()), NEG_INF, device=keys.device)
            if depth == trie.n_levels and bonus > NEG_INF:  # a repeat bonus on the seen leaves themselves
                values = self.static[depth - 1][:, keys % n] + bonus
            if depth < trie.n_levels:
                n_below = trie.n_nodes(depth + 1)
                below, below_value = self.keys[depth], self.override[depth]  # the overridden children, sorted
                parent, _, start, count = trie.child_blocks(depth + 1)
                at = torch.searchsorted(keys, (below // n_below) * n + parent[below % n_below])  # its key's index
                values.scatter_reduce_(1, at.expand(n_groups, -1), below_value, reduce="amax")
                user, node = keys // n, keys % n
                tries = torch.minimum(torch.bincount(at, minlength=keys.numel()) + 1, count[node])
                key, rank = segments(tries)
                for g, ranked in enumerate(self._ranked(depth + 1)):
                    child = ranked[start[node[key]] + rank]
                    query = user[key] * n_below + child
                    pos = torch.searchsorted(below, query).clamp_max(below.numel() - 1)
                    free = torch.where(below[pos] == query, NEG_INF, self.static[depth][g, child])
                    values[g].scatter_reduce_(0, key, free, reduce="amax")
            self.keys[depth - 1], self.override[depth - 1] = keys, values
        return self


def _seen_pairs(seen, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(user row, item) long pairs from per-user item lists, or from jagged (offsets [B+1], items)."""
    if isinstance(seen, tuple):
        offsets, items = (torch.as_tensor(t, device=device) for t in seen)
        if offsets.numel() != batch_size + 1:
            raise ValueError(f"seen offsets must have batch_size + 1 = {batch_size + 1} entries, got {offsets.numel()}")
        rows = torch.repeat_interleave(torch.arange(batch_size, device=device), offsets.diff())
        return rows, items.long()
    if len(seen) != batch_size:
        raise ValueError(f"seen must hold one item list per user ({batch_size}), got {len(seen)}")
    lists = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in seen]
    rows = torch.repeat_interleave(torch.arange(batch_size), torch.tensor([len(x) for x in lists]))
    return rows.to(device), torch.cat(lists).to(device) if lists else torch.zeros(0, dtype=torch.long, device=device)


def static_node_values(trie: PrefixTrie, steering: SteeringConfig | None, info: ItemInfo | None,
                       among: torch.Tensor | None = None) -> NodeValues:
    """The user-independent part of the heuristic (per depth [G, n_nodes] and its ranked children), memoised on the
    trie: a generation run computes it once, not per batch of users. G = 2 with exploration (main beams, exploration
    beams: `explore_pool`), a single exploration group at explore_share = 1; `among` (bool [n_items]) keeps only those items. Each
    search takes a fresh `NodeValues` over it (`NodeValues(trie, shared.static, shared.ranked)`)."""
    share = 0.0 if steering is None else min(steering.explore_share, 1.0)
    key = (None if steering is None else
           (tuple(steering.include_categories), tuple(sorted(steering.boost_categories.items())),
            tuple(steering.include_items), tuple(steering.boost_items), steering.item_boost, steering.min_year,
            steering.freshness_weight, share, tuple(steering.explore_categories)), id(info), id(among))
    memo = trie.memo
    if key in memo and memo[key][0] is info and memo[key][1] is among:
        return memo[key][2]
    static = item_values(steering, info, trie.leaf_item.numel()).to(trie.device)
    if among is not None:
        static = static.masked_fill(~among.to(trie.device), NEG_INF)
    explore = static.masked_fill(~explore_pool(steering, info).to(trie.device), NEG_INF) if share > 0 else None
    groups = [static] if share == 0 else [explore] if share == 1 else [static, explore]
    memo.clear()  # one steering at a time: keep memory bounded
    memo[key] = (info, among, NodeValues(trie, node_values(trie, torch.stack(groups))))
    return memo[key][2]


@torch.no_grad()
def constrained_beam_search(
    step_fn: Callable[[int, torch.Tensor, BeamState], torch.Tensor],
    trie: PrefixTrie,
    batch_size: int,
    beam_size: int,
    top_k: int,
    *,
    steering: SteeringConfig | None = None,
    item_info: ItemInfo | None = None,
    seen: Sequence[Sequence[int]] | tuple[torch.Tensor, torch.Tensor] | None = None,
    among: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K items per user: (items long [B, top_k], scores float [B, top_k]), best first (with exploration, the
    long-tail items in their reserved positions, each group best first); -1 / -inf pad a row only when fewer than
    top_k items are allowed for that user. `seen` (per-user item lists, or jagged offsets + items) is excluded when
    `steering.exclude_seen`, else its items get `steering.repeat_bonus` added; `among` (bool [n_items]) restricts the search to those items. With beam_size >= the
    number of items the search is exhaustive."""
    if beam_size < top_k:
        raise ValueError(f"beam_size ({beam_size}) must be >= top_k ({top_k})")
    device = trie.device
    # The heuristic: user-independent node values (memoised on the trie), plus each user's seen items, sparsely.
    shared = static_node_values(trie, steering, item_info, among)
    values = NodeValues(trie, shared.static, shared.ranked)
    if steering is not None and steering.exclude_seen and seen is None:
        raise ValueError("steering.exclude_seen is set but no `seen` items were given (pass seen=, or set "
                         "generate.steering.exclude_seen=false)")
    if steering is not None and steering.exclude_seen:
        values.exclude(*_seen_pairs(seen, batch_size, device))
    elif steering is not None and steering.repeat_bonus and seen is not None:
        values.exclude(*_seen_pairs(seen, batch_size, device), bonus=steering.repeat_bonus)
    n_groups = values.static[0].shape[0]
    beams = n_groups * beam_size
    group = torch.arange(n_groups, device=device).repeat_interleave(beam_size)  # (beams,)
    node = torch.zeros(batch_size, beams, dtype=torch.long, device=device)
    score = torch.full((batch_size, beams), NEG_INF, device=device)
    score[:, ::beam_size] = 0.0  # one live root beam per group
    prefix = torch.zeros(batch_size, beams, 0, dtype=torch.long, device=device)
    parent = None
    rows = torch.arange(batch_size, device=device)[:, None]
    for level in range(trie.n_levels):
        expand = _expand_sparse if trie.is_compact(level) else _expand_dense
        top_rank, src_beam, code, new_score, new_node = expand(
            step_fn, trie, values, level, prefix, BeamState(parent, score > NEG_INF, group), score, node, beam_size)
        keep = top_rank > NEG_INF
        score = torch.where(keep, new_score, torch.full_like(score, NEG_INF))
        node = torch.where(keep, new_node, torch.full_like(node, -1))
        prefix = torch.cat([prefix.gather(1, src_beam[..., None].expand(-1, -1, level)), code[..., None]], -1)
        parent = src_beam
    items = trie.items_of_leaves(node)  # (B, beams)
    final = score + values.lookup(trie.n_levels, group[None, :], rows, node.clamp_min(0))
    final = torch.where(items >= 0, final, torch.full_like(final, NEG_INF))
    return _merge(items, final, group, top_k, 0.0 if steering is None else steering.explore_share)


def _renormalise(logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log-probs over the codes the trie allows (the masked softmax the generative loss trains), so an item's score
    is its log-probability among real items whatever mass the model leaves on invalid codes."""
    logp = logp.float().masked_fill(~valid, NEG_INF)
    return torch.where(valid, logp - logp.logsumexp(-1, keepdim=True), logp)


def _expand_dense(step_fn, trie: PrefixTrie, values: NodeValues, level: int, prefix: torch.Tensor, state: BeamState,
                  score: torch.Tensor, node: torch.Tensor, beam_size: int):
    """One level over a dense child table: every beam x every code (K is a codebook's size), the best `beam_size`
    per group. Returns (rank, source beam, code, score, child node), each [B, beams], rank -inf where nothing."""
    batch_size, beams = score.shape
    n_groups = beams // beam_size
    logp = step_fn(level, prefix, state)  # (B, beams, K)
    k = logp.shape[-1]
    valid, child = trie.step(level, torch.where(state.alive, node, torch.full_like(node, -1)))  # (B, beams, K)
    cum = score[..., None] + _renormalise(logp, valid)  # (B, beams, K), -inf where no child
    # The heuristic: the best value still reachable below each child.
    rank = cum + values.of_children(level + 1, state.group, torch.where(state.alive, node, -1), child)
    top_rank, top_idx = rank.view(batch_size, n_groups, beam_size * k).topk(beam_size, dim=-1)  # (B, G, beam_size)
    src_beam = (top_idx // k + (torch.arange(n_groups, device=score.device) * beam_size)[None, :, None])
    src_beam = src_beam.view(batch_size, beams)
    code = (top_idx % k).view(batch_size, beams)
    flat = src_beam * k + code
    return (top_rank.view(batch_size, beams), src_beam, code, cum.view(batch_size, -1).gather(1, flat),
            child.view(batch_size, -1).gather(1, flat))


def _expand_sparse(step_fn, trie: PrefixTrie, values: NodeValues, level: int, prefix: torch.Tensor,
                   state: BeamState, score: torch.Tensor, node: torch.Tensor, beam_size: int):
    """`_expand_dense` over a compact level (the disambiguation level, whose K is the largest group of items sharing
    a prefix, 1,535 at 1M synthetic items, while a node has one or two children on average): only each live beam's
    real children are scored, renormalised and ranked, so the cost follows the children, not K. The model is asked
    for the logits of those (row, beam, code) triples only (`BeamState.pairs`); a model that ignores them and
    returns dense [B, beams, K] log-probs is read at the triples."""
    batch_size, beams = score.shape
    n_groups = beams // beam_size
    device = score.device
    live_row, live_beam = state.alive.nonzero(as_tuple=True)  # row-major: by user, then beam (so by group)
    seg, code, child = trie.children[level].real_children(node[live_row, live_beam])  # seg: each pair's live beam
    row, beam = live_row[seg], live_beam[seg]
    logit = step_fn(level, prefix, BeamState(state.parent, state.alive, state.group, pairs=(row, beam, code)))
    logit = (logit[row, beam, code] if logit.dim() == 3 else logit).float()
    # Renormalise per live beam over its real children: a segment log-sum-exp.
    top = torch.full((live_row.numel(),), NEG_INF, device=device).scatter_reduce_(0, seg, logit, reduce="amax")
    mass = torch.zeros(live_row.numel(), device=device).index_add_(0, seg, (logit - top[seg]).exp())
    cum = score[row, beam] + logit - (top + mass.log())[seg]
    rank = cum + values.lookup(level + 1, state.group[beam], row, child)
    # The best beam_size pairs per (user, group): pairs are sorted by it, so lay each one's out in a padded row.
    bucket = row * n_groups + state.group[beam]
    count = torch.bincount(bucket, minlength=batch_size * n_groups)
    first = torch.cumsum(count, 0) - count
    width = max(int(count.max()) if count.numel() else 0, beam_size)
    padded = torch.full((batch_size * n_groups, width), NEG_INF, device=device)
    padded[bucket, torch.arange(bucket.numel(), device=device) - first[bucket]] = rank
    top_rank, top_pos = padded.topk(beam_size, dim=-1)  # (B * G, beam_size)
    if bucket.numel() == 0:  # no live beam anywhere: every slot stays dead
        zeros = torch.zeros_like(node)
        return top_rank.view(batch_size, beams), zeros, zeros, score, node
    # A slot past its bucket's pairs is dead (rank -inf); clamped, it reads some real pair that `keep` discards.
    pair = (first[:, None] + top_pos).clamp_max(bucket.numel() - 1).view(batch_size, beams)
    return top_rank.view(batch_size, beams), beam[pair], code[pair], cum[pair], child[pair]


def _merge(items: torch.Tensor, score: torch.Tensor, group: torch.Tensor, top_k: int, explore_share: float):
    """Top-K from the main beams; with exploration, the reserved slots (`e2erec.generate.explore`) from the best
    exploration-beam items. Each group's beams hold distinct items, so each ranked list is duplicate-free."""
    def ranked(g: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, idx = torch.where(group[None, :] == g, score, torch.full_like(score, NEG_INF)).sort(1, descending=True)
        n = int((group == g).sum())
        return torch.where(s[:, :n] > NEG_INF, items.gather(1, idx[:, :n]), -1), s[:, :n]

    main_items, main_scores = ranked(0)
    if not 0 < explore_share < 1:  # one group: the main beams, or at share 1 the long-tail ones
        return main_items[:, :top_k], main_scores[:, :top_k]
    x_items, x_scores = ranked(1)
    col, _ = interleave(main_items, x_items, top_k, explore_share)
    return take_slots(col, main_items, x_items, -1), take_slots(col, main_scores, x_scores, NEG_INF)
