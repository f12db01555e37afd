"""Rows already in memory (a polars or pandas DataFrame, a `datasets.Dataset`, a list of dicts) as the `Records`
the file readers give, so the Python API validates them with the same checks and the same one-line errors: the
DataFrame is named where an error names a file ('<pandas.DataFrame>'), its rows as 'row N'.

Typed tables (polars, `datasets`) keep their columns, as a Parquet file does; a pandas frame becomes Python rows,
as JSON does, because its object columns may mix types row by row and the error must name the row.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from pairforge.errors import InputError
from pairforge.files import Records, write_table


def is_in_memory(data: Any) -> bool:
    """A table or rows rather than a path."""
    return not isinstance(data, (str, Path))


def records_in_memory(data: Any, name: str | None = None) -> Records:
    """`data` as Records named `name` (default: its type, '<polars.DataFrame>'); empty data is refused as an empty
    file is."""
    label = Path(name or f"<{type(data).__module__.split('.')[0]}.{type(data).__name__}>")
    if isinstance(data, pl.DataFrame):
        records = Records(label, frame=data)
    elif _is_dataset(data):
        # the rows the Dataset shows: after .filter / .shuffle / .select its table is the whole original, and an
        # indices mapping picks the rows (an Arrow-formatted slice applies it)
        records = Records(label, frame=pl.from_arrow(data.with_format("arrow")[:]))  # type: ignore[arg-type]
    elif _is_pandas(data):
        records = Records(label, rows=[{k: _native(v) for k, v in row.items()} for row in data.to_dict("records")])
    elif isinstance(data, list) and all(isinstance(row, dict) for row in data):
        records = Records(label, rows=data)
    else:
        split = " (a DatasetDict: pass one split, data['train'])" if type(data).__name__ == "DatasetDict" else ""
        raise InputError(str(label), "expected a path, a polars or pandas DataFrame, a datasets.Dataset or a list of "
                         f"dicts, found {type(data).__name__}{split}")
    if len(records) == 0:
        raise InputError(str(label), "no rows: expected at least one record")
    return records


def save_records(records: Records, path: Path) -> Path:
    """Records from memory as a file the readers take back unchanged: a typed frame as `<path>.parquet`, rows as
    `<path>.jsonl`."""
    if records.frame is not None:
        return write_table(records.frame, path.with_name(path.name + ".parquet"))
    path = path.with_name(path.name + ".jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in records.as_rows()),
                    encoding="utf-8")
    return path


def _is_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("datasets") and hasattr(data, "num_rows") and not isinstance(data, dict)


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas") and hasattr(data, "columns")  # a DataFrame, not a Series


def _native(value: Any) -> Any:
    """A pandas cell as JSON would hold it: NaN (pandas' missing value) is None, numpy scalars and arrays are
    Python numbers and lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "tolist"):  # numpy scalar or array (a list column read from Parquet by pandas)
        return _native(value.tolist())
    if isinstance(value, list):
        return [_native(v) for v in value]
    if isinstance(value, dict):
        return {k: _native(v) for k, v in value.items()}
    return value
