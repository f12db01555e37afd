"""The revise stage as a unit of `pairforge run` (strategy revised): a reviser's minimal edits of one source's
answers. revision.py is one module, not a package, so its unit lives beside it, a layer up."""

from __future__ import annotations

from pathlib import Path

from pairforge.layout import RunDir
from pairforge.recipe import Recipe
from pairforge.stage_unit import Round, StageUnit, all_answered


def run_stage(recipe: Recipe, run: RunDir, retry_failed: bool = False) -> list[Path]:
    from pairforge.revision import revise as revise_answers

    result = revise_answers(recipe, run.root, retry_failed=retry_failed, store_path=run.store)
    all_answered(result.failed, "revise")
    return [result.revisions, *([result.usage_file] if result.usage_file else [])]


def units(r: Round) -> list[StageUnit]:
    recipe, folder = r.recipe, r.folder
    revision = recipe.pairs.revision
    if revision is None:
        return []
    reviser = next(s for s in recipe.sources if s.name == revision.reviser)
    return [StageUnit("revise", f"{revision.reviser} revises {revision.original}'s answers", f"{r.answers} revisions",
                      None, lambda: run_stage(recipe, folder, r.retry_failed), [folder.responses],
                      [revision.model_dump(include={"reviser", "original", "template"}),
                       reviser.cache_settings()],  # the bounds are the pairs stage's
                      [folder.revisions])]
