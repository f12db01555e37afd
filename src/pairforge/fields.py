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
    kind: str  # "text" | "prompt" | "answer" | "number" | "int" (prompt / answer: a string or chat messages)
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
    chat_or_text = S.MESSAGES if chat else pl.String
    kinds = {"text": pl.String, "number": pl.Float64, "int": pl.Int64, "prompt": chat_or_text, "answer": chat_or_text}
    return pl.DataFrame(data, schema={f.key: kinds[f.kind] for f in fields})


def check_same_shape(records: Records, chat_keys: tuple[str, ...] = ()) -> None:
    """Every JSON row holds each field in the shape of the first row that has it: a list, an object, or a plain
    value. A column is one type for polars (and TRL reads a file as conversational or as plain text, not both),
    so a mix would fail deep in frame building; said here with the first row that differs. `chat_keys`: fields
    whose lists are chat messages, named so in the message. Typed files (Parquet) cannot mix."""
    rows = records.rows
    if rows is None:
        return
    for key in records.columns:
        first: tuple[int, str, Any] | None = None
        for index, row in enumerate(rows):
            value = row.get(key)
            if value is None:
                continue
            shape = "list" if isinstance(value, list) else "object" if isinstance(value, dict) else "plain"
            if first is None:
                first = (index, shape, value)
            elif shape != first[1]:
                raise InputError(str(records.path), f"expected {_shape_name(first[2], key in chat_keys)} like "
                                 f"{records.label(first[0])} (every record in one shape), found {describe(value)}",
                                 row=records.label(index), field=key)


def _shape_name(value: Any, chat: bool) -> str:
    if isinstance(value, list):
        return "a list of chat messages (conversational)" if chat else "a list"
    if isinstance(value, dict):
        return "an object"
    return "a string (plain text)" if isinstance(value, str) else "a plain value (a string or a number)"


def _check_value(value: Any, f: Field, records: Records, index: int) -> None:
    def fail(expected: str) -> None:
        found = "nothing (field missing)" if f.key not in (records.rows or [])[index] else describe(value)
        raise InputError(str(records.path), f"expected {expected}, found {found}", row=records.label(index),
                         field=f.key)

    if value is None:
        if f.required:
            fail({"text": "a string", "prompt": "a string or a list of chat messages",
                  "answer": "a string or a list of chat messages"}.get(f.kind, "a number"))
        return
    if f.kind == "text" and not isinstance(value, str):
        fail("a string")
    elif f.kind in ("prompt", "answer") and not (isinstance(value, str) or is_messages(value)):
        fail("a string or a list of {role, content} messages")
    elif f.kind in ("prompt", "answer") and isinstance(value, list):
        _refuse_bad_turns(value, f, records, index)
    elif f.kind in ("number", "int"):
        wanted = int if f.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            fail("an integer" if f.kind == "int" else "a number")
        if not is_finite(value):
            fail("a finite number")
        if f.kind == "int" and not INT64_MIN <= value <= INT64_MAX:
            fail(f"an integer in range {INT64_MIN}..{INT64_MAX} (a 64-bit integer)")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what a polars Int64 column holds


def is_finite(value: float) -> bool:
    """A JSON number is finite as a float: not NaN or infinite, and not an integer too large for a float
    (json reads 1e400 written as digits as a Python int, on which `float()` raises OverflowError)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_columns(records: Records, fields: list[Field]) -> None:
    """Column-wise twin of `_check_value` for typed files: dtype, then the first null or NaN row."""
    frame = records.frame
    assert frame is not None
    for f in fields:
        dtype = frame.schema[f.key]
        chat_or_text = dtype == pl.String or dtype == S.MESSAGES
        ok = {"text": dtype == pl.String, "prompt": chat_or_text, "answer": chat_or_text,
              "number": dtype.is_numeric(), "int": dtype.is_integer()}[f.kind]
        if not ok:
            raise InputError(str(records.path), f"expected a {_COLUMN_KINDS.get(f.kind, f.kind)} column, found type "
                             f"{dtype}", field=f.key)
        bad = pl.col(f.key).is_null() if f.required else pl.lit(False)
        if dtype.is_float():
            bad = bad | pl.col(f.key).is_nan() | pl.col(f.key).is_infinite()
        hits = frame.select(pl.arg_where(bad).first()).item()
        if hits is not None:
            value = frame[f.key][hits]
            raise InputError(str(records.path), f"expected {'a finite number' if dtype.is_float() else _a(f.kind)}, "
                             f"found {describe(value)}", row=records.label(hits), field=f.key)
        if dtype == S.MESSAGES and f.kind in ("prompt", "answer"):
            hits = frame.select(pl.arg_where(_bad_turns(pl.col(f.key), f.kind)).first()).item()
            if hits is not None:
                _refuse_bad_turns(frame[f.key][hits].to_list(), f, records, hits)


CHAT_ROLES = ("system", "user", "assistant")  # what a chat template is given; pairforge has no tool turns


def turn_problem(messages: list[dict[str, Any]], kind: str) -> tuple[str, str] | None:
    """(where, problem) for chat messages that a chat template would render wrongly or refuse: a role other than
    system / user / assistant, a content that is no string (a typed file's null: the template would fail on it
    mid-generation), a prompt that does not end with the user's turn (the model answers that turn), an answer
    with a turn that is not the assistant's. `where` is '[n].role' or '[n].content'; None when they are fine."""
    if not messages:
        return "", "expected a string or a list of chat messages, found an empty list"
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"[{n}]", f"expected a {{role, content}} message, found {describe(message)}"
        if not isinstance(message.get("content"), str):
            return f"[{n}].content", f"expected a string, found {describe(message.get('content'))}"
        role = message.get("role")
        if role not in CHAT_ROLES:
            return f"[{n}].role", f"expected a role system, user or assistant, found {describe(role)}"
        if kind == "answer" and role != "assistant":
            return f"[{n}].role", f"expected role assistant (an answer's turns are the model's), found {describe(role)}"
    if kind == "prompt" and messages and messages[-1].get("role") != "user":
        return (f"[{len(messages) - 1}].role", "expected role user: a prompt ends with the user's turn (the one the "
                f"model answers), found {describe(messages[-1].get('role'))}")
    return None


def _refuse_bad_turns(messages: list[dict[str, Any]], f: Field, records: Records, index: int) -> None:
    problem = turn_problem(messages, f.kind)
    if problem is not None:
        raise InputError(str(records.path), problem[1], row=records.label(index), field=f.key + problem[0])


def _bad_turns(messages: pl.Expr, kind: str) -> pl.Expr:
    """Column-wise twin of `turn_problem`: true for rows it would refuse (and for empty message lists)."""
    roles = messages.list.eval(pl.element().struct.field("role"))
    bad = roles.list.eval(~pl.element().is_in(CHAT_ROLES).fill_null(False)).list.any() | (roles.list.len() == 0)
    bad = bad | messages.list.eval(pl.element().struct.field("content").is_null()).list.any()
    if kind == "answer":
        bad = bad | roles.list.eval(pl.element() != "assistant").list.any()
    else:
        bad = bad | (roles.list.last() != "user")
    return bad.fill_null(False)


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


def _a(word: str) -> str:
    """'an answer', 'a prompt'."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


_COLUMN_KINDS = {"answer": "text or chat-messages (list of {role, content})", "prompt": "text or chat-messages "
                 "(list of {role, content})", "int": "integer"}
