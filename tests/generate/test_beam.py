"""Trie-constrained beam search: only real items, exact against brute force, every steering rule, full top-K."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from e2erec.generate.beam import ItemInfo, constrained_beam_search
from e2erec.generate.config import SteeringConfig
from e2erec.generate.explore import explore_slots, interleave
from e2erec.tokenizer.semantic_ids import disambiguate
from e2erec.tokenizer.trie import PrefixTrie

SIZES = [4, 3, 5]


def make_trie(n_items=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    all_ids = torch.tensor(list(itertools.product(*[range(k) for k in SIZES])))
    codes = all_ids[torch.randperm(len(all_ids), generator=g)[:n_items]]
    return codes, PrefixTrie.build(codes, SIZES)


class RandomModel:
    """A fixed random 'model': log-probs depend only on (user, level, prefix) — so brute force can score items."""

    def __init__(self, batch, seed=0):
        g = torch.Generator().manual_seed(seed)
        n_prefix = [int(np.prod(SIZES[:level])) for level in range(len(SIZES))]
        self.tables = [torch.randn(batch, n, k, generator=g).log_softmax(-1) for n, k in zip(n_prefix, SIZES)]
        self.calls = []

    def _index(self, prefix):  # mixed-radix number of a prefix
        idx = torch.zeros(prefix.shape[:-1], dtype=torch.long)
        for level in range(prefix.shape[-1]):
            idx = idx * SIZES[level] + prefix[..., level]
        return idx

    def __call__(self, level, prefix, state):
        self.calls.append((level, tuple(prefix.shape), state.alive.clone()))
        b = torch.arange(prefix.shape[0])[:, None]
        return self.tables[level][b, self._index(prefix)]  # (B, beams, K)

    def item_scores(self, codes):
        """(B, n_items): exact log P(item codes), each level renormalised over the codes that some item has after
        that prefix (the support of the constrained search), computed from the code rows alone."""
        rows = codes.tolist()
        out = torch.zeros(self.tables[0].shape[0], codes.shape[0])
        for level in range(len(SIZES)):
            allowed = {}
            for row in rows:
                allowed.setdefault(tuple(row[:level]), set()).add(row[level])
            mask = torch.zeros(len(rows), SIZES[level], dtype=torch.bool)
            for j, row in enumerate(rows):
                mask[j, sorted(allowed[tuple(row[:level])])] = True
            logp = self.tables[level][:, self._index(codes[:, :level])]  # (B, n_items, K)
            norm = logp.masked_fill(~mask, float("-inf")).logsumexp(-1)  # (B, n_items)
            out += logp.gather(-1, codes[:, level].expand(logp.shape[0], -1)[..., None]).squeeze(-1) - norm
        return out


def brute_force(model, codes, bonus=None, top_k=5):
    s = model.item_scores(codes) + (0 if bonus is None else bonus)
    return s.topk(top_k, dim=1)


@pytest.mark.parametrize("seed", range(4))
def test_exhaustive_beam_matches_brute_force(seed):
    codes, trie = make_trie(seed=seed)
    model = RandomModel(batch=3, seed=seed)
    items, scores = constrained_beam_search(model, trie, 3, beam_size=25, top_k=6)
    ref_s, ref_i = brute_force(model, codes, top_k=6)
    assert torch.equal(items, ref_i)
    assert torch.allclose(scores, ref_s, atol=1e-5)
    # The model saw prefixes of length 0, 1, 2 over a constant beam axis.
    assert [(lvl, shape) for lvl, shape, _ in model.calls] == [(0, (3, 25, 0)), (1, (3, 25, 1)), (2, (3, 25, 2))]


def test_narrow_beam_emits_only_valid_distinct_items():
    codes, trie = make_trie(n_items=40, seed=5)
    model = RandomModel(batch=4, seed=5)
    items, scores = constrained_beam_search(model, trie, 4, beam_size=6, top_k=6)
    assert ((items >= 0) & (items < 40)).all()
    for row in items.tolist():
        assert len(set(row)) == 6
    # Scores are the exact log-probs of the emitted items, in descending order.
    exact = model.item_scores(codes).gather(1, items)
    assert torch.allclose(scores, exact, atol=1e-5)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def info_for(n_items, seed=0):
    rng = np.random.default_rng(seed)
    cats = ["a", "b", "c"]
    multi_hot = torch.from_numpy(rng.random((n_items, 3)) < 0.35)
    year = torch.from_numpy(rng.integers(1980, 2000, n_items))
    long_tail = torch.zeros(n_items, dtype=torch.bool)
    long_tail[n_items // 3:] = True
    return ItemInfo(cats, multi_hot, year, long_tail)


def test_exclude_seen_and_include_categories_keep_top_k_full():
    codes, trie = make_trie(n_items=30, seed=2)
    info = info_for(30, seed=2)
    model = RandomModel(batch=2, seed=2)
    seen = [[0, 1, 2, 3, 4, 5, 6, 7], [10, 11]]
    steering = SteeringConfig(exclude_seen=True, include_categories=["a", "b"])
    items, _ = constrained_beam_search(model, trie, 2, beam_size=5, top_k=5, steering=steering,
                                       item_info=info, seen=seen)
    allowed = info.multi_hot[:, :2].any(1)
    for b in range(2):
        ok = allowed.clone()
        ok[seen[b]] = False
        assert int(ok.sum()) >= 5
        assert (items[b] >= 0).all(), "top-K must stay full while >= K items are allowed"
        assert ok[items[b]].all() and not set(items[b].tolist()) & set(seen[b])
        # Exhaustive search with the same steering agrees with brute force over the allowed items.
        bonus = torch.where(ok, 0.0, float("-inf"))
        ref_s, ref_i = brute_force(model, codes, bonus, top_k=5)
        full, full_s = constrained_beam_search(model, trie, 2, beam_size=30, top_k=5, steering=steering,
                                               item_info=info, seen=seen)
        assert torch.equal(full[b], ref_i[b]) and torch.allclose(full_s[b], ref_s[b], atol=1e-5)
    # Jagged `seen` (offsets, items) means the same.
    jagged = (torch.tensor([0, 8, 10]), torch.tensor(seen[0] + seen[1]))
    items2, _ = constrained_beam_search(model, trie, 2, beam_size=5, top_k=5, steering=steering, item_info=info,
                                        seen=jagged)
    assert torch.equal(items, items2)


def test_boost_and_freshness_are_exact_under_exhaustive_search():
    codes, trie = make_trie(n_items=30, seed=3)
    info = info_for(30, seed=3)
    model = RandomModel(batch=2, seed=3)
    steering = SteeringConfig(exclude_seen=False, boost_categories={"c": 2.0}, freshness_weight=1.5)
    items, scores = constrained_beam_search(model, trie, 2, beam_size=30, top_k=5, steering=steering, item_info=info)
    fresh = (info.year - info.year.min()).float() / (info.year.max() - info.year.min())
    bonus = 2.0 * info.multi_hot[:, 2].float() + 1.5 * fresh
    ref_s, ref_i = brute_force(model, codes, bonus, top_k=5)
    assert torch.equal(items, ref_i) and torch.allclose(scores, ref_s, atol=1e-5)
    plain, _ = constrained_beam_search(model, trie, 2, beam_size=30, top_k=5)
    assert info.multi_hot[items.flatten(), 2].float().mean() > info.multi_hot[plain.flatten(), 2].float().mean()


def test_boost_steers_a_narrow_beam_toward_the_category():
    _, trie = make_trie(n_items=60, seed=4)
    info = info_for(60, seed=4)
    model = RandomModel(batch=8, seed=4)
    boosted, _ = constrained_beam_search(model, trie, 8, beam_size=4, top_k=4,
                                         steering=SteeringConfig(exclude_seen=False, boost_categories={"a": 5.0}),
                                         item_info=info)
    assert info.multi_hot[boosted.flatten(), 0].all()  # +5 nats beats any random log-prob gap here


def test_explore_share_reserves_long_tail_slots():
    _, trie = make_trie(n_items=40, seed=6)
    info = info_for(40, seed=6)
    info.long_tail[:] = False
    info.long_tail[32:] = True  # a rare tail: unsteered search finds few of them
    model = RandomModel(batch=3, seed=6)
    plain, _ = constrained_beam_search(model, trie, 3, beam_size=6, top_k=6)
    assert int(info.long_tail[plain].sum(1).min()) < 3
    steering = SteeringConfig(exclude_seen=False, explore_share=0.5)
    items, scores = constrained_beam_search(model, trie, 3, beam_size=6, top_k=6, steering=steering, item_info=info)
    assert (items >= 0).all()
    reserved = explore_slots(6, 0.5)  # every second position: 1, 3, 5
    assert reserved.nonzero().flatten().tolist() == [1, 3, 5]
    for row, score in zip(items.tolist(), scores):
        assert len(set(row)) == 6
        assert info.long_tail[[row[j] for j in (1, 3, 5)]].all()
        # Each group best first in its own positions.
        assert (score[~reserved][:-1] >= score[~reserved][1:]).all()
        assert (score[reserved][:-1] >= score[reserved][1:]).all()
    # The main positions hold the unsteered list's items in order, less the long-tail items shown in a reserved slot.
    assert items[:, 0].tolist() == plain[:, 0].tolist()


@pytest.mark.parametrize("share", [0.2, 0.3, 0.5])
def test_a_steered_list_is_the_main_list_interleaved_with_the_long_tail_search(share):
    """What the evaluation's exploration rebuilds for every system (e2erec.eval.exploration) is what e2erec's own
    steering returns: its unsteered list with its long-tail-only list in the reserved slots."""
    _, trie = make_trie(n_items=60, seed=9)
    info = info_for(60, seed=9)
    model = RandomModel(batch=4, seed=9)
    seen = [[1, 2, 40], [], [5, 59], [0]]
    base = SteeringConfig(exclude_seen=True)
    steered, _ = constrained_beam_search(model, trie, 4, 12, 10, steering=dataclasses.replace(base, explore_share=share),
                                         item_info=info, seen=seen)
    main, _ = constrained_beam_search(model, trie, 4, 12, 10, steering=base, item_info=info, seen=seen)
    tail, _ = constrained_beam_search(model, trie, 4, 12, 10, steering=base, item_info=info, seen=seen,
                                      among=info.long_tail)
    only_tail, _ = constrained_beam_search(model, trie, 4, 12, 10, item_info=info, seen=seen,
                                           steering=dataclasses.replace(base, explore_share=1.0))
    assert torch.equal(tail, only_tail)
    col, from_x = interleave(main, tail, 10, share)
    assert (col >= 0).all() and torch.equal(steered, torch.cat([main, tail], 1).gather(1, col))
    assert from_x.sum(1).tolist() == [int(10 * share + 1e-9)] * 4


def test_interleave_keeps_the_list_full_and_free_of_duplicates():
    main = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2] + [-1] * 10, [-1] * 12])
    explore = torch.tensor([[3, 20, 21, -1], [30, 31, 32, 33], [40, -1, -1, -1]])
    col, from_x = interleave(main, explore, 10, 0.2)
    pool = torch.cat([main, explore], 1)
    got = torch.where(col >= 0, pool.gather(1, col.clamp_min(0)), -1)
    # Row 0: 3 is already shown in a main slot, so the reserved 5th and 10th slots take 20 and 21.
    assert got[0].tolist() == [1, 2, 3, 4, 20, 5, 6, 7, 8, 21]
    # Row 1: main runs out after two items; exploration fills the rest in its order.
    assert got[1].tolist() == [1, 2, 30, 31, 32, 33, -1, -1, -1, -1]
    assert got[2].tolist() == [40] + [-1] * 9
    assert from_x.tolist()[0] == [False] * 4 + [True] + [False] * 4 + [True]
    assert from_x[1].tolist() == [False, False, True, True, True, True] + [False] * 4


def test_too_few_allowed_items_pad_with_minus_one():
    _, trie = make_trie(n_items=20, seed=7)
    model = RandomModel(batch=1, seed=7)
    items, scores = constrained_beam_search(model, trie, 1, beam_size=8, top_k=8,
                                            steering=SteeringConfig(exclude_seen=True), seen=[list(range(17))])
    assert sorted(items[0, :3].tolist()) == [17, 18, 19]
    assert (items[0, 3:] == -1).all() and torch.isinf(scores[0, 3:]).all()


def test_unknown_category_is_a_clear_error():
    _, trie = make_trie()
    with pytest.raises(ValueError, match="unknown category 'zzz'"):
        constrained_beam_search(RandomModel(1), trie, 1, 5, 5, steering=SteeringConfig(include_categories=["zzz"]),
                                item_info=info_for(25))


def test_runs_on_a_deduplicated_trie():
    g = torch.Generator().manual_seed(0)
    codes, size = disambiguate(torch.randint(2, (30, 2), generator=g))
    trie = PrefixTrie.build(codes, [2, 2, size])
    calls = []

    def step(level, prefix, state):
        calls.append(level)
        return torch.zeros(*prefix.shape[:2], trie.codebook_sizes[level])

    items, _ = constrained_beam_search(step, trie, 2, beam_size=30, top_k=30)
    assert sorted(items[0].tolist()) == list(range(30)) and calls == [0, 1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_search_on_gpu_matches_cpu():
    _, trie = make_trie(n_items=40, seed=8)
    model = RandomModel(batch=3, seed=8)
    info = info_for(40, seed=8)
    steering = SteeringConfig(exclude_seen=True, boost_categories={"a": 1.0}, explore_share=0.3)
    cpu = constrained_beam_search(model, trie, 3, 8, 6, steering=steering, item_info=info, seen=[[1, 2], [], [5]])

    def gpu_step(level, prefix, state):
        return model(level, prefix.cpu(), state).cuda()

    gpu = constrained_beam_search(gpu_step, trie.to("cuda"), 3, 8, 6, steering=steering, item_info=info,
                                  seen=[[1, 2], [], [5]])
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.allclose(cpu[1], gpu[1].cpu(), atol=1e-5)


def test_exclude_seen_without_seen_items_is_an_error_not_a_silent_no_op():
    _, trie = make_trie()
    with pytest.raises(ValueError, match="exclude_seen is set but no `seen` items"):
        constrained_beam_search(RandomModel(1), trie, 1, 5, 5, steering=SteeringConfig())


def _dense_values(trie, static_items, users, items, batch_size):
    """The reference the sparse heuristic replaces: a dense [users, n_items] table masked, then propagated."""
    from e2erec.generate.beam import node_values

    table = static_items[:, None, :].repeat(1, batch_size, 1)  # (G, B, n_items)
    table[:, users, items] = float("-inf")
    return [v.view(static_items.shape[0], batch_size, -1) for v in node_values(trie, table.flatten(0, 1))]


@pytest.mark.parametrize("seed", range(3))
def test_sparse_exclude_seen_equals_the_dense_table_at_every_node(seed):
    from e2erec.generate.beam import NodeValues, node_values

    _, trie = make_trie(n_items=40, seed=seed)
    g = torch.Generator().manual_seed(seed)
    static = torch.randn(2, 40, generator=g)
    static[1, torch.randperm(40, generator=g)[:25]] = float("-inf")  # a group that allows only some items
    users = torch.randint(0, 5, (30,), generator=g)
    items = torch.randint(0, 40, (30,), generator=g)
    items[users == 2] = torch.arange(40)[: int((users == 2).sum())]  # several seen items under shared prefixes
    values = NodeValues(trie, node_values(trie, static)).exclude(users, items)
    dense = _dense_values(trie, static, users, items, batch_size=5)
    for depth in range(1, trie.n_levels + 1):
        n = trie.n_nodes(depth)
        got = values.lookup(depth, torch.arange(2)[:, None, None], torch.arange(5)[None, :, None],
                            torch.arange(n)[None, None, :])
        assert torch.equal(got, dense[depth - 1]), depth


def test_sparse_exclude_seen_on_ml100k_histories_is_exact_and_never_emits_a_seen_item(ml100k, ml100k_split):
    """Real histories (up to hundreds of items a user) over a 1682-item trie: the sparse heuristic equals the dense
    table, and the search's full top-50 never holds a history item."""
    from e2erec.eval.protocol import history_csr
    from e2erec.generate.beam import NodeValues, node_values

    sizes = [16, 16, 16]
    g = torch.Generator().manual_seed(0)
    all_ids = torch.tensor(list(itertools.product(*[range(k) for k in sizes])))
    codes = all_ids[torch.randperm(len(all_ids), generator=g)[: ml100k.n_items]]
    trie = PrefixTrie.build(codes, sizes)
    targets = ml100k_split.test[:64]
    rows, hist = (torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in history_csr(ml100k, targets))
    static = torch.zeros(1, ml100k.n_items)
    values = NodeValues(trie, node_values(trie, static)).exclude(rows, hist)
    dense = _dense_values(trie, static, rows, hist, batch_size=len(targets))
    for depth in range(1, trie.n_levels + 1):
        got = values.lookup(depth, torch.zeros(1, 1, 1, dtype=torch.long), torch.arange(len(targets))[None, :, None],
                            torch.arange(trie.n_nodes(depth))[None, None, :])
        assert torch.equal(got, dense[depth - 1]), depth

    def step(level, prefix, state):
        torch.manual_seed(level)
        return torch.randn(*prefix.shape[:2], sizes[level]).log_softmax(-1)

    offsets = torch.zeros(len(targets) + 1, dtype=torch.long)
    offsets[1:] = torch.bincount(rows, minlength=len(targets)).cumsum(0)
    items, scores = constrained_beam_search(step, trie, len(targets), beam_size=50, top_k=50,
                                            steering=SteeringConfig(exclude_seen=True), seen=(offsets, hist))
    assert (items >= 0).all() and torch.isfinite(scores).all()  # the list stays full
    seen = set(zip(rows.tolist(), hist.tolist()))
    assert not any((b, int(i)) in seen for b in range(len(targets)) for i in items[b])


def _dense_copy(trie: PrefixTrie) -> PrefixTrie:
    """The same trie with every compact level held as its dense [n_nodes, K] table (what forces the dense path)."""
    children = [c if isinstance(c, torch.Tensor) else c[torch.arange(c.shape[0])] for c in trie.children]
    return PrefixTrie(children, trie.leaf_item, trie.item_node, trie.codebook_sizes)


@pytest.mark.parametrize("pair_logits", [False, True])
def test_compact_level_expands_sparsely_with_the_dense_result(pair_logits):
    """A disambiguation level of skewed collision groups (K = the largest group, most nodes with one or two
    children) is expanded over real children only; with exclusion and an exploration group, the items and scores
    equal the dense expansion, whether the step returns [B, beams, K] log-probs or the logits of `state.pairs`."""
    g = torch.Generator().manual_seed(11)
    coarse = torch.randint(6, (400, 2), generator=g)
    coarse[:120] = 0  # one crowded prefix: a K of ~120 codes, most beams see only a few children
    codes, size = disambiguate(coarse)
    sizes = [6, 6, size]
    trie = PrefixTrie.build(codes, sizes)
    assert trie.is_compact(2) and not _dense_copy(trie).is_compact(2)
    batch = 3
    tables = [torch.randn(batch, 6, generator=g), torch.randn(batch, 6, 6, generator=g),
              torch.randn(batch, 36, size, generator=g)]
    seen_pairs = []

    def step(level, prefix, state):
        b = torch.arange(batch)[:, None]
        idx = torch.zeros(prefix.shape[:2], dtype=torch.long)
        for j in range(level):
            idx = idx * 6 + prefix[..., j]
        logits = tables[0][:, None].expand(-1, prefix.shape[1], -1) if level == 0 else tables[level][b, idx]
        if state.pairs is not None:
            seen_pairs.append(level)
            if pair_logits:  # unnormalised logits at the asked codes only
                row, beam, code = state.pairs
                return logits[row, beam, code] + 3.0
        return logits.log_softmax(-1)

    info = info_for(400, seed=11)
    steering = SteeringConfig(exclude_seen=True, explore_share=0.25)
    seen = [list(range(0, 400, 7)), list(range(5)), []]
    got = constrained_beam_search(step, trie, batch, beam_size=8, top_k=8, steering=steering, item_info=info,
                                  seen=seen)
    assert 2 in seen_pairs
    want = constrained_beam_search(step, _dense_copy(trie), batch, beam_size=8, top_k=8, steering=steering,
                                   item_info=info, seen=seen)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert (got[0] >= 0).all() and not set(got[0][0].tolist()) & set(seen[0])
