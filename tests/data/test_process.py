"""The processing core against a pandas reference: stable (user, time) order, dedupe keeping the last repeat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from e2erec.data.config import DataConfig
from e2erec.data.process import _stable_radix_argsort, process
from e2erec.data.raw import RawData

events = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 4), st.integers(1, 5)),
                  min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(events, st.booleans(), st.booleans())
def test_matches_pandas_reference(rows, time_sorted, string_ids):
    df = pd.DataFrame(rows, columns=["user", "item", "ts", "rating"])
    if time_sorted:  # exercises the "logs arrive in time order" path
        df = df.sort_values("ts", kind="stable").reset_index(drop=True)
    conv = (lambda c: pa.array(c.astype(str).tolist())) if string_ids else (lambda c: pa.array(c.to_numpy()))
    raw = RawData(conv(df["user"]), conv(df["item"]), df["ts"].to_numpy(np.int64),
                  df["rating"].to_numpy(np.float32), None, "test")
    out = process(raw, DataConfig(), progress=False)
    ref = df.drop_duplicates(["user", "item", "ts"], keep="last").sort_values(["user", "ts"], kind="stable")
    items = sorted(ref["item"].unique())
    np.testing.assert_array_equal(out["item"], np.searchsorted(items, ref["item"].to_numpy()))
    np.testing.assert_array_equal(out["timestamp"], ref["ts"].to_numpy())
    np.testing.assert_array_equal(out["feedback"], ref["rating"].to_numpy(np.float32))
    np.testing.assert_array_equal(np.diff(out["offsets"]), ref.groupby("user").size().to_numpy())
    assert out["filters"][0]["events"] == [len(df), len(ref)]


def test_radix_argsort_is_a_stable_sort_beyond_16_bits():
    codes = np.random.default_rng(0).integers(0, 200_000, 50_000).astype(np.int32)
    np.testing.assert_array_equal(_stable_radix_argsort(codes), np.argsort(codes, kind="stable"))


def test_blockwise_passes_equal_one_block(monkeypatch):
    """The chunked encode, counting sort, filters and renumbering give the same cache arrays with blocks of 1,000
    events as with one block, on an unsorted log with ties, duplicates, a k-core filter and a planted column."""
    import e2erec.data.process as proc

    rng = np.random.default_rng(0)
    n = 20_000
    user, item = rng.integers(0, 900, n), rng.integers(5, 1400, n) * 3  # sparse item ids: the dictionary path
    ts, rating = rng.integers(0, 3000, n), rng.integers(1, 6, n).astype(np.float32)
    prob = rng.random(n).astype(np.float32)

    def run() -> dict:
        raw = RawData(pa.array(user), pa.array(item), ts.copy(), rating.copy(), None, "test", extra={"prob": prob.copy()})
        return process(raw, DataConfig(min_user_events=5, min_item_events=3), progress=False)

    whole = run()
    monkeypatch.setattr(proc, "BLOCK", 1000)
    blocked = run()
    for key in ("offsets", "item", "timestamp", "feedback", "label"):
        np.testing.assert_array_equal(blocked[key], whole[key])
    np.testing.assert_array_equal(blocked["extra"]["prob"], whole["extra"]["prob"])
    assert blocked["user_ids"].equals(whole["user_ids"]) and blocked["filters"] == whole["filters"]
    # and the reference: the planted column followed its events through the sort and the filters
    df = pd.DataFrame({"user": user, "item": item, "ts": ts, "prob": prob}).drop_duplicates(
        ["user", "item", "ts"], keep="last").sort_values(["user", "ts"], kind="stable")
    kept = df[df["user"].astype(str).isin(whole["user_ids"].to_pylist())
              & df["item"].astype(str).isin(whole["items"]["raw_id"].to_pylist())]
    np.testing.assert_array_equal(whole["extra"]["prob"], kept["prob"].to_numpy())
