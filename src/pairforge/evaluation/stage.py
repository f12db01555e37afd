"""The eval stage as a unit of `pairforge run`: the base and every trained policy answer the eval prompts (a
file, or the pairs' held-out split) and the judge compares them with the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pairforge import schema as S
from pairforge.config import PACE_ONLY, EvalConfig, JudgeConfig
from pairforge.errors import InputError
from pairforge.judging.stage import judge_models
from pairforge.layout import EVAL_PROMPTS, EVAL_REFERENCE, LEADERBOARD, MODEL_OUTPUTS, RunDir
from pairforge.models import resolved_dtype
from pairforge.recipe import Recipe
from pairforge.rounds import base_model
from pairforge.stage_unit import Round, StageUnit, all_answered
from pairforge.train_config import RunConfig
from pairforge.work_rates import local_tokens_per_s


def policies(recipe: Recipe) -> list[RunConfig]:
    """The runs that train a model to answer (a reward-model run trains a judge: it is not evaluated)."""
    return [r for r in recipe.runs if r.trains_policy]


def run_stage(recipe: Recipe, run: RunDir, retry_failed: bool = False) -> list[Path]:
    """The base and every trained policy answer the eval prompts; the judge compares them with the
    reference; with `judge_run`, a reward model trained on pairs kept apart scores the same answers again.
    A failed request (an answer or a verdict) leaves the evaluation unfinished, like any stage's."""
    from pairforge.evaluation.compare import EvalSettings, trained_endpoint
    from pairforge.evaluation.compare import evaluate as judge_models_against

    cfg = recipe.eval
    assert cfg is not None
    prompts = cfg.prompts if cfg.prompts != "held-out" else _held_out_prompts(run)
    reference = cfg.reference or _reference_file(run, cfg.reference_source)
    trained = policies(recipe)
    base = cfg.base_model or base_model(recipe)
    models = ([f"base={base}"] if cfg.base else []) + [f"{r.name}={run.train(r.name).root}" for r in trained]
    endpoints = [trained_endpoint(run.train(r.name).model) for r in trained]
    endpoint = next((e for e in endpoints if e), "chat")  # the base is asked as the runs were trained
    settings = EvalSettings.of(cfg, endpoint, baseline="base" if cfg.base else None)
    result = judge_models_against(models, [], reference, cfg.judge, run.eval, prompts, settings,
                                  store_path=run.eval_store, retry_failed=retry_failed)
    all_answered(result.judge_summary.failed_requests, "eval")
    written = [run.leaderboard]
    if cfg.judge_run:
        answers = [f"{row.model}={run.eval / (row.model + MODEL_OUTPUTS)}" for row in result.models]
        judge_cfg = JudgeConfig(kind="reward-model", model=str(run.train(cfg.judge_run).model),
                                batch_size=cfg.batch_size)
        scored = judge_models_against([], answers, reference, judge_cfg, run.eval / cfg.judge_run, prompts, settings,
                                      store_path=run.eval_store, retry_failed=retry_failed)
        all_answered(scored.judge_summary.failed_requests, "eval")
        written.append(run.eval / cfg.judge_run / LEADERBOARD)
    return written


def _eval_files(cfg: EvalConfig, run: RunDir) -> list[Path]:
    """The files an evaluation reads besides the runs: its reference and prompts files (the pairs' held-out split
    for 'held-out'), or the answers a reference source's come from — by content, so an edited file reruns it."""
    files = [cfg.reference] if cfg.reference else [run.responses] if cfg.reference_source else []
    return files + ([cfg.prompts] if isinstance(cfg.prompts, Path) else [run.pairs("eval")])


def units(r: Round) -> list[StageUnit]:
    recipe, folder, cfg = r.recipe, r.folder, r.recipe.eval
    if cfg is None:
        return []
    models = (["base"] if cfg.base else []) + [p.name for p in policies(recipe)]
    eval_prompts = "held-out prompts" if cfg.prompts == "held-out" else str(cfg.prompts)
    judges = cfg.judge.kind + (f" and the {cfg.judge_run} reward model" if cfg.judge_run else "")
    written = [folder.leaderboard, *([folder.eval / cfg.judge_run / LEADERBOARD] if cfg.judge_run else [])]
    return [StageUnit("eval", f"{judges} vs reference on {eval_prompts}", f"{len(models)} models",
                      eval_estimate(recipe, len(models), r.n_prompts),
                      lambda: run_stage(recipe, folder, r.retry_failed),
                      [*[folder.marker(f"train:{run.name}") for run in recipe.runs], *_eval_files(cfg, folder)],
                      [_fingerprinted(cfg), models], written,
                      models=[*([cfg.base_model or base_model(recipe)] if cfg.base else []), *judge_models(cfg.judge)])]


def _fingerprinted(cfg: EvalConfig) -> dict[str, Any]:
    """The section as the stage's fingerprint sees it: the dtype resolved; the engine's settings and the LLM judge's
    rate limits and price left out, as they change how fast answers come or what they cost, not the answers
    (PACE_ONLY), and the backend only where it is not the default, so an evaluation finished before backends could
    be chosen stays finished; the engine's pass-through `engine_args` count, as they may change the answers
    (config.VLLMSettings)."""
    leave_out = {"backend": True, "vllm": True, "judge": {"llm": set(PACE_ONLY)}}
    settings = {**cfg.model_dump(mode="json", exclude=leave_out), "dtype": resolved_dtype(cfg.dtype)}
    engine_args = {"engine_args": cfg.vllm.engine_args} if cfg.vllm is not None and cfg.vllm.engine_args else {}
    return settings | ({"backend": cfg.backend} if cfg.backend != "transformers" else {}) | engine_args


def eval_estimate(recipe: Recipe, models: int, n_prompts: int) -> float | None:
    from pairforge.records import prompts_from_file

    assert recipe.eval is not None
    held_out = recipe.eval.prompts == "held-out"
    prompts = n_prompts * recipe.pairs.eval_fraction if held_out else prompts_from_file(recipe.eval.prompts).height
    rate = local_tokens_per_s(recipe.eval.batch_size, resolved_dtype(recipe.eval.dtype))
    return models * prompts * recipe.eval.max_new_tokens / rate


def _held_out_prompts(run: RunDir) -> Path:
    held_out = run.pairs("eval")
    if not held_out.exists():
        raise InputError("eval.prompts", "'held-out' needs the pairs' eval split: set pairs.eval_fraction > 0")
    frame = pl.read_parquet(held_out).select(S.PROMPT_ID, S.PROMPT).unique(S.PROMPT_ID, maintain_order=True)
    return _write(frame, run.eval / EVAL_PROMPTS)


def _reference_file(run: RunDir, source: str | None) -> Path:
    """A source's answers (from responses.parquet) as the reference outputs file."""
    if source is None:
        raise InputError("eval", "expected `reference` (an answers file) or `reference_source` (a source name)")
    frame = pl.read_parquet(run.responses).filter((pl.col(S.SOURCE) == source) & (pl.col(S.SAMPLE) == 0))
    if frame.is_empty():
        raise InputError("eval.reference_source", f"no answers from source '{source}'")
    return _write(frame.select(S.PROMPT_ID, S.PROMPT, S.SOURCE, S.RESPONSE), run.eval / EVAL_REFERENCE)


def _write(frame: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path
