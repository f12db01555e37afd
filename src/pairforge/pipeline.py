"""`pairforge run RECIPE`: every stage of a recipe in order, in one run folder, resumable.

Stages: generate -> revise (strategy revised) -> judge (when the recipe has a judge) -> rank (judge given and
at least two judged sources) -> pairs -> one stage per training run -> eval (when the recipe has an eval
section) -> report.
A stage whose outputs exist and whose settings and input files are unchanged (one fingerprint,
kept in <run_dir>/stages/<stage>.json) is skipped; `--from STAGE` runs that stage and everything after
it again. Inside a stage, the work is resumable too (the generation store, training checkpoints).
`--dry-run` validates the recipe, checks a few rows of every input file, and prints the plan.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pairforge import schema as S
from pairforge.config import EvalConfig, JudgeConfig, Recipe, RunConfig, load_recipe
from pairforge.errors import InputError
from pairforge.io import file_digest, write_json

# Work rates of the embedded model on the project's 2-core CPU (AVX512-BF16), measured on the quickstart
# in 2026-11; a rough guide, printed as such; other models get no estimate.
_TOKENS_PER_S_AT_10_ROWS = 80.0  # float32 generation, 10 prompts per generate() call
_SECONDS_PER_PAIR_PASS = 1.0  # float32 training, LoRA, ~150-token rows
_BF16_SPEED_UP = 2.2


def _local_tokens_per_s(batch_size: int, dtype: str) -> float:
    """More rows per step use the cores better, up to ~2.4x at 64 rows."""
    return _TOKENS_PER_S_AT_10_ROWS * min(2.4, (batch_size / 10) ** 0.5) * (_BF16_SPEED_UP if dtype == "bfloat16"
                                                                           else 1.0)


@dataclass
class Stage:
    name: str
    what: str
    size: str
    estimate_s: float | None
    run: Callable[[], list[Path]]
    inputs: list[Path] = field(default_factory=list)
    settings: Any = None
    work_dir: Path | None = None  # partial work (checkpoints) a rerun of the same settings resumes from

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for path in self.inputs:
            digest.update(file_digest(path).encode())
        return digest.hexdigest()


@dataclass
class Plan:
    recipe: Recipe
    run_dir: Path
    stages: list[Stage]


def load(recipe_path: Path, quick: bool = False) -> tuple[Recipe, Path]:
    recipe = load_recipe(recipe_path)
    run_dir = recipe.run_dir or recipe_path.parent / "runs" / recipe_path.stem
    if quick:
        run_dir = run_dir.with_name(run_dir.name + "-quick")
        recipe = _quick(recipe, run_dir)
    return recipe, run_dir


def plan(recipe: Recipe, run_dir: Path) -> Plan:
    """The stages this recipe needs, with sizes and rough time estimates; checks inputs, runs nothing."""
    from pairforge.formats import prompts_from_file
    from pairforge.generate.run import RESPONSES_FILE
    from pairforge.judge.run import SCORED_FILE

    if recipe.prompts is None or not recipe.sources:
        raise InputError("recipe", "`pairforge run` needs `prompts:` and `sources:`")
    prompts = prompts_from_file(recipe.prompts)
    n_prompts = prompts.height
    answers = n_prompts * recipe.samples_per_source
    answering = recipe.answering_sources
    stages = [Stage("generate", f"{len(answering)} sources answer {n_prompts} prompts",
                    f"{answers * len(answering)} answers",
                    _generation_estimate(recipe, answers), lambda: _generate(recipe, run_dir),
                    [recipe.prompts, *[s.path for s in recipe.sources if s.path]],
                    [recipe.samples_per_source, [{"name": s.name, **s.cache_settings()} for s in answering]])]
    responses = run_dir / RESPONSES_FILE
    revision = recipe.pairs.revision
    if revision is not None:
        reviser = next(s for s in recipe.sources if s.name == revision.reviser)
        stages.append(Stage("revise", f"{revision.reviser} revises {revision.original}'s answers",
                            f"{answers} revisions", None, lambda: _revise(recipe, run_dir), [responses],
                            [revision.model_dump(include={"reviser", "original", "template"}),
                             reviser.cache_settings()]))  # the bounds are the pairs stage's
    if recipe.judge is not None:
        judge_estimate = 10 if recipe.judge.kind == "similarity" else None
        stages.append(Stage("judge", f"{recipe.judge.kind} judge", f"{answers * len(recipe.sources)} answers",
                            judge_estimate,
                            lambda: _judge(recipe, run_dir), [responses], recipe.judge.model_dump(mode="json")))
        stages.append(Stage("rank", "Bradley-Terry source strength", f"{len(recipe.sources)} sources", 5,
                            lambda: _rank(recipe, run_dir), [run_dir / SCORED_FILE],
                            recipe.ranking.model_dump(mode="json")))
    pairs_input = run_dir / SCORED_FILE if recipe.judge is not None else responses
    pairs_cfg = _pairs_config(recipe, run_dir, pairs_input)
    stages.append(Stage("pairs", f"pairs ({pairs_cfg.resolved_strategy}, {pairs_cfg.pair_types})",
                        f"<= {n_prompts * len(recipe.sources) ** 2 // 2} pairs", 5,
                        lambda: _pairs(pairs_cfg),
                        [*pairs_cfg.inputs, *([pairs_cfg.rank_from] if pairs_cfg.rank_from else []),
                         *pairs_cfg.filters.decontaminate], pairs_cfg.model_dump(mode="json")))
    for run in recipe.runs:
        cfg = run_config(run, run_dir)
        passes = n_prompts * max(1, len(recipe.sources) - 1) * cfg.epochs
        steps = f"<= {cfg.max_steps} steps" if cfg.max_steps else f"~{passes} pair passes"
        stages.append(Stage(f"train:{run.name}", f"{_method(cfg.method)}" + (f" after {run.after}" if run.after
                                                                                else "") +
                            (f", curriculum {cfg.curriculum.schedule}" if cfg.curriculum else ""), steps,
                            _train_estimate(cfg, passes), lambda c=cfg: _train(c),
                            [cfg.pairs, *([marker(run_dir, f"train:{run.after}")] if run.after else [])],
                            cfg.model_dump(mode="json"), work_dir=cfg.out))
    if recipe.eval is not None:
        models = (["base"] if recipe.eval.base else []) + [r.name for r in _policies(recipe)]
        eval_prompts = "held-out prompts" if recipe.eval.prompts == "held-out" else str(recipe.eval.prompts)
        judges = recipe.eval.judge.kind + (f" and the {recipe.eval.judge_run} reward model" if recipe.eval.judge_run
                                           else "")
        stages.append(Stage("eval", f"{judges} vs reference on {eval_prompts}",
                            f"{len(models)} models", _eval_estimate(recipe, len(models)),
                            lambda: _evaluate(recipe, run_dir),
                            [pairs_cfg.out, *[marker(run_dir, f"train:{r.name}") for r in recipe.runs],
                             *_eval_files(recipe.eval, responses)],
                            [recipe.eval.model_dump(mode="json"), models]))
    stages.append(Stage("report", "HTML + Markdown report", "1 page", 10, lambda: _report(run_dir), [], None))
    return Plan(recipe, run_dir, stages)


def preflight(recipe: Recipe) -> list[str]:
    """What would stop a real run although the recipe is valid (a missing key, package or file), as lines;
    every answers file is read and checked now, so a format problem fails the dry run."""
    from pairforge.formats import responses_from_files
    from pairforge.generate.base import check_source
    from pairforge.io import read_records
    from pairforge.judge.run import judge_llm

    problems = []
    judges = [judge_llm(j) for j in (recipe.judge, recipe.eval.judge if recipe.eval else None) if j and j.llm]
    for source in [*recipe.sources, *judges]:
        try:
            check_source(source)
        except InputError as exc:
            problems.append(str(exc))
        if source.backend == "file" and source.path is not None and source.path.exists():
            responses_from_files([read_records(source.path)], "auto")
    if recipe.eval is not None and recipe.eval.reference is not None:
        responses_from_files([read_records(recipe.eval.reference)], "auto")
    return problems


def with_format_samples(recipe: Recipe) -> tuple[Recipe, list[str]]:
    """For a dry run: every input file that is not there yet is replaced by its format sample
    (`NAME.sample.EXT` beside it, a few rows in the same shape) when one ships with the recipe."""
    notes = []

    def sample(path: Path | None) -> Path | None:
        if path is None or path.exists():
            return path
        stand_in = path.with_name(f"{path.stem}.sample{path.suffix}")
        if not stand_in.exists():
            raise InputError(str(path), "no such file (and no format sample beside it)")
        note = f"{path} is not there yet: checked its format on {stand_in.name} (download it before a real run)"
        if note not in notes:
            notes.append(note)
        return stand_in

    checked = recipe.model_copy(deep=True)
    checked.prompts = sample(checked.prompts)
    for source in checked.sources:
        source.path = sample(source.path)
    if checked.eval is not None and checked.eval.prompts != "held-out":
        checked.eval.prompts = sample(checked.eval.prompts)  # type: ignore[assignment]
    if checked.eval is not None:
        checked.eval.reference = sample(checked.eval.reference)
    return checked, notes


def run(plan_: Plan, start: str | None = None, progress: Callable[[str, str], None] = lambda s, m: None,
        stop: str | None = None) -> list[dict[str, Any]]:
    """Run the plan's stages from the first up to `stop` (the last one named so); skip finished ones unless
    at or after `start`. Returns what each did."""
    check_stage_names(plan_, start, stop)
    names = [s.name for s in plan_.stages]
    last = max(i for i, n in enumerate(names) if _is(n, stop)) if stop else len(names) - 1
    forced = False
    done = []
    for stage in plan_.stages[:last + 1]:
        forced = forced or _is(stage.name, start)
        done_file = marker(plan_.run_dir, stage.name)
        fingerprint = stage.fingerprint()
        if not forced and stage.name != "report" and _finished(done_file, fingerprint):
            progress(stage.name, "skipped (finished, inputs and settings unchanged)")
            done.append({"stage": stage.name, "status": "skipped"})
            continue
        progress(stage.name, f"running: {stage.what}")
        _start_fresh_unless_resuming(stage, done_file, fingerprint)
        began = time.perf_counter()
        outputs = stage.run()
        seconds = time.perf_counter() - began
        write_json({"fingerprint": stage.fingerprint(), "outputs": [str(p) for p in outputs], "seconds": seconds},
                   done_file)
        done.append({"stage": stage.name, "status": "ran", "seconds": seconds, "outputs": [str(p) for p in outputs]})
    return done


def check_stage_names(plan_: Plan, start: str | None, stop: str | None) -> None:
    """--from / --to name stages of this recipe (checked by --dry-run too)."""
    names = [s.name for s in plan_.stages]
    for option, name in (("--from", start), ("--to", stop)):
        if name is not None and not any(_is(n, name) for n in names):
            raise InputError(option, f"no stage '{name}' in this recipe (stages: {', '.join(names)})")


def _start_fresh_unless_resuming(stage: Stage, done_file: Path, fingerprint: str) -> None:
    """A stage's partial work is resumed only when it was begun with the same settings and never finished;
    otherwise (settings changed, or a finished stage run again) its work folder starts empty, so a
    checkpoint made under other settings is never taken for this run's."""
    if stage.work_dir is None:
        return
    started = done_file.with_suffix(".started")
    finished_before = done_file.exists() and json.loads(done_file.read_text()).get("fingerprint") == fingerprint
    if stage.work_dir.exists() and (finished_before or not started.exists() or started.read_text() != fingerprint):
        shutil.rmtree(stage.work_dir)
    started.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(fingerprint)


def marker(run_dir: Path, stage: str) -> Path:
    """The file that records a finished stage; later stages take it as an input, so redoing a stage
    (a new marker) makes the stages that use its outputs run again."""
    return run_dir / "stages" / f"{stage.replace(':', '-')}.json"


def _is(stage: str, name: str | None) -> bool:
    """'train' names every train:RUN stage; any other name names one stage."""
    return name is not None and (stage == name or stage.split(":")[0] == name)


def _finished(marker: Path, fingerprint: str) -> bool:
    if not marker.exists():
        return False
    info = json.loads(marker.read_text())
    return info.get("fingerprint") == fingerprint and all(Path(p).exists() for p in info.get("outputs", []))


# --- the stages --------------------------------------------------------------------------------------

def _generate(recipe: Recipe, run_dir: Path) -> list[Path]:
    from pairforge.generate.run import generate

    result = generate(recipe, run_dir)
    _all_answered(result.failed, "generate")
    return [result.responses]


def _revise(recipe: Recipe, run_dir: Path) -> list[Path]:
    from pairforge.revise import revise

    result = revise(recipe, run_dir)
    _all_answered(result.failed, "revise")
    return [result.revisions]


def _all_answered(failed: int, command: str) -> None:
    """A stage with failed requests stops; they wait in the store for `pairforge COMMAND --retry-failed`."""
    if failed:
        raise InputError(command, f"{failed} requests failed; run again (they are retried with "
                         f"`pairforge {command} RECIPE --retry-failed --out RUN_DIR`)")


def _judge(recipe: Recipe, run_dir: Path) -> list[Path]:
    from pairforge.judge.run import judge

    result = judge(recipe, run_dir)
    return [result.scored, *([result.judgments] if result.judgments else [])]


def _rank(recipe: Recipe, run_dir: Path) -> list[Path]:
    from pairforge.judge.ranking import fit, read_comparisons
    from pairforge.judge.run import JUDGMENTS_FILE, SCORED_FILE

    _, comparisons = read_comparisons(run_dir / JUDGMENTS_FILE, run_dir / SCORED_FILE)
    cfg = recipe.ranking
    ranking = fit(comparisons, cfg.bootstrap, cfg.confidence, cfg.seed, cfg.min_win_probability)
    result = ranking.to_json()
    if recipe.pairs.rank:  # the declared order, checked against the judge's
        from pairforge.pairs.order import parse_rank

        found = set(result["rank"].split(", ")) if result["rank"] else set()
        judged = {s["name"] for s in result["sources"]}  # a judge's own reference is not judged against itself
        beats = sorted(parse_rank(recipe.pairs.rank).beats)
        checkable = [f"{a} > {b}" for a, b in beats if a in judged and b in judged]
        result["declared_check"] = {"declared": recipe.pairs.rank,
                                    "confirmed": [d for d in checkable if d in found],
                                    "not_confirmed": [d for d in checkable if d not in found],
                                    "not_judged": [f"{a} > {b}" for a, b in beats
                                                   if a not in judged or b not in judged]}
    return [write_json(result, run_dir / "ranking.json")]


def _pairs_config(recipe: Recipe, run_dir: Path, responses: Path):  # -> PairsConfig
    cfg = recipe.pairs
    from pairforge.revise import REVISIONS_FILE

    revisions = [run_dir / REVISIONS_FILE] if cfg.revision else []  # read beside the answers they revise
    update: dict[str, Any] = {"inputs": [responses, *revisions], "out": run_dir / "pairs.parquet"}
    generating = [s for s in recipe.answering_sources if s.backend != "file"]
    if cfg.prompt_format == "auto":  # pairs are trained in the format their answers were asked in
        plain = generating and all(s.endpoint == "completions" for s in generating)
        update["prompt_format"] = "text" if plain else "chat"
    if cfg.rank_from is not None and str(cfg.rank_from) == "ranking":
        update["rank_from"] = run_dir / "ranking.json"
    return cfg.model_copy(update=update)


def _pairs(cfg: Any) -> list[Path]:
    from pairforge.pairs.run import build_from_files

    return build_from_files(cfg).written  # no pair at all is its error


def run_config(run: RunConfig, run_dir: Path) -> RunConfig:
    update: dict[str, Any] = {"out": run_dir / "train" / run.name}
    if run.pairs is None:
        update["pairs"] = run_dir / ("pairs.judge.parquet" if run.split == "judge" else "pairs.parquet")
    if run.after is not None:
        update["model"] = str(run_dir / "train" / run.after / "model")
    return run.model_copy(update=update)


def _train(cfg: RunConfig) -> list[Path]:
    from pairforge.train.trainer import train

    result = train(cfg)
    return [result.out / "model", result.out / "metrics.jsonl"]


def _evaluate(recipe: Recipe, run_dir: Path) -> list[Path]:
    from pairforge.evaluate.run import EvalSettings, evaluate, trained_endpoint

    cfg = recipe.eval
    assert cfg is not None
    prompts = cfg.prompts if cfg.prompts != "held-out" else _held_out_prompts(run_dir)
    reference = cfg.reference or _reference_file(recipe, run_dir, cfg.reference_source)
    policies = _policies(recipe)
    base = policies[0].model if policies else recipe.train.model
    models = ([f"base={base}"] if cfg.base else []) + [f"{r.name}={run_dir / 'train' / r.name}" for r in policies]
    trained = [trained_endpoint(run_dir / "train" / r.name / "model") for r in policies]
    endpoint = next((e for e in trained if e), "chat")  # the base is asked as the runs were trained
    settings = EvalSettings(endpoint=endpoint, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            batch_size=cfg.batch_size, dtype=cfg.dtype, baseline="base" if cfg.base else None,
                            bootstrap=cfg.bootstrap)
    out = run_dir / "eval"
    result = evaluate(models, [], reference, cfg.judge, out, prompts, settings)
    written = [out / "leaderboard.json"]
    if cfg.judge_run:  # the same answers, scored again by a judge trained on pairs kept apart from training
        answers = [f"{e['model']}={out / (e['model'] + '.model_outputs.json')}" for e in result["models"]]
        judge = JudgeConfig(kind="reward-model", model=str(run_dir / "train" / cfg.judge_run / "model"),
                            batch_size=cfg.batch_size)
        evaluate([], answers, reference, judge, out / cfg.judge_run, prompts, settings)
        written.append(out / cfg.judge_run / "leaderboard.json")
    return written


def _eval_files(cfg: EvalConfig, responses: Path) -> list[Path]:
    """The files an evaluation reads besides the runs: its reference and prompts files, or the answers a
    reference source's come from — by content, so an edited file reruns the evaluation."""
    files = [cfg.reference] if cfg.reference else [responses] if cfg.reference_source else []
    return files + ([cfg.prompts] if isinstance(cfg.prompts, Path) else [])


def _policies(recipe: Recipe) -> list[RunConfig]:
    """The runs that train a model to answer (a reward-model run trains a judge: it is not evaluated)."""
    return [r for r in recipe.runs if r.method != "reward-model"]


def _held_out_prompts(run_dir: Path) -> Path:
    held_out = run_dir / "pairs.eval.parquet"
    if not held_out.exists():
        raise InputError("eval.prompts", "'held-out' needs the pairs' eval split: set pairs.eval_fraction > 0")
    frame = pl.read_parquet(held_out).select(S.PROMPT_ID, S.PROMPT).unique(S.PROMPT_ID, maintain_order=True)
    path = run_dir / "eval" / "prompts.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def _reference_file(recipe: Recipe, run_dir: Path, source: str | None) -> Path:
    """A source's answers (from responses.parquet) as the reference outputs file."""
    if source is None:
        raise InputError("eval", "expected `reference` (an answers file) or `reference_source` (a source name)")
    from pairforge.generate.run import RESPONSES_FILE

    frame = pl.read_parquet(run_dir / RESPONSES_FILE).filter((pl.col(S.SOURCE) == source) & (pl.col(S.SAMPLE) == 0))
    if frame.is_empty():
        raise InputError("eval.reference_source", f"no answers from source '{source}'")
    path = run_dir / "eval" / "reference.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.select(S.PROMPT_ID, S.PROMPT, S.SOURCE, S.RESPONSE).write_parquet(path)
    return path


def _report(run_dir: Path) -> list[Path]:
    from pairforge.report import build_report

    out = run_dir / "report.html"
    build_report([run_dir], out)
    return [out]


# --- estimates and --quick ---------------------------------------------------------------------------

def _generation_estimate(recipe: Recipe, answers: int) -> float | None:
    local = [s for s in recipe.sources if s.backend == "transformers" and s.model == "embedded"]
    if len(local) + sum(s.backend == "file" for s in recipe.sources) < len(recipe.sources):
        return None
    return sum(answers * s.max_new_tokens / _local_tokens_per_s(s.batch_size, s.dtype) for s in local)


def _train_estimate(cfg: RunConfig, passes: int) -> float | None:
    if cfg.model != "embedded" and cfg.after is None:
        return None
    if cfg.max_steps:
        passes = min(passes, cfg.max_steps * cfg.batch_size * cfg.grad_accum)
    return passes * _SECONDS_PER_PAIR_PASS / (_BF16_SPEED_UP if cfg.dtype == "bfloat16" else 1.0)


def _eval_estimate(recipe: Recipe, models: int) -> float | None:
    assert recipe.eval is not None
    share = recipe.pairs.eval_fraction if recipe.eval.prompts == "held-out" else 1.0
    prompts = 50 * share  # a rough count: the prompt file is read at run time
    rate = _local_tokens_per_s(recipe.eval.batch_size, recipe.eval.dtype)
    return models * prompts * recipe.eval.max_new_tokens / rate


def _method(method: Any) -> str:
    return method if isinstance(method, str) else "+".join(f"{w}*{n}" for n, w in method.items())


def _quick(recipe: Recipe, run_dir: Path) -> Recipe:
    """The recipe shrunk for a smoke test: the first prompts, short answers, a few steps."""
    from pairforge.formats import prompts_from_file

    q = recipe.quick
    if recipe.prompts is None:
        raise InputError("recipe", "`pairforge run` needs `prompts:`")
    small = recipe.model_copy(deep=True)
    prompts = prompts_from_file(recipe.prompts).head(q.prompts)
    path = run_dir / "quick-prompts.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts.select(S.PROMPT_ID, S.PROMPT).write_parquet(path)
    small.prompts = path
    for source in small.sources:
        source.max_new_tokens = min(source.max_new_tokens, q.max_new_tokens)
    for run in small.runs:
        run.max_steps = min(run.max_steps or q.max_steps, q.max_steps)
    if small.eval is not None:
        small.eval.max_new_tokens = min(small.eval.max_new_tokens, q.max_new_tokens)
        small.eval.bootstrap = q.bootstrap
    small.ranking.bootstrap = min(small.ranking.bootstrap, q.bootstrap)
    return small
