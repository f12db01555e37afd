"""Runs trained with several seeds in the evaluation: the models NAME@SEED of one run are an arm, NAME. An arm gets a
row of its own (every prompt's values averaged over its seeds, then the usual intervals over prompts), and every test
between arms is a paired difference pooled over prompts and seeds (`stats.pooled_difference`): seed s of one arm is
paired with seed s of the other when both have the same seeds, every seed with an unseeded model's single answer
otherwise; the prompt stays the unit that is resampled and sign-flipped."""

from __future__ import annotations

import polars as pl

from pairforge import schema as S
from pairforge.errors import InputError
from pairforge.evaluation.leaderboard import Versus
from pairforge.evaluation.stats import pooled_difference
from pairforge.layout import arm_of

_AVERAGED = ("length", "reference_length", S.SCORE, "verdict")  # a verdicts row's values an arm's row averages


def arms_of(names: list[str]) -> dict[str, list[str]]:
    """Every arm and its models, in the order they first appear: NAME -> [NAME@0, NAME@1, ...] for seeded models,
    name -> [name] for any other. A NAME beside NAME@SEED models is refused: its row would be two things."""
    arms: dict[str, list[str]] = {}
    for name in names:
        arms.setdefault(arm_of(name)[0], []).append(name)
    for arm, models in arms.items():
        if arm in models and len(models) > 1:
            raise InputError("--models", f"'{arm}' names a model and also the seeds {', '.join(models[1:])}: "
                             "expected NAME@SEED for every seed of a run, or no '@' at all")
    return arms


def seeds_of(models: list[str]) -> list[int] | None:
    """The seeds of an arm's models; None for an unseeded model."""
    seeds = [seed for _, seed in map(arm_of, models) if seed is not None]
    return seeds or None


def arm_rows(verdicts: pl.DataFrame, arm: str, models: list[str]) -> pl.DataFrame:
    """The arm as one model: per prompt, each value averaged over the seeds that have one (null where none has)."""
    rows = verdicts.filter(pl.col("model").is_in(models))
    return rows.group_by(S.PROMPT_ID, maintain_order=True).agg(
        pl.lit(arm).alias("model"), *(pl.col(c).mean() for c in _AVERAGED), pl.col("dataset").first())


def pooled_versus(verdicts: pl.DataFrame, column: str, mine: list[str], theirs: list[str], name: str, bootstrap: int,
                  seed: int) -> Versus | None:
    """The paired test of the models `mine` (an arm's seeds, or one model) against `theirs` (the row `name`) on
    `column`, pooled over prompts and seeds; None when no prompt has a value of both."""
    a, b = _values(verdicts, column, mine), _values(verdicts, column, theirs)
    same_seeds = seeds_of(mine) is not None and seeds_of(mine) == seeds_of(theirs)
    both = a.join(b, on=[S.PROMPT_ID, "seed"] if same_seeds else [S.PROMPT_ID], how="inner", suffix="_other",
                  maintain_order="left").drop_nulls(["value", "value_other"])
    if not both.height:
        return None
    prompts = both[S.PROMPT_ID].to_numpy()
    gap = pooled_difference(both["value"].to_numpy(), both["value_other"].to_numpy(), prompts, bootstrap, seed)
    return Versus(model=name, difference=gap.value, low=gap.low, high=gap.high, p_value=gap.p_value,
                  significant=gap.significant, prompts=both[S.PROMPT_ID].n_unique())


def _values(verdicts: pl.DataFrame, column: str, models: list[str]) -> pl.DataFrame:
    seeds = {model: arm_of(model)[1] for model in models}
    return verdicts.filter(pl.col("model").is_in(models)).select(
        S.PROMPT_ID, pl.col("model").replace_strict(seeds, return_dtype=pl.Int64).alias("seed"),
        pl.col(column).cast(pl.Float64).alias("value"))
