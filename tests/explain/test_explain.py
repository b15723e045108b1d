"""Reasons on hand-made cases: occlusion cites a planted cause, histories without events are exact, prefix
descriptions match hand-computed shares, and the filter never lets a denied term through."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from e2erec.data.jagged import gather_histories
from e2erec.eval.toy import markov_interactions
from e2erec.explain.attribution import deletion_drop, explain_events, histories_without, occlusion
from e2erec.explain.reasons import DEMOGRAPHICS, NO_REASON, Cause, Reason, ReasonFilter, render
from e2erec.tokenizer.describe import describe_prefixes

TRIGGER, TARGET, BOOST = 3, 7, 4.0


class TriggerModel(nn.Module):
    """The next item is uniform, except that TARGET gets +BOOST logits whenever TRIGGER is in the history: the one
    cause of recommending TARGET is known. TRIGGER and TARGET share their embedding, as items of one content cluster
    share semantic-ID codes."""

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = n_items
        self.code_emb = nn.ModuleList([nn.Embedding(n_items, 4)])
        with torch.no_grad():
            self.code_emb[0].weight[TRIGGER] = self.code_emb[0].weight[TARGET]

    def encode_histories(self, histories, codes):
        seq = torch.repeat_interleave(torch.arange(len(histories.offsets) - 1), histories.offsets.diff())
        hidden = torch.zeros(len(histories.offsets) - 1, self.n_items)
        hidden.index_put_((seq, histories.item), torch.ones(len(seq)), accumulate=True)
        return SimpleNamespace(hidden=hidden)

    def item_log_probs(self, hidden, items, codes, trie):
        logits = torch.zeros(hidden.shape[0], self.n_items)
        logits[:, TARGET] = BOOST * (hidden[:, TRIGGER] > 0).float()
        return torch.log_softmax(logits, -1).gather(1, items.clamp_min(0))


def trigger_case(max_len=200):
    inter = markov_interactions(n_users=6, n_items=20, min_len=12, max_len=15, seed=1)
    item = np.asarray(inter.item).copy()
    item[item == TRIGGER] = 0
    for u in range(inter.n_users):  # TRIGGER once, in the middle of every history: never among the latest events
        item[inter.offsets[u] + 4] = TRIGGER
    inter = dataclasses.replace(inter, item=item)
    model = TriggerModel(inter.n_items)
    cfg = SimpleNamespace(data=SimpleNamespace(max_seq_len=max_len), model=SimpleNamespace(max_tokens_per_seq=1024))
    system = SimpleNamespace(model=model, codes=torch.arange(inter.n_items)[:, None], trie=None, cfg=cfg)
    return inter, system


def test_occlusion_cites_the_planted_cause_not_the_latest_events():
    inter, system = trigger_case()
    users = np.arange(inter.n_users)
    ends = np.asarray(inter.offsets[1:])
    items = np.tile(np.array([TARGET, 1, 2]), (len(users), 1))
    reasons = explain_events(system, inter, users, ends, items, top=3, max_events=6, recent=3)
    trigger_rows = np.asarray(inter.offsets[:-1]) + 4
    # TARGET: the trigger is its only cause, with the exact drop of removing it, log P(T | with) - log P(T | without).
    n = inter.n_items
    exact = (BOOST - np.log(np.exp(BOOST) + n - 1)) - (-np.log(n))
    assert reasons.rows[:, 0, 0].tolist() == trigger_rows.tolist()
    assert np.allclose(reasons.weights[:, 0, 0], exact, atol=1e-5)
    assert (reasons.rows[:, 0, 1:] == -1).all() and not reasons.latest[:, 0].any()
    assert np.allclose(reasons.joint[:, 0], exact, atol=1e-5)
    # The other items lose probability with TRIGGER present, so nothing supports them: no reason is invented.
    assert (reasons.rows[:, 1:] == -1).all() and (reasons.joint[:, 1:] == 0).all()


def test_the_trigger_beyond_the_latest_events_is_tested_by_similarity_or_full_occlusion():
    inter, system = trigger_case()
    users, ends = np.arange(inter.n_users), np.asarray(inter.offsets[1:])
    items = np.full((len(users), 1), TARGET)
    full = occlusion(system, inter, users, ends, items)  # every event tested
    assert all(full.top(i, 0, 1)[0][0] == inter.offsets[i] + 4 for i in range(len(users)))
    recent_only = occlusion(system, inter, users, ends, items, max_events=3, recent=3)
    assert all(not recent_only.top(i, 0) for i in range(len(users)))  # the trigger was never tested


def test_histories_without_events_equal_removing_them_by_hand():
    inter = markov_interactions(n_users=12, n_items=30, min_len=5, max_len=20, seed=4)
    rng = np.random.default_rng(0)
    max_len = 8
    users = rng.integers(0, inter.n_users, 30)
    ends = np.array([rng.integers(inter.offsets[u] + 1, inter.offsets[u + 1] + 1) for u in users])
    drops = [rng.choice(np.arange(inter.offsets[u], e), rng.integers(0, min(3, e - inter.offsets[u]) + 1),
                        replace=False) for u, e in zip(users, ends)]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in drops])])
    got = histories_without(inter, users, ends, offsets, np.concatenate(drops).astype(np.int64), max_len)
    for b, (u, e, d) in enumerate(zip(users, ends, drops)):
        kept = [r for r in range(inter.offsets[u], e) if r not in set(d.tolist())][-max_len:]
        seq = got.item[got.offsets[b]:got.offsets[b + 1]].tolist()
        assert seq == np.asarray(inter.item)[kept].tolist()
        assert got.timestamp[got.offsets[b]:got.offsets[b + 1]].tolist() == np.asarray(inter.timestamp)[kept].tolist()
    # Nothing dropped: the history gather_histories reads.
    none = histories_without(inter, users, ends, np.zeros(len(users) + 1, np.int64), np.zeros(0, np.int64), max_len)
    same = gather_histories(inter, users, ends, max_len)
    assert torch.equal(none.item, same.item) and torch.equal(none.offsets, same.offsets)


def test_deletion_drop_is_the_difference_of_two_scorings():
    inter, system = trigger_case()
    users, ends = np.arange(inter.n_users), np.asarray(inter.offsets[1:])
    items = np.tile(np.array([TARGET, 1]), (len(users), 1))
    trigger = np.asarray(inter.offsets[:-1]) + 4
    sets = np.stack([np.stack([trigger, -np.ones_like(trigger)], 1), np.stack([ends - 1, ends - 2], 1)], 1)
    drops = deletion_drop(system, inter, users, ends, items, sets)  # (n, 2 sets, 2 items)
    assert (drops[:, 0, 0] > 1).all() and (drops[:, 0, 1] < 0).all()  # without the trigger TARGET falls, 1 rises
    assert np.allclose(drops[:, 1], 0, atol=1e-6)  # the latest events do not matter to this model


def test_prefix_descriptions_are_the_hand_computed_shares():
    codes = np.array([[0, 0], [0, 0], [0, 1], [0, 1], [1, 0]])
    categories = [["Comedy"], ["Comedy", "Drama"], ["Drama"], ["Comedy"], ["Horror"]]
    years = np.array([1994, 1995, 1987, -1, 2001])
    d = describe_prefixes(codes, categories, years, levels=2)
    assert d["0"]["n_items"] == 4
    assert d["0"]["categories"] == [["Comedy", 0.75], ["Drama", 0.5]]
    assert d["0"]["decades"] == [[1990, pytest.approx(2 / 3, abs=1e-3)], [1980, pytest.approx(1 / 3, abs=1e-3)]]
    assert d["0"]["text"] == "Comedy 75%, Drama 50% · 1990s 67%, 1980s 33%"
    assert d["0-1"]["categories"] == [["Comedy", 0.5], ["Drama", 0.5]] and d["0-1"]["decades"] == [[1980, 1.0]]
    assert d["1"]["text"] == "Horror 100% · 2000s 100%" and d["1-0"]["depth"] == 2


def _reason(**kw):
    base = {"item": "9", "title": "Some Film", "rank": 1, "p_positive": 0.6, "probability": "P(rating >= 4) = 0.60",
            "because": [Cause("1", "A Comedy Night", "1998-01-01", 5.0, 1.2)], "together": 1.5,
            "cluster": "Comedy 70% · 1990s 80%", "steering": ["boosted topic Comedy (+1)"]}
    base.update(kw)
    return Reason(**base)


@pytest.mark.parametrize("term", ["Horror", "horror"])
def test_the_filter_never_lets_a_denied_term_through(term):
    filt = ReasonFilter(deny_categories=["Horror"], deny_attributes=["shoe size"])
    cases = [
        _reason(because=[Cause("1", f"{term} Hospital", "1998-01-01", 5.0, 1.2)]),  # in a cited title
        _reason(cluster=f"{term} 60%, Comedy 40%"),  # in the cluster
        _reason(steering=[f"boosted topic {term} (+1)"]),  # in a steering rule
        _reason(title=f"The {term} Film"),  # in the item's own title
        _reason(because=[Cause("1", "Film about shoe size", "1998-01-01", 4.0, 0.3)]),  # a user attribute
        _reason(because=[], cluster="", steering=[f"{term}"]),  # everything denied: the fallback
    ]
    for reason in cases:
        out = json.dumps(filt.apply(reason).to_dict())
        assert term.lower() not in out.lower() and "shoe size" not in out
    last = filt.apply(_reason(because=[], cluster="", steering=[term]))
    assert NO_REASON in last.text and last.probability in last.text


def test_demographics_are_never_mentioned_whatever_the_config_says():
    filt = ReasonFilter()  # an empty deny-list
    for word in DEMOGRAPHICS:
        reason = filt.apply(_reason(steering=[f"because of your {word}"],
                                    because=[Cause("1", f"The {word} question", "1998-01-01", 4.0, 0.5)]))
        assert word not in json.dumps(reason.to_dict()).lower().replace("rating", ""), word
    # A set with one denied event is not shown at all: its joint drop was the whole set's.
    reason = filt.apply(_reason(because=[Cause("1", "Fine", "1998-01-01", 4.0, 0.5),
                                         Cause("2", "Your Age", "1998-01-02", 4.0, 0.4)]))
    assert reason.because == [] and reason.together == 0.0
    assert render(reason).startswith("its cluster: Comedy")


def test_steering_rules_name_only_the_instructions_that_acted_on_each_item():
    from e2erec.explain.reasons import steering_rules
    from e2erec.generate.beam import ItemInfo
    from e2erec.generate.config import SteeringConfig

    info = ItemInfo(categories=["Comedy", "Drama"],
                    multi_hot=torch.tensor([[True, False], [False, True], [True, True], [False, True]]),
                    year=torch.tensor([1990, 1999, -1, 2001]), long_tail=torch.tensor([False, False, True, True]),
                    raw_id=["a", "b", "c", "d"])
    steering = SteeringConfig(boost_categories={"Comedy": 1.5}, boost_items=["d"], item_boost=2.0,
                              explore_share=0.5, exclude_seen=False)
    repeated = np.array([[False, False, True, False]])  # item 1 is in the history
    rules = steering_rules(steering, info, np.array([[0, 2, 1, 3]]), repeated, 0.5, 4)[0]
    assert rules[0] == ["boosted topic Comedy (+1.5)"]
    assert rules[1] == ["boosted topic Comedy (+1.5)", "exploration slot (the long tail)"]  # slot 1 of 4 at 0.5
    assert rules[2] == ["a repeat of an item in your history"]  # item 1 is in the history; slot 2 is not reserved
    assert rules[3] == ["boosted item (+2)", "exploration slot (the long tail)"]


def test_prefix_descriptions_travel_with_the_artifact(tmp_path):
    """Saved beside the codes and read back; an artifact saved without them (an older build) computes them from
    the item table on first use."""
    from e2erec.tokenizer import SemanticIDs

    table = SimpleNamespace(categories=[["Comedy"], ["Comedy"], ["Drama"], ["Drama"]],
                            year=np.array([1991, 1992, 1975, 1978]))
    codes = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]])
    sem = SemanticIDs(codes, [2, 2, 2], {"n_items": 4, "levels": 3})
    described = sem.describe(table)
    assert described["0"]["text"] == "Comedy 100% · 1990s 100%" and sem.described_levels == 2
    loaded = SemanticIDs.load(sem.save(tmp_path / "with"))
    assert loaded.prefixes == described
    bare = SemanticIDs.load(SemanticIDs(codes, [2, 2, 2], {"n_items": 4, "levels": 3}).save(tmp_path / "bare"))
    assert bare.prefixes == {} and bare.describe(table) == described
