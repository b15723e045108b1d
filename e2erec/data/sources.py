"""Readers: every supported source becomes one `RawData` (events + optional item table) in its own raw ids.

Supported sources and how their fields map onto e2erec's event schema (user, item, timestamp, feedback):

==============  =======================================================  ==============================================
source          files                                                    mapping
==============  =======================================================  ==============================================
ml-100k         RecBole wheel ``recbole==1.2.1`` (offline default),      ``.inter``: user_id, item_id, rating,
(default)       ``recbole/dataset_example/ml-100k/ml-100k.{inter,item}``  timestamp; ``.item``: movie_title,
                read straight out of the wheel (a zip)                    release_year, class (genres)
movielens       GroupLens originals: ml-100k ``u.data``/``u.item``,      rating -> feedback; title "Name (1995)" is split
                ml-1m ``ratings.dat``/``movies.dat`` (``::``),            into title and year; genres -> categories
                ml-20m ``ratings.csv``/``movies.csv``
recbole         atomic files ``<name>.inter`` (+ ``.item``), tab-         ``data.columns`` names the fields (RecBole's
                separated with ``name:type`` headers                      defaults: user_id, item_id, rating, timestamp)
amazon          2014/2018 5-core reviews (JSON lines, ``.gz`` ok) +       reviewerID, asin, overall, unixReviewTime;
                metadata (``data.item_path``; 2014 metadata is Python-    meta: title, description, categories/category
                literal lines, 2018 is JSON)
tabular         CSV / TSV / Parquet / JSON lines + optional item table    ``data.columns`` (see `ColumnMap`)
synthetic       generated (`e2erec.data.synthetic`)                       planted ground truth in `Interactions.planted`
==============  =======================================================  ==============================================

Every parse error is a `DataError` naming the file and the line (or the column): the fast path is pyarrow; when
it fails, a line-by-line scan finds the first bad line so the message can point at it.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from e2erec.data.config import DataConfig
from e2erec.data.raw import RawData, make_item_table
from e2erec.data.synthetic import generate
from e2erec.errors import DataError
from e2erec.utils.io import atomic_write_text, file_digest, to_dict

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/ml-100k"

# Canonical GroupLens archives. Their sha256 digests are not published by GroupLens and are not recorded here from
# memory: the digest is recorded beside the archive at first download and verified on every later use (or
# `data.sha256` pins one).
MOVIELENS_URLS = {
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    "ml-20m": "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
}

# ----------------------------------------------------------------------------------------------------------------
# downloads


def _announce(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def verify_digest(path: Path, expected: str | None, what: str) -> str:
    """Check `path` against `expected`, else against the digest recorded at its first download (`<path>.sha256`)."""
    digest = file_digest(path)
    record = path.with_name(path.name + ".sha256")
    if expected is None and record.exists():
        expected = record.read_text().split()[0]
    if expected is not None and digest != expected.lower():
        raise DataError(
            f"{path}: sha256 {digest} does not match the expected {expected} for {what}; "
            "delete the file to download it again"
        )
    if not record.exists():
        atomic_write_text(record, f"{digest}  {path.name}\n")
    return digest


def fetch_url(url: str, dest: Path, expected_sha256: str | None = None) -> Path:
    """Download `url` to `dest` once (atomically), verifying sha256 on every use."""
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _announce(f"downloading {url} -> {dest}")
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, f, length=1 << 20)
            os.replace(tmp, dest)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            Path(tmp).unlink(missing_ok=True)
            raise DataError(
                f"could not download {url} ({e}); without internet, download it elsewhere and place it at {dest}"
            ) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    verify_digest(dest, expected_sha256, url)
    return dest


def fetch_recbole_wheel(cache: Path, expected_sha256: str | None = None) -> Path:
    """`pip download recbole==1.2.1 --no-deps` into the cache (never installed): its wheel carries ml-100k."""
    dest_dir = cache / "downloads"
    found = sorted(dest_dir.glob("recbole-1.2.1-*.whl"))
    if not found:
        dest_dir.mkdir(parents=True, exist_ok=True)
        _announce(f"fetching {RECBOLE_WHEEL} (wheel only, not installed) into {dest_dir}")
        with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".pip-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", RECBOLE_WHEEL, "--no-deps", "--quiet", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wheels = sorted(Path(tmp).glob("recbole-1.2.1-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise DataError(
                    f"`{' '.join(cmd[2:])}` failed (needed for the offline ml-100k): "
                    f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'no wheel'}"
                )
            os.replace(wheels[0], dest_dir / wheels[0].name)
        found = sorted(dest_dir.glob("recbole-1.2.1-*.whl"))
    verify_digest(found[0], expected_sha256, RECBOLE_WHEEL)
    return found[0]


# ----------------------------------------------------------------------------------------------------------------
# delimited text with good errors


def _first_bad_line(lines: list[str] | Callable[[], Any], n_fields: int, sep: str, where: str, skip: int = 1) -> None:
    """Scan delimited lines and raise a DataError at the first one without `n_fields` fields."""
    for lineno, line in enumerate(lines, start=1):
        if lineno <= skip:
            continue
        line = line.rstrip("\r\n")
        if not line:
            continue
        got = len(line.split(sep))
        if got != n_fields:
            raise DataError(f"{where}:{lineno}: malformed line, expected {n_fields} fields separated by {sep!r}, got {got}: {line[:80]!r}")


def _read_delimited(data: bytes, where: str, sep: str, column_names: list[str] | None, types: dict[str, pa.DataType],
                    encoding: str = "utf8", quoting: bool = False, skip_rows: int = 0) -> pa.Table:
    """pyarrow's multithreaded CSV reader; on failure, find and report the first bad line.

    `column_names=None` reads them from the first line; `skip_rows` skips a header that is replaced by column_names.
    """
    read = pacsv.ReadOptions(column_names=column_names, encoding=encoding, block_size=1 << 24, skip_rows=skip_rows)
    parse = pacsv.ParseOptions(delimiter=sep, quote_char='"' if quoting else False)
    convert = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False)
    try:
        return pacsv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        text = data.decode("utf8" if encoding == "utf8" else "latin-1", errors="replace").splitlines()
        header = skip_rows if column_names else 1
        names = column_names or (text[0].split(sep) if text else [])
        import csv

        if not quoting:
            _first_bad_line(text, len(names), sep, where, skip=header)
        else:  # quoted fields may hold the separator (and newlines): count fields the way a CSV reader does
            records = csv.reader(text, delimiter=sep)
            for record in records:
                if records.line_num > header and record and len(record) != len(names):
                    raise DataError(f"{where}:{records.line_num}: malformed line, expected {len(names)} fields "
                                    f"separated by {sep!r}, got {len(record)}: {sep.join(record)[:80]!r}")

        for lineno, line in enumerate(text[header:], start=header + 1):
            fields = line.split(sep) if not quoting else next(iter(csv.reader([line], delimiter=sep)), [])
            for name, value in zip(names, fields):
                tp = types.get(name)
                if tp is None or value == "" or pa.types.is_string(tp):
                    continue
                try:
                    float(value) if pa.types.is_floating(tp) else int(value)
                except ValueError:
                    raise DataError(f"{where}:{lineno}: column {name!r}: cannot parse {value!r} as {tp}") from None
        raise DataError(f"{where}: could not parse ({str(e).splitlines()[0]})") from None


def _contiguous(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array; a one-chunk column as it is (`combine_chunks` would copy even that)."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _check_columns(table_columns: list[str], needed: dict[str, str | None], where: str) -> None:
    for role, name in needed.items():
        if name is not None and name not in table_columns:
            raise DataError(f"{where}: missing {role} column {name!r}; columns are {table_columns} (set data.columns.{role})")


def _timestamps(col: pa.ChunkedArray | pa.Array, where: str, column: str, fmt: str | None,
                row_offset: int = 2) -> np.ndarray:
    """Unix seconds as int64; `fmt` is a strptime format for text timestamps. Errors name the first bad row."""
    col = _contiguous(col)
    if col.null_count:
        bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}:{bad + row_offset}: column {column!r}: missing timestamp")
    if fmt is not None:
        if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        try:
            parsed = pc.strptime(col, format=fmt, unit="s", error_is_null=True)
        except pa.ArrowInvalid as e:
            raise DataError(f"{where}: column {column!r}: {e}") from None
        if parsed.null_count:
            bad = int(np.flatnonzero(parsed.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"{where}:{bad + row_offset}: column {column!r}: cannot parse {col[bad].as_py()!r} with format {fmt!r}"
            )
        return parsed.cast(pa.int64()).to_numpy()
    if pa.types.is_timestamp(col.type):
        return col.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    if pa.types.is_integer(col.type):
        return (col if col.type == pa.int64() else col.cast(pa.int64())).to_numpy()
    if pa.types.is_floating(col.type):
        values = col.to_numpy()
        if not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise DataError(f"{where}:{bad + row_offset}: column {column!r}: timestamp {values[bad]!r} is not finite")
        return values.astype(np.int64)
    try:
        return col.cast(pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        try:
            return col.cast(pa.float64()).to_numpy().astype(np.int64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    for i, v in enumerate(col.to_pylist()):
        try:
            float(v)
        except (TypeError, ValueError):
            raise DataError(
                f"{where}:{i + row_offset}: column {column!r}: cannot parse timestamp {v!r} as unix seconds "
                "(set data.columns.timestamp_format, e.g. '%Y-%m-%d %H:%M:%S')"
            ) from None
    raise DataError(f"{where}: column {column!r}: cannot parse timestamps")


def _feedback(col: pa.ChunkedArray | pa.Array, where: str, column: str, row_offset: int = 2) -> np.ndarray:
    col = _contiguous(col)
    try:
        values = col.cast(pa.float32()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, v in enumerate(col.to_pylist()):
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(f"{where}:{i + row_offset}: column {column!r}: feedback {v!r} is not a number") from None
        raise DataError(f"{where}: column {column!r}: feedback is not numeric") from None
    if np.isnan(values).any():
        bad = int(np.flatnonzero(np.isnan(values))[0])
        raise DataError(f"{where}:{bad + row_offset}: column {column!r}: missing feedback")
    return values


def _ids(col: pa.ChunkedArray | pa.Array, where: str, column: str, row_offset: int = 2) -> pa.Array:
    col = _contiguous(col)
    if col.null_count:
        bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}:{bad + row_offset}: column {column!r}: missing id")
    if pa.types.is_floating(col.type):
        raise DataError(f"{where}: column {column!r}: ids must be integers or strings, got {col.type}")
    if pa.types.is_string(col.type) and len(col) and pc.min(pc.utf8_length(col)).as_py() == 0:
        bad = int(np.flatnonzero(pc.equal(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}:{bad + row_offset}: column {column!r}: empty id")
    return col


_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def split_title_year(title: str) -> tuple[str, int]:
    """MovieLens titles carry the year: "Toy Story (1995)" -> ("Toy Story", 1995)."""
    m = _TITLE_YEAR.match(title.strip())
    return (m.group(1), int(m.group(2))) if m else (title.strip(), -1)


# ----------------------------------------------------------------------------------------------------------------
# RecBole atomic files


_RECBOLE_TYPES = {"token": pa.string(), "token_seq": pa.string(), "float": pa.float64(), "float_seq": pa.string()}


def _recbole_header(first_line: str, where: str) -> tuple[list[str], dict[str, pa.DataType]]:
    names, types = [], {}
    for col, field_spec in enumerate(first_line.rstrip("\r\n").split("\t"), start=1):
        if ":" not in field_spec:
            raise DataError(f"{where}:1: column {col} header {field_spec!r} is not RecBole's 'name:type' (e.g. user_id:token)")
        name, tp = field_spec.rsplit(":", 1)
        if tp not in _RECBOLE_TYPES:
            raise DataError(f"{where}:1: column {name!r} has unknown RecBole type {tp!r}; expected one of {sorted(_RECBOLE_TYPES)}")
        names.append(name)
        types[name] = _RECBOLE_TYPES[tp]
    return names, types


def read_recbole_atomic(inter: bytes, where: str, item: bytes | None, item_where: str, cfg: DataConfig) -> tuple:
    """Parse a `.inter` (and optional `.item`) atomic file; returns (user, item, timestamp, feedback, items)."""
    if not inter.strip():
        raise DataError(f"{where}: empty file")
    first, _, _ = inter.partition(b"\n")
    names, types = _recbole_header(first.decode("utf8", "replace"), where)
    table = _read_delimited(inter, where, "\t", names, types, skip_rows=1)
    cols = cfg.columns
    _check_columns(names, {"user": cols.user, "item": cols.item, "timestamp": cols.timestamp}, where)
    feedback_col = cols.feedback if cols.feedback in names else None
    user = _ids(table[cols.user], where, cols.user)
    item_ids = _ids(table[cols.item], where, cols.item)
    ts = _timestamps(table[cols.timestamp], where, cols.timestamp, cols.timestamp_format)
    fb = _feedback(table[feedback_col], where, feedback_col) if feedback_col else None
    items = None
    if item is not None:
        first, _, _ = item.partition(b"\n")
        inames, itypes = _recbole_header(first.decode("utf8", "replace"), item_where)
        itable = _read_delimited(item, item_where, "\t", inames, itypes, skip_rows=1)
        _check_columns(inames, {"item": cols.item}, item_where)

        def pick(configured: str | None, *guesses: str) -> str | None:
            if configured is not None:
                _check_columns(inames, {"item column": configured}, item_where)
                return configured
            return next((g for g in guesses if g in inames), None)

        title_c = pick(cols.item_title, "movie_title", "title", "name")
        text_c = pick(cols.item_text, "description", "text", "plot")
        cat_c = pick(cols.item_categories, "class", "genre", "genres", "categories", "category")
        year_c = next((g for g in ("release_year", "year") if g in inames), None)
        n = itable.num_rows
        raw = [str(v) for v in itable[cols.item].to_pylist()]
        title = [v or "" for v in itable[title_c].to_pylist()] if title_c else [""] * n
        text = [v or "" for v in itable[text_c].to_pylist()] if text_c else [""] * n
        # RecBole token_seq fields are space-separated; a configured separator wins for other item files.
        sep = cols.category_sep if cols.item_categories else " "
        cats = [[c for c in (v or "").split(sep) if c] for v in itable[cat_c].to_pylist()] if cat_c else [[]] * n
        years = []
        for v in itable[year_c].to_pylist() if year_c else [None] * n:
            try:
                years.append(int(float(v)))
            except (TypeError, ValueError):
                years.append(-1)
        items = make_item_table(raw, title, text, cats, years)
    return user, item_ids, ts, fb, items


def read_recbole_path(path: Path, cfg: DataConfig) -> RawData:
    """A folder holding `<name>.inter` (+ `<name>.item`), or the `.inter` file itself."""
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if not inters:
            raise DataError(f"{path}: no RecBole .inter file in this folder")
        inter = inters[0]
    else:
        inter = path
    item = inter.with_suffix(".item")
    u, i, t, f, items = read_recbole_atomic(
        inter.read_bytes(), str(inter), item.read_bytes() if item.exists() else None, str(item), cfg
    )
    return RawData(u, i, t, f, items, "recbole", meta={"files": [str(inter)] + ([str(item)] if item.exists() else [])})


def read_recbole_wheel_ml100k(wheel: Path) -> RawData:
    with zipfile.ZipFile(wheel) as zf:
        try:
            inter = zf.read(RECBOLE_ML100K + ".inter")
            item = zf.read(RECBOLE_ML100K + ".item")
        except KeyError as e:
            raise DataError(f"{wheel}: {e.args[0]} (is this the recbole 1.2.1 wheel?)") from None
    where = f"{wheel}!{RECBOLE_ML100K}"
    u, i, t, f, items = read_recbole_atomic(inter, where + ".inter", item, where + ".item", DataConfig())
    return RawData(u, i, t, f, items, "recbole-wheel", meta={"files": [str(wheel)]})


# ----------------------------------------------------------------------------------------------------------------
# MovieLens (GroupLens originals)

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


class _Files:
    """Files of a MovieLens release, from an extracted folder or straight out of the zip."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() and zipfile.is_zipfile(path) else None

    def find(self, name: str) -> str | None:
        if self.zip is not None:
            return next((n for n in self.zip.namelist() if n == name or n.endswith("/" + name)), None)
        hits = sorted(self.path.rglob(name)) if self.path.is_dir() else []
        return str(hits[0]) if hits else None

    def read(self, name: str) -> bytes:
        return self.zip.read(name) if self.zip is not None else Path(name).read_bytes()

    def where(self, name: str) -> str:
        return f"{self.path}!{name}" if self.zip is not None else name


def read_movielens(path: Path, name: str | None = None) -> RawData:
    """GroupLens ml-100k (`u.data`, `u.item`), ml-1m (`ratings.dat`, `movies.dat`), ml-20m (`ratings.csv`, `movies.csv`)."""
    files = _Files(path)
    f100k, f1m, f20m = files.find("u.data"), files.find("ratings.dat"), files.find("ratings.csv")
    int_types = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "timestamp": pa.int64()}
    if f100k:
        where = files.where(f100k)
        table = _read_delimited(files.read(f100k), where, "\t", ["user", "item", "rating", "timestamp"], int_types)
        items = None
        if meta := files.find("u.item"):
            rows = files.read(meta).decode("latin-1").splitlines()
            raw, title, cats, years = [], [], [], []
            for lineno, line in enumerate(rows, start=1):
                if not line.strip():
                    continue
                parts = line.split("|")
                if len(parts) != 5 + len(ML100K_GENRES):
                    raise DataError(f"{files.where(meta)}:{lineno}: malformed line, expected {5 + len(ML100K_GENRES)} '|'-separated fields, got {len(parts)}")
                t, y = split_title_year(parts[1])
                raw.append(parts[0])
                title.append(t)
                years.append(y)
                cats.append([g for g, flag in zip(ML100K_GENRES, parts[5:]) if flag.strip() == "1"])
            items = make_item_table(raw, title, [""] * len(raw), cats, years)
        ratings_where, meta_file, sep = where, None, None
    elif f1m:
        ratings_where = files.where(f1m)
        # pyarrow splits on one character: "::" becomes a tab (ml-1m ratings hold no tabs).
        data = files.read(f1m).replace(b"::", b"\t")
        table = _read_delimited(data, ratings_where, "\t", ["user", "item", "rating", "timestamp"], int_types)
        meta_file, sep = files.find("movies.dat"), "::"
    elif f20m:
        ratings_where = files.where(f20m)
        data = files.read(f20m)
        table = _read_delimited(data, ratings_where, ",", None, {"userId": pa.int64(), "movieId": pa.int64(),
                                                                  "rating": pa.float64(), "timestamp": pa.int64()})
        _check_columns(table.column_names, {"user": "userId", "item": "movieId", "feedback": "rating", "timestamp": "timestamp"}, ratings_where)
        table = table.select(["userId", "movieId", "rating", "timestamp"]).rename_columns(["user", "item", "rating", "timestamp"])
        meta_file, sep = files.find("movies.csv"), ","
    else:
        raise DataError(f"{path}: not a MovieLens release (no u.data, ratings.dat or ratings.csv inside)")
    if not f100k and meta_file:
        raw, title, cats, years = [], [], [], []
        text = files.read(meta_file).decode("latin-1" if sep == "::" else "utf8", errors="replace")
        if sep == ",":
            import csv

            rows = list(csv.reader(io.StringIO(text)))[1:]
            start = 2
        else:
            rows = [line.split("::") for line in text.splitlines() if line.strip()]
            start = 1
        for lineno, parts in enumerate(rows, start=start):
            if len(parts) != 3:
                raise DataError(f"{files.where(meta_file)}:{lineno}: malformed line, expected 3 fields, got {len(parts)}")
            t, y = split_title_year(parts[1])
            raw.append(parts[0])
            title.append(t)
            years.append(y)
            cats.append([g for g in parts[2].split("|") if g and g != "(no genres listed)"])
        items = make_item_table(raw, title, [""] * len(raw), cats, years)
    elif not f100k:
        items = None
    first = 1 if not f20m else 2  # the file line of the first row: only ratings.csv has a header
    ts = _timestamps(table["timestamp"], ratings_where, "timestamp", None, row_offset=first)
    fb = _feedback(table["rating"], ratings_where, "rating", row_offset=first)
    user, item = _ids(table["user"], ratings_where, "user", first), _ids(table["item"], ratings_where, "item", first)
    return RawData(user, item, ts, fb, items,
                   "movielens", meta={"files": [str(path)], "release": name})


# ----------------------------------------------------------------------------------------------------------------
# Amazon reviews (2014 / 2018)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf8", errors="replace")
    return open(path, encoding="utf8", errors="replace")


def _json_lines(path: Path, allow_python_literals: bool = False):
    """Yield (line number, dict); 2014 metadata lines are Python literals, not JSON."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if not allow_python_literals:
                    raise DataError(f"{path}:{lineno}: malformed JSON line, column {e.colno}: {e.msg}") from None
                try:
                    obj = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise DataError(f"{path}:{lineno}: malformed line (neither JSON nor a Python literal)") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_amazon(reviews: Path, meta: Path | None) -> RawData:
    users, items_, ts, fb = [], [], [], []
    for lineno, obj in _json_lines(reviews):
        try:
            u, i, r = obj["reviewerID"], obj["asin"], obj["overall"]
        except KeyError as e:
            raise DataError(f"{reviews}:{lineno}: missing field {e.args[0]!r} (Amazon reviews need reviewerID, asin, overall, unixReviewTime)") from None
        t = obj.get("unixReviewTime")
        if t is None:
            raise DataError(f"{reviews}:{lineno}: missing field 'unixReviewTime'")
        try:
            ts.append(int(t))
            fb.append(float(r))
        except (TypeError, ValueError):
            raise DataError(f"{reviews}:{lineno}: unixReviewTime {t!r} / overall {r!r} are not numbers") from None
        users.append(str(u))
        items_.append(str(i))
    if not users:
        raise DataError(f"{reviews}: no reviews")
    items = None
    if meta is not None:
        raw, title, text, cats = [], [], [], []
        for lineno, obj in _json_lines(meta, allow_python_literals=True):
            if "asin" not in obj:
                raise DataError(f"{meta}:{lineno}: missing field 'asin'")
            raw.append(str(obj["asin"]))
            title.append(str(obj.get("title") or ""))
            desc = obj.get("description") or ""
            text.append(" ".join(map(str, desc)) if isinstance(desc, list) else str(desc))
            c = obj.get("categories", obj.get("category")) or []
            # 2014: a list of category paths (lists); 2018: one flat path.
            flat = [x for path in c for x in (path if isinstance(path, list) else [path])]
            cats.append(list(dict.fromkeys(str(x) for x in flat)))
        items = make_item_table(raw, title, text, cats, [-1] * len(raw))
    return RawData(pa.array(users), pa.array(items_), np.asarray(ts, np.int64), np.asarray(fb, np.float32), items,
                   "amazon", meta={"files": [str(reviews)] + ([str(meta)] if meta else [])})


# ----------------------------------------------------------------------------------------------------------------
# Generic tables (CSV / TSV / Parquet / JSON lines) with a column map


TABULAR_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson")


def _read_table(path: Path, columns: list[str] | None = None) -> tuple[pa.Table, int]:
    """The table and the file line of its first row (2 for CSV with a header; 0 = rows, not lines, for Parquet).
    `columns`: what the caller needs (Parquet reads only those; other formats read everything)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(path)
            if columns is None or any(c not in file.schema_arrow.names for c in columns):
                columns = None  # the caller reports the missing column, with every column the file has
            return file.read(columns=columns), 0
        except pa.ArrowInvalid as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    if suffix in (".csv", ".tsv"):
        data = path.read_bytes()
        if not data.strip():
            raise DataError(f"{path}: empty file")
        sep = "\t" if suffix == ".tsv" else ","
        return _read_delimited(data, str(path), sep, None, {}, quoting=True), 2
    if suffix in (".jsonl", ".ndjson"):
        import pyarrow.json as pajson

        try:
            return pajson.read_json(path), 1
        except pa.ArrowInvalid:
            for _ in _json_lines(path):  # finds and reports the bad line
                pass
            raise DataError(f"{path}: inconsistent JSON lines (a field changes type between lines)") from None
    raise DataError(f"{path}: unknown file format {suffix!r}; expected one of {', '.join(TABULAR_SUFFIXES)}")


def read_tabular(path: Path, cfg: DataConfig) -> RawData:
    cols = cfg.columns
    roles = [cols.user, cols.item, cols.timestamp] + ([cols.feedback] if cols.feedback else [])
    table, first = _read_table(path, roles)
    _check_columns(table.column_names, {"user": cols.user, "item": cols.item, "timestamp": cols.timestamp,
                                        "feedback": cols.feedback}, str(path))
    where = str(path) if first else f"{path} row"
    offset = first if first else 0
    # Each column leaves the table once converted: a Parquet file's row groups are chunks, and the contiguous
    # copy must not sit beside the chunks of every other column (ingest peak: see scripts/bench_scale.py).
    chunks = {name: table[name] for name in roles}
    del table

    def take(role: int) -> pa.ChunkedArray:
        name = roles[role]
        return chunks[name] if name in roles[role + 1:] else chunks.pop(name)

    user = _ids(take(0), where, cols.user, offset)
    item = _ids(take(1), where, cols.item, offset)
    ts = _timestamps(take(2), where, cols.timestamp, cols.timestamp_format, offset)
    fb = _feedback(take(3), where, cols.feedback, offset) if cols.feedback else None
    items = None
    if cfg.item_path:
        ipath = Path(cfg.item_path).expanduser()
        if not ipath.exists():
            raise DataError(f"{ipath}: item table not found (data.item_path)")
        itable, _ = _read_table(ipath)
        _check_columns(itable.column_names, {"item": cols.item, "item_title": cols.item_title,
                                             "item_text": cols.item_text, "item_categories": cols.item_categories}, str(ipath))
        n = itable.num_rows
        raw = [str(v) for v in itable[cols.item].to_pylist()]
        title = [str(v or "") for v in itable[cols.item_title].to_pylist()] if cols.item_title else [""] * n
        text = [str(v or "") for v in itable[cols.item_text].to_pylist()] if cols.item_text else [""] * n
        cats: list[list[str]] = [[]] * n
        if cols.item_categories:
            cats = [[str(x) for x in v] if isinstance(v, list) else [c for c in str(v or "").split(cols.category_sep) if c]
                    for v in itable[cols.item_categories].to_pylist()]
        items = make_item_table(raw, title, text, cats, [-1] * n)
    return RawData(user, item, ts, fb, items, "tabular", meta={"files": [str(path)] + ([cfg.item_path] if cfg.item_path else [])})


# ----------------------------------------------------------------------------------------------------------------
# dispatch


def detect_source(path: Path) -> str:
    """Guess the source kind of a local path; unknown formats are a DataError naming the path."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (and not a registered dataset: ml-100k, ml-1m, ml-20m, synthetic)")
    if path.is_dir():
        if any(path.glob("*.inter")):
            return "recbole"
        if any((path / n).exists() or any(path.glob(f"*/{n}")) for n in ("u.data", "ratings.dat", "ratings.csv")):
            return "movielens"
        raise DataError(f"{path}: folder holds no known dataset (RecBole *.inter, MovieLens u.data/ratings.dat/ratings.csv)")
    name = path.name.lower()
    if name.endswith(".inter"):
        return "recbole"
    if name.endswith(".zip"):
        return "movielens"
    if name.endswith((".json", ".json.gz", ".jsonl.gz")) or (name.endswith((".jsonl", ".ndjson")) and _looks_amazon(path)):
        return "amazon"
    if path.suffix.lower() in TABULAR_SUFFIXES:
        return "tabular"
    raise DataError(f"{path}: unknown file format {path.suffix!r}; expected a RecBole .inter, a MovieLens folder/zip, "
                    f"Amazon .json(.gz) or a table ({', '.join(TABULAR_SUFFIXES)})")


def _looks_amazon(path: Path) -> bool:
    with _open_text(path) as f:
        head = f.readline()
    return '"reviewerID"' in head and '"asin"' in head


@dataclass
class SourceSpec:
    """A resolved source: its kind, the local files it reads (downloaded if needed) and how to read them."""

    kind: str
    files: list[Path]
    read: Callable[[], RawData]
    identity: Any = None  # what identifies the source besides its files' digests (the generator config)

    def fingerprint_parts(self) -> list[Any]:
        return [self.kind, self.identity, [file_digest(f) for f in self.files if f.is_file()],
                [str(f) for f in self.files if f.is_dir()]]


def resolve_source(cfg: DataConfig, cache: Path, progress: bool = True) -> SourceSpec:
    """Dispatch on `data.source` / `data.name` / `data.path` (see the module docstring for the mapping).

    Downloads happen here (once; digests verified); parsing happens only when `read()` is called on a cache miss.
    """
    source, name = cfg.source, cfg.name
    if source == "synthetic" or (source == "auto" and name == "synthetic"):
        return SourceSpec("synthetic", [], lambda: generate(cfg.synthetic, progress), identity=to_dict(cfg.synthetic))
    if cfg.path is None and name in MOVIELENS_URLS:
        if name == "ml-100k" and source in ("auto", "recbole"):
            wheel = fetch_recbole_wheel(cache, cfg.sha256)
            return SourceSpec("recbole-wheel", [wheel], lambda: read_recbole_wheel_ml100k(wheel))
        if source in ("auto", "movielens"):
            archive = fetch_url(MOVIELENS_URLS[name], cache / "downloads" / f"{name}.zip", cfg.sha256)
            return SourceSpec("movielens", [archive], lambda: read_movielens(archive, name))
    path = Path(cfg.path or name).expanduser()
    if source == "auto":
        source = detect_source(path)
    elif not path.exists():
        raise DataError(f"{path}: no such file or folder (data.path for source {source!r})")
    if source == "recbole":
        inter = path if path.is_file() else next(iter(sorted(path.glob("*.inter"))), path / "<missing>.inter")
        if not inter.exists():
            raise DataError(f"{path}: no RecBole .inter file in this folder")
        item = inter.with_suffix(".item")
        return SourceSpec("recbole", [inter] + ([item] if item.exists() else []), lambda: read_recbole_path(inter, cfg))
    if source == "movielens":
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return SourceSpec("movielens", files, lambda: read_movielens(path, name))
    if source == "amazon":
        meta = Path(cfg.item_path).expanduser() if cfg.item_path else None
        if meta is not None and not meta.exists():
            raise DataError(f"{meta}: Amazon metadata file not found (data.item_path)")
        return SourceSpec("amazon", [path] + ([meta] if meta else []), lambda: read_amazon(path, meta))
    if source == "tabular":
        ipath = Path(cfg.item_path).expanduser() if cfg.item_path else None
        if ipath is not None and not ipath.exists():
            raise DataError(f"{ipath}: item table not found (data.item_path)")
        return SourceSpec("tabular", [path] + ([ipath] if ipath else []), lambda: read_tabular(path, cfg),
                          identity=to_dict(cfg.columns))
    raise DataError(f"data.source {source!r} needs data.path")
