"""Operators' instructions inside the beam search, on real MovieLens-100K items (categories and years from the item
table): every hard instruction holds in every slot, lists stay full while enough items qualify, boosts move the
list towards their set; history windows equal truncating the log by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from e2erec.data.window import window_mask, window_starts, windowed_view
from e2erec.errors import DataError
from e2erec.eval.steering_bench import instructions, steered
from e2erec.generate.beam import ItemInfo, constrained_beam_search
from e2erec.generate.config import SteeringConfig
from e2erec.generate.explore import explore_slots
from e2erec.tokenizer.trie import PrefixTrie

SIZES = [16, 16, 8]  # 2,048 code tuples for ml-100k's 1,682 items


@pytest.fixture(scope="module")
def catalogue(ml100k, ml100k_split):
    g = torch.Generator().manual_seed(0)
    n = ml100k.n_items
    flat = torch.randperm(int(np.prod(SIZES)), generator=g)[:n]
    codes = torch.stack([flat // (SIZES[1] * SIZES[2]), flat // SIZES[2] % SIZES[1], flat % SIZES[2]], 1)
    return PrefixTrie.build(codes, SIZES), ItemInfo.from_table(ml100k.items)


def random_step(seed):
    g = torch.Generator().manual_seed(seed)

    def step(level, prefix, state):
        return torch.randn(*prefix.shape[:2], SIZES[level], generator=g).log_softmax(-1)

    return step


def _histories(inter, users):
    return [inter.item[inter.offsets[u]:inter.offsets[u + 1]].tolist() for u in users]


def test_every_instruction_holds_on_real_items(ml100k, ml100k_split, catalogue):
    trie, info = catalogue
    users = np.array([0, 5, 17, 42, 300, 900])
    seen = _histories(ml100k, users)
    found = instructions(ml100k, ml100k_split)
    kinds = {i.kind for i in found}
    assert kinds == {"hard", "soft", "explore", "input"}
    assert any("+min_year" in i.name for i in found)  # a combination with few eligible items
    baseline, _ = constrained_beam_search(random_step(1), trie, len(users), 40, 10, item_info=info, seen=seen,
                                          steering=SteeringConfig())
    for instruction in found:
        if instruction.kind == "input":
            continue
        items, _ = constrained_beam_search(random_step(1), trie, len(users), 40, 10, item_info=info, seen=seen,
                                           steering=steered(SteeringConfig(), instruction))
        items = items.numpy()
        for row, history in zip(items, seen):
            eligible = instruction.ok.copy()
            eligible[history] = False
            shown = row[row >= 0]
            assert not set(shown.tolist()) & set(history), instruction.name  # exclude_seen on every row
            assert len(set(shown.tolist())) == len(shown)
            if instruction.kind == "hard":
                assert instruction.ok[shown].all(), instruction.name
                assert len(shown) == min(10, int(eligible.sum())), instruction.name  # full while 10 qualify
            elif instruction.kind == "explore":
                slots = explore_slots(10, instruction.steering["explore_share"]).numpy()
                assert len(shown) == 10 and instruction.ok[row[slots]].all(), instruction.name
        if instruction.kind == "soft":  # +1 nat: the boosted set's share of the list grows
            assert instruction.ok[items].mean() > instruction.ok[baseline.numpy()].mean(), instruction.name


def test_min_year_and_items_are_checked(ml100k, catalogue):
    trie, info = catalogue
    year = np.asarray(ml100k.items.year)
    items, _ = constrained_beam_search(random_step(2), trie, 2, 20, 10, item_info=info,
                                       steering=SteeringConfig(exclude_seen=False, min_year=1997))
    assert (year[items.numpy()] >= 1997).all()
    with pytest.raises(DataError, match="include_items: unknown item id"):
        constrained_beam_search(random_step(2), trie, 1, 20, 10, item_info=info,
                                steering=SteeringConfig(exclude_seen=False, include_items=["no-such-movie"]))
    with pytest.raises(DataError, match="explore_categories: unknown category 'Snacks'"):
        constrained_beam_search(random_step(2), trie, 1, 20, 10, item_info=info,
                                steering=SteeringConfig(exclude_seen=False, explore_share=0.2,
                                                        explore_categories=["Snacks"]))


def test_window_starts_on_a_hand_made_log(ml100k):
    inter = dataclasses.replace(ml100k, offsets=np.array([0, 5, 8]), item=np.arange(8),
                                timestamp=np.array([0, 1, 5, 6, 7, 10, 20, 30]) * 86_400,
                                feedback=np.ones(8, np.float32), label=np.ones(8, np.int8), user_raw_id=["a", "b"])
    users, ends = np.array([0, 0, 1, 1]), np.array([4, 5, 7, 8])  # before event 4; after user 0; ...
    # Last 2 days before the request: the request at event 4 (day 7) keeps days 5-6; after user 0 (now = day 7)
    # keeps days 5-7; user 1's request at event 7 (day 30) has nothing since day 20, so its latest event stays.
    assert window_starts(inter, users, ends, history_days=2).tolist() == [2, 2, 6, 7]
    assert window_starts(inter, users, ends, history_events=1).tolist() == [3, 4, 6, 7]
    assert window_mask(inter, users, ends, history_days=2).tolist() == [True, True, False, True]
    view, targets = windowed_view(inter, np.array([4, 7]), history_days=2)
    assert view.offsets.tolist() == [0, 3, 2 + 3] and view.item[targets].tolist() == [4, 7]
    assert view.item.tolist() == [2, 3, 4, 6, 7] and view.user_raw_id == ["a", "b"]


@pytest.mark.parametrize("bonus", [-3.0, 2.0])
def test_repeat_bonus_is_exact_against_brute_force(bonus):
    """Without exclude_seen, repeat_bonus adds b to every history item's log-prob inside the search: an exhaustive
    search returns brute force's top-K of log P(item) + b [item seen]."""
    from tests.generate.test_beam import RandomModel, brute_force, make_trie

    codes, trie = make_trie(n_items=30, seed=4)
    model = RandomModel(batch=3, seed=4)
    seen = [[0, 1, 2, 3, 4, 5], [7, 7, 9], []]
    items, scores = constrained_beam_search(model, trie, 3, beam_size=30, top_k=8, seen=seen,
                                            steering=SteeringConfig(exclude_seen=False, repeat_bonus=bonus))
    extra = torch.zeros(3, 30)
    for b, row in enumerate(seen):
        extra[b, row] = bonus
    ref_s, ref_i = brute_force(model, codes, extra, top_k=8)
    assert torch.equal(items, ref_i) and torch.allclose(scores, ref_s, atol=1e-5)
