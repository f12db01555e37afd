"""The pairs stage as a unit of `pairforge run`: the recipe's pairs section placed in the run folder, built
from the answers (scored when the recipe has a judge), the revisions and the ranking it names."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pairforge.config import PairsConfig
from pairforge.layout import RunDir, summary_path
from pairforge.pairs.order import StrengthOrder, parse_rank
from pairforge.recipe import Recipe
from pairforge.stage_unit import Round, StageUnit


def pairs_input(recipe: Recipe, run: RunDir) -> Path:
    """The answers the pairs are built from: scored when the recipe has a judge."""
    return run.scored if recipe.judge is not None else run.responses


def pairs_config(recipe: Recipe, run: RunDir) -> PairsConfig:
    """The recipe's pairs section placed in the run folder."""
    cfg = recipe.pairs
    revisions = [run.revisions] if cfg.revision else []  # read beside the answers they revise
    update: dict[str, Any] = {"inputs": [pairs_input(recipe, run), *revisions], "out": run.pairs()}
    if cfg.prompt_format == "auto":  # pairs are trained in the format their answers were asked in
        update["prompt_format"] = recipe.asked_format
    if cfg.rank_from is not None and str(cfg.rank_from) == "ranking":
        update["rank_from"] = run.ranking
    return cfg.model_copy(update=update)


def run_stage(recipe: Recipe, run: RunDir) -> list[Path]:
    from pairforge.pairs.build_files import build_from_files

    return build_from_files(pairs_config(recipe, run)).written  # no pair at all is its error


def units(r: Round) -> list[StageUnit]:
    recipe, folder = r.recipe, r.folder
    cfg = pairs_config(recipe, folder)
    revision = recipe.pairs.revision
    if revision is not None:
        what = f"pairs (revised, edit in ({revision.min_edit}, {revision.max_edit}])"
    else:
        what = f"pairs ({cfg.resolved_strategy}, {cfg.pair_types})"
    splits = [folder.pairs(s) for s, share in (("eval", cfg.eval_fraction), ("judge", cfg.judge_fraction)) if share]
    return [StageUnit("pairs", what, f"<= {r.n_prompts * r.pair_counts[1]} pairs", 5,
                      lambda: run_stage(recipe, folder),
                      cfg.read_files,
                      cfg.model_dump(mode="json"), [cfg.out, *splits, summary_path(cfg.out)])]


def pair_counts(recipe: Recipe) -> tuple[int, int]:
    """(pair types, most pairs per prompt) the pairs stage makes, for the plan's estimates. An order `rank_from` a
    ranking is only known at run time: taken as one chain of all the sources (in the recipe's order); the scored
    strategy's types follow the scores."""
    cfg, samples = recipe.pairs, recipe.samples_per_source
    names = [s.name for s in recipe.sources]
    if cfg.resolved_strategy == "revised":
        return 1, samples  # each revision against the answer it revised
    if cfg.resolved_strategy == "scored":
        answers = len(names) * samples
        return len(names) * (len(names) - 1) // 2, answers * (answers - 1) // 2 if cfg.scored_mode == "all" else 1
    if cfg.rank:
        types = len(parse_rank(cfg.rank).pair_types(cfg.pair_types))
    elif cfg.pair_types.strip() in ("all", "adjacent", "extremes"):
        chain = StrengthOrder({n: i for i, n in enumerate(names)}, frozenset(itertools.combinations(names, 2)))
        types = len(chain.pair_types(cfg.pair_types)) if len(names) > 1 else 0
    else:  # named types are checked against the ranking at run time: counted here
        types = cfg.pair_types.count(">")
    return types, types * samples * samples
