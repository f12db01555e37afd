"""Iterative rounds (`rounds: N` in a recipe): generate -> judge/rank -> pairs -> train, N times, where a
source whose model is "@round" is the policy itself — the base model in round 1, the model trained in
round k in round k+1 (bootstrapped / iterative DPO: its new answers are the weaker tier against the
teachers'). Every round has its own folder (`<run_dir>/round-K/`, the layout of a one-round run); the
request store is shared, so the teachers' answers (and the base's evaluation answers) are asked once.
In round k+1 every run that starts from the recipe's model starts from round k's trained policy instead,
while the evaluation keeps the original model as its baseline, so each round reads as its gain over it."""

from __future__ import annotations

from pathlib import Path

from pairforge.config import ROUND_MODEL
from pairforge.layout import RunDir
from pairforge.recipe import Recipe


def round_dir(run_dir: Path, recipe: Recipe, k: int) -> RunDir:
    """Round k's folder (the run folder itself when the recipe has one round), sharing the run's store."""
    if recipe.rounds == 1:
        return RunDir(run_dir)
    return RunDir(run_dir / f"round-{k}", store=RunDir(run_dir).store)


def base_model(recipe: Recipe) -> str:
    """The model round 1 starts from and the evaluation's baseline: the first policy run's starting model."""
    policies = [r for r in recipe.runs if r.trains_policy and r.after is None]
    return policies[0].model if policies else recipe.train.model


def round_recipe(recipe: Recipe, run_dir: Path, k: int) -> Recipe:
    """Round k of a recipe: "@round" sources and the runs' starting model resolved to the policy trained in
    round k-1 (the base model in round 1)."""
    base = base_model(recipe)
    policy = base if k == 1 else str(round_dir(run_dir, recipe, k - 1).train(policy_run(recipe)).model)
    resolved = recipe.model_copy(deep=True)
    for source in resolved.sources:
        if source.model == ROUND_MODEL:
            source.model = policy
    for run in resolved.runs if k > 1 else []:
        if run.after is None and run.trains_policy:
            run.model = policy
    if resolved.eval is not None:
        resolved.eval.base_model = resolved.eval.base_model or base
    return resolved


def policy_run(recipe: Recipe) -> str:
    """The run whose trained model answers as "@round" in the next round."""
    if recipe.round_run is not None:
        return recipe.round_run
    return [r.name for r in recipe.runs if r.trains_policy][-1]
