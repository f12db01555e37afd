"""Bradley-Terry source strength: a hand-computed case, recovery of known strengths, significance."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pairforge.judge.ranking import comparisons_from_scores, fit


def comparisons(rows: list[tuple[str, str, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["prompt_id", "source_a", "source_b", "p_a"], orient="row")


def test_two_sources_match_the_closed_form() -> None:
    """a beats b on 30 of 40 prompts: with half a pseudo-win each way, a/b = 30.5/10.5."""
    rows = [(f"p{i}", "a", "b", 1.0 if i < 30 else 0.0) for i in range(40)]
    ranking = fit(comparisons(rows), bootstrap=200)
    assert ranking.sources == ["a", "b"]
    assert ranking.strength[0] - ranking.strength[1] == pytest.approx(math.log(30.5 / 10.5), abs=1e-6)
    assert ranking.rank == "a > b"  # P(a beats b) = 0.74, and a is ahead in practically every resample


def test_known_strengths_are_recovered_and_close_sources_are_not_ordered() -> None:
    rng = np.random.default_rng(0)
    truth = {"gpt-4": 1.5, "chatgpt": 0.5, "chatgpt-0613": 0.47, "davinci": -1.5}
    names = list(truth)
    rows = []
    for prompt in range(400):
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                p = 1 / (1 + math.exp(truth[names[j]] - truth[names[i]]))
                rows.append((f"p{prompt}", names[i], names[j], float(rng.random() < p)))
    ranking = fit(comparisons(rows), bootstrap=300, seed=1)
    assert ranking.sources[0] == "gpt-4" and ranking.sources[-1] == "davinci"
    centred = {n: v - np.mean(list(truth.values())) for n, v in truth.items()}
    for i, name in enumerate(ranking.sources):
        assert ranking.low[i] - 0.1 <= centred[name] <= ranking.high[i] + 0.1
    assert set(ranking.rank.split(", ")) == {"gpt-4 > chatgpt", "gpt-4 > chatgpt-0613", "gpt-4 > davinci",
                                             "chatgpt > davinci", "chatgpt-0613 > davinci"} or \
        set(ranking.rank.split(", ")) == {"gpt-4 > chatgpt-0613", "gpt-4 > chatgpt", "gpt-4 > davinci",
                                          "chatgpt-0613 > davinci", "chatgpt > davinci"}
    middle = ranking.sources.index("gpt-4") + 1
    assert not ranking.significant(middle, middle + 1)  # 0.50 vs 0.47: no established order


def test_a_position_biased_judge_establishes_no_order() -> None:
    """Verdicts hovering at 0.5 (always the first answer, both orders averaged) order nothing."""
    rows = [(f"p{i}", "x", "y", 0.5 + (0.02 if i % 2 else -0.01)) for i in range(200)]
    ranking = fit(comparisons(rows), bootstrap=200)
    assert ranking.rank == ""


def test_scores_become_comparisons_with_ties_as_halves() -> None:
    scored = pl.DataFrame({"prompt_id": ["p", "p", "p", "q", "q"], "source": ["a", "b", "c", "a", "b"],
                           "sample": [0, 0, 0, 0, 0], "score": [2.0, 1.0, 2.0, None, 3.0]})
    got = {(r["source_a"], r["source_b"]): r["p_a"] for r in comparisons_from_scores(scored).to_dicts()}
    assert got == {("a", "b"): 1.0, ("a", "c"): 0.5, ("b", "c"): 0.0}
