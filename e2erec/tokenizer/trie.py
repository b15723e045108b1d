"""A prefix trie over semantic IDs, stored as dense per-level tensors for batched constrained decoding on any device.

Nodes at depth l are the distinct code prefixes of length l, numbered in lexicographic order (depth 0: the root, 0).
`children[l]` is int32 [n_nodes(l), K_l]: the id of the depth-(l+1) node reached by appending code c, or -1 when no
item has that prefix. Leaves (depth n_levels) map to items through `leaf_item`. A worked example, K = (2, 3)::

    item codes: 0 -> (0, 2), 1 -> (1, 0), 2 -> (0, 1)
    children[0] = [[0, 1]]                   # root: code 0 -> node 0 = prefix (0,), code 1 -> node 1 = (1,)
    children[1] = [[-1, 0, 1], [2, -1, -1]]  # leaves are numbered by full code: (0,1)=0, (0,2)=1, (1,0)=2
    leaf_item   = [2, 0, 1]

`item_node[l]` (long [n_items]) is the depth-l node on each item's path; steering aggregates per-item values up
the trie with it (`scatter_reduce` over items -> nodes).

A level whose codes under every node are 0, 1, ..., count - 1 (the disambiguation level: items sharing a prefix
are numbered in turn) is held as a `CompactLevel`: each node's first child and child count, not a dense row of K.
Its K is the largest group of items sharing a prefix (1,535 for 1M synthetic items in scripts/bench_scale.py, where
the dense table took 3.7 GB); compact, it costs 12 bytes per node.
"""

from __future__ import annotations

import torch


def segments(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten segments of `counts` (long [n]) entries: (segment, position within it), long [counts.sum()] each.
    Example: counts [2, 0, 3] -> ([0, 0, 2, 2, 2], [0, 1, 0, 1, 2])."""
    seg = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    return seg, torch.arange(seg.numel(), device=counts.device) - (torch.cumsum(counts, 0) - counts)[seg]


class CompactLevel:
    """Children of a level where node n's codes are 0..count[n]-1 and its children are start[n] + code; indexes like
    the dense int32 table it replaces (`level[nodes]` -> rows [..., K], `level[nodes, codes]` -> ids)."""

    def __init__(self, start: torch.Tensor, count: torch.Tensor, k: int):
        self.start, self.count, self.k = start, count, k

    @property
    def shape(self) -> tuple[int, int]:
        return (self.start.numel(), self.k)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):
            nodes, codes = index
            ok = codes < self.count[nodes]
            return torch.where(ok, self.start[nodes] + codes, torch.full_like(codes, -1)).int()
        codes = torch.arange(self.k, device=self.start.device)
        ok = codes < self.count[index].unsqueeze(-1)
        return torch.where(ok, self.start[index].unsqueeze(-1) + codes, -1).int()

    def real_children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row into `nodes`, code, child id) long of every real child of `nodes` (long [n], >= 0), row-major."""
        row, code = segments(self.count[nodes].long())
        return row, code, self.start[nodes].long()[row] + code

    def tolist(self) -> list[list[int]]:
        return self[torch.arange(self.start.numel(), device=self.start.device)].tolist()

    def nbytes(self) -> int:
        return self.start.numel() * self.start.element_size() + self.count.numel() * self.count.element_size()

    def to(self, device: torch.device | str) -> CompactLevel:
        return CompactLevel(self.start.to(device), self.count.to(device), self.k)


class PrefixTrie:
    def __init__(self, children: list[torch.Tensor | CompactLevel], leaf_item: torch.Tensor, item_node: list[torch.Tensor],
                 codebook_sizes: list[int]):
        self.children = children
        self.leaf_item = leaf_item
        self.item_node = item_node
        self.codebook_sizes = list(codebook_sizes)
        # Values derived per node and reused by every search over this trie (e2erec.generate.beam memoises its
        # user-independent steering values here).
        self.memo: dict = {}
        self._blocks: dict[int, tuple[torch.Tensor, ...]] = {}  # child_blocks, per depth

    @classmethod
    def build_subset(cls, codes: torch.Tensor, codebook_sizes: list[int], keep: torch.Tensor) -> PrefixTrie:
        """The trie of the items `keep` (bool [n_items]) only, with the original item ids: `leaf_item` names them and
        `item_node[l]` is full length, -1 for an item left out. What a training mask over a subset of the catalogue
        needs (`trie_code_mask`); steering and beam-search values read every item, so they take `build`'s trie."""
        keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
        ids = keep.nonzero().squeeze(1)
        sub = cls.build(codes[ids], codebook_sizes)
        item_node = []
        for nodes in sub.item_node:
            full = torch.full((keep.numel(),), -1, dtype=torch.long)
            full[ids] = nodes
            item_node.append(full)
        return cls(sub.children, ids[sub.leaf_item], item_node, codebook_sizes)

    @classmethod
    def build(cls, codes: torch.Tensor, codebook_sizes: list[int]) -> PrefixTrie:
        """From unique codes long [n_items, n_levels] (duplicate rows are an error: a leaf names one item)."""
        codes = codes.long().cpu()
        n, levels = codes.shape
        node = torch.zeros(n, dtype=torch.long)
        item_node, children = [node], []
        for level in range(levels):
            k = codebook_sizes[level]
            key = node * k + codes[:, level]  # (parent, code) pairs, as one int64 (n_nodes * K fits easily)
            uniq, child = torch.unique(key, return_inverse=True)  # sorted: lexicographic node numbering
            n_parents = int(node.max()) + 1
            parent, code = uniq // k, uniq % k
            count = torch.bincount(parent, minlength=n_parents)
            start = torch.cumsum(count, 0) - count  # children of a parent are consecutive ids (sorted keys)
            if torch.equal(code, torch.arange(uniq.numel()) - start[parent]):  # codes 0..count-1 under every node
                children.append(CompactLevel(start.int(), count.int(), k))
            else:
                table = torch.full((n_parents, k), -1, dtype=torch.int32)
                table.view(-1)[uniq] = torch.arange(uniq.numel(), dtype=torch.int32)
                children.append(table)
            node = child
            item_node.append(node)
        if node.numel() and int(node.max()) + 1 != n:
            raise ValueError(f"{n - int(node.max()) - 1} items share their full code with another item")
        leaf_item = torch.empty(n, dtype=torch.long)
        leaf_item[node] = torch.arange(n)
        return cls(children, leaf_item, item_node, codebook_sizes)

    @property
    def n_levels(self) -> int:
        return len(self.children)

    @property
    def device(self) -> torch.device:
        return self.leaf_item.device

    def n_nodes(self, depth: int) -> int:
        """Number of nodes at depth 0..n_levels (depth n_levels: leaves = items)."""
        return self.leaf_item.numel() if depth == self.n_levels else self.children[depth].shape[0]

    def nbytes(self) -> int:
        """Bytes of the trie's tensors (what moving it to a device costs)."""
        tensors = [c for c in self.children if isinstance(c, torch.Tensor)] + [self.leaf_item, *self.item_node]
        compact = sum(c.nbytes() for c in self.children if isinstance(c, CompactLevel))
        return compact + sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> PrefixTrie:
        return PrefixTrie([c.to(device) for c in self.children], self.leaf_item.to(device),
                          [n.to(device) for n in self.item_node], self.codebook_sizes)

    def step(self, level: int, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For depth-`level` node ids long [...] (-1 = dead beam): (valid next codes bool [..., K], child ids long
        [..., K], -1 where invalid)."""
        table = self.children[level]
        child = table[nodes.clamp_min(0)].long()  # (..., K)
        child = torch.where((nodes >= 0).unsqueeze(-1), child, torch.full_like(child, -1))
        return child >= 0, child

    def child_blocks(self, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For depth-`depth` nodes (1..n_levels): (parent, code: the code that reaches each from its parent, long
        [n_nodes(depth)]; and per depth-(depth-1) node its first child and child count, long). A node's children
        are consecutive ids (lexicographic numbering), so a parent's children are the block start .. start + count
        - 1. Cached: O(n_nodes) once per trie (a dense level's table is read once)."""
        if depth not in self._blocks:
            n = self.n_nodes(depth)
            parent = torch.empty(n, dtype=torch.long, device=self.device)
            parent[self.item_node[depth]] = self.item_node[depth - 1]
            count = torch.bincount(parent, minlength=self.n_nodes(depth - 1))
            start = torch.cumsum(count, 0) - count
            table = self.children[depth - 1]
            if isinstance(table, CompactLevel):
                code = torch.arange(n, device=self.device) - start[parent]
            else:
                flat = (table.view(-1) >= 0).nonzero().squeeze(1)
                code = torch.empty(n, dtype=torch.long, device=self.device)
                code[table.view(-1)[flat].long()] = flat % table.shape[1]
            self._blocks[depth] = (parent, code, start, count)
        return self._blocks[depth]

    def is_compact(self, level: int) -> bool:
        """Whether level `level`'s children are a `CompactLevel` (its K says nothing about the children per node:
        beam search expands it sparsely)."""
        return isinstance(self.children[level], CompactLevel)

    def items_of_leaves(self, leaves: torch.Tensor) -> torch.Tensor:
        """Leaf node ids (-1 allowed) -> item ids (-1 for -1)."""
        return torch.where(leaves >= 0, self.leaf_item[leaves.clamp_min(0)], torch.full_like(leaves, -1))

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Full codes long [..., n_levels] -> item ids long [...], -1 where the codes name no item."""
        codes = codes.to(self.device).long()
        node = torch.zeros(codes.shape[:-1], dtype=torch.long, device=self.device)
        for level in range(self.n_levels):
            code = codes[..., level]
            ok = (node >= 0) & (code >= 0) & (code < self.codebook_sizes[level])
            nxt = self.children[level][node.clamp_min(0), code.clamp(0, self.codebook_sizes[level] - 1)].long()
            node = torch.where(ok, nxt, torch.full_like(node, -1))
        return self.items_of_leaves(node)
