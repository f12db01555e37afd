"""Source strength from judgments: a Bradley-Terry model over sources, with bootstrap intervals.

Each comparison contributes P(a beats b) as fractional wins (a tie or an uncertain judge gives
halves). Strengths are fitted by the MM algorithm (Hunter, 2004) with half a pseudo-win each way per
pair of sources, which keeps an unbeaten source finite. Uncertainty comes from resampling prompts with
replacement: intervals are percentiles of the log-strengths, and P(x stronger than y) is the share of
resamples in which x's strength exceeds y's. An order counts as significant when its two-sided test
(p = 2 (1 - P)) passes Holm's correction over all pairs of sources at 1 - confidence, and the fitted
probability that x beats y is at least `min_win_probability` (a position-biased judge gives verdicts
near 0.5 whose tiny edge can be "significant" without meaning anything). `rank` is those
orders in the `--rank` syntax, so the pairs stage makes pairs only between sources whose order is
established. `StrengthFit` is the fit; `Ranking` is ranking.json, what `rank` writes and every reader reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from pairforge import schema as S
from pairforge.errors import InputError
from pairforge.fields import Field, check_fields
from pairforge.files import Records, read_records
from pairforge.results import Part, Result

_PSEUDO_WINS = 0.5


@dataclass
class StrengthFit:
    """The Bradley-Terry fit: every pair of sources' probabilities, from which `ranking()` keeps what is shown."""

    sources: list[str]  # strongest first
    strength: np.ndarray  # log-strength, mean 0, in `sources` order
    low: np.ndarray
    high: np.ndarray
    stronger: np.ndarray  # [i, j] = P(sources[i] stronger than sources[j]) over resamples
    confidence: float
    min_win_probability: float
    comparisons: int
    prompts: int

    def win_probability(self, i: int, j: int) -> float:
        """Fitted P(sources[i] beats sources[j])."""
        return float(1 / (1 + np.exp(self.strength[j] - self.strength[i])))

    def significant(self, i: int, j: int) -> bool:
        return bool(self._established[i, j] and self.win_probability(i, j) >= self.min_win_probability)

    @cached_property
    def _established(self) -> np.ndarray:
        """[i, j]: sources[i] above sources[j] passes a two-sided bootstrap test, p = 2 * P(not above), under
        Holm's step-down correction over all pairs at level 1 - confidence. (Taking P(above) >= confidence in
        the direction the data favour was a one-sided test per pair: between equally strong sources it declared
        a false order 10% of the time with 2 sources, and at least one in half the data sets with 5.)"""
        k = len(self.sources)
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]  # strongest first: the fitted direction
        p = [min(1.0, 2 * (1 - float(self.stronger[i, j]))) for i, j in pairs]
        established = np.zeros((k, k), dtype=bool)
        for position, n in enumerate(np.argsort(p, kind="stable")):
            if p[n] > (1 - self.confidence) / (len(pairs) - position):
                break
            established[pairs[n]] = True
        return established

    @property
    def rank(self) -> str:
        """The significant orders as a strength order: 'a > b, a > c' ('' when none is significant)."""
        k = len(self.sources)
        return ", ".join(f"{self.sources[i]} > {self.sources[j]}" for i in range(k) for j in range(i + 1, k)
                         if self.significant(i, j))

    def ranking(self) -> Ranking:
        """What ranking.json holds: the order, each source's interval, and each adjacent pair's probabilities."""
        return Ranking(
            rank=self.rank, confidence=self.confidence, min_win_probability=self.min_win_probability,
            comparisons=self.comparisons, prompts=self.prompts,
            sources=[SourceStrength(name=s, strength=float(self.strength[i]), low=float(self.low[i]),
                                    high=float(self.high[i])) for i, s in enumerate(self.sources)],
            adjacent=[Adjacent(stronger=self.sources[i], weaker=self.sources[i + 1],
                               probability=float(self.stronger[i, i + 1]),
                               win_probability=self.win_probability(i, i + 1), significant=self.significant(i, i + 1))
                      for i in range(len(self.sources) - 1)])


class SourceStrength(Part):
    """A source's log-strength (mean 0 over sources) with its bootstrap interval."""

    name: str
    strength: float
    low: float
    high: float


class Adjacent(Part):
    """Two neighbours of the order: P(stronger above weaker) over resamples, the fitted P(stronger beats weaker),
    and whether the order is established (see the module's docstring)."""

    stronger: str
    weaker: str
    probability: float
    win_probability: float
    significant: bool


class DeclaredCheck(Part):
    """Which of the recipe's declared orders 'a > b' the ranking's significant order confirms; orders with a
    source the judge did not judge (its own reference) are not judged (rankings before it said nothing)."""

    declared: str
    confirmed: list[str]
    not_confirmed: list[str]
    not_judged: list[str] = []


class Ranking(Result):
    """ranking.json of `rank`: the significant orders in --rank syntax ('' when none), the sources strongest
    first, their neighbours' probabilities, and, when the recipe declares an order, that order checked."""

    WHAT = "a JSON object with 'rank', 'sources' and 'adjacent' as `pairforge rank` writes it"
    rank: str | None
    confidence: float
    min_win_probability: float
    comparisons: int
    prompts: int
    sources: list[SourceStrength]
    adjacent: list[Adjacent]
    declared_check: DeclaredCheck | None = None


def read_comparisons(judgments: Path, scored: Path) -> tuple[Path, pl.DataFrame]:
    """The judge's comparisons from a run folder: its pairwise verdicts when there are any, else its pointwise
    scores as comparisons; every column checked (a NaN score must not rank above every number)."""
    if judgments.exists():
        records = read_records(judgments)
        check_pairs = [Field(S.PROMPT_ID, "text"), Field("source_a", "text"), Field("source_b", "text"),
                       Field("p_a", "number", required=False)]
        frame = _checked(records, check_pairs)
        outside = frame.select(pl.arg_where((pl.col("p_a") < 0) | (pl.col("p_a") > 1)).first()).item()
        if outside is not None:
            raise InputError(str(judgments), f"expected a probability in [0, 1], found {frame['p_a'][outside]}",
                             row=records.label(outside), field="p_a")
        return judgments, frame
    if scored.exists():
        records = read_records(scored)
        fields = [Field(S.PROMPT_ID, "text"), Field(S.SOURCE, "text"), Field(S.SAMPLE, "int"),
                  Field(S.SCORE, "number", required=False)]
        return scored, comparisons_from_scores(_checked(records, fields))
    raise InputError(str(judgments.parent), f"no {judgments.name} or {scored.name}: run `pairforge judge` first")


def _checked(records: Records, fields: list[Field]) -> pl.DataFrame:
    missing = [f.key for f in fields if f.key not in records.columns]
    if missing:
        raise InputError(str(records.path), f"missing column(s) {', '.join(missing)}: expected the judge's output "
                         f"(found {', '.join(records.columns)})")
    check_fields(records, fields)
    return records.frame if records.frame is not None else pl.DataFrame(records.rows, infer_schema_length=None)


def comparisons_from_scores(scored: pl.DataFrame) -> pl.DataFrame:
    """Pointwise scores as comparisons: per prompt, each two sources' sample-0 answers (win 1, tie 0.5 within
    `schema.SCORE_TIE`, as the evaluation counts them)."""
    rows = scored.filter((pl.col(S.SAMPLE) == 0) & pl.col(S.SCORE).is_not_null()).select(S.PROMPT_ID, S.SOURCE,
                                                                                           S.SCORE)
    pairs = rows.join(rows, on=S.PROMPT_ID, suffix="_b").filter(pl.col(S.SOURCE) < pl.col(f"{S.SOURCE}_b"))
    gap = pl.col(S.SCORE) - pl.col(f"{S.SCORE}_b")
    p_a = pl.when(gap > S.SCORE_TIE).then(1.0).when(gap < -S.SCORE_TIE).then(0.0).otherwise(0.5)
    return pairs.select(S.PROMPT_ID, pl.col(S.SOURCE).alias("source_a"), pl.col(f"{S.SOURCE}_b").alias("source_b"),
                        p_a.alias("p_a"))


def fit(comparisons: pl.DataFrame, bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0,
        min_win_probability: float = 0.55) -> StrengthFit:
    """Bradley-Terry strengths with percentile intervals over `bootstrap` resamples of prompts."""
    usable = comparisons.filter(pl.col("p_a").is_not_null())
    sources = sorted(set(usable["source_a"]) | set(usable["source_b"]))
    if len(sources) < 2 or usable.is_empty():
        raise InputError("rank", "expected comparisons between at least two sources (judge the answers first)")
    index = {s: i for i, s in enumerate(sources)}
    prompt_ids = usable[S.PROMPT_ID].unique(maintain_order=True).to_list()
    row_of = {p: i for i, p in enumerate(prompt_ids)}
    k = len(sources)
    wins = np.zeros((len(prompt_ids), k, k))  # per prompt: wins[p, i, j] = fractional wins of i over j
    for prompt_id, a, b, p in usable.select(S.PROMPT_ID, "source_a", "source_b", "p_a").iter_rows():
        wins[row_of[prompt_id], index[a], index[b]] += p
        wins[row_of[prompt_id], index[b], index[a]] += 1 - p
    compared = (wins.sum(axis=0) + wins.sum(axis=0).T) > 0
    strength = _bradley_terry(wins.sum(axis=0), compared)
    rng = np.random.default_rng(seed)
    draws = np.empty((bootstrap, k))
    for b in range(bootstrap):
        counts = np.bincount(rng.integers(0, len(prompt_ids), len(prompt_ids)), minlength=len(prompt_ids))
        draws[b] = _bradley_terry(np.tensordot(counts, wins, axes=1), compared)
    order = np.argsort(-strength, kind="stable")
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail], axis=0)
    stronger = (draws[:, :, None] > draws[:, None, :]).mean(axis=0)
    return StrengthFit([sources[i] for i in order], strength[order], low[order], high[order],
                   stronger[np.ix_(order, order)], confidence, min_win_probability, usable.height, len(prompt_ids))


def _bradley_terry(wins: np.ndarray, compared: np.ndarray, iterations: int = 500, tol: float = 1e-9) -> np.ndarray:
    """MM updates for log-strengths (mean 0) from a wins matrix, with pseudo-wins between compared sources."""
    w = wins + _PSEUDO_WINS * compared
    games = w + w.T
    pi = np.ones(len(w))
    for _ in range(iterations):
        denominator = (games / (pi[:, None] + pi[None, :])).sum(axis=1)
        updated = w.sum(axis=1) / denominator
        updated /= np.exp(np.log(updated).mean())
        if np.max(np.abs(updated - pi)) < tol:
            pi = updated
            break
        pi = updated
    return np.log(pi)
