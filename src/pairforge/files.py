"""Reading and writing record files: JSONL, JSON arrays, Parquet and HF `datasets` saved to disk.

Readers return `Records`: either Python rows (JSON, where types vary row by row and an error must
name the exact line) or a polars frame (Parquet / Arrow, typed by column, read without a Python loop).
What the rows *mean* (long, wide, UltraFeedback, ...) is `records.py`'s job, not this module's.

Writers are atomic: they write a temporary file next to the target and rename it, so a crash or a
bad row never leaves a half-written output, and an existing good file is replaced only by a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.ipc

from pairforge.errors import InputError, describe


@dataclass
class Records:
    """The rows of one input file, with a way to name a row in an error message."""

    path: Path
    rows: list[dict[str, Any]] | None = None  # JSON / JSONL
    frame: pl.DataFrame | None = None  # Parquet / Arrow
    line_numbers: list[int] | None = None  # JSONL: the line of each row

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else self.frame.height  # type: ignore[union-attr]

    def label(self, index: int) -> str:
        """'line 12' for JSONL, 'row 3' otherwise (1-based, as a user counts)."""
        if self.line_numbers is not None:
            return f"line {self.line_numbers[index]}"
        return f"row {index + 1}"

    @property
    def columns(self) -> list[str]:
        """Field names: the frame's columns, or the union of the JSON rows' keys in first-seen order."""
        if self.frame is not None:
            return list(self.frame.columns)
        seen: dict[str, None] = {}
        for row in self.rows or []:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def as_rows(self) -> list[dict[str, Any]]:
        """Python rows, converting a frame when a format needs to walk nested records."""
        return self.rows if self.rows is not None else self.frame.to_dicts()  # type: ignore[union-attr]


def read_records(path: str | Path) -> Records:
    """Read one input file or `datasets.save_to_disk` folder; bad input raises `InputError`."""
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "no such file or folder")
    _refuse_unsupported(path)
    if path.is_dir():
        records = Records(path, frame=_read_saved_dataset(path))
    elif path.suffix == ".parquet":
        records = Records(path, frame=_read_parquet(path))
    else:
        records = _read_json(path)
    if len(records) == 0:
        raise InputError(str(path), "file is empty: expected at least one record")
    return records


SUPPORTED = "JSONL, JSON (an array of objects), Parquet or a saved HF dataset folder"
_UNSUPPORTED = {".csv": "CSV", ".tsv": "TSV", ".xlsx": "Excel", ".xls": "Excel"}


def _refuse_unsupported(path: Path) -> None:
    """A table format pairforge does not read, named by its suffix: said as such, instead of the JSON reader's
    "not valid JSON" on its first line (CSV's quoting and types are too loose to validate row by row)."""
    kind = _UNSUPPORTED.get(path.suffix.lower()) if path.is_file() else None
    if kind is not None:
        raise InputError(str(path), f"{kind} is not a supported input format: expected {SUPPORTED} (convert it "
                         "to Parquet or JSONL first)")


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a corrupt file
        raise InputError(str(path), f"not a readable Parquet file ({_first_line(exc)})") from None


def _read_saved_dataset(path: Path) -> pl.DataFrame:
    """A `Dataset.save_to_disk` folder: Arrow stream files listed in state.json (no `datasets` needed)."""
    state_file = path / "state.json"
    if not state_file.exists():
        raise InputError(str(path), "is a folder but not a saved HF dataset: expected state.json inside "
                         "(a DatasetDict folder? point at one split's folder, e.g. train/)")
    tables = [_read_arrow_stream(path, name) for name in _saved_data_files(path, state_file)]
    try:
        return pl.from_arrow(pa.concat_tables(tables))  # type: ignore[return-value]
    except (pa.ArrowException, pl.exceptions.PolarsError) as exc:  # files of different columns
        raise InputError(str(path), f"the saved dataset's Arrow files cannot be joined ({_first_line(exc)})") from None


_STATE_SHAPE = 'expected state.json as `save_to_disk` writes it: {"_data_files": [{"filename": "....arrow"}, ...]}'


def _saved_data_files(path: Path, state_file: Path) -> list[str]:
    """The Arrow file names state.json lists. A hand-edited or half-copied folder fails here with what was
    expected, instead of a JSONDecodeError / KeyError / TypeError from deep inside the reader."""
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(path), f"state.json cannot be read ({_first_line(exc)}): {_STATE_SHAPE}") from None
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(str(path), f"{_STATE_SHAPE}; found {describe(state)}")
    names = [entry.get("filename") if isinstance(entry, dict) else None for entry in entries]
    bad = next((n for n, name in enumerate(names) if not isinstance(name, str) or not name), None)
    if bad is not None:
        raise InputError(str(path), f"{_STATE_SHAPE}; found {describe(entries[bad])} as _data_files[{bad}]")
    return names  # type: ignore[return-value]


def _read_arrow_stream(path: Path, name: str) -> pa.Table:
    """One Arrow stream file of a saved dataset; missing or not Arrow is said with the folder and the file."""
    file = path / name
    if not file.is_file():
        raise InputError(str(path), f"state.json lists {name}, but there is no such file in the folder (an "
                         "incomplete copy? save the dataset again)")
    try:
        return pyarrow.ipc.open_stream(pa.memory_map(str(file))).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(str(path), f"{name} is not a readable Arrow stream file ({_first_line(exc)})") from None


def read_json_object(path: Path, shape: str) -> dict[str, Any]:
    """A JSON object pairforge wrote (a training run's run.json) that a hand edit or a full disk may have damaged
    since: one line naming the file and `shape` (what was expected, and what to do), never a JSONDecodeError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(path), f"cannot be read ({_first_line(exc)}): expected {shape}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), f"expected {shape}, found {describe(data)}")
    return data


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _read_json(path: Path) -> Records:
    """JSONL (one object per line) or a JSON array of objects, decided by the first character."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(str(path), f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded "
                         "(re-encode the file as UTF-8)", row=f"line {line}") from None
    stripped = text.lstrip()
    if not stripped:
        raise InputError(str(path), "file is empty: expected at least one record")
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(str(path), f"not valid JSON: {exc.msg} (column {exc.colno})",
                             row=f"line {exc.lineno}") from None
        escaped = _SURROGATE_ESCAPE.search(text) is not None
        for index, item in enumerate(items):
            _expect_object(item, path, f"row {index + 1}")
            if escaped:
                _expect_unicode(item, path, f"row {index + 1}")
        return Records(path, rows=items)
    rows, lines = [], []
    for number, line in jsonl_lines(text):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(str(path), f"not valid JSON: {exc.msg} (column {exc.colno})",
                             row=f"line {number}") from None
        _expect_object(item, path, f"line {number}")
        if _SURROGATE_ESCAPE.search(line):
            _expect_unicode(item, path, f"line {number}")
        rows.append(item)
        lines.append(number)
    return Records(path, rows=rows, line_numbers=lines)


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of JSON-lines text. Lines end at "\\n" only (a trailing "\\r" is dropped):
    `str.splitlines` would also split at U+2028, U+0085, \\x0b, \\x0c ... which JSON strings may hold raw
    (polars writes them unescaped), so a file pairforge wrote could not be read back."""
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _expect_object(item: Any, path: Path, row: str) -> None:
    if not isinstance(item, dict):
        raise InputError(str(path), f"expected a JSON object (one record), found {describe(item)}", row=row)


# a JSON escape of a lone UTF-16 surrogate (a high one not followed by a low one, or a low one not after a high one):
# the only way one gets in, since the bytes were valid UTF-8; an emoji's escaped pair is no reason to look closer
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                               r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F]")


def _expect_unicode(item: dict[str, Any], path: Path, row: str) -> None:
    """A lone surrogate ("\\ud800") is valid JSON but not Unicode text: polars, Parquet and every UTF-8 writer
    fail on it deep inside (UnicodeEncodeError), so it is said here with its line and field path."""
    field = _lone_surrogate_at(item, "")
    if field is not None:
        raise InputError(str(path), "not valid Unicode text (a lone surrogate)", row=row, field=field)


def _lone_surrogate_at(value: Any, where: str) -> str | None:
    """The path ('completions[1].response') of the first string in `value` holding a lone surrogate, or None."""
    if isinstance(value, str):
        return None if _is_unicode(value) else (where or "(value)")
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = key if _is_unicode(key) else key.encode("utf-8", "backslashreplace").decode("utf-8")
            if name != key:
                return f"{where}.{name}" if where else name
            items.append((f"{where}.{key}" if where else key, item))
    elif isinstance(value, list):
        items = [(f"{where}[{n}]", item) for n, item in enumerate(value)]
    return next((hit for name, item in items if (hit := _lone_surrogate_at(item, name)) is not None), None)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def write_table(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write Parquet (.parquet) or JSONL (.jsonl / .json lines) atomically; returns the path."""
    path = Path(path)
    writers: dict[str, Callable[[pl.DataFrame, Path], None]] = {
        ".parquet": lambda f, p: f.write_parquet(p, compression="zstd", compression_level=1),
        ".jsonl": lambda f, p: f.write_ndjson(p),
    }
    if path.suffix not in writers:
        raise InputError(str(path), "unknown output type: expected a name ending in .parquet or .jsonl")
    write_atomically(path, lambda tmp: writers[path.suffix](frame, tmp))
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """Write a JSON document atomically (summaries, manifests)."""
    path = Path(path)
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n"))
    return path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write` on a temporary sibling of `path`, then rename it over `path` (POSIX-atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    """Content hash of a file (a folder: of its files' names and contents); '-' when it does not exist yet."""
    if not path.exists():
        return "-"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_output(path: Path, kind: Literal["file", "folder"], option: str, inputs: Sequence[Path] = ()) -> None:
    """Before any work: `path` can be written as a `kind` ("file" | "folder") and is none of `inputs`, so a
    command never fails at its end or overwrites what it reads. Nothing is created here."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise InputError(option, f"{path} is a folder: expected a file path")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise InputError(option, f"{path} is a file: expected a folder")
    for given in inputs:
        if Path(given).exists() and path.exists() and path.resolve() == Path(given).resolve():
            raise InputError(option, f"{path} is also an input: it would be overwritten (choose another output)")
    existing = path if kind == "folder" and path.exists() else path.parent  # where new files are made
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(option, f"{path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK) or (path.is_file() and not os.access(path, os.W_OK)):
        raise InputError(option, f"{path} cannot be written: no permission to write in {existing}")


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines log that is only ever appended to (see `numbered_log`)."""
    return [row for _, row in numbered_log(path)]


def numbered_log(path: Path) -> list[tuple[int, Any]]:
    """(line number, row) of a JSON-lines log that is only ever appended to. A crash mid-append can leave a torn
    last line: it is left out (the next resume rewrites the file without it); a broken line before the last is
    damage, said with its line number."""
    lines = [(n, line) for n, line in jsonl_lines(Path(path).read_text(encoding="utf-8")) if line.strip()]
    rows = []
    for position, (number, line) in enumerate(lines):
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            if position == len(lines) - 1:
                break
            raise InputError(str(path), f"not valid JSON: {exc.msg} (a damaged log)", row=f"line {number}") from None
    return rows


def folder_stamp(folder: Path) -> str:
    """Cheap identity of the state of a folder's files (names, sizes, modification and change times): changes
    when any is rewritten, also by a copy that keeps the old modification time (the change time cannot be set)."""
    stats = [(str(f.relative_to(folder)), f.stat()) for f in folder.rglob("*") if f.is_file()]
    files = sorted((name, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for name, s in stats)
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
