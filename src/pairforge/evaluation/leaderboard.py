"""leaderboard.json, typed: what `eval` found for every model, and the one place that knows what a leaderboard
ranks by (`Measure`): the similarity judge has no notion of winning, so its models are ranked by their mean
score; every other judge's by the win rate against the reference. `render`, `report`, the CLI and the Python
API ask `Leaderboard.measure` instead of looking at the judge's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from pairforge import schema as S
from pairforge.evaluation.stats import Interval
from pairforge.judging.summary import JudgeTally
from pairforge.results import Part, Result


class Versus(Part):
    """A paired test against another model on the prompts both were judged on: the mean difference, its 95%
    interval, the sign-flip test's p-value and whether it is significant (p < 0.05)."""

    model: str
    difference: float
    low: float
    high: float
    p_value: float
    significant: bool
    prompts: int

    @model_validator(mode="before")
    @classmethod
    def _said_by_the_interval(cls, data: Any) -> Any:
        """Leaderboards written before the test's verdict was stored said it by the interval (0 outside it)."""
        if isinstance(data, dict) and "significant" not in data:
            low, high = data.get("low"), data.get("high")
            if all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high)):
                return {**data, "significant": low > 0 or high < 0}
        return data


class Standing(Part):
    """One model's row, in the order `eval` writes its keys: its mean judge score (or reward), the prompts with
    no usable verdict, and for judges that compare with the reference its win rate, length-controlled win rate
    and per-dataset win rate; the paired tests against the next row and against the baseline."""

    model: str
    prompts: int
    mean_length: float
    reference_length: float
    score: Interval | None = None
    unjudged: int
    win_rate: Interval | None = None
    length_controlled_win_rate: Interval | None = None
    per_dataset: dict[str, float] | None = None
    vs_next: Versus | None = None
    vs_baseline: Versus | None = None
    seeds: list[int] | None = None  # a run trained with several seeds: its row is the mean over them

    @property
    def label(self) -> str:
        """The row's name on a page: a seeded run's says how many seeds its values average."""
        return f"{self.model} ({len(self.seeds)} seeds)" if self.seeds else self.model


class Comparison(Part):
    """`model` against `versus.model`, both rows of the ranking, pooled over prompts and seeds."""

    model: str
    versus: Versus


@dataclass(frozen=True)
class Measure:
    """What a leaderboard ranks by: `key` (the row's interval), `label` (its name on a page), `column` (the
    eval.parquet column its paired tests compare), `chance` (the value of a coin flip, if it has one) and the
    intervals a table of it shows."""

    key: Literal["score", "win_rate"]
    label: str
    column: str
    chance: float | None
    shown: tuple[tuple[str, str], ...]  # (row field, header): the intervals a leaderboard table shows

    def of(self, row: Standing) -> Interval | None:
        """The row's value with its interval (None: the judge gave it no usable verdict)."""
        return getattr(row, self.key)


_SCORE = Measure("score", "score", S.SCORE, None, (("score", "similarity [95%]"),))
_WIN_RATE = Measure("win_rate", "win rate", "verdict", 0.5, (("win_rate", "win rate [95%]"), (
    "length_controlled_win_rate", "LC win rate [95%]"), ("score", "mean score")))


def measure_of(judge: str) -> Measure:
    """The similarity judge measures closeness to the reference, not a win over it: its models get a score."""
    return _SCORE if judge == "similarity" else _WIN_RATE


class Leaderboard(Result):
    """leaderboard.json of `eval`: the judge, the prompts, the reference, one `Standing` per model (best first),
    what judging did (`judge_summary`) and the settings it ran with (`config`, for the report's reproduce
    section)."""

    WHAT = "a JSON object with 'judge', 'prompts', 'reference' and 'models' as `pairforge eval` writes it"
    judge: str
    prompts: int
    reference: str
    models: list[Standing]
    comparisons: list[Comparison] | None = None  # with seeded runs: every two ranked rows, the upper one first
    judge_summary: JudgeTally = Field(default_factory=JudgeTally)  # empty in hand-made files
    config: dict[str, Any] | None = None

    @property
    def measure(self) -> Measure:
        return measure_of(self.judge)

    @property
    def baseline(self) -> str | None:
        """The model every other was tested against, when there was one."""
        return next((row.vs_baseline.model for row in self.models if row.vs_baseline), None)

    def to_polars(self) -> pl.DataFrame:
        """One row per model, best first: its measure (value, low, high), the difference to the baseline with its
        interval, p-value and significance (null for the baseline itself, or with no baseline), and its counts."""
        rows = []
        for row in self.models:
            value, versus = self.measure.of(row), row.vs_baseline
            rows.append({"model": row.model, "value": value and value.value, "low": value and value.low,
                         "high": value and value.high, "baseline": versus and versus.model,
                         "difference": versus and versus.difference, "difference_low": versus and versus.low,
                         "difference_high": versus and versus.high, "p_value": versus and versus.p_value,
                         "significant": versus and versus.significant, "prompts": row.prompts,
                         "unjudged": row.unjudged, "mean_length": row.mean_length})
        schema = {"model": pl.String, "value": pl.Float64, "low": pl.Float64, "high": pl.Float64,
                  "baseline": pl.String, "difference": pl.Float64, "difference_low": pl.Float64,
                  "difference_high": pl.Float64, "p_value": pl.Float64, "significant": pl.Boolean,
                  "prompts": pl.Int64, "unjudged": pl.Int64, "mean_length": pl.Float64}
        return pl.DataFrame(rows, schema=schema)
