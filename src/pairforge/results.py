"""The typed results of the stages: each JSON file a stage writes (a leaderboard, a ranking, a summary) is one
pydantic model, written by `Result.write` and read back by `Result.read` — by the CLI, `render`, `report` and the
Python API alike, so a file's shape is described once, here and in the stage that defines it.

Reading checks the whole file: a hand-edited or truncated file is one line naming the file and the field that
was expected (polars-style), never a KeyError deep inside a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from pairforge.errors import InputError
from pairforge.files import read_json_object, write_json


class Result(BaseModel):
    """A stage's JSON output. Subclasses set `WHAT` (what the file holds, for errors) and declare their fields;
    fields left None are not written, so a file holds what its stage found and nothing else."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # newer files may carry more than we read
    WHAT: ClassVar[str] = "a pairforge result"

    def write(self, path: str | Path) -> Path:
        """Write atomically as indented JSON (the format every earlier version wrote)."""
        return write_json(self.to_json(), path)

    def to_json(self) -> dict[str, Any]:
        """The JSON object `write` writes: None fields left out."""
        return self.model_dump(mode="json", exclude_none=True)

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """The result in `path`; one line (file, field, what was expected) when it is not one."""
        return cls.from_json(read_json_object(Path(path), cls.WHAT), where=str(path))

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "") -> Self:
        """The result in an already-parsed JSON object; `where` names it in errors."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InputError(where or cls.WHAT, _first_problem(exc, cls.WHAT)) from None


class Part(BaseModel):
    """A part of a result (a row, an interval, a tally): read as strictly as the result it belongs to."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


def _first_problem(exc: ValidationError, what: str) -> str:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    return f"field '{field}': {error['msg'].removeprefix('Value error, ')} (expected {what})"
