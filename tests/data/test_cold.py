"""The cold-start protocols. Cold items: held out of every training input (the batches themselves), every event on
one a test target with its user's warm history before it. New users: held out of training and validation, tested
from their first k events. The report's segments, exploration block and sections on ml-100k."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from e2erec.data import load_dataset, make_split, training_mask
from e2erec.data.cold import cold_item_mask, hold_out_items
from e2erec.data.config import ColdItemsConfig, DataConfig
from e2erec.data.types import Interactions, ItemTable
from e2erec.errors import DataError


def _tiny() -> Interactions:
    """Two users: 0 sees items 0 1 2 3 4, user 1 sees 2 0 5 (timestamps increasing)."""
    items = [0, 1, 2, 3, 4, 2, 0, 5]
    n_items = 6
    table = ItemTable([str(i) for i in range(n_items)], [""] * n_items, [""] * n_items, [[] for _ in range(n_items)],
                      np.full(n_items, -1, np.int32), np.zeros(n_items, np.int64))
    return Interactions(offsets=np.array([0, 5, 8]), item=np.array(items), timestamp=np.arange(8) * 10,
                        feedback=np.ones(8, np.float32), label=np.ones(8, np.int8), user_raw_id=["a", "b"],
                        items=table, meta={"fingerprint": "tiny"})


def test_probe_users_hold_the_warm_history_before_each_cold_event(monkeypatch):
    inter = _tiny()
    monkeypatch.setattr("e2erec.data.cold.cold_item_mask", lambda inter, cfg: np.isin(np.arange(6), [2, 4]))
    out = hold_out_items(inter, ColdItemsConfig(share=0.5), max_history=2)
    # Warm log: user 0 -> 0 1 3, user 1 -> 0 5. Cold events: (user 0, item 2) after [0 1], (user 0, item 4) after
    # [0 1 3] (cut to the 2 most recent: [1 3]); (user 1, item 2) is its first event: no history, dropped.
    assert out.offsets.tolist() == [0, 3, 5, 8, 11]
    assert out.item.tolist() == [0, 1, 3, 0, 5, 0, 1, 2, 1, 3, 4]
    assert out.timestamp.tolist() == [0, 10, 30, 60, 70, 0, 10, 20, 10, 30, 40]
    assert out.cold.first_probe == 2 and out.cold.origin.tolist() == [0, 1, 0, 0]
    assert out.user_raw_id == ["a", "b", "a#cold0", "a#cold1"]
    assert out.meta["cold_items"]["n_targets"] == 2 and out.meta["cold_items"]["dropped_without_history"] == 1
    assert out.meta["fingerprint"] != "tiny"
    split = make_split(out, DataConfig())
    # Real users split as usual on their warm rows; probes train nothing, validate nothing, test their last event.
    assert split.train_end.tolist() == [1, 4, 5, 8] and split.valid.tolist() == [1]
    assert split.test.tolist() == [2, 4, 7, 10]
    assert out.items.popularity.tolist() == [2, 0, 0, 0, 0, 0]  # training events only: both users' item 0


def test_after_holds_out_the_items_first_seen_late():
    inter = _tiny()  # first seen: item 0 at t=0, 1 at 10, 2 at 20, 3 at 30, 4 at 40, 5 at 70; span 0..70
    assert np.flatnonzero(cold_item_mask(inter, ColdItemsConfig(after=0.5))).tolist() == [4, 5]
    share = cold_item_mask(inter, ColdItemsConfig(share=0.5, seed=3))
    assert share.sum() == 3 and np.array_equal(share, cold_item_mask(inter, ColdItemsConfig(share=0.5, seed=3)))


def test_a_hold_out_without_cold_or_warm_events_is_refused(monkeypatch):
    monkeypatch.setattr("e2erec.data.cold.cold_item_mask", lambda inter, cfg: np.ones(6, bool))
    with pytest.raises(DataError, match="needs both cold and warm events"):
        hold_out_items(_tiny(), ColdItemsConfig(share=0.5), max_history=5)


@pytest.mark.parametrize("override, message", [("data.cold_items.share=1.5", "cold_items.share must be in"),
                                               ("data.cold_items.after=2", "fraction of the time span")])
def test_bad_cold_item_keys_are_named(override, message):
    from e2erec.config import load_run_config
    from e2erec.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_run_config(None, [override])


@pytest.fixture(scope="module")
def cold_ml100k():
    cfg = DataConfig(name="ml-100k", cold_items=ColdItemsConfig(share=0.1))
    inter = load_dataset(cfg, progress=False)
    return cfg, inter, make_split(inter, cfg)


def test_ml100k_cold_items_reach_no_training_row_validation_target_or_history(cold_ml100k, ml100k):
    cfg, inter, split = cold_ml100k
    cold = inter.cold.items
    assert cold.sum() == 168
    # Every event on a held-out item with some warm event before it is a target; the rest of the log is warm.
    raw_cold = cold[np.asarray(ml100k.item)]
    info = inter.meta["cold_items"]
    assert info["n_targets"] + info["dropped_without_history"] == raw_cold.sum() and info["n_targets"] > 9000
    targets = np.asarray(split.test)
    assert cold[inter.item[targets]].sum() == info["n_targets"]
    assert not cold[inter.item[training_mask(inter, split)]].any()
    assert not cold[inter.item[split.valid]].any()
    # No history of any target (rows offsets[u]:t, what every system reads) holds a cold item.
    users = inter.user_of(targets)
    lens = targets - inter.offsets[users]
    rows = np.repeat(inter.offsets[users], lens) + np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    assert not cold[inter.item[rows]].any()
    # A probe's history is its user's warm events before the cold event, the most recent max_seq_len.
    for probe in range(inter.cold.first_probe, inter.n_users, 997):
        real = int(inter.cold.origin[probe])
        target_time = inter.timestamp[inter.offsets[probe + 1] - 1]
        raw = slice(ml100k.offsets[real], ml100k.offsets[real + 1])
        raw_items, raw_ts = np.asarray(ml100k.item[raw]), np.asarray(ml100k.timestamp[raw])
        at = np.flatnonzero((raw_items == inter.item[inter.offsets[probe + 1] - 1]) & (raw_ts == target_time))[0]
        want = raw_items[:at][~cold[raw_items[:at]]][-cfg.max_seq_len:]
        assert inter.item[inter.offsets[probe]:inter.offsets[probe + 1] - 1].tolist() == want.tolist()


def test_training_and_validation_batches_never_hold_a_cold_item(cold_ml100k):
    """The batches the trainer builds, every one of an epoch, and the validation batches: no cold item anywhere."""
    from e2erec.config import load_run_config
    from e2erec.train.task import RecTask

    _, inter, split = cold_ml100k
    cfg = load_run_config(None, ["data.cold_items.share=0.1", "train.batch_tokens=8192"])
    ids = torch.arange(inter.n_items)
    codes = torch.stack([ids // 256, ids // 16 % 16, ids % 16], 1)
    task = RecTask(cfg, inter, split, codes, [16, 16, 16], inter.meta["fingerprint"])
    cold = torch.from_numpy(inter.cold.items)
    sampler = task.make_sampler(rank=0, world_size=1)
    generator = torch.Generator().manual_seed(0)
    # The trie-softmax's valid codes are the warm items' only: after a target's first two codes, the last codes of
    # the warm items sharing them.
    warm_last: dict[tuple[int, int], set[int]] = {}
    for c0, c1, c2 in codes[~cold].tolist():
        warm_last.setdefault((c0, c1), set()).add(c2)
    seen = 0
    for indices in iter(sampler):
        batch = task.train_batch(indices, generator)
        assert not cold[batch.item].any()
        allowed = batch.gen_mask[:, 32:48]
        for (c0, c1, _), row in zip(batch.gen_codes[::7].tolist(), allowed[::7]):
            assert set(row.nonzero().squeeze(1).tolist()) == warm_last[(c0, c1)]
        seen += len(indices)
    assert seen == len(task.unit_user)
    batch = task._model_batch(inter.user_of(task.valid), task.valid + 1, 1, None)
    assert not cold[batch.item].any() and len(task.valid) == 943


def test_cold_item_segments_and_slots_are_counted_by_hand(cold_ml100k):
    """A system whose list is the target item alone when it is cold and empty (-1) otherwise: the cold segment's
    recall@10 is 1, the warm one's 0, one slot in ten goes to cold items and every one of them hits."""
    from e2erec.eval.config import EvalConfig
    from e2erec.eval.evaluate import Context, evaluate_system

    _, inter, split = cold_ml100k
    ctx = Context(inter, split, EvalConfig(bootstrap=20))
    cold_target = inter.cold.items[ctx.items]

    class Oracle:
        name = "cold-oracle"

        def recommend(self, inter, targets, k):
            items = np.asarray(inter.item)[targets]
            out = np.full((len(targets), k), -1)
            out[:, 0] = np.where(inter.cold.items[items], items, -1)
            return out

        def predict_proba(self, inter, targets, items):
            return None

    r = evaluate_system(Oracle(), ctx)
    seg = r["segments"]
    assert seg["cold_item"]["n"] == cold_target.sum() and seg["warm_item"]["n"] == (~cold_target).sum()
    assert seg["cold_item"]["recall@10"]["value"] == 1.0 and seg["warm_item"]["recall@10"]["value"] == 0.0
    assert seg["long_tail_warm"]["n"] == (~cold_target & ~ctx.head[ctx.items]).sum()
    assert r["overall"]["cold_slot_share@10"]["value"] == pytest.approx(cold_target.mean() / 10)
    assert r["overall"]["cold_slot_hit_rate@10"]["value"] == 1.0
    # The bootstrap resamples real people: a user's cold targets move together.
    assert len(ctx.boot.users) == len(np.unique(inter.cold.origin[ctx.users])) <= 943


def test_cold_items_get_semantic_ids_and_beam_search_emits_them(cold_ml100k, tmp_path):
    """Content IDs reach items nobody trained on: every held-out item has a code tuple in the trie, and a model
    that prefers one's codes gets it from the constrained search."""
    from e2erec.generate.beam import constrained_beam_search
    from e2erec.tokenizer import build_semantic_ids
    from e2erec.tokenizer.config import TokenizerConfig

    _, inter, split = cold_ml100k
    cfg = TokenizerConfig(embedding="collaborative", collaborative_dim=16, codebook_size=16)
    sids, metrics = build_semantic_ids(inter, split, cfg, tmp_path, progress=False)
    assert metrics["items_without_training_events"] >= inter.cold.items.sum()
    trie = sids.trie
    assert trie.n_nodes(trie.n_levels) == inter.n_items
    cold_item = int(np.flatnonzero(inter.cold.items)[0])
    want = sids.codes[cold_item]

    def step(level, prefix, state):  # log-probs that put their mass on the cold item's code at every level
        logp = torch.full((*prefix.shape[:2], trie.codebook_sizes[level]), -10.0)
        logp[..., int(want[level])] = 0.0
        return logp.log_softmax(-1)

    items, _ = constrained_beam_search(step, trie, 1, beam_size=4, top_k=4)
    assert items[0, 0].item() == cold_item


# ----------------------------------------------------------------------------------------------------------------
# new users


def test_new_users_train_nothing_and_are_tested_from_their_first_k_events():
    from e2erec.data.cold import hold_out_users
    from e2erec.data.config import NewUsersConfig

    inter = _tiny()  # user 0: 5 events, user 1: 3 events
    out = hold_out_users(inter, NewUsersConfig(share=0.5, ks=[1, 2, 4], seed=0))
    new = int(np.flatnonzero(out.new_users.users)[0])
    assert out.new_users.users.sum() == 1 and out.meta["fingerprint"] != "tiny"
    lens = [5, 3]
    assert out.meta["new_users"]["n_targets"] == {"k1": 1, "k2": 1, "k4": int(lens[new] > 4)}
    split = make_split(out, DataConfig())
    start = int(out.offsets[new])
    assert split.train_end[new] == start  # nothing trains
    assert not (out.user_of(split.valid) == new).any()
    # Its targets: event k (0-based), whose history is exactly its first k events; the other user's test target first.
    mine = split.test[out.user_of(split.test) == new]
    assert mine.tolist() == [start + k for k in (1, 2, 4) if k < lens[new]]
    other = 1 - new
    assert split.test[0] == out.offsets[other + 1] - 1 and split.train_end[other] == out.offsets[other + 1] - 2
    # Popularity counts training events only: none of the new user's.
    want = np.bincount(out.item[out.offsets[other]:split.train_end[other]], minlength=6)
    assert out.items.popularity.tolist() == want.tolist()


def test_a_new_user_share_that_leaves_nobody_to_train_on_is_refused():
    from e2erec.data.cold import hold_out_users
    from e2erec.data.config import NewUsersConfig

    with pytest.raises(DataError, match="needs some new users and some to train on"):
        hold_out_users(_tiny(), NewUsersConfig(share=0.9))


@pytest.mark.parametrize("override, message", [("data.new_users.share=1", "new_users.share must be in"),
                                               ("data.new_users.ks=[5,2]", "ascending order")])
def test_bad_new_user_keys_are_named(override, message):
    from e2erec.config import ConfigError, load_run_config

    with pytest.raises(ConfigError, match=message):
        load_run_config(None, [override])


def test_ml100k_new_users_reach_no_training_unit_and_fill_the_new_user_segments():
    """Under both protocols (the cold run's): the trainer's units (every batch of an epoch is drawn from them) and
    the baselines' training pairs hold no new user; the segments hold one target per new user and k, with exactly k
    events of history."""
    from e2erec.config import load_run_config
    from e2erec.data.config import NewUsersConfig
    from e2erec.eval.config import EvalConfig
    from e2erec.eval.evaluate import Context
    from e2erec.eval.protocol import training_targets
    from e2erec.train.task import RecTask

    cfg = DataConfig(name="ml-100k", cold_items=ColdItemsConfig(share=0.1), new_users=NewUsersConfig(share=0.1))
    inter = load_dataset(cfg, progress=False)
    split = make_split(inter, cfg)
    new = inter.new_users.users
    assert new.sum() == 94 and not new[inter.cold.first_probe:].any()
    assert not new[inter.user_of(np.flatnonzero(training_mask(inter, split)))].any()
    assert not new[inter.user_of(training_targets(inter, split))].any()
    run = load_run_config(None, ["data.cold_items.share=0.1", "data.new_users.share=0.1"])
    ids = torch.arange(inter.n_items)
    task = RecTask(run, inter, split, torch.stack([ids // 256, ids // 16 % 16, ids % 16], 1), [16, 16, 16], "x")
    assert not new[task.unit_user].any() and not new[inter.user_of(task.valid)].any()
    for indices in itertools.islice(iter(task.make_sampler(rank=0, world_size=1)), 20):
        users = task.unit_user[np.asarray(indices)]
        assert not new[users].any() and (task.unit_end[np.asarray(indices)] <= split.train_end[users]).all()
    ctx = Context(inter, split, EvalConfig(bootstrap=0))
    for k in (1, 2, 5, 10):
        seg = ctx.segments[f"new_user_k{k}"]
        assert seg.sum() == 94 and (ctx.history_len[seg] == k).all() and new[ctx.users[seg]].all()
    # Warm and cold segments keep the known users' own targets and the cold events; new users' are apart.
    assert not (ctx.segments["warm_item"] & new[ctx.users]).any()
    assert ctx.segments["cold_item"].sum() == inter.meta["cold_items"]["n_targets"]


def test_the_report_has_cold_new_user_and_exploration_sections(tmp_path):
    """Both protocols and exploration through `evaluate_systems`, on ml-100k with two fitted baselines (one under
    the cascade's name, so its exploration is the reference): every promised key, section and plot."""
    import json

    from e2erec.baselines.popularity import Popularity
    from e2erec.data.config import NewUsersConfig
    from e2erec.eval.config import EvalConfig
    from e2erec.eval.report import evaluate_systems

    cfg = DataConfig(name="ml-100k", cold_items=ColdItemsConfig(share=0.1), new_users=NewUsersConfig(share=0.1))
    inter = load_dataset(cfg, progress=False)
    split = make_split(inter, cfg)
    pop, cascade = Popularity(), Popularity()
    cascade.name = "cascade"
    for system in (pop, cascade):
        system.fit(inter, split)
    evaluate_systems([pop, cascade], inter, split, EvalConfig(bootstrap=20, explore_shares=[0.1, 0.3]), tmp_path,
                     progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    for system in report["systems"]:
        for seg in ("cold_item", "warm_item", "long_tail_warm", "new_user_k1", "new_user_k2", "new_user_k5",
                    "new_user_k10"):
            assert {"n", "recall@10", "ndcg@10"} <= set(system["segments"][seg])
            assert set(system["segments"][seg]["ndcg@10"]) == {"value", "lo", "hi"}
        block = system["exploration"]
        assert set(block["hits_per_slot"]) == {"system", "rolling_dice", "cascade"}
        assert [row["share"] for row in block["by_share"]] == [0.1, 0.3]
        assert sum(system["by_item_age"]["n"]) == report["setup"]["n_test_targets"]
    # Popularity never recommends a cold item, and the cold items are all long tail: its exploration slots hold
    # warm long-tail items only.
    assert report["systems"][0]["overall"]["cold_slot_share@10"]["value"] == 0
    md = (tmp_path / "report.md").read_text()
    assert "New-user protocol (`data.new_users`" in md and "| popularity | " in md.split("NDCG@10 / Recall@10 by k")[1]
    assert "## Exploration (top-10 slots" in md and "## By item age" in md
    for png in ("item_age.png", "new_users.png", "exploration.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md
