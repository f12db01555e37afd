"""One stage of `pairforge run` as a unit: the files it reads, its settings, the files it writes, how it runs and
how long it should take, declared together in its package's `stage.py`, so the pipeline only loops over units
and a stage's fingerprint covers exactly what the stage reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pairforge.errors import InputError, unanswered
from pairforge.files import file_digest
from pairforge.fingerprints import model_content
from pairforge.layout import RunDir
from pairforge.recipe import Recipe
from pairforge.results import Result


class StageMarker(Result):
    """stages/<stage>.json: the fingerprint a stage last finished with, what it wrote and how long it took. A stage
    whose marker is missing, damaged or names an output that is gone is not finished: it runs again."""

    WHAT = "a stage marker as `pairforge run` writes it"

    fingerprint: str
    outputs: list[str]
    seconds: float

    @classmethod
    def found(cls, path: Path) -> StageMarker | None:
        """The marker in `path`, or None where there is none that can be read (a hand edit, a full disk)."""
        try:
            return cls.read(path) if path.is_file() else None
        except InputError:
            return None

    def finished(self, fingerprint: str) -> bool:
        """Finished with these settings and inputs, its outputs still there."""
        return self.fingerprint == fingerprint and all(Path(p).exists() for p in self.outputs)


@dataclass
class StageRun:
    """What `pairforge run` did with one stage: ran it (in `seconds`, writing `outputs`) or skipped it."""

    stage: str
    status: Literal["ran", "skipped"]
    seconds: float | None = None
    outputs: list[str] = field(default_factory=list)


@dataclass
class StageUnit:
    name: str
    what: str
    size: str
    estimate_s: float | None
    produce: Callable[[], list[Path]]  # does the stage's work: the files it wrote
    inputs: list[Path] = field(default_factory=list)  # the files it reads: an edited one makes it stale
    settings: Any = None  # its section of the recipe, as the fingerprint sees it
    outputs: list[Path] = field(default_factory=list)  # what it writes (the folders they go in are checked first)
    work_dir: Path | None = None  # partial work (checkpoints) a rerun of the same settings resumes from
    # the same work with `work_dir` started over: it deletes the earlier work itself once its inputs are checked,
    # so a bad edit of a finished run's settings costs nothing
    produce_fresh: Callable[[], list[Path]] | None = None
    marker: Path | None = None  # the record of its last finished run (`RunDir.marker`)
    models: list[str] = field(default_factory=list)  # models it reads: a local folder counts by its content

    def __post_init__(self) -> None:
        assert (self.work_dir is None) == (self.produce_fresh is None), "a stage with a work folder can start it over"

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for path in self.inputs:
            digest.update(file_digest(path).encode())
        for model in self.models:  # read when the stage is reached: a model an earlier stage trains exists by then
            content = model_content(model)
            if content is not None:
                digest.update(f"{model}={content}".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Round:
    """What every unit of one round is given: the recipe as written (`whole`), this round's recipe ("@round"
    resolved, `rounds.round_recipe`) and folder, and what earlier rounds leave it."""

    whole: Recipe
    recipe: Recipe
    k: int
    folder: RunDir
    n_prompts: int
    retry_failed: bool
    previous: list[Path]  # the marker of the previous round's policy training (none in round 1)
    pair_counts: tuple[int, int]  # (pair types, most pairs per prompt) the pairs stage makes: runs are sized by it

    @property
    def answers(self) -> int:
        """Answers per source."""
        return self.n_prompts * self.recipe.samples_per_source


def all_answered(failed: int, command: str) -> None:
    """A stage with failed requests is not finished: it stops before the pipeline records it (so the next run, and
    --retry-failed, runs it again)."""
    if failed:
        raise unanswered(command, failed)
