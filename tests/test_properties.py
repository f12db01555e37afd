"""Properties over random inputs: no pair ever has chosen == rejected, and every pair's order agrees
with its evidence (declared ranks or scores), whatever the strategy, ties and duplicates."""

from __future__ import annotations

from collections import Counter
from itertools import product
from pathlib import Path

import polars as pl
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pairforge.config import PairsConfig
from pairforge.files import Records
from pairforge.pairs.build import pair_answers
from pairforge.pairs.order import parse_rank
from pairforge.records import responses_from_files

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
    result = pair_answers(responses, PairsConfig(**settings_))
    return pl.concat([result.train, result.eval])


def rank_of_present(rows: list[dict], order: list[str]) -> str:
    """The permuted order restricted to sources that answered (--rank must name only those)."""
    present = [s for s in order if any(r["source"] == s for r in rows)]
    assume(len(present) >= 2)
    return " > ".join(present)


def assert_never_identical(pairs: pl.DataFrame) -> None:
    for chosen, rejected in pairs.select("chosen", "rejected").iter_rows():
        assert normalised(chosen) != normalised(rejected)


# --- the oracle: which pairs the documented rules allow, computed from the rows themselves ---------------

Answer = tuple[str, str, float]  # source, text, score


def answers_by_prompt(rows: list[dict]) -> dict[str, list[Answer]]:
    found: dict[str, list[Answer]] = {}
    for row in rows:
        found.setdefault(row["prompt"], []).append((row["source"], row["response"], row["score"]))
    return found


def near_duplicate(x: str, y: str, threshold: float = 0.9) -> bool:
    """The filters' definition: about the same length (word counts within the threshold's factor) and about the
    same words (Jaccard similarity of the lowercase word sets >= threshold)."""
    wx, wy = x.lower().split(), y.lower().split()
    if min(len(wx), len(wy)) < threshold * max(len(wx), len(wy)):
        return False
    return len(set(wx) & set(wy)) / len(set(wx) | set(wy)) >= threshold


def usable(chosen: Answer, rejected: Answer, near_duplicates_dropped: bool) -> bool:
    return normalised(chosen[1]) != normalised(rejected[1]) and not (
        near_duplicates_dropped and near_duplicate(chosen[1], rejected[1]))


def pair_key(prompt: str, chosen: Answer, rejected: Answer) -> tuple[str, str, str, str, str]:
    return prompt, chosen[0], rejected[0], chosen[1], rejected[1]


def built(pairs: pl.DataFrame) -> Counter:
    """The built pairs as (prompt, chosen source, rejected source, chosen text, rejected text)."""
    def text(value: str | list[dict]) -> str:
        return value if isinstance(value, str) else value[-1]["content"]

    return Counter((text(r["prompt"]), r["chosen_source"], r["rejected_source"], text(r["chosen"]), text(r["rejected"]))
                   for r in pairs.iter_rows(named=True))


def ranked_pairs(rows: list[dict], rank: str, preset: str, verified: bool = False,
                 near_duplicates_dropped: bool = True) -> Counter:
    """Every answer of a stronger source against every answer of a weaker one, for the pair types the preset
    names; verified keeps those whose scores agree (chosen scored strictly higher)."""
    order = [s.strip() for s in rank.split(">")]
    allowed = {(c, r) for c, r in product(order, order) if order.index(c) < order.index(r) and (
        preset == "all" or preset == "adjacent" and order.index(r) - order.index(c) == 1
        or preset == "extremes" and (c, r) == (order[0], order[-1]))}
    expected: Counter = Counter()
    for prompt, answers in answers_by_prompt(rows).items():
        for chosen, rejected in product(answers, answers):
            if ((chosen[0], rejected[0]) in allowed and usable(chosen, rejected, near_duplicates_dropped)
                    and (not verified or chosen[2] > rejected[2])):
                expected[pair_key(prompt, chosen, rejected)] += 1
    return expected


def scored_candidates(answers: list[Answer], mode: str, min_margin: float) -> list[tuple[Answer, Answer]]:
    """(chosen, rejected) the scored mode may pick: all: any two answers with a real gap; best-worst: a best-scored
    answer against a worst-scored one; best-random: a best-scored one against any scored lower; gap >= min_margin."""
    best, worst = max(a[2] for a in answers), min(a[2] for a in answers)
    return [(c, r) for c, r in product(answers, answers)
            if c[2] - r[2] > 0 and c[2] - r[2] >= min_margin
            and (mode == "all" or c[2] == best and (mode == "best-random" or r[2] == worst))]


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
    assert built(pairs) == ranked_pairs(rows, rank, preset, near_duplicates_dropped=False)  # none missing, none extra


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(answer, min_size=2, max_size=24), mode=st.sampled_from(["best-worst", "best-random", "all"]),
       min_margin=st.sampled_from([0.0, 1.0, 2.0]))
def test_scored_pairs_follow_the_scores(rows, mode, min_margin):
    pairs = pairs_of(rows, strategy="scored", scored_mode=mode, min_margin=min_margin)
    assert_never_identical(pairs)
    assert (pairs["chosen_score"] > pairs["rejected_score"]).all()
    assert (pairs["margin"] >= max(min_margin, 1.0)).all()  # integer scores: the smallest real gap is 1
    got = built(pairs)
    for prompt, answers in answers_by_prompt(rows).items():
        candidates = scored_candidates(answers, mode, min_margin)
        kept = Counter(pair_key(prompt, c, r) for c, r in candidates if usable(c, r, True))
        here = Counter({k: n for k, n in got.items() if k[0] == prompt})
        if mode == "all":  # every usable candidate, each once
            assert here == kept
            continue
        # one pick per prompt: a pair whenever every possible pick is usable, none when no pick is
        assert set(here) <= set(kept) and sum(here.values()) <= 1
        if candidates and all(usable(c, r, True) for c, r in candidates):
            assert sum(here.values()) == 1, (prompt, candidates)


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
    assert built(pairs) == ranked_pairs(rows, rank, "all", verified=True)
