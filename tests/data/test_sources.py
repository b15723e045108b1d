"""Each supported format, in its original layout, read into the same schema (small files written here)."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e2erec.data import load_dataset
from e2erec.data.config import ColumnMap, DataConfig


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E2EREC_CACHE", str(tmp_path / "cache"))


def _load(path: Path, **kw):
    return load_dataset(DataConfig(name=path.name, path=str(path), **kw), progress=False)


def _seq(inter, raw_user: str) -> list[str]:
    u = inter.user_raw_id.index(raw_user)
    return [inter.items.raw_id[i] for i in inter.item[inter.offsets[u]:inter.offsets[u + 1]]]


def test_movielens_100k_original_zip(tmp_path):
    genres = ["0"] * 19
    action = genres.copy()
    action[1] = "1"
    u_item = "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(genres[:3] + ["1"] + genres[4:]) + "\n"
    u_item += "2|GoldenEye (1995)|01-Jan-1995||http://x|" + "|".join(action) + "\n"
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "196\t2\t3\t881250949\n196\t1\t5\t881250000\n22\t1\t1\t878887116\n")
        zf.writestr("ml-100k/u.item", u_item.encode("latin-1"))
    inter = _load(archive)
    assert (inter.n_users, inter.n_items, inter.n_events) == (2, 2, 3)
    assert _seq(inter, "196") == ["1", "2"]  # time-ordered, not file-ordered
    assert inter.items.title == ["Toy Story", "GoldenEye"] and inter.items.year.tolist() == [1995, 1995]
    assert inter.items.categories == [["Animation"], ["Action"]]
    assert inter.meta["source"] == "movielens"


def test_movielens_1m_and_20m_folders(tmp_path):
    m1 = tmp_path / "ml-1m"
    m1.mkdir()
    (m1 / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (m1 / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Amélie (2001)::Comedy|Romance\n"
                                    .encode("latin-1"))
    inter = _load(m1)
    assert inter.n_events == 3 and _seq(inter, "1") == ["1193", "661"]
    i = inter.items.raw_id.index("661")
    assert inter.items.title[i] == "Amélie" and inter.items.categories[i] == ["Comedy", "Romance"]

    m20 = tmp_path / "ml-20m"
    m20.mkdir()
    (m20 / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n")
    (m20 / "movies.csv").write_text('movieId,title,genres\n2,"Jumanji, The (1995)",Adventure|Children\n'
                                    "29,City of Lost Children (1995),(no genres listed)\n")
    inter = _load(m20)
    assert _seq(inter, "1") == ["29", "2"] and inter.feedback.tolist() == [3.5, 3.5]
    assert inter.items.title[inter.items.raw_id.index("2")] == "Jumanji, The"
    assert inter.items.categories[inter.items.raw_id.index("29")] == []


def test_recbole_folder_with_item_file_dedupe_and_leading_zeros(tmp_path):
    d = tmp_path / "shop"
    d.mkdir()
    (d / "shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                  "007\ta\t5\n007\tb\t3\n007\ta\t5\n8\tb\t1\n")
    (d / "shop.item").write_text("item_id:token\ttitle:token_seq\tcategories:token_seq\na\tRed Shoe\tshoes red\n")
    inter = _load(d)
    assert inter.user_raw_id == ["007", "8"]  # tokens stay strings, numbered in numeric order
    assert inter.n_events == 3 and inter.meta["filters"][0]["events"] == [4, 3]  # one repeated event dropped
    assert _seq(inter, "007") == ["b", "a"]
    assert inter.label.tolist() == [1, 1, 1] and inter.feedback.tolist() == [1.0, 1.0, 1.0]  # implicit feedback
    a = inter.items.raw_id.index("a")
    assert inter.items.title[a] == "Red Shoe" and inter.items.categories[a] == ["shoes", "red"]
    assert inter.items.title[inter.items.raw_id.index("b")] == ""  # no item row: empty, and counted in the log


def test_amazon_2014_and_2018(tmp_path):
    reviews = tmp_path / "reviews_Beauty_5.json.gz"
    rows = [("A1", "B1", 5.0, 30), ("A1", "B2", 2.0, 10), ("A2", "B1", 4.0, 20)]
    with gzip.open(reviews, "wt") as f:
        for u, i, r, t in rows:
            f.write(json.dumps({"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t, "summary": "ok"}) + "\n")
    meta14 = tmp_path / "meta_Beauty.json.gz"
    with gzip.open(meta14, "wt") as f:  # 2014 metadata: Python literals, category paths as lists of lists
        f.write(str({"asin": "B1", "title": "Lip Balm", "description": "Soft.", "categories": [["Beauty", "Lips"]]}) + "\n")
        f.write(str({"asin": "B2", "categories": [["Beauty", "Skin"], ["Beauty", "Face"]]}) + "\n")
    inter = _load(reviews, item_path=str(meta14))
    assert _seq(inter, "A1") == ["B2", "B1"] and inter.label.tolist() == [0, 1, 1]
    b1, b2 = inter.items.raw_id.index("B1"), inter.items.raw_id.index("B2")
    assert inter.items.title[b1] == "Lip Balm" and inter.items.text[b1] == "Soft."
    assert inter.items.categories[b2] == ["Beauty", "Skin", "Face"]

    meta18 = tmp_path / "meta_Beauty_2018.json"
    meta18.write_text(json.dumps({"asin": "B1", "title": "Balm", "category": ["Beauty", "Lips"],
                                  "description": ["Soft", "lips."]}) + "\n")
    inter = _load(reviews, item_path=str(meta18))
    b1 = inter.items.raw_id.index("B1")
    assert inter.items.text[b1] == "Soft lips." and inter.items.categories[b1] == ["Beauty", "Lips"]


def test_tabular_csv_parquet_jsonl_with_column_map(tmp_path):
    cols = ColumnMap(user="uid", item="sku", timestamp="when", feedback=None,
                     timestamp_format="%Y-%m-%d %H:%M:%S", item_title="name", item_categories="tags", category_sep=";")
    csv = tmp_path / "log.csv"
    csv.write_text("uid,sku,when\nu1,s2,2021-01-02 00:00:00\nu1,s1,2021-01-01 00:00:00\nu2,s1,2021-01-03 00:00:00\n")
    items = tmp_path / "items.csv"
    items.write_text("sku,name,tags\ns1,Kettle,kitchen;steel\ns2,Mug,kitchen\n")
    inter = _load(csv, columns=cols, item_path=str(items))
    assert _seq(inter, "u1") == ["s1", "s2"] and inter.timestamp[0] == 1609459200
    assert inter.items.categories[inter.items.raw_id.index("s1")] == ["kitchen", "steel"]

    table = pa.table({"uid": [1, 1, 2], "sku": [10, 11, 10], "ts": [5, 3, 4], "stars": [1.0, 5.0, 4.0]})
    pq.write_table(table, tmp_path / "log.parquet")
    inter = _load(tmp_path / "log.parquet", columns=ColumnMap(user="uid", item="sku", timestamp="ts", feedback="stars"))
    assert _seq(inter, "1") == ["11", "10"] and inter.feedback.tolist() == [5.0, 1.0, 4.0]

    jl = tmp_path / "log.jsonl"
    jl.write_text("\n".join(json.dumps({"user_id": u, "item_id": i, "timestamp": t, "rating": 4})
                            for u, i, t in [("a", "x", 2), ("a", "y", 1)]) + "\n")
    inter = _load(jl)
    assert _seq(inter, "a") == ["y", "x"] and np.all(inter.label == 1)
