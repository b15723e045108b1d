"""Per-user top-K lists out, in the dataset's own ids, for outside scripts: JSON lines or Parquet by extension.

    write_predictions("top10.parquet", {"user": raw_user_ids}, items, scores, item_raw_ids)

One row per list: the scalar columns given (user, target item, label, ...), then `items` (raw item ids, best first,
padding dropped) and `scores` (the system's score of each, when it has one). Parquet keeps the two as list columns;
JSON lines write one object per row. The file appears only once complete (written beside it, then renamed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from e2erec.errors import DataError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
JSON_ROWS_PER_WRITE = 10_000  # rows serialised at a time: memory stays bounded by a chunk, not by the users


def prediction_format(path: str | Path) -> str:
    """"jsonl" or "parquet" from the file name; a clear error for anything else (checked before any work)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: predictions are written as JSON lines (.jsonl) or Parquet (.parquet), "
                        f"not {suffix or 'a file without an extension'}")
    return FORMATS[suffix]


def _lists(values: np.ndarray, keep: np.ndarray) -> pa.ListArray:
    """[n, k] values -> a list per row of the entries where `keep`, in order."""
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values[keep]))


def predictions_table(columns: dict[str, np.ndarray | list], items: np.ndarray, scores: np.ndarray | None,
                      item_raw_ids: list[str] | np.ndarray) -> pa.Table:
    """The table `write_predictions` writes: `columns`, then `items` [n, k] (item indices, -1 pads) as raw ids and
    `scores` [n, k] as floats."""
    items = np.asarray(items)
    keep = items >= 0
    raw = np.asarray(item_raw_ids, dtype=object)
    table = {name: pa.array(col) for name, col in columns.items()}  # numpy columns convert without a Python loop
    table["items"] = _lists(raw[np.where(keep, items, 0)].astype(str), keep)
    if scores is not None:
        table["scores"] = _lists(np.asarray(scores, dtype=np.float64), keep)
    return pa.table(table)


def write_predictions(path: str | Path, columns: dict[str, np.ndarray | list], items: np.ndarray,
                      scores: np.ndarray | None, item_raw_ids: list[str] | np.ndarray) -> Path:
    """Write the lists (module docstring) to `path`, atomically; returns the path."""
    return write_table(path, predictions_table(columns, items, scores, item_raw_ids))


def write_table(path: str | Path, table: pa.Table) -> Path:
    """`table` as JSON lines or Parquet, by `path`'s extension; atomic."""
    path = Path(path)
    fmt = prediction_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            with open(tmp, "w") as f:
                for batch in table.to_batches(max_chunksize=JSON_ROWS_PER_WRITE):
                    f.writelines(json.dumps(row) + "\n" for row in batch.to_pylist())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_predictions(path: str | Path) -> list[dict]:
    """The rows of a predictions file (either format) as dicts; for tests and small files."""
    path = Path(path)
    if prediction_format(path) == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
