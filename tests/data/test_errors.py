"""Bad input is a DataError naming the file and the line or column; a failed preparation leaves no cache behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from e2erec.data import load_dataset, prepare, sources
from e2erec.data.config import ColumnMap, DataConfig
from e2erec.errors import DataError

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def _inter(tmp_path: Path, body: str, header: str = INTER_HEADER) -> Path:
    path = tmp_path / "toy" / "toy.inter"
    path.parent.mkdir(exist_ok=True)
    path.write_text(header + body)
    return path


def _prepare(tmp_path: Path, path: Path, **kw) -> Path:
    cfg = DataConfig(name="toy", path=str(path), cache_dir=str(tmp_path / "cache"), **kw)
    return prepare(cfg, progress=False)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E2EREC_CACHE", str(tmp_path / "cache"))


def test_malformed_line_names_file_and_line(tmp_path):
    path = _inter(tmp_path, "1\t10\t4\t100\n1\t11\t100\n")
    with pytest.raises(DataError, match=r"toy\.inter:3: malformed line, expected 4 fields"):
        _prepare(tmp_path, path)


def test_csv_line_with_the_wrong_number_of_fields_names_file_and_line(tmp_path):
    csv = tmp_path / "events.csv"
    # A quoted separator is one field (line 3 is fine); line 4 has five fields.
    csv.write_text('user_id,item_id,rating,timestamp\nu1,i1,4,100\nu2,"i2,b",3,101\nu7,i3,4,102,extra\n')
    with pytest.raises(DataError, match=r"events\.csv:4: malformed line, expected 4 fields separated by ',', got 5"):
        _prepare(tmp_path, csv)


def test_mistyped_column_names_line_and_column(tmp_path):
    path = _inter(tmp_path, "1\t10\t4\t100\n1\t11\tgood\t101\n")
    with pytest.raises(DataError, match=r"toy\.inter:3: column 'rating': cannot parse 'good'"):
        _prepare(tmp_path, path)


def test_missing_column_names_it_and_the_config_key(tmp_path):
    path = _inter(tmp_path, "1\t10\t100\n", header="user_id:token\titem_id:token\ttime:float\n")
    with pytest.raises(DataError, match=r"missing timestamp column 'timestamp'.*data\.columns\.timestamp"):
        _prepare(tmp_path, path)


def test_bad_recbole_header(tmp_path):
    path = _inter(tmp_path, "1\t10\n", header="user_id\titem_id:token\n")
    with pytest.raises(DataError, match=r"toy\.inter:1: column 1 header 'user_id' is not RecBole's 'name:type'"):
        _prepare(tmp_path, path)


def test_unparsable_timestamps_name_the_row(tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,rating,timestamp\na,x,4,100\nb,y,3,yesterday\n")
    with pytest.raises(DataError, match=r"events\.csv:3: column 'timestamp': cannot parse timestamp 'yesterday'"):
        _prepare(tmp_path, csv)
    csv.write_text("user_id,item_id,rating,timestamp\na,x,4,2020-01-01 10:00:00\nb,y,3,01/02/2020\n")
    cols = ColumnMap(timestamp_format="%Y-%m-%d %H:%M:%S")
    with pytest.raises(DataError, match=r"events\.csv:3: column 'timestamp': cannot parse '01/02/2020' with format"):
        _prepare(tmp_path, csv, columns=cols)


def test_empty_histories(tmp_path):
    with pytest.raises(DataError, match="no events"):
        _prepare(tmp_path, _inter(tmp_path, ""))
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,rating,timestamp\n,x,4,100\n")
    with pytest.raises(DataError, match=r"events\.csv:2: column 'user_id': (missing|empty) id"):
        _prepare(tmp_path, csv)
    # a filter that removes every history is an error, not an empty dataset
    with pytest.raises(DataError, match="no events left after filtering"):
        _prepare(tmp_path, _inter(tmp_path, "1\t10\t4\t100\n2\t11\t3\t101\n"), min_user_events=5)


def test_unknown_format(tmp_path):
    bad = tmp_path / "events.xlsx"
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"events\.xlsx: unknown file format '\.xlsx'"):
        _prepare(tmp_path, bad)
    with pytest.raises(DataError, match="no such file"):
        _prepare(tmp_path, tmp_path / "missing.csv")


def test_amazon_malformed_json_line(tmp_path):
    path = tmp_path / "Beauty_5.json.gz"
    good = json.dumps({"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1})
    with gzip.open(path, "wt") as f:
        f.write(good + "\n" + good[:-5] + "\n")
    with pytest.raises(DataError, match=r"Beauty_5\.json\.gz:2: malformed JSON line, column"):
        _prepare(tmp_path, path)
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"reviewerID": "A1", "overall": 5.0, "unixReviewTime": 1}) + "\n")
    with pytest.raises(DataError, match=r"Beauty_5\.json\.gz:1: missing field 'asin'"):
        _prepare(tmp_path, path)


def test_failed_preparation_leaves_no_cache(tmp_path):
    path = _inter(tmp_path, "1\t10\t4\t100\n1\t11\tbad\t101\n")
    with pytest.raises(DataError):
        _prepare(tmp_path, path)
    datasets_dir = tmp_path / "cache" / "datasets"
    assert [p.name for p in datasets_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_download_failure_names_the_url(tmp_path, monkeypatch):
    # A closed local port stands in for "no internet", whatever the machine running the suite can reach.
    monkeypatch.setitem(sources.MOVIELENS_URLS, "ml-1m", "http://127.0.0.1:9/ml-1m.zip")
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:9/ml-1m\.zip.*place it at"):
        load_dataset(DataConfig(name="ml-1m", cache_dir=str(tmp_path / "cache")), progress=False)
    assert not (tmp_path / "cache" / "downloads" / "ml-1m.zip").exists()


def test_digest_mismatch_is_refused(tmp_path):
    archive = tmp_path / "ml-1m.zip"
    archive.write_bytes(b"not the archive")
    with pytest.raises(DataError, match="does not match the expected"):
        sources.verify_digest(archive, "0" * 64, "https://files.grouplens.org/datasets/movielens/ml-1m.zip")
    first = sources.verify_digest(archive, None, "x")  # first use records the digest ...
    archive.write_bytes(b"changed")
    with pytest.raises(DataError, match=first):  # ... and later uses are checked against it
        sources.verify_digest(archive, None, "x")
