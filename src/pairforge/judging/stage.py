"""The judge stage as a unit of `pairforge run`: the recipe's judge scores (or compares) every answer."""

from __future__ import annotations

from pathlib import Path

from pairforge.config import UNPRICED, JudgeConfig
from pairforge.layout import RunDir
from pairforge.recipe import Recipe
from pairforge.stage_unit import Round, StageUnit, all_answered


def run_stage(recipe: Recipe, run: RunDir, retry_failed: bool = False) -> list[Path]:
    from pairforge.judging.scoring import judge as judge_answers

    result = judge_answers(recipe, run.root, retry_failed=retry_failed, store_path=run.store)
    all_answered(result.summary.failed_requests, "judge")  # no verdict is no finished judge
    return [result.scored, *([result.judgments] if result.judgments else [])]


def units(r: Round) -> list[StageUnit]:
    recipe, folder = r.recipe, r.folder
    if recipe.judge is None:
        return []
    estimate = 10 if recipe.judge.kind == "similarity" else None
    verdicts = [folder.judgments] if recipe.judge.kind == "llm-pairwise" else []
    return [StageUnit("judge", f"{recipe.judge.kind} judge", f"{r.answers * len(recipe.sources)} answers", estimate,
                      lambda: run_stage(recipe, folder, r.retry_failed), [folder.responses],
                      recipe.judge.model_dump(mode="json", exclude=UNPRICED), [folder.scored, *verdicts],
                      models=judge_models(recipe.judge))]


def judge_models(judge: JudgeConfig) -> list[str]:
    """The models a judge reads: its scoring model, or its LLM when that runs here."""
    if judge.llm is None:
        return [judge.model]
    return [judge.llm.model] if judge.llm.backend in ("transformers", "vllm") else []
