"""`<stem>.summary.json` of `pairs build`, typed: what went in, what was dropped and why, the pairs per type in
each split, their lengths and (verified, revised) what the strategy found, the files written and the settings.

The fields are declared in the order the file has always listed them; a field a build has nothing for (the
verification of a ranked build, `responses` of pairs re-filtered from preference files) is left out of the file.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pairforge.edits import EditDistances
from pairforge.results import Result


class InputFile(BaseModel):
    """One input file: its path, its records and the shape they were read as."""

    file: str
    records: int
    format: str


class Verdicts(BaseModel):
    """The verified strategy's check of one pair type: its candidate pairs by what the scores said."""

    candidates: int
    agree: int
    contradicted: int
    tied: int
    unscored: int
    disagreement_rate: float  # (contradicted + tied) / the candidates with both scores


class RevisionStats(BaseModel):
    """The revised strategy's revisions: who revised whom, the kept interval, the counts and the edit distances
    of all revisions and of the kept ones."""

    reviser: str
    original: str
    min_edit: float
    max_edit: float
    revisions: int
    no_op: int
    rewrite: int
    kept: int
    edit_distance: dict[str, EditDistances]  # "all", "kept"

    @property
    def median_edit(self) -> float:
        """The median edit distance of all revisions (0 with none)."""
        return self.edit_distance["all"].median or 0.0


class Spread(BaseModel):
    mean: float
    median: float
    p90: float


class LengthStats(BaseModel):
    """Chosen and rejected lengths of a set of pairs, and how often the chosen answer is the longer one."""

    pairs: int
    chosen: Spread
    rejected: Spread
    chosen_longer_rate: float


class Lengths(BaseModel):
    unit: str  # words or tokens
    all: LengthStats
    per_pair_type: dict[str, LengthStats]


class PairsSummary(Result):
    """What `pairs build` did (see the module docstring)."""

    WHAT = "a pairs summary as `pairforge pairs build` writes it"

    inputs: list[InputFile]
    strategy: str
    pairs_in: int | None = None  # preference files in: the pairs read
    responses: int | None = None  # answers in: the answers read
    prompts: int
    sources: dict[str, int] | None = None  # answers in: answers per source
    dropped_answers: dict[str, int]  # reason -> answers
    dropped_prompts: dict[str, int]  # reason -> prompts (or, for a strategy's own reasons, pairs)
    verification: dict[str, Verdicts] | None = None  # verified: per pair type
    revision: RevisionStats | None = None  # revised
    dropped_pairs: dict[str, dict[str, int]]  # reason -> pair type -> pairs
    pairs: dict[str, dict[str, int]]  # split (train, eval and, when kept apart, judge) -> pair type -> pairs
    lengths: Lengths
    outputs: dict[str, str]  # train, eval, judge (those written) and summary -> path
    config: dict[str, Any]  # the pairs section built with

    def total(self, split: str) -> int:
        """The pairs in one split (0 for a split not kept)."""
        return sum(self.pairs.get(split, {}).values())

    @property
    def pair_types(self) -> list[str]:
        """Every pair type in any split, sorted."""
        return sorted(set().union(*self.pairs.values()))
