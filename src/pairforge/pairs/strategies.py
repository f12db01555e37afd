"""Pairing strategies: which two answers to the same prompt become (chosen, rejected), and why.

Every strategy returns candidate pairs with the same columns (see `SIDE_COLUMNS`, `pair_type`,
`margin`), built with joins, not a loop over prompts:
  ranked    the paper's: a declared strength order; the stronger source's answer is chosen. One pair
            per pair type and prompt (every sample combination when sources have several samples).
  scored    by the answers' scores (judge or input): best-vs-worst, best-vs-random (seeded, drawn among
            the answers at least min_margin below the best), or all pairs; every pair has a gap >=
            min_margin. Equal scores (within `schema.SCORE_TIE`) never make a pair, and are counted.
  verified  ranked, kept only where the scores agree (chosen score > rejected score); the rest is
            reported per pair type as contradicted or tied.
  revised   a reviser's minimal edit of an answer against that answer (same prompt and sample), pair type
            `revision`, kept when the token-level edit distance (`edits.py`) is in (min_edit, max_edit];
            no-ops and rewrites are counted.
`margin` is the evidence's size: the strength-level gap (ranked, verified), the score gap (scored) or the
edit distance (revised: a small edit is a hard pair, as a small strength gap is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from pairforge import schema as S
from pairforge.config import RevisionConfig
from pairforge.edits import distribution, edit_distance
from pairforge.pairs.filters import ANSWER, LENGTH, N_WORDS, NORM
from pairforge.pairs.order import StrengthOrder
from pairforge.pairs.summary import RevisionStats

SIDE_COLUMNS = (S.SOURCE, S.SAMPLE, S.RESPONSE, S.SCORE, LENGTH, NORM, N_WORDS, ANSWER)  # the last ones if present


@dataclass
class Candidates:
    """Candidate pairs plus what the strategy itself set aside (counted in the summary)."""

    pairs: pl.DataFrame
    span: float  # the largest margin possible in this input (for difficulty)
    set_aside: dict[str, int] = field(default_factory=dict)  # "prompts with ...", "pairs with ..." -> count
    verification: dict[str, dict[str, float]] = field(default_factory=dict)
    revision: RevisionStats | None = None  # revised: counts and edit-distance distributions


def side(responses: pl.DataFrame, role: str) -> pl.DataFrame:
    """Answers with columns renamed for one side of a pair: chosen, chosen_source, chosen_score, ..."""
    columns = [c for c in SIDE_COLUMNS if c in responses.columns]
    names = {c: role if c == S.RESPONSE else f"{role}_{c}" for c in columns}
    return responses.select(S.PROMPT_ID, *columns).rename(names)


def _with_type(pairs: pl.DataFrame) -> pl.DataFrame:
    return pairs.with_columns(pl.concat_str("chosen_source", pl.lit(">"), "rejected_source").alias("pair_type"))


def ranked(responses: pl.DataFrame, order: StrengthOrder, pair_types: list[tuple[str, str]]) -> Candidates:
    types = pl.DataFrame(
        {"chosen_source": [c for c, _ in pair_types], "rejected_source": [r for _, r in pair_types],
         "margin": [float(order.gap(c, r)) for c, r in pair_types]},
        schema={"chosen_source": pl.String, "rejected_source": pl.String, "margin": pl.Float64},
    )
    pairs = (
        side(responses, "chosen").join(types, on="chosen_source", maintain_order="left")
        .join(side(responses, "rejected"), on=[S.PROMPT_ID, "rejected_source"], maintain_order="left")
    )
    return Candidates(_with_type(pairs), span=float(order.span))


def verified(responses: pl.DataFrame, order: StrengthOrder, pair_types: list[tuple[str, str]]) -> Candidates:
    candidates = ranked(responses, order, pair_types)
    pairs = candidates.pairs
    verdict = (
        pl.when(pl.col("chosen_score").is_null() | pl.col("rejected_score").is_null()).then(pl.lit("unscored"))
        .when(pl.col("chosen_score") - pl.col("rejected_score") > S.SCORE_TIE).then(pl.lit("agree"))
        .when((pl.col("chosen_score") - pl.col("rejected_score")).abs() <= S.SCORE_TIE).then(pl.lit("tied"))
        .otherwise(pl.lit("contradicted"))
    )
    pairs = pairs.with_columns(verdict.alias("_verdict"))
    counts = pairs.group_by("pair_type", "_verdict").len()
    report: dict[str, dict[str, float]] = {}
    for pair_type, verdict_name, n in counts.sort("pair_type").iter_rows():
        report.setdefault(pair_type, {"candidates": 0, "agree": 0, "contradicted": 0, "tied": 0, "unscored": 0})
        report[pair_type][verdict_name] += n
        report[pair_type]["candidates"] += n
    for stats in report.values():
        judged = stats["candidates"] - stats["unscored"]
        stats["disagreement_rate"] = round((stats["contradicted"] + stats["tied"]) / judged, 4) if judged else 0.0
    candidates.pairs = pairs.filter(pl.col("_verdict") == "agree").drop("_verdict")
    candidates.verification = report
    return candidates


def scored(responses: pl.DataFrame, mode: str, min_margin: float, seed: int) -> Candidates:
    with_score = responses.filter(pl.col(S.SCORE).is_not_null())
    per_prompt = with_score.group_by(S.PROMPT_ID).agg(
        pl.len().alias("n"), (pl.col(S.SCORE).max() - pl.col(S.SCORE).min()).alias("gap")
    )
    tied = (pl.col("n") >= 2) & (pl.col("gap") <= S.SCORE_TIE)
    set_aside = {"prompts with fewer than 2 scored answers": per_prompt.filter(pl.col("n") < 2).height,
                 "prompts whose scores are all tied": per_prompt.filter(tied).height}
    scores = with_score[S.SCORE]
    span = float(scores.max() - scores.min()) if len(scores) else 1.0  # type: ignore[operator]
    # deterministic order so that "best" among equal scores and the seeded draw do not depend on input order
    ranked_answers = with_score.sort([S.PROMPT_ID, S.SCORE, S.SOURCE, S.SAMPLE], descending=[False, True, False, False])
    lost = 0
    if mode == "all":
        pairs = side(ranked_answers, "chosen").join(side(ranked_answers, "rejected"), on=S.PROMPT_ID,
                                                    maintain_order="left")
        pairs = pairs.with_columns((pl.col("chosen_score") - pl.col("rejected_score")).alias("margin"))
        set_aside[f"pairs with tied scores (within {S.SCORE_TIE})"] = _tied_pairs(pairs, per_prompt.filter(~tied))
    else:
        best = side(ranked_answers.group_by(S.PROMPT_ID, maintain_order=True).first(), "chosen")
        if mode == "best-worst":
            rest = ranked_answers.group_by(S.PROMPT_ID, maintain_order=True).last()
        else:  # best-random: a seeded draw among the answers far enough below the best to make a pair
            draw = np.random.default_rng(seed).random(ranked_answers.height)
            gap = pl.col("chosen_score") - pl.col(S.SCORE)
            lower = ranked_answers.with_columns(pl.Series("_draw", draw)).join(
                best.select(S.PROMPT_ID, "chosen_score"), on=S.PROMPT_ID
            ).filter((gap > S.SCORE_TIE) & (gap >= min_margin))
            rest = lower.sort("_draw").group_by(S.PROMPT_ID).first()
        pairs = best.join(side(rest, "rejected"), on=S.PROMPT_ID, maintain_order="left")
        pairs = pairs.with_columns((pl.col("chosen_score") - pl.col("rejected_score")).alias("margin"))
        if mode == "best-random":  # a prompt without an answer min_margin below the best lost its one pair here
            lost = per_prompt.filter(~tied & (pl.col("n") >= 2)).height - pairs.height
    pairs = pairs.filter(pl.col("margin") > S.SCORE_TIE)
    if min_margin > 0:
        below = pairs.filter(pl.col("margin") < min_margin).height
        set_aside[f"pairs with a score gap below {min_margin}"] = lost + below
        pairs = pairs.filter(pl.col("margin") >= min_margin)
    return Candidates(_with_type(pairs), span=span or 1.0, set_aside=set_aside)


def _tied_pairs(pairs: pl.DataFrame, untied_prompts: pl.DataFrame) -> int:
    """Tied pairs of two different answers, each counted once, in prompts not already counted as all tied."""
    tie = (pl.col("margin").abs() <= S.SCORE_TIE) & (pl.col(f"chosen_{ANSWER}") < pl.col(f"rejected_{ANSWER}"))
    return pairs.filter(tie & pl.col(S.PROMPT_ID).is_in(untied_prompts[S.PROMPT_ID].implode())).height


def revised(responses: pl.DataFrame, cfg: RevisionConfig) -> Candidates:
    """Each revision (source `cfg.revision_source`) against the original answer it revised (same prompt and
    sample); the edit distance decides: no-op (<= min_edit) and rewrite (> max_edit) pairs are set aside."""
    def answers_of(source: str, role: str) -> pl.DataFrame:
        rows = responses.filter(pl.col(S.SOURCE) == source)
        return side(rows, role).with_columns(pl.col(f"{role}_{S.SAMPLE}").alias("_sample"))

    revisions = answers_of(cfg.revision_source, "chosen")
    pairs = revisions.join(answers_of(cfg.original, "rejected"), on=[S.PROMPT_ID, "_sample"],
                           maintain_order="left").drop("_sample")
    distances = [edit_distance(o, r) for o, r in zip(pairs["rejected"], pairs["chosen"], strict=True)]
    pairs = pairs.with_columns(pl.Series("edit_distance", distances, pl.Float64), pl.lit("revision").alias("pair_type"))
    no_op, rewrite = pl.col("edit_distance") <= cfg.min_edit, pl.col("edit_distance") > cfg.max_edit
    kept = pairs.filter(~no_op & ~rewrite).with_columns(pl.col("edit_distance").alias("margin"))
    counts = {"revisions": pairs.height, "no_op": pairs.filter(no_op).height,
              "rewrite": pairs.filter(rewrite).height, "kept": kept.height}
    set_aside = {f"pairs with a no-op revision (edit distance <= {cfg.min_edit})": counts["no_op"],
                 f"pairs with a rewrite, not a revision (edit distance > {cfg.max_edit})": counts["rewrite"],
                 "pairs whose original answer was left out": revisions.height - pairs.height}
    summary = RevisionStats(reviser=cfg.reviser, original=cfg.original, min_edit=cfg.min_edit, max_edit=cfg.max_edit,
                            **counts, edit_distance={"all": distribution(distances),
                                                     "kept": distribution(kept["edit_distance"].to_list())})
    return Candidates(kept, span=cfg.max_edit, set_aside=set_aside, revision=summary)
