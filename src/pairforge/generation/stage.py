"""The generate stage as a unit of `pairforge run`: every answering source answers the prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pairforge.config import ROUND_MODEL
from pairforge.layout import RunDir
from pairforge.recipe import Recipe
from pairforge.rounds import base_model, round_recipe
from pairforge.stage_unit import Round, StageUnit, all_answered
from pairforge.work_rates import answering_seconds


def run_stage(recipe: Recipe, run: RunDir, retry_failed: bool = False) -> list[Path]:
    from pairforge.generation.answers import generate as answer_prompts

    result = answer_prompts(recipe, run.root, retry_failed, store_path=run.store)
    all_answered(result.failed, "generate")
    return [result.responses, *([result.usage_file] if result.usage_file else [])]


def units(r: Round) -> list[StageUnit]:
    recipe, folder = r.recipe, r.folder
    answering = recipe.answering_sources
    # a later round's policy is named by the marker of the training that made it (`previous`): the trained folder
    # does not exist when the plan is made
    inputs = [recipe.prompts, *[s.path for s in recipe.sources if s.path], *r.previous]
    return [StageUnit("generate", f"{len(answering)} sources answer {r.n_prompts} prompts",
                      f"{r.answers * len(answering)} answers", estimate(r),
                      lambda: run_stage(recipe, folder, r.retry_failed), inputs, settings(r), [folder.responses])]


def settings(r: Round) -> list[Any]:
    """The answers asked for; in an iterative recipe the sources as written ("@round" unresolved) and the base
    model, so every round's generation is named by its round's start model (the base, or `previous`)."""
    if r.whole.rounds > 1:
        return [r.recipe.samples_per_source, base_model(r.whole), _sources(r.whole)]
    return [r.recipe.samples_per_source, _sources(r.recipe)]


def _sources(recipe: Recipe) -> list[dict[str, Any]]:
    return [{"name": s.name, **s.cache_settings()} for s in recipe.answering_sources]


def estimate(r: Round) -> float | None:
    """Round k > 1 asks only the "@round" sources again (the others' answers are in the store), on models of round
    1's shape: estimated when round 1 is."""
    own = generation_estimate(r.recipe, r.answers)
    if own is not None or r.k == 1 or generation_estimate(round_recipe(r.whole, r.folder.root, 1), r.answers) is None:
        return own
    return answering_seconds([s for s in r.whole.answering_sources if s.model == ROUND_MODEL], r.answers)


def generation_estimate(recipe: Recipe, answers: int) -> float | None:
    local = [s for s in recipe.sources if s.backend == "transformers" and s.model == "embedded"]
    if len(local) + sum(s.backend == "file" for s in recipe.sources) < len(recipe.sources):
        return None
    return answering_seconds(local, answers)
