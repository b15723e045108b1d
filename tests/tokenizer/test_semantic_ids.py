"""Unique IDs, the trie as the exact set of valid IDs, the artifact round trip and its dataset check."""

from __future__ import annotations

import itertools

import pytest
import torch

from e2erec.errors import ArtifactMismatchError
from e2erec.tokenizer.config import TokenizerConfig
from e2erec.tokenizer.semantic_ids import SemanticIDs, build_semantic_ids, disambiguate
from e2erec.tokenizer.trie import PrefixTrie


def test_trie_docstring_example():
    trie = PrefixTrie.build(torch.tensor([[0, 2], [1, 0], [0, 1]]), [2, 3])
    assert trie.children[0].tolist() == [[0, 1]]  # codes 0..count-1: held compact (CompactLevel)
    assert trie.children[1].tolist() == [[-1, 0, 1], [2, -1, -1]]
    assert trie.leaf_item.tolist() == [2, 0, 1]


def test_disambiguation_makes_every_id_unique_and_decodable():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(3, (200, 2), generator=g)  # 9 tuples for 200 items: heavy collisions
    unique, size = disambiguate(codes)
    assert unique.shape == (200, 3) and size == int(torch.unique(codes, dim=0, return_counts=True)[1].max())
    assert torch.unique(unique, dim=0).shape[0] == 200
    sem = SemanticIDs(unique, [3, 3, size])
    assert torch.equal(sem.item_of(unique), torch.arange(200))
    assert disambiguate(torch.arange(5)[:, None])[1] == 0  # already unique: no extra level


def test_the_disambiguation_level_is_compact_and_indexes_like_the_dense_table():
    """Codes 0..count-1 under each node: the trie keeps (first child, count) per node, which must answer every
    index exactly as the dense [n_nodes, K] table would."""
    from e2erec.tokenizer.trie import CompactLevel

    g = torch.Generator().manual_seed(2)
    unique, size = disambiguate(torch.randint(4, (300, 2), generator=g))
    trie = PrefixTrie.build(unique, [4, 4, size])
    last = trie.children[2]
    assert isinstance(last, CompactLevel) and last.shape == (16, size)
    dense = torch.full((16, size), -1, dtype=torch.int32)  # what the dense table would hold, by brute force
    prefix_node = {tuple(p): i for i, p in enumerate(sorted({tuple(c) for c in unique[:, :2].tolist()}))}
    for item, c in enumerate(unique.tolist()):
        dense[prefix_node[tuple(c[:2])], c[2]] = int((trie.leaf_item == item).nonzero())
    nodes = torch.arange(16)
    assert torch.equal(last[nodes], dense) and last.tolist() == dense.tolist()
    codes = torch.randint(size, (16,), generator=g)
    assert torch.equal(last[nodes, codes], dense[nodes, codes])
    assert torch.equal(trie.lookup(unique), torch.arange(300))
    assert last.nbytes() == 16 * 8  # int32 first child and count per node


def test_trie_admits_exactly_the_valid_ids():
    sizes = [3, 4, 2]
    g = torch.Generator().manual_seed(1)
    all_ids = torch.tensor(list(itertools.product(*[range(k) for k in sizes])))
    codes = all_ids[torch.randperm(len(all_ids), generator=g)[:9]]
    trie = PrefixTrie.build(codes, sizes)
    valid = {tuple(c) for c in codes.tolist()}
    found = trie.lookup(all_ids)
    for ids, item in zip(all_ids.tolist(), found.tolist()):
        assert (item >= 0) == (tuple(ids) in valid)
        if item >= 0:
            assert codes[item].tolist() == ids
    # Walking level by level, the masks allow exactly the codes that extend a valid prefix.
    nodes = torch.zeros(1, dtype=torch.long)
    prefixes = [()]
    for level in range(3):
        mask, child = trie.step(level, nodes)
        nxt_nodes, nxt_prefixes = [], []
        for node_row, mask_row, prefix in zip(child, mask, prefixes):
            for code in range(sizes[level]):
                extends = any(v[: level + 1] == (*prefix, code) for v in valid)
                assert bool(mask_row[code]) == extends
                if extends:
                    nxt_nodes.append(int(node_row[code]))
                    nxt_prefixes.append((*prefix, code))
        nodes, prefixes = torch.tensor(nxt_nodes), nxt_prefixes
    assert {tuple(codes[i].tolist()) for i in trie.items_of_leaves(nodes).tolist()} == valid
    # Out-of-range codes and dead beams (-1) are rejected, not wrapped around.
    assert trie.lookup(torch.tensor([[3, 0, 0], [-1, 0, 0]])).tolist() == [-1, -1]
    assert not trie.step(0, torch.tensor([-1]))[0].any()


def test_subset_trie_allows_only_the_kept_items_codes_under_their_own_ids():
    """What the cold-item protocol trains with: the trie of some items, indexed by the catalogue's item ids."""
    from e2erec.model.batch import trie_code_mask

    g = torch.Generator().manual_seed(5)
    sizes = [3, 3, 4]
    all_ids = torch.tensor(list(itertools.product(*[range(k) for k in sizes])))
    codes = all_ids[torch.randperm(len(all_ids), generator=g)[:20]]
    keep = torch.rand(20, generator=g) < 0.6
    sub = PrefixTrie.build_subset(codes, sizes, keep)
    ref = PrefixTrie.build(codes[keep], sizes)  # the same trie, numbered by kept position
    kept = keep.nonzero().squeeze(1)
    assert torch.equal(trie_code_mask(sub, kept), trie_code_mask(ref, torch.arange(len(kept))))
    assert sorted(sub.items_of_leaves(torch.arange(len(kept))).tolist()) == kept.tolist()
    assert (sub.item_node[1][~keep] == -1).all()
    assert not torch.equal(trie_code_mask(sub, kept), trie_code_mask(PrefixTrie.build(codes, sizes), kept))


def test_build_save_load_round_trip_and_dataset_check(make_tiny, tmp_path):
    inter, split = make_tiny(n_items=30)
    cfg = TokenizerConfig(embedding="collaborative", collaborative_dim=8, codebook_size=4, levels=2)
    sem, metrics = build_semantic_ids(inter, split, cfg, tmp_path / "cache", progress=False)
    assert torch.equal(sem.item_of(sem.codes), torch.arange(30))
    assert sem.codebook_sizes[:2] == [4, 4] and len(sem.codebook_sizes) == sem.codes.shape[1]
    assert {"used", "entropy", "collision_rate", "recon_error_per_level", "genre_lift"} <= set(metrics)
    sem.save(tmp_path / "ids")
    back = SemanticIDs.load(tmp_path / "ids", inter)
    assert torch.equal(back.codes, sem.codes) and back.codebook_sizes == sem.codebook_sizes
    assert back.meta["data_fingerprint"] == "tiny-0-30" and len(back.centroids) == 2
    other, _ = make_tiny(n_items=33, name="other")
    with pytest.raises(ArtifactMismatchError, match=r"built for dataset 'tiny' but are used with 'other'.*30 items vs 33"):
        SemanticIDs.load(tmp_path / "ids", other)
    with pytest.raises(ArtifactMismatchError, match="not a semantic-ID artifact"):
        SemanticIDs.load(tmp_path / "nothing")
