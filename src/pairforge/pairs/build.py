"""Responses -> clean, TRL-ready preference pairs, with a summary of everything that was dropped and why.

Order of work: lengths -> answer filters -> decontamination -> strategy -> pair filters -> margin and
difficulty -> invariants -> train/eval split. The output's first columns are TRL's (prompt, chosen,
rejected; conversational unless `prompt_format: text`, because answers asked through a chat template are
trained through it: see `prompting`), followed by provenance (see
`schema.PAIR_COLUMNS`), so the file trains in pairforge and, unchanged, in TRL.

difficulty = 1 - margin / span, in [0, 1): span is the largest margin possible in this input (the
number of strength levels - 1, or the score range). A small gap between chosen and rejected is a
hard pair (close to 1); the paper's "GPT-4 > InstructGPT" pairs are easy, "GPT-4 > ChatGPT" hard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from pairforge import schema as S
from pairforge.config import PairsConfig
from pairforge.errors import InputError
from pairforge.pairs import filters, strategies
from pairforge.pairs.order import StrengthOrder, parse_rank
from pairforge.records import MESSAGES
from pairforge.text import prompt_text_column


@dataclass
class PairSet:
    """Built pairs (train and, if asked, eval) and the summary that explains them."""

    train: pl.DataFrame
    eval: pl.DataFrame
    summary: dict[str, Any]
    judge: pl.DataFrame | None = None  # kept apart from both, to train a judge on (judge_fraction)


def pair_answers(responses: pl.DataFrame, cfg: PairsConfig) -> PairSet:
    """Build pairs from a validated responses frame (see `formats.responses_from_files`)."""
    strategy = cfg.resolved_strategy
    order, pair_types = _resolve_order(responses, cfg, strategy)
    if strategy in ("scored", "verified") and responses[S.SCORE].is_null().all():
        raise InputError("--strategy", f"'{strategy}' needs scores, but no answer in the input has one "
                         "(give --rank for the ranked strategy, or score the answers with a judge first)")
    summary: dict[str, Any] = {"strategy": strategy, "responses": responses.height,
                               "prompts": responses[S.PROMPT_ID].n_unique(),
                               "sources": dict(responses.group_by(S.SOURCE).len().sort(S.SOURCE).iter_rows())}

    answers = filters.with_answer_features(responses, cfg.filters)
    answers, dropped = filters.apply(answers, filters.answer_drop_reasons(cfg.filters))
    summary["dropped_answers"] = count_drops(dropped, [filters.DROP])
    dropped_prompts: dict[str, int] = {}
    if cfg.filters.decontaminate:
        leaked = filters.contaminated_prompts(answers, cfg.filters.decontaminate, cfg.filters.ngram)
        dropped_prompts[f"shares a {cfg.filters.ngram}-gram with an eval prompt"] = len(leaked)
        answers = answers.filter(~pl.col(S.PROMPT_ID).is_in(list(leaked)))
    sources_per_prompt = answers.group_by(S.PROMPT_ID).agg(pl.col(S.SOURCE).n_unique().alias("n"))
    dropped_prompts["only one source left"] = sources_per_prompt.filter(pl.col("n") < 2).height

    answers = answers.with_row_index(filters.ANSWER)
    if strategy == "scored":
        candidates = strategies.scored(answers, cfg.scored_mode, cfg.min_margin, cfg.seed)
    elif strategy == "revised":
        assert cfg.revision is not None
        candidates = strategies.revised(answers, cfg.revision)
    else:
        assert order is not None
        pick = strategies.ranked if strategy == "ranked" else strategies.verified
        candidates = pick(answers, order, pair_types)
    dropped_prompts.update(candidates.set_aside)
    summary["dropped_prompts"] = dropped_prompts
    if candidates.verification:
        summary["verification"] = candidates.verification
    pair_filters = cfg.filters
    if candidates.revision:  # a minimal edit is a near-duplicate by design: min_edit / max_edit decide instead
        summary["revision"] = candidates.revision
        pair_filters = pair_filters.model_copy(update={"near_duplicate": None})

    pairs = candidates.pairs
    if pair_filters.near_duplicate is not None:
        pairs = filters.with_word_overlap(pairs, answers, pair_filters.near_duplicate)
    pairs, dropped = filters.apply(pairs, filters.pair_drop_reasons(pair_filters))
    summary["dropped_pairs"] = count_drops(dropped, [filters.DROP, "pair_type"])
    pairs = _finish(pairs, answers, candidates.span, chat=cfg.prompt_format != "text")
    check_invariants(pairs, order, by_score=strategy == "scored")

    return split(pairs, cfg, summary)


def split(pairs: pl.DataFrame, cfg: PairsConfig, summary: dict[str, Any]) -> PairSet:
    """Train, eval and judge splits by prompt (eval takes the lowest prompt buckets, the judge split the next ones,
    training the rest), their counts and the length statistics added to `summary`."""
    bucket = pl.lit(S.prompt_buckets(pairs[S.PROMPT_ID]))
    in_eval = bucket < cfg.eval_fraction
    in_judge = (bucket >= cfg.eval_fraction) & (bucket < cfg.eval_fraction + cfg.judge_fraction)
    train, held_out, judge = pairs.filter(~in_eval & ~in_judge), pairs.filter(in_eval), pairs.filter(in_judge)
    summary["pairs"] = {"train": _per_type(train), "eval": _per_type(held_out)}
    if cfg.judge_fraction > 0:
        summary["pairs"]["judge"] = _per_type(judge)
    summary["lengths"] = {"unit": cfg.filters.length_unit, **length_stats(pairs)}
    lengths = ("chosen_length", "rejected_length")
    return PairSet(train.drop(*lengths), held_out.drop(*lengths), summary, judge.drop(*lengths))


def _resolve_order(
    responses: pl.DataFrame, cfg: PairsConfig, strategy: str
) -> tuple[StrengthOrder | None, list[tuple[str, str]]]:
    if strategy in ("scored", "revised"):
        return None, []
    assert cfg.rank is not None
    order = parse_rank(cfg.rank)
    present = set(responses[S.SOURCE].unique().to_list())
    for name in order.levels:
        if name not in present:
            raise InputError("--rank", f"source '{name}' is not in the input (sources found: "
                             f"{', '.join(sorted(present))})")
    return order, order.pair_types(cfg.pair_types)


def _finish(pairs: pl.DataFrame, answers: pl.DataFrame, span: float, chat: bool) -> pl.DataFrame:
    """Attach prompts, ids, difficulty and TRL's format (conversational when `chat`, else standard); order
    columns as `schema.PAIR_COLUMNS`. A pair's prompt is its chosen answer's: the same for both answers, except
    where the input asked each model under its own system prompt (UltraFeedback). Rows keep the input's order
    (chosen answer, then pair type), so the same input gives the same file."""
    prompt = pl.col(S.PROMPT)
    if chat and answers.schema[S.PROMPT] != MESSAGES:
        prompt = pl.concat_list(pl.struct(role=pl.lit("user"), content=prompt))
    elif not chat and answers.schema[S.PROMPT] == MESSAGES:  # the text the completions endpoint was given
        prompt = prompt_text_column(prompt)
    pair_id = pl.concat_str(S.PROMPT_ID, pl.lit(":"), "chosen_source", pl.lit("."), "chosen_sample",
                            pl.lit(">"), "rejected_source", pl.lit("."), "rejected_sample")
    pairs = pairs.with_columns(answers[S.PROMPT].gather(pairs[f"chosen_{filters.ANSWER}"])).with_columns(
        prompt.alias(S.PROMPT), pair_id.alias("pair_id"),
        (1.0 - pl.col("margin") / span).clip(0.0, 1.0).alias("difficulty"),
        pl.lit(None, pl.Int64).alias("stage"),
    )
    if chat:
        pairs = pairs.with_columns(*(_assistant_turn(c) for c in ("chosen", "rejected")))
    extra = [c for c in ("edit_distance",) if c in pairs.columns]  # revised pairs: how much the revision changed
    return pairs.select(*S.PAIR_COLUMNS, *extra, "chosen_length", "rejected_length")


def _assistant_turn(column: str) -> pl.Expr:
    return pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col(column))).alias(column)


def check_invariants(pairs: pl.DataFrame, order: StrengthOrder | None, *, by_score: bool) -> None:
    """A pairs file never has chosen == rejected, nor an order that contradicts its evidence: the declared order
    when given, the scores when `by_score`. Scores that are not the evidence are provenance only (a revision pair's
    evidence is the revision, a ranked pair's the order), so they may disagree with it."""
    same = pairs.filter(pl.col("chosen") == pl.col("rejected"))
    if same.height:
        raise AssertionError(f"internal error: pair {same['pair_id'][0]} has chosen == rejected")
    if order is not None:
        bad = [p for p in pairs.select("chosen_source", "rejected_source").unique().iter_rows() if p not in order.beats]
        if bad:
            raise AssertionError(f"internal error: pairs {bad[0][0]}>{bad[0][1]} contradict the declared order")
    scored = pairs.filter(pl.col("chosen_score").is_not_null() & pl.col("rejected_score").is_not_null())
    if by_score and scored.filter(pl.col("chosen_score") <= pl.col("rejected_score")).height:
        raise AssertionError("internal error: a scored pair's chosen answer does not outscore the rejected one")


def length_stats(pairs: pl.DataFrame) -> dict[str, Any]:
    """Mean/median/p90 length of chosen and rejected, overall and per pair type, and how often chosen is longer."""
    def stats(frame: pl.DataFrame) -> dict[str, Any]:
        out: dict[str, Any] = {"pairs": frame.height}
        for column in ("chosen_length", "rejected_length"):
            values = frame[column]
            out[column.replace("_length", "")] = {
                "mean": round(float(values.mean() or 0), 1), "median": float(values.median() or 0),
                "p90": float(values.quantile(0.9) or 0),
            }
        longer = (frame["chosen_length"] > frame["rejected_length"]).mean() if frame.height else 0.0
        out["chosen_longer_rate"] = round(float(longer or 0), 4)
        return out

    per_type = {t: stats(pairs.filter(pl.col("pair_type") == t)) for t in sorted(pairs["pair_type"].unique())}
    return {"all": stats(pairs), "per_pair_type": per_type}


def _per_type(pairs: pl.DataFrame) -> dict[str, int]:
    return dict(pairs.group_by("pair_type").len().sort("pair_type").iter_rows())


def count_drops(dropped: pl.DataFrame, by: list[str]) -> dict[str, Any]:
    """{reason: n} or {reason: {pair_type: n}}."""
    if dropped.height == 0:
        return {}
    if len(by) == 1:
        return dict(dropped.group_by(by[0]).len().sort(by[0]).iter_rows())
    nested: dict[str, dict[str, int]] = {}
    for reason, pair_type, n in dropped.group_by(*by).len().sort(*by).iter_rows():
        nested.setdefault(reason, {})[pair_type] = n
    return nested
