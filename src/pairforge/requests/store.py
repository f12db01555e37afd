"""The crash-safe cache of generations and judgments: one SQLite file, one row per finished request.

Every outcome is committed in its own transaction the moment it is known, so `kill -9` at any point
loses only the requests in flight. A row is keyed by its cache key (primary key: never a duplicate);
a success is never overwritten by a later failure; a failure keeps its reason and how often it was
tried, and is replaced by the first success. WAL journaling lets a reader (export, `sqlite3` by hand)
look while a run writes.

A file that is not such a store (garbage bytes, a folder, another program's SQLite file, a `results`
table of another shape, a row whose value is not the JSON its kind writes) is refused with one line that
names the file and how to recover; the store is never rewritten, repaired or removed on the user's behalf.
The same holds for a shard's store (`shards.py`), which the run's store merges in one statement.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairforge.errors import InputError, describe
from pairforge.fields import is_kind
from pairforge.folder_lock import holder
from pairforge.requests.shards import Shard, lock_of, shard_stores

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key      TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,             -- 'generation' | 'judgment' | 'score'
    value    TEXT,                      -- JSON of the result; NULL while only failures are known
    error    TEXT,                      -- the last failure's reason; NULL once it succeeded
    attempts INTEGER NOT NULL DEFAULT 1,
    updated  REAL NOT NULL
)
"""
_COLUMNS = ("key", "kind", "value", "error", "attempts", "updated")
_EXPECTED = f"a pairforge store (SQLite, table results({', '.join(_COLUMNS)}))"
_RECOVER = "move it away to start over (or pass another --out)"
# The key each kind of row must hold and what its value must be (an answer's text, a judge's score); other keys
# are optional when read back.
_REQUIRED: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "score": ("score", lambda v: is_kind(v, (int, float, type(None))), "a number or null")}
_ANSWER = ("text", lambda v: isinstance(v, str), "a string")
# A shard's successes that may not be what `_parsed` reads back, found in SQL before the merge copies them (CASE, not
# AND: json_type on text that is not JSON is an error); `_parsed` then names the first bad one and its shard.
_SUSPECT = """SELECT key, kind, value FROM results WHERE value IS NOT NULL AND NOT CASE WHEN json_valid(value) THEN
    json_type(value) = 'object' AND coalesce(CASE kind WHEN 'score' THEN json_type(value, '$.score') IN
    ('integer', 'real', 'null') ELSE json_type(value, '$.text') = 'text' END, 0) ELSE 0 END LIMIT 20"""


@dataclass(frozen=True)
class Entry:
    value: dict[str, Any] | None
    error: str | None
    attempts: int

    @property
    def ok(self) -> bool:
        return self.value is not None


@contextmanager
def opened(path: Path, shard: Shard | None = None) -> Iterator[Store]:
    """A store for the length of a command. With a `shard`, that shard's own store beside `path` (shards.py), with
    the run's store's answers merged in first, so a shard never asks again what the run already answered; without
    one, the run's store with every finished shard's answers merged in first, so nothing a shard answered is asked
    again. When the command stops on bad input (a model that does not load, a missing file) before anything was
    stored, a store it created is removed again (what it merged in is still where it came from), with the folders
    made for it: a failed check leaves nothing behind."""
    if shard:  # one line for a bad one, nothing written
        merged = [_checked(path, "the run's store", _RECOVER)] if path.exists() else []
    else:
        merged = [_checked(_finished(p), "a shard's store", "move it out of shards/") for p in shard_stores(path)]
    path = shard.store(path) if shard else path
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    created = not path.exists()
    store = Store(path)
    copied = 0
    try:
        for other in merged:
            copied += store.merge(other)
        yield store
    except InputError:
        store.close()
        if created and store.count() == copied:
            for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                file.unlink(missing_ok=True)
            for folder in made:  # innermost first; only those still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    finally:
        store.close()


def _finished(shard_store: Path) -> Path:
    """A shard's store whose shard is not running (its lock free): merging a live shard would ask its remaining
    prompts a second time, and would open a store another machine is writing (SQLite's WAL is for one machine)."""
    running = holder(lock_of(shard_store))
    if running is not None:
        raise InputError(str(shard_store), f"shard {shard_store.stem} is still running ({running}): expected "
                         "finished shards; wait for it to end (or stop it: its answers are kept) and run this again")
    return shard_store


def _checked(path: Path, what: str, recover: str) -> Path:
    """A store to merge (a shard's, or the run's into a shard's) checked to be a store, read-only (another machine
    may be writing it)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as db:
            _check_schema(db, path)
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'results'").fetchone():
                for key, kind, value in db.execute(_SUSPECT):  # named here, not later in the run's store
                    _parsed(path, key, kind, value)
    except sqlite3.DatabaseError as exc:
        raise InputError(str(path), f"expected {_EXPECTED} ({what}), but it cannot be opened ({exc}); "
                         f"{recover}") from None
    return path


class Store:
    """A SQLite file of results by key. Open one per process; it is not shared across threads."""

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            raise InputError(str(path), f"expected {_EXPECTED}, found a folder; {_RECOVER}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        try:
            _check_schema(self.db, path)  # before anything is written to it
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
            self.db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise InputError(str(path), f"expected {_EXPECTED}, but it cannot be opened ({exc}); {_RECOVER}") from None
        except InputError:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def count(self) -> int:
        """The rows in the file (read again after `close`)."""
        with contextlib.closing(sqlite3.connect(str(self.path))) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def put(self, key: str, kind: str, value: dict[str, Any]) -> None:
        """Record a success (replaces an earlier failure; keeps an earlier success: the first one wins)."""
        self.db.execute(
            "INSERT INTO results (key, kind, value, error, updated) VALUES (?, ?, ?, NULL, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, error = NULL, attempts = attempts + 1, "
            "updated = excluded.updated WHERE results.value IS NULL",
            (key, kind, json.dumps(value, ensure_ascii=False), time.time()))

    def put_failure(self, key: str, kind: str, reason: str) -> None:
        """Record a failure with its reason; never touches a success."""
        self.db.execute(
            "INSERT INTO results (key, kind, value, error, updated) VALUES (?, ?, NULL, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET error = excluded.error, attempts = attempts + 1, "
            "updated = excluded.updated WHERE results.value IS NULL",
            (key, kind, reason, time.time()))

    def merge(self, other: Path) -> int:
        """Copy another store's successes (a shard's) into this one, as `put` would, in one statement: a success
        here stays (the first one wins), a failure here is replaced; the other's failures are not copied (this run
        asks them itself). Returns how many answers came in."""
        self.db.execute("ATTACH DATABASE ? AS other", (str(other),))
        try:
            if not self.db.execute("SELECT 1 FROM other.sqlite_master WHERE name = 'results'").fetchone():
                return 0  # an empty file: a shard that stored nothing yet
            return self.db.execute(
                "INSERT INTO results (key, kind, value, error, attempts, updated) "
                "SELECT key, kind, value, NULL, attempts, updated FROM other.results WHERE value IS NOT NULL "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, error = NULL, "
                "attempts = results.attempts + excluded.attempts, updated = excluded.updated "
                "WHERE results.value IS NULL").rowcount
        finally:
            self.db.execute("DETACH DATABASE other")

    def get(self, keys: Iterable[str]) -> dict[str, Entry]:
        """The entries known for these keys (absent keys are simply missing)."""
        return _entries(self.db, self.path, list(keys))


def _entries(db: sqlite3.Connection, path: Path, keys: list[str]) -> dict[str, Entry]:
    """The rows of these keys in the store `db` (the file `path`)."""
    found: dict[str, Entry] = {}
    for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
        chunk = keys[start:start + 900]
        marks = ",".join("?" * len(chunk))
        for key, kind, value, error, attempts in db.execute(
                f"SELECT key, kind, value, error, attempts FROM results WHERE key IN ({marks})", chunk):
            found[key] = Entry(_parsed(path, key, kind, value), error, attempts)
    return found


def _parsed(path: Path, key: str, kind: str, value: str | None) -> dict[str, Any] | None:
    """A row's value read back as the JSON object its kind writes (a hand-edited row would otherwise be a KeyError
    deep in an export)."""
    if value is None:
        return None
    required, valid, what = _REQUIRED.get(kind, _ANSWER)
    expected = f"expected a JSON object with {required!r}"
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, TypeError):
        parsed, found = None, f"found text that is not JSON {str(value)[:40]!r}"
    else:
        found = f"found {describe(parsed)}"
    if isinstance(parsed, dict):
        if required not in parsed:
            found = f"found an object without {required!r} (keys: {', '.join(sorted(parsed)) or 'none'})"
        elif not valid(parsed[required]):
            found = f"found {required!r} that is {describe(parsed[required])} (expected {what})"
        else:
            return parsed
    raise InputError(str(path), f"{expected}, {found}; move the store away to start over, or delete that row",
                     row=f"row key {key}")


def _check_schema(db: sqlite3.Connection, path: Path) -> None:
    """An existing SQLite file is a store only when it has a `results` table of the store's columns, or no tables
    at all (a new file): another program's database is neither changed nor used."""
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if not tables:
        return
    if "results" not in tables:
        raise InputError(str(path), f"expected {_EXPECTED}, found an SQLite file with tables "
                                    f"{', '.join(sorted(tables)[:5])}; {_RECOVER}")
    columns = tuple(row[1] for row in db.execute("PRAGMA table_info(results)"))
    if sorted(columns) != sorted(_COLUMNS):
        raise InputError(str(path), f"expected {_EXPECTED}, found table results({', '.join(columns)}); {_RECOVER}")
