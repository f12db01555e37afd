"""The report as the last unit of `pairforge run`: once for the whole run folder (every round), always run."""

from __future__ import annotations

from pathlib import Path

from pairforge.layout import RunDir
from pairforge.recipe import Recipe
from pairforge.rounds import round_dir
from pairforge.stage_unit import StageUnit


def run_stage(recipe: Recipe, run: RunDir) -> list[Path]:
    """The run folder's report, without training runs the recipe no longer has (renamed or removed: their
    folders stay on disk, untouched, but are not this recipe's results)."""
    from pairforge.reporting.page import build_report

    current = {round_dir(run.root, recipe, k).train(r.name).root for k in range(1, recipe.rounds + 1)
               for r in recipe.runs}
    stale = frozenset(f for f in run.root.rglob("train/*") if f.is_dir() and f not in current)
    build_report([run.root], run.report, stale)
    return [run.report]


def unit(recipe: Recipe, run: RunDir) -> StageUnit:
    return StageUnit("report", "HTML + Markdown report", "1 page", 10, lambda: run_stage(recipe, run), [], None,
                     [run.report], marker=run.marker("report"))
