"""The rank stage as a unit of `pairforge run`: source strength from the judge's verdicts (judging/ranking.py),
and the pairs' declared order (pairs/order.py) checked against it. It reads both packages, so it lives a layer
above them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pairforge.files import check_output
from pairforge.judging.ranking import DeclaredCheck, Ranking, fit, read_comparisons
from pairforge.layout import RunDir
from pairforge.pairs.order import parse_rank
from pairforge.recipe import Recipe
from pairforge.stage_unit import Round, StageUnit


@dataclass
class Ranked:
    ranking: Ranking
    evidence: Path  # the file the comparisons came from
    written: Path


def rank(recipe: Recipe, run: RunDir) -> Ranked:
    """Source strength from the judge's verdicts (or scores), and the declared order checked against it."""
    check_output(run.ranking, "file", "--out")
    evidence, comparisons = read_comparisons(run.judgments, run.scored)
    cfg = recipe.ranking
    ranking = fit(comparisons, cfg.bootstrap, cfg.confidence, cfg.seed, cfg.min_win_probability).ranking()
    if recipe.pairs.rank:
        ranking.declared_check = _declared_check(recipe.pairs.rank, ranking)
    return Ranked(ranking, evidence, ranking.write(run.ranking))


def _declared_check(declared: str, ranking: Ranking) -> DeclaredCheck:
    """Which of the declared 'a > b' the judge's significant order confirms."""
    found = set(ranking.rank.split(", ")) if ranking.rank else set()
    judged = {s.name for s in ranking.sources}  # a judge's own reference is not judged against itself
    beats = sorted(parse_rank(declared).beats)
    checkable = [f"{a} > {b}" for a, b in beats if a in judged and b in judged]
    return DeclaredCheck(declared=declared, confirmed=[d for d in checkable if d in found],
                         not_confirmed=[d for d in checkable if d not in found],
                         not_judged=[f"{a} > {b}" for a, b in beats if a not in judged or b not in judged])


def units(r: Round) -> list[StageUnit]:
    recipe, folder = r.recipe, r.folder
    if recipe.judge is None:
        return []
    return [StageUnit("rank", "Bradley-Terry source strength", f"{len(recipe.sources)} sources", 5,
                      lambda: [rank(recipe, folder).written], [folder.judgments, folder.scored],
                      recipe.ranking.model_dump(mode="json"), [folder.ranking])]
