"""Pairs in, pairs out: TRL preference files (prompt/chosen/rejected, standard or conversational; ours too)
re-filtered, decontaminated and split as pairs built from answers are, with the contract's columns
(`schema.PAIR_COLUMNS`) filled where the input lets them be derived.

Derived when not given: prompt_id (the prompt's stable id), the scores (`chosen_score` / `rejected_score`, or
`score_chosen` / `score_rejected` as in HuggingFaceH4/ultrafeedback_binarized), margin (the score gap, else 1),
difficulty (1 - margin / the score range, else / the largest margin), pair_type (chosen_source>rejected_source
when both are given, else the file's name, so pairs of several files stay apart for a staged curriculum).
Refused (one line): an empty or blank prompt_id, one prompt_id given to two prompts. Dropped and counted: an
empty prompt, the same pair again (a file given twice), a pair whose chosen or rejected answer an answer filter
drops (empty, leaked role marker, length), whose scores tie (within `schema.SCORE_TIE`) or put the rejected
answer first, and the pair filters' (chosen == rejected, near-duplicates, length ratio). Columns outside the
contract are left out, except a `weight` (the trainer reads it) and revised pairs' `edit_distance`.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from pairforge import schema as S
from pairforge.config import PairsConfig
from pairforge.errors import InputError
from pairforge.fields import Field
from pairforge.files import Records
from pairforge.pair_files import checked_pairs
from pairforge.pairs import filters
from pairforge.pairs.build import PairSet, check_invariants, count_drops, split
from pairforge.records import refuse_shared_ids
from pairforge.text import answer_text_column, prompt_text_column

CONTRACT_FIELDS = (
    *(Field(k, "text", required=False) for k in ("pair_id", "prompt_id", "chosen_source", "rejected_source")),
    *(Field(k, "int", required=False) for k in ("chosen_sample", "rejected_sample", "stage")),
    *(Field(k, "number", required=False) for k in ("chosen_score", "rejected_score", "score_chosen",
                                                    "score_rejected", "margin", "difficulty", "edit_distance")),
)
_KEPT = ("weight", "edit_distance")  # beyond the contract: read by the trainer, or describing revised pairs


def pairs_from_files(inputs: list[Records], prompt_format: str) -> pl.DataFrame:
    """Every file's pairs, checked as the trainer checks them, in the contract's columns. `prompt_format` chat or
    text converts; auto keeps the files' format (conversational when they differ). A prompt_id given names one
    prompt, in every file, as in answer files: else pairs of two prompts would share a split and a curriculum."""
    frames = []
    for file_index, records in enumerate(inputs):
        frame = checked_pairs(records, optional=CONTRACT_FIELDS)
        _refuse_blank_ids(frame, records)
        own = pl.col(S.PROMPT_ID).is_not_null() if S.PROMPT_ID in frame.columns else pl.lit(False)
        frames.append(_contract(frame.with_columns(own.alias("_own_id")), records.path.stem).with_columns(
            pl.lit(file_index, pl.Int32).alias("_file"), pl.int_range(pl.len(), dtype=pl.Int64).alias("_row")))
    chat = prompt_format == "chat" or (prompt_format == "auto" and any(_is_chat(f) for f in frames))
    pairs = pl.concat([_in_format(frame, chat) for frame in frames], how="diagonal_relaxed")
    refuse_shared_ids(pairs.with_columns(S.prompt_ids(pairs[S.PROMPT]).alias("_computed")), inputs)
    return pairs.drop("_own_id", "_file", "_row")


def _refuse_blank_ids(frame: pl.DataFrame, records: Records) -> None:
    """An empty or blank prompt_id is a mistake (a blank cell, a failed join), not an id to group pairs by."""
    if S.PROMPT_ID not in frame.columns:
        return
    blank = frame.select(pl.arg_where(pl.col(S.PROMPT_ID).cast(pl.String).str.strip_chars() == "").first()).item()
    if blank is not None:
        raise InputError(str(records.path), f"expected a non-empty prompt_id (or leave it out to derive it from the "
                         f"prompt), found {frame[S.PROMPT_ID][blank]!r}", row=records.label(blank), field=S.PROMPT_ID)


def refilter(pairs: pl.DataFrame, cfg: PairsConfig) -> PairSet:
    """Pairs in -> filtered, decontaminated, split pairs and the summary that explains them."""
    summary: dict[str, Any] = {"strategy": "preference", "pairs_in": pairs.height,
                               "prompts": pairs[S.PROMPT_ID].n_unique(), "dropped_answers": {}}
    dropped_prompts: dict[str, int] = {}
    if cfg.filters.decontaminate:
        leaked = filters.contaminated_prompts(pairs, cfg.filters.decontaminate, cfg.filters.ngram)
        dropped_prompts[f"shares a {cfg.filters.ngram}-gram with an eval prompt"] = len(leaked)
        pairs = pairs.filter(~pl.col(S.PROMPT_ID).is_in(list(leaked)))
    summary["dropped_prompts"] = dropped_prompts
    pairs, answers, answer_reasons = _with_answer_features(pairs, cfg)
    if cfg.filters.near_duplicate is not None:
        pairs = filters.with_word_overlap(pairs, answers, cfg.filters.near_duplicate)
    either = [(name, pl.any_horizontal(pl.col(f"{side}_{filters.DROP}") == name for side in ("chosen", "rejected")))
              for name in answer_reasons]
    gap = pl.col("chosen_score") - pl.col("rejected_score")
    evidence = [(f"scores tied (within {S.SCORE_TIE})", gap.abs() <= S.SCORE_TIE),
                ("the rejected answer scored higher", gap < -S.SCORE_TIE)]
    prompt = prompt_text_column(pl.col(S.PROMPT)) if _is_chat(pairs) else pl.col(S.PROMPT)
    given = [("empty prompt", prompt.str.strip_chars() == ""),
             ("the same pair again (prompt, chosen, rejected)",  # a file given twice, or a row repeated
              ~pl.struct(S.PROMPT_ID, "chosen", "rejected").is_first_distinct())]
    pairs, dropped = filters.apply(pairs, [*given, *either, *evidence, *filters.pair_drop_reasons(cfg.filters)])
    summary["dropped_pairs"] = count_drops(dropped, [filters.DROP, "pair_type"])
    pairs = _with_margin(pairs)
    check_invariants(pairs, None, by_score=True)  # its evidence filter dropped the rest
    return split(pairs.select(*S.PAIR_COLUMNS, *(c for c in _KEPT if c in pairs.columns), "chosen_length",
                              "rejected_length"), cfg, summary)


def _contract(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """The contract's columns from what the file gives; see the module's docstring for what is derived."""
    def given(column: str, dtype: pl.DataType) -> pl.Expr:
        return (pl.col(column).cast(dtype) if column in frame.columns else pl.lit(None, dtype)).alias(column)

    sources = pl.concat_str("chosen_source", pl.lit(">"), "rejected_source")
    frame = frame.with_columns(
        pl.coalesce(given(S.PROMPT_ID, pl.String()), pl.lit(S.prompt_ids(frame[S.PROMPT]))).alias(S.PROMPT_ID),
        *(given(f"{side}_source", pl.String()).alias(f"{side}_source") for side in ("chosen", "rejected")),
        *(given(f"{side}_sample", pl.Int64()).alias(f"{side}_sample") for side in ("chosen", "rejected")),
        *(pl.coalesce(given(f"{side}_score", pl.Float64()), given(f"score_{side}", pl.Float64())).alias(
            f"{side}_score") for side in ("chosen", "rejected")),
        given("margin", pl.Float64()), given("difficulty", pl.Float64()), given("stage", pl.Int64()),
        *(given(c, pl.Float64()) for c in _KEPT if c in frame.columns),
    )
    pair_type = pl.coalesce(given("pair_type", pl.String()), sources, pl.lit(name))
    pair_id = pl.coalesce(given("pair_id", pl.String()), pl.concat_str(S.PROMPT_ID, pl.lit(":"), pl.lit(name),
                                                                       pl.lit(".row"), pl.int_range(pl.len())))
    return frame.with_columns(pair_type.alias("pair_type"), pair_id.alias("pair_id"))


def _is_chat(frame: pl.DataFrame) -> bool:
    return frame.schema[S.PROMPT] == S.MESSAGES


def _in_format(frame: pl.DataFrame, chat: bool) -> pl.DataFrame:
    """TRL's conversational format (`chat`) or its standard one, converting each column that has the other (a
    file may pair a chat prompt with plain-text answers)."""
    def converted(column: str, role: str) -> pl.Expr:
        if (frame.schema[column] == S.MESSAGES) == chat:
            return pl.col(column)
        if chat:
            return pl.concat_list(pl.struct(role=pl.lit(role), content=pl.col(column))).alias(column)
        text = prompt_text_column if role == "user" else answer_text_column
        return text(pl.col(column)).alias(column)

    return frame.with_columns(converted(S.PROMPT, "user"), converted("chosen", "assistant"),
                              converted("rejected", "assistant"))


def _with_answer_features(pairs: pl.DataFrame, cfg: PairsConfig) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Each pair's two answers as rows of an answers frame (chosen first, then rejected), with the filters'
    features and the first answer filter that drops each; the pairs point at them and carry their features."""
    texts = [answer_text_column(pl.col(side)) if _is_chat(pairs) else pl.col(side) for side in ("chosen", "rejected")]
    answers = pl.concat([pairs.select(text.alias(S.RESPONSE)) for text in texts]).with_columns(
        pl.lit(None, pl.String).alias(S.FINISH_REASON))
    answers = filters.with_answer_features(answers, cfg.filters).with_row_index(filters.ANSWER)
    reasons = filters.answer_drop_reasons(cfg.filters)
    answers = answers.with_columns(filters.first_reason(reasons).alias(filters.DROP))
    n = pairs.height
    features = (filters.NORM, filters.N_WORDS, filters.LENGTH, filters.ANSWER, filters.DROP)
    for side, offset in (("chosen", 0), ("rejected", n)):
        rows = answers.slice(offset, n).select(*features).rename({f: f"{side}_{f}" for f in features})
        pairs = pl.concat([pairs, rows], how="horizontal")
    return pairs, answers, [name for name, _ in reasons]


def _with_margin(pairs: pl.DataFrame) -> pl.DataFrame:
    """margin = the score gap where not given, else 1 (one preference level, as a ranked pair of adjacent sources:
    a curriculum then treats unscored pairs alike); difficulty = 1 - margin / span where not given, span the score
    range (or the largest margin, without scores)."""
    margin = pl.coalesce("margin", pl.col("chosen_score") - pl.col("rejected_score"), pl.lit(1.0))
    pairs = pairs.with_columns(margin.alias("margin"))
    scores = pl.concat([pairs["chosen_score"], pairs["rejected_score"]]).drop_nulls()
    span = float(scores.max() - scores.min()) if len(scores) > 1 else 0.0  # type: ignore[operator]
    span = span or float(pairs["margin"].max() or 0.0) or 1.0  # type: ignore[arg-type]
    difficulty = pl.coalesce("difficulty", (1.0 - pl.col("margin") / span).clip(0.0, 1.0))
    return pairs.with_columns(difficulty.alias("difficulty"))
