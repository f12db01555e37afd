"""Checked record fields: every value of an input file's field holds the kind expected, or one line names
the file, the row and the field — row by row for JSON (its types vary per row), column-wise for typed
files (Parquet, saved datasets), so a million rows never meet a Python loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import polars as pl

from pairforge import schema as S
from pairforge.errors import InputError, describe
from pairforge.files import Records


@dataclass(frozen=True)
class Field:
    """One expected field: its key in the input, its kind, and whether a row may lack it."""

    key: str
    kind: str  # "text" | "prompt" | "number" | "int"
    required: bool = True


def check_fields(records: Records, fields: list[Field]) -> None:
    """Every row (JSON) or column (Parquet) holds the kind each field expects; one clear line otherwise."""
    if records.frame is not None:
        _check_columns(records, fields)
        return
    for index, row in enumerate(records.rows or []):
        for f in fields:
            _check_value(row.get(f.key), f, records, index)


def checked_frame(records: Records, fields: list[Field]) -> pl.DataFrame:
    """The file's fields as a typed frame, after checking every row (JSON) or column (Parquet)."""
    check_fields(records, fields)
    if records.frame is not None:
        return records.frame.select([f.key for f in fields])
    rows = records.rows or []
    chat = any(isinstance(row.get(f.key), list) for row in rows for f in fields if f.kind == "prompt")
    data = {f.key: [as_chat(row.get(f.key)) if f.kind == "prompt" and chat else row.get(f.key) for row in rows]
            for f in fields}
    kinds = {"text": pl.String, "number": pl.Float64, "int": pl.Int64, "prompt": S.MESSAGES if chat else pl.String}
    return pl.DataFrame(data, schema={f.key: kinds[f.kind] for f in fields})


def _check_value(value: Any, f: Field, records: Records, index: int) -> None:
    def fail(expected: str) -> None:
        found = "nothing (field missing)" if f.key not in (records.rows or [])[index] else describe(value)
        raise InputError(str(records.path), f"expected {expected}, found {found}", row=records.label(index),
                         field=f.key)

    if value is None:
        if f.required:
            fail({"text": "a string", "prompt": "a string or a list of chat messages"}.get(f.kind, "a number"))
        return
    if f.kind == "text" and not isinstance(value, str):
        fail("a string")
    elif f.kind == "prompt" and not (isinstance(value, str) or is_messages(value)):
        fail("a string or a list of {role, content} messages")
    elif f.kind in ("number", "int"):
        wanted = int if f.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            fail("an integer" if f.kind == "int" else "a number")
        if isinstance(value, float) and not math.isfinite(value):
            fail("a finite number")


def _check_columns(records: Records, fields: list[Field]) -> None:
    """Column-wise twin of `_check_value` for typed files: dtype, then the first null or NaN row."""
    frame = records.frame
    assert frame is not None
    for f in fields:
        dtype = frame.schema[f.key]
        ok = {"text": dtype == pl.String, "prompt": dtype == pl.String or dtype == S.MESSAGES,
              "number": dtype.is_numeric(), "int": dtype.is_integer()}[f.kind]
        if not ok:
            raise InputError(str(records.path), f"expected a {f.kind} column, found type {dtype}", field=f.key)
        bad = pl.col(f.key).is_null() if f.required else pl.lit(False)
        if dtype.is_float():
            bad = bad | pl.col(f.key).is_nan() | pl.col(f.key).is_infinite()
        hits = frame.select(pl.arg_where(bad).first()).item()
        if hits is not None:
            value = frame[f.key][hits]
            raise InputError(str(records.path), f"expected a {'finite number' if dtype.is_float() else f.kind}, "
                             f"found {describe(value)}", row=records.label(hits), field=f.key)


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ) and bool(value)


def as_chat(prompt: Any) -> Any:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt] if isinstance(prompt, list) else prompt


def check_shape(path: Path, data: Any, spec: Any, where: str = "", row: str | None = None) -> Any:
    """`data` (a parsed JSON file, or one row of a log) when it has the shape `spec` describes; otherwise the first
    mismatch as one line naming the file, the row and the field. A spec is a type or tuple of types, [spec] for an
    array of spec, or a dict of key -> spec for an object (a key ending in '?' may be absent; '*' is every value).
    Files the project wrote and a user edited are read through it, so a wrong field is never a KeyError later."""
    if isinstance(spec, dict):
        if not isinstance(data, dict):
            keys = [f"'{k}'" for k in spec if not k.endswith("?") and k != "*"]
            wanted = "a JSON object" + (f" with {', '.join(keys)}" if keys and not where else "")
            _mismatch(path, where, row, wanted, data)
        for key, inner in spec.items():
            if key == "*":
                for name, value in data.items():
                    check_shape(path, value, inner, f"{where}.{name}" if where else name, row)
                continue
            name = key.removesuffix("?")
            field = f"{where}.{name}" if where else name
            if name in data:
                check_shape(path, data[name], inner, field, row)
            elif not key.endswith("?"):
                found = ", ".join(sorted(data)[:8]) or "none"
                raise InputError(str(path), f"expected {_expected(inner)}, but the field is missing (fields found: "
                                            f"{found})", row=row, field=field)
    elif isinstance(spec, list):
        if not isinstance(data, list):
            _mismatch(path, where, row, _expected(spec), data)
        for i, item in enumerate(data):
            check_shape(path, item, spec[0], f"{where}[{i}]", row)
    elif not is_kind(data, spec if isinstance(spec, tuple) else (spec,)):
        _mismatch(path, where, row, _expected(spec), data)
    return data


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", type(None): "null",
               dict: "a JSON object"}


def is_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    """isinstance, except that true/false is no number."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def _expected(spec: Any) -> str:
    """What a spec asks for, in words."""
    if isinstance(spec, dict):
        return "a JSON object"
    if isinstance(spec, list):
        return "an array"
    kinds = spec if isinstance(spec, tuple) else (spec,)
    return " or ".join(_KIND_NAMES[k] for k in kinds if not (k is int and float in kinds))


def _mismatch(path: Path, field: str, row: str | None, expected: str, found: Any) -> NoReturn:
    raise InputError(str(path), f"expected {expected}, found {describe(found)}", row=row, field=field or None)
