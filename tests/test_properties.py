"""Properties over random inputs: no pair ever has chosen == rejected, and every pair's order agrees
with its evidence (declared ranks or scores), whatever the strategy, ties and duplicates."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pairforge.config import PairsConfig
from pairforge.formats import responses_from_files
from pairforge.io import Records
from pairforge.pairs.build import build_pairs
from pairforge.pairs.order import parse_rank

SOURCES = ["s0", "s1", "s2", "s3"]
# few distinct words and case/space variants, so identical and near-identical answers are common
texts = st.lists(st.sampled_from(["yes", "Yes", "no", "maybe", " yes ", "YES  ", "it depends"]), min_size=1,
                 max_size=3).map(" ".join)
answer = st.fixed_dictionaries({
    "prompt": st.sampled_from(["P1", "P2", "P3"]), "source": st.sampled_from(SOURCES), "response": texts,
    "score": st.integers(0, 3).map(float),
})


def normalised(answer: str | list[dict]) -> str:
    text = answer if isinstance(answer, str) else "".join(turn["content"] for turn in answer)  # conversational
    return " ".join(text.lower().split())


def pairs_of(rows: list[dict], **settings_) -> pl.DataFrame:
    responses = responses_from_files([Records(Path("random.jsonl"), rows=rows)])
    result = build_pairs(responses, PairsConfig(**settings_))
    return pl.concat([result.train, result.eval])


def rank_of_present(rows: list[dict], order: list[str]) -> str:
    """The permuted order restricted to sources that answered (--rank must name only those)."""
    present = [s for s in order if any(r["source"] == s for r in rows)]
    assume(len(present) >= 2)
    return " > ".join(present)


def assert_never_identical(pairs: pl.DataFrame) -> None:
    for chosen, rejected in pairs.select("chosen", "rejected").iter_rows():
        assert normalised(chosen) != normalised(rejected)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(answer, min_size=2, max_size=24), order=st.permutations(SOURCES),
       preset=st.sampled_from(["all", "adjacent", "extremes"]))
def test_ranked_pairs_follow_the_declared_order(rows, order, preset):
    rank = rank_of_present(rows, order)
    pairs = pairs_of(rows, rank=rank, pair_types=preset, filters={"near_duplicate": None}, eval_fraction=0.3)
    assert_never_identical(pairs)
    levels = parse_rank(rank).levels
    for chosen_source, rejected_source in pairs.select("chosen_source", "rejected_source").iter_rows():
        assert levels[chosen_source] < levels[rejected_source]
    assert ((pairs["difficulty"] >= 0) & (pairs["difficulty"] < 1)).all()


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(answer, min_size=2, max_size=24), mode=st.sampled_from(["best-worst", "best-random", "all"]),
       min_margin=st.sampled_from([0.0, 1.0, 2.0]))
def test_scored_pairs_follow_the_scores(rows, mode, min_margin):
    pairs = pairs_of(rows, strategy="scored", scored_mode=mode, min_margin=min_margin)
    assert_never_identical(pairs)
    assert (pairs["chosen_score"] > pairs["rejected_score"]).all()
    assert (pairs["margin"] >= max(min_margin, 1.0)).all()  # integer scores: the smallest real gap is 1


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(answer, min_size=2, max_size=24), order=st.permutations(SOURCES))
def test_verified_pairs_follow_both(rows, order):
    rank = rank_of_present(rows, order)
    pairs = pairs_of(rows, rank=rank, strategy="verified")
    assert_never_identical(pairs)
    levels = parse_rank(rank).levels
    for row in pairs.iter_rows(named=True):
        assert levels[row["chosen_source"]] < levels[row["rejected_source"]]
        assert row["chosen_score"] > row["rejected_score"]
