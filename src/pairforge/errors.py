"""The one error type a user should ever see: bad input, said in one line with where and what.

The CLI turns it into a single line on stderr and exit code 2 (never a traceback). The message
follows polars' habit: where (file, row or line, field), what was expected, what was found.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


@dataclass
class InputError(Exception):
    """Bad input. `location` is a file, option or recipe key; `row` is "line 7" or "row 3"."""

    location: str
    problem: str
    row: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.location
        if self.row:
            where += f" {self.row}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.problem}"


def unanswered(command: str, failed: int, detail: str = "") -> InputError:
    """Failed requests stop their stage (it is not finished, so the next run runs it again); they wait in the store
    until asked again with --retry-failed."""
    return InputError(command, f"{failed} requests failed{detail}; they are kept in the store: run again with "
                      "`pairforge run RECIPE --retry-failed` (or the stage's own command with --retry-failed)")


def describe(value: object) -> str:
    """How a found value is named in an error: its JSON type and a short preview."""
    kind = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)
    preview = repr(value)
    return f"{kind} {preview[:40]}{'...' if len(preview) > 40 else ''}" if value is not None else "null"
