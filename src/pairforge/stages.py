"""Every stage of a recipe as one function of (its recipe section, the run folder) -> the files it wrote.

`pairforge run` (pipeline.py) calls these in order; the stage commands of the CLI call the same ones, so
a stage is wired once. Each function reads its inputs from the run folder (`layout.RunDir`), raises
`InputError` on bad input, and returns the paths the next stages take as inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from pairforge import schema as S
from pairforge.config import EvalConfig, JudgeConfig, PairsConfig
from pairforge.errors import InputError, unanswered
from pairforge.files import check_output
from pairforge.layout import EVAL_PROMPTS, EVAL_REFERENCE, LEADERBOARD, MODEL_OUTPUTS, RunDir, TrainDir
from pairforge.recipe import Recipe
from pairforge.rounds import base_model, round_dir
from pairforge.train_config import RunConfig

if TYPE_CHECKING:
    from pairforge.judge.ranking import DeclaredCheck, Ranking


def generate(recipe: Recipe, run: RunDir, retry_failed: bool = False) -> list[Path]:
    from pairforge.generate.run import generate as answer_prompts

    result = answer_prompts(recipe, run.root, retry_failed, store_path=run.store)
    _all_answered(result.failed, "generate")
    return [result.responses]


def revise(recipe: Recipe, run: RunDir, retry_failed: bool = False) -> list[Path]:
    """A reviser's minimal edits of one source's answers (strategy revised)."""
    from pairforge.revise import revise as revise_answers

    result = revise_answers(recipe, run.root, retry_failed=retry_failed, store_path=run.store)
    _all_answered(result.failed, "revise")
    return [result.revisions]


def _all_answered(failed: int, command: str) -> None:
    """A stage with failed requests is not finished: it stops before the pipeline records it (so the next run, and
    --retry-failed, runs it again)."""
    if failed:
        raise unanswered(command, failed)


def judge(recipe: Recipe, run: RunDir, retry_failed: bool = False) -> list[Path]:
    from pairforge.judge.run import judge as judge_answers

    result = judge_answers(recipe, run.root, retry_failed=retry_failed, store_path=run.store)
    _all_answered(result.summary.failed_requests, "judge")  # no verdict is no finished judge
    return [result.scored, *([result.judgments] if result.judgments else [])]


@dataclass
class Ranked:
    ranking: Ranking
    evidence: Path  # the file the comparisons came from
    written: Path


def rank(recipe: Recipe, run: RunDir) -> Ranked:
    """Source strength from the judge's verdicts (or scores), and the declared order checked against it."""
    from pairforge.judge.ranking import fit, read_comparisons

    check_output(run.ranking, "file", "--out")
    evidence, comparisons = read_comparisons(run.judgments, run.scored)
    cfg = recipe.ranking
    ranking = fit(comparisons, cfg.bootstrap, cfg.confidence, cfg.seed, cfg.min_win_probability).ranking()
    if recipe.pairs.rank:
        ranking.declared_check = _declared_check(recipe.pairs.rank, ranking)
    return Ranked(ranking, evidence, ranking.write(run.ranking))


def _declared_check(declared: str, ranking: Ranking) -> DeclaredCheck:
    """Which of the declared 'a > b' the judge's significant order confirms."""
    from pairforge.judge.ranking import DeclaredCheck
    from pairforge.pairs.order import parse_rank

    found = set(ranking.rank.split(", ")) if ranking.rank else set()
    judged = {s.name for s in ranking.sources}  # a judge's own reference is not judged against itself
    beats = sorted(parse_rank(declared).beats)
    checkable = [f"{a} > {b}" for a, b in beats if a in judged and b in judged]
    return DeclaredCheck(declared=declared, confirmed=[d for d in checkable if d in found],
                         not_confirmed=[d for d in checkable if d not in found],
                         not_judged=[f"{a} > {b}" for a, b in beats if a not in judged or b not in judged])


def pairs_input(recipe: Recipe, run: RunDir) -> Path:
    """The answers the pairs are built from: scored when the recipe has a judge."""
    return run.scored if recipe.judge is not None else run.responses


def pairs_config(recipe: Recipe, run: RunDir) -> PairsConfig:
    """The recipe's pairs section placed in the run folder."""
    cfg = recipe.pairs
    revisions = [run.revisions] if cfg.revision else []  # read beside the answers they revise
    update: dict[str, Any] = {"inputs": [pairs_input(recipe, run), *revisions], "out": run.pairs()}
    generating = [s for s in recipe.answering_sources if s.backend != "file"]
    if cfg.prompt_format == "auto":  # pairs are trained in the format their answers were asked in
        plain = generating and all(s.endpoint == "completions" for s in generating)
        update["prompt_format"] = "text" if plain else "chat"
    if cfg.rank_from is not None and str(cfg.rank_from) == "ranking":
        update["rank_from"] = run.ranking
    return cfg.model_copy(update=update)


def pairs(recipe: Recipe, run: RunDir) -> list[Path]:
    from pairforge.pairs.run import build_from_files

    return build_from_files(pairs_config(recipe, run)).written  # no pair at all is its error


def run_config(entry: RunConfig, run: RunDir) -> RunConfig:
    """A training run of the recipe placed in the run folder (its pairs split, the model it starts from)."""
    update: dict[str, Any] = {"out": run.train(entry.name).root}
    if entry.pairs is None:
        update["pairs"] = run.pairs("judge" if entry.split == "judge" else "train")
    if entry.after is not None:
        update["model"] = str(run.train(entry.after).model)
    return entry.model_copy(update=update)


def train(entry: RunConfig, run: RunDir, fresh: bool = False) -> list[Path]:
    """One training run; `fresh` starts its folder over (see `train.trainer.train`), unless the work there is this
    run's (`checkpoints.continues`: an interrupted run of these settings, or a finished run they only extend)."""
    from pairforge.train.checkpoints import continues
    from pairforge.train.trainer import train as train_model

    cfg = run_config(entry, run)
    out = TrainDir(train_model(cfg, fresh=fresh and not continues(TrainDir(cfg.out), cfg)).out)
    return [out.model, out.metrics]


def policies(recipe: Recipe) -> list[RunConfig]:
    """The runs that train a model to answer (a reward-model run trains a judge: it is not evaluated)."""
    return [r for r in recipe.runs if r.method != "reward-model"]


def evaluate(recipe: Recipe, run: RunDir, retry_failed: bool = False) -> list[Path]:
    """The base and every trained policy answer the eval prompts; the judge compares them with the
    reference; with `judge_run`, a reward model trained on pairs kept apart scores the same answers again.
    A failed request (an answer or a verdict) leaves the evaluation unfinished, like any stage's."""
    from pairforge.evaluate.run import EvalSettings, trained_endpoint
    from pairforge.evaluate.run import evaluate as judge_models

    cfg = recipe.eval
    assert cfg is not None
    prompts = cfg.prompts if cfg.prompts != "held-out" else _held_out_prompts(run)
    reference = cfg.reference or _reference_file(run, cfg.reference_source)
    trained = policies(recipe)
    base = cfg.base_model or base_model(recipe)
    models = ([f"base={base}"] if cfg.base else []) + [f"{r.name}={run.train(r.name).root}" for r in trained]
    endpoints = [trained_endpoint(run.train(r.name).model) for r in trained]
    endpoint = next((e for e in endpoints if e), "chat")  # the base is asked as the runs were trained
    settings = EvalSettings(endpoint=endpoint, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            batch_size=cfg.batch_size, dtype=cfg.dtype, baseline="base" if cfg.base else None,
                            bootstrap=cfg.bootstrap)
    result = judge_models(models, [], reference, cfg.judge, run.eval, prompts, settings, store_path=run.eval_store,
                          retry_failed=retry_failed)
    _all_answered(result.judge_summary.failed_requests, "eval")
    written = [run.leaderboard]
    if cfg.judge_run:
        answers = [f"{row.model}={run.eval / (row.model + MODEL_OUTPUTS)}" for row in result.models]
        judge_cfg = JudgeConfig(kind="reward-model", model=str(run.train(cfg.judge_run).model),
                                batch_size=cfg.batch_size)
        scored = judge_models([], answers, reference, judge_cfg, run.eval / cfg.judge_run, prompts, settings,
                              store_path=run.eval_store, retry_failed=retry_failed)
        _all_answered(scored.judge_summary.failed_requests, "eval")
        written.append(run.eval / cfg.judge_run / LEADERBOARD)
    return written


def eval_files(cfg: EvalConfig, run: RunDir) -> list[Path]:
    """The files an evaluation reads besides the runs: its reference and prompts files, or the answers a
    reference source's come from — by content, so an edited file reruns the evaluation."""
    files = [cfg.reference] if cfg.reference else [run.responses] if cfg.reference_source else []
    return files + ([cfg.prompts] if isinstance(cfg.prompts, Path) else [])


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


def report(recipe: Recipe, run: RunDir) -> list[Path]:
    """The run folder's report, without training runs the recipe no longer has (renamed or removed: their
    folders stay on disk, untouched, but are not this recipe's results)."""
    from pairforge.report import build_report

    current = {round_dir(run.root, recipe, k).train(r.name).root for k in range(1, recipe.rounds + 1)
               for r in recipe.runs}
    stale = frozenset(f for f in run.root.rglob("train/*") if f.is_dir() and f not in current)
    build_report([run.root], run.report, stale)
    return [run.report]
