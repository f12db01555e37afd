"""judge.summary.json, typed: what judging did (`JudgeTally`, also the `judge_summary` of leaderboard.json) and,
for the `judge` stage, how each source scored (`JudgeSummary`).

Unlike other results, a tally writes exactly the fields its judge set, nulls included: a pairwise judge with
no readable verdict shown first has a null position bias (measured, nothing found), while a pointwise judge
has no position bias at all (no such field); a source with no score has a null mean. A file read and written
again is the same file.
"""

from __future__ import annotations

from typing import Any

from pydantic import model_serializer

from pairforge.requests.usage import Usage
from pairforge.results import Part, Result


class _AsSet(Part):
    @model_serializer(mode="plain")
    def _as_set(self) -> dict[str, Any]:
        """The fields that were set (by the judge, or by the file read), in declaration order, nulls kept."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in self.model_fields_set}


class JudgeTally(_AsSet):
    """What judging did: pointwise judges count cached scores and answers without a reference to compare with;
    the pairwise judge its comparisons (both orders), unreadable verdicts, failed requests and retries, the share
    of wins of the answer shown first (0.5: no position bias) and the verdicts read from log-probs."""

    cached: int | None = None
    without_reference: int | None = None
    comparisons: int | None = None
    unreadable: int | None = None
    failed_requests: int = 0
    retries: int | None = None
    p_first_shown_wins: float | None = None
    verdicts_from_logprobs: int | None = None
    usage: Usage | None = None  # the LLM judge's tokens and cost, its cached verdicts included


class SourceStats(_AsSet):
    """One source's answers, how many got a score, and the scores' mean and standard deviation (null when
    there are too few)."""

    answers: int
    scored: int
    mean: float | None
    std: float | None


class _Judged(Part):
    """The head of judge.summary.json (a base only so the fields come first, in the file's order)."""

    judge: str
    answers: int
    scored: int


class JudgeSummary(Result, JudgeTally, _Judged):
    """judge.summary.json of `judge`: the judge, the answers and how many got a score, its tally, and each
    source's scores (strongest first)."""

    WHAT = "a JSON object with 'judge' and 'per_source' as `pairforge judge` writes it"
    per_source: dict[str, SourceStats]

    @property
    def pairwise(self) -> bool:
        """Whether its scores are win rates (each answer's mean P(beats the others), from comparisons) rather
        than the judge's own scores."""
        return self.comparisons is not None
