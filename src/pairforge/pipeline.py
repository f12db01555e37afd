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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairforge import estimates, stages
from pairforge import schema as S
from pairforge.config import JudgeConfig, SourceConfig
from pairforge.errors import InputError
from pairforge.files import check_output, file_digest, write_json, write_table
from pairforge.fingerprints import model_content
from pairforge.layout import RunDir
from pairforge.models import resolved_dtype
from pairforge.recipe import Recipe, check_reads_apart, load_recipe
from pairforge.rounds import base_model, policy_run, round_dir, round_recipe


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
    # the same work with `work_dir` started over: it deletes the earlier work itself once its inputs are checked,
    # so a bad edit of a finished run's settings costs nothing
    run_fresh: Callable[[], list[Path]] | None = None

    def __post_init__(self) -> None:
        assert (self.work_dir is None) == (self.run_fresh is None), "a stage with a work folder can start it over"
    marker: Path | None = None  # the record of its last finished run (`RunDir.marker`)
    models: list[str] = field(default_factory=list)  # models it reads: a local folder counts by its content

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for path in self.inputs:
            digest.update(file_digest(path).encode())
        for model in self.models:  # read when the stage is reached: a model an earlier stage trains exists by then
            content = model_content(model)
            if content is not None:
                digest.update(f"{model}={content}".encode())
        return digest.hexdigest()


@dataclass
class Plan:
    recipe: Recipe
    run: RunDir
    stages: list[Stage]


def load(recipe_path: Path, quick: bool = False) -> tuple[Recipe, Path]:
    """The recipe and its run folder (--quick: the `-quick` folder beside it); writes nothing, so a command can
    hold the folder before anything is written there (`quick_recipe` writes the smoke test's prompts)."""
    recipe = load_recipe(recipe_path)
    run_dir = recipe.run_dir or recipe_path.parent / "runs" / recipe_path.stem
    check_reads_apart(recipe, run_dir, str(recipe_path))
    return recipe, run_dir.with_name(run_dir.name + "-quick") if quick else run_dir


def plan(recipe: Recipe, run_dir: Path, retry_failed: bool = False) -> Plan:
    """The stages this recipe needs, with sizes and rough time estimates; checks inputs, runs nothing.
    An iterative recipe has every stage but the report once per round ('round-2:train:dpo'), each round's
    first stage taking the previous round's trained policy as an input."""
    from pairforge.records import prompts_from_file

    if recipe.prompts is None or not recipe.sources:
        raise InputError("recipe", "`pairforge run` needs `prompts:` and `sources:`")
    n_prompts = prompts_from_file(recipe.prompts).height
    stages_: list[Stage] = []
    restarted = {f"train:{r.name}" for r in recipe.runs if r.after is None and r.trains_policy}
    first_round: dict[str, float | None] = {}
    for k in range(1, recipe.rounds + 1):
        folder = round_dir(run_dir, recipe, k)
        after = [round_dir(run_dir, recipe, k - 1).marker(f"train:{policy_run(recipe)}")] if k > 1 else []
        prefix = f"round-{k}:" if recipe.rounds > 1 else ""
        for stage in _round_stages(round_recipe(recipe, run_dir, k), folder, n_prompts, retry_failed):
            stage.marker = folder.marker(stage.name)
            if k == 1:
                first_round[stage.name] = stage.estimate_s
            elif stage.estimate_s is None:  # round k starts from a trained folder: no size known from its name
                stage.estimate_s = estimates.later_round_estimate(recipe, stage.name, first_round,
                                                         n_prompts * recipe.samples_per_source)
            stage.name = prefix + stage.name
            if stage.name.endswith("generate") and recipe.rounds > 1:
                # the policy's identity is its round's start model: the base, or the previous round's training
                # (the marker in `after`), not the trained folder, which does not exist when the plan is made
                stage.inputs += after
                stage.settings = [stage.settings[0], base_model(recipe),
                                  [{"name": s.name, **s.cache_settings()} for s in recipe.answering_sources]]
            if stage.name.removeprefix(prefix) in restarted:  # it starts from the previous round's policy
                stage.inputs += after
            stages_.append(stage)
    top = RunDir(run_dir)
    stages_.append(Stage("report", "HTML + Markdown report", "1 page", 10, lambda: stages.report(recipe, top), [], None,
                         marker=top.marker("report")))
    return Plan(recipe, top, stages_)


def _round_stages(recipe: Recipe, folder: RunDir, n_prompts: int, retry_failed: bool) -> list[Stage]:
    """One round's stages (the whole recipe's when it has one round), in order, without the report."""
    answers = n_prompts * recipe.samples_per_source
    answering = recipe.answering_sources
    plan_ = [Stage("generate", f"{len(answering)} sources answer {n_prompts} prompts",
                   f"{answers * len(answering)} answers",
                   estimates.generation_estimate(recipe, answers),
                   lambda: stages.generate(recipe, folder, retry_failed),
                   [recipe.prompts, *[s.path for s in recipe.sources if s.path]],
                   [recipe.samples_per_source, [{"name": s.name, **s.cache_settings()} for s in answering]])]
    revision = recipe.pairs.revision
    if revision is not None:
        reviser = next(s for s in recipe.sources if s.name == revision.reviser)
        plan_.append(Stage("revise", f"{revision.reviser} revises {revision.original}'s answers",
                           f"{answers} revisions", None, lambda: stages.revise(recipe, folder, retry_failed),
                           [folder.responses],
                           [revision.model_dump(include={"reviser", "original", "template"}),
                            reviser.cache_settings()]))  # the bounds are the pairs stage's
    if recipe.judge is not None:
        judge_estimate = 10 if recipe.judge.kind == "similarity" else None
        plan_.append(Stage("judge", f"{recipe.judge.kind} judge", f"{answers * len(recipe.sources)} answers",
                           judge_estimate, lambda: stages.judge(recipe, folder, retry_failed), [folder.responses],
                           recipe.judge.model_dump(mode="json"), models=_judge_models(recipe.judge)))
        plan_.append(Stage("rank", "Bradley-Terry source strength", f"{len(recipe.sources)} sources", 5,
                            lambda: [stages.rank(recipe, folder).written], [folder.scored],
                            recipe.ranking.model_dump(mode="json")))
    pairs_cfg = stages.pairs_config(recipe, folder)
    if revision is not None:
        what = f"pairs (revised, edit in ({revision.min_edit}, {revision.max_edit}])"
    else:
        what = f"pairs ({pairs_cfg.resolved_strategy}, {pairs_cfg.pair_types})"
    types, per_prompt = estimates.pair_types(recipe)
    plan_.append(Stage("pairs", what, f"<= {n_prompts * per_prompt} pairs", 5,
                        lambda: stages.pairs(recipe, folder),
                        [*pairs_cfg.inputs, *([pairs_cfg.rank_from] if pairs_cfg.rank_from else []),
                         *pairs_cfg.filters.decontaminate], pairs_cfg.model_dump(mode="json")))
    for entry in recipe.runs:
        cfg = stages.run_config(entry, folder)
        split = recipe.pairs.judge_fraction if cfg.split == "judge" else \
            1 - recipe.pairs.eval_fraction - recipe.pairs.judge_fraction
        passes = round(n_prompts * split * per_prompt * estimates.passes_per_pair(cfg, types))
        steps = f"<= {cfg.max_steps} steps" if cfg.max_steps else f"~{passes} pair passes"
        plan_.append(Stage(f"train:{entry.name}", f"{_method(cfg.method)}" + (f" after {entry.after}" if entry.after
                                                                                  else "") +
                            (f", curriculum {cfg.curriculum.schedule}" if cfg.curriculum else ""), steps,
                            estimates.train_estimate(cfg, passes), lambda e=entry: stages.train(e, folder),
                            [cfg.pairs, *([folder.marker(f"train:{entry.after}")] if entry.after else [])],
                            cfg.resolved().model_dump(mode="json"), work_dir=cfg.out,
                            run_fresh=lambda e=entry: stages.train(e, folder, fresh=True), models=[cfg.model]))
    if recipe.eval is not None:
        models = (["base"] if recipe.eval.base else []) + [r.name for r in stages.policies(recipe)]
        eval_prompts = "held-out prompts" if recipe.eval.prompts == "held-out" else str(recipe.eval.prompts)
        judges = recipe.eval.judge.kind + (f" and the {recipe.eval.judge_run} reward model" if recipe.eval.judge_run
                                           else "")
        plan_.append(Stage("eval", f"{judges} vs reference on {eval_prompts}",
                            f"{len(models)} models", estimates.eval_estimate(recipe, len(models), n_prompts),
                            lambda: stages.evaluate(recipe, folder, retry_failed),
                            [pairs_cfg.out, *[folder.marker(f"train:{r.name}") for r in recipe.runs],
                             *stages.eval_files(recipe.eval, folder)],
                            [{**recipe.eval.model_dump(mode="json"), "dtype": resolved_dtype(recipe.eval.dtype)},
                             models],
                            models=[*([recipe.eval.base_model or base_model(recipe)] if recipe.eval.base else []),
                                    *_judge_models(recipe.eval.judge)]))
    return plan_


def check_folders(plan_: Plan) -> None:
    """Every folder the run writes in is a folder or not there yet: a file in the way (`eval`, `stages`) is one
    line now, before any stage runs, not a traceback when a stage makes the folder."""
    recipe, root = plan_.recipe, plan_.run.root
    rounds = [round_dir(root, recipe, k).folders() for k in range(1, recipe.rounds + 1)]
    folders = [*plan_.run.folders(), *(f for folders in rounds for f in folders),
               *(s.work_dir for s in plan_.stages if s.work_dir)]
    for folder in dict.fromkeys(folders):
        check_output(folder, "folder", "run_dir")


def _judge_models(judge: JudgeConfig) -> list[str]:
    """The models a judge reads: its scoring model, or its LLM when that runs here."""
    if judge.llm is None:
        return [judge.model]
    return [judge.llm.model] if judge.llm.backend in ("transformers", "vllm") else []


def preflight(recipe: Recipe) -> list[str]:
    """What would stop a real run although the recipe is valid, before any stage: a missing key, package or file
    is a line returned (a dry run only warns); a file source that fails the generate stage's checks (read in full)
    or an API server that does not answer a ping is an InputError, in the dry run too."""
    from pairforge.files import read_records
    from pairforge.generate.run import file_answers, read_file_source
    from pairforge.judge.run import judge_llm
    from pairforge.records import prompts_from_file, responses_from_files
    from pairforge.requests.backends.base import check_source

    recipe = round_recipe(recipe, Path("."), 1)  # '@round' sources are the base model in round 1
    problems = []
    judges = [judge_llm(j) for j in (recipe.judge, recipe.eval.judge if recipe.eval else None) if j and j.llm]
    servers = set()
    for source in [*recipe.sources, *judges]:
        try:
            check_source(source)
        except InputError as exc:
            problems.append(str(exc))
            continue
        if source.backend == "file" and recipe.prompts is not None and recipe.prompts.is_file():
            file_answers(source, prompts_from_file(recipe.prompts), recipe.samples_per_source, recipe.prompts)
        elif source.backend == "file":
            read_file_source(source)
        elif source.backend == "openai" and (source.base_url, source.api_key_env) not in servers:
            servers.add((source.base_url, source.api_key_env))
            _check_answers(source)
    if recipe.eval is not None and recipe.eval.reference is not None:
        responses_from_files([read_records(recipe.eval.reference)], "auto")
    return problems


def _check_answers(source: SourceConfig) -> None:
    from pairforge.requests.backends.openai_api import unanswered_ping

    if (reason := unanswered_ping(source)) is not None:
        raise InputError(f"source '{source.name}'", f"the server at base_url {source.base_url or '(OpenAI)'} does "
                         f"not answer ({reason}); start it, or fix base_url")


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
        done_file = stage.marker or plan_.run.marker(stage.name)
        fingerprint = stage.fingerprint()
        if not forced and stage.name != "report" and _finished(done_file, fingerprint):
            progress(stage.name, "skipped (finished, inputs and settings unchanged)")
            done.append({"stage": stage.name, "status": "skipped"})
            continue
        progress(stage.name, f"running: {stage.what}")
        fresh = _starts_fresh(stage, done_file, fingerprint)
        began = time.perf_counter()
        outputs = stage.run_fresh() if fresh and stage.run_fresh else stage.run()
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
    if start is not None and stop is not None:
        first = min(i for i, n in enumerate(names) if _is(n, start))
        if first > max(i for i, n in enumerate(names) if _is(n, stop)):
            raise InputError("--from", f"expected a stage at or before --to '{stop}', found '{start}', which comes "
                             "after it (nothing would run)")


def _starts_fresh(stage: Stage, done_file: Path, fingerprint: str) -> bool:
    """A stage's partial work is resumed only when it was begun with the same settings and never finished;
    otherwise (settings changed, or a finished stage run again) its work folder starts over (`run_fresh`), so
    a checkpoint made under other settings is never taken for this run's."""
    if stage.work_dir is None:
        return False
    started = done_file.with_suffix(".started")
    finished_before = _marker(done_file).get("fingerprint") == fingerprint
    fresh = stage.work_dir.exists() and (finished_before or not started.exists() or started.read_text() != fingerprint)
    started.parent.mkdir(parents=True, exist_ok=True)
    # a fresh start may fail before it clears the folder: until the stage finishes, the next attempt starts fresh
    # too (resuming would take the earlier run's checkpoint for this one's, which the trainer refuses)
    started.write_text(("fresh " if fresh else "") + fingerprint)
    return fresh


def _is(stage: str, name: str | None) -> bool:
    """'train' names every train:RUN stage (of every round), 'round-2' every stage of round 2,
    'round-2:train' its train stages; any other name names one stage."""
    if name is None:
        return False
    bare = stage.split(":", 1)[1] if stage.startswith("round-") else stage
    return any(s == name or s.startswith(name + ":") for s in (stage, bare))


def _finished(marker: Path, fingerprint: str) -> bool:
    info = _marker(marker)
    outputs = info.get("outputs", [])
    return (info.get("fingerprint") == fingerprint and isinstance(outputs, list)
            and all(Path(str(p)).exists() for p in outputs))


def _marker(path: Path) -> dict[str, Any]:
    """A stage's record of its last finished run; none, or one that is not a JSON object (a hand edit, a disk
    that filled up), counts as not finished: the stage runs again."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


# --- --quick ---------------------------------------------------------------------------------------

def _method(method: Any) -> str:
    return method if isinstance(method, str) else "+".join(f"{w}*{n}" for n, w in method.items())


def quick_recipe(recipe: Recipe, run_dir: Path, scratch: Path | None = None) -> Recipe:
    """The recipe shrunk for a smoke test (`--quick`): the first prompts (written in the run folder, or in `scratch`
    for a dry run, which writes nothing there), short answers, a few steps."""
    from pairforge.records import prompts_from_file

    q = recipe.quick
    if recipe.prompts is None:
        raise InputError("recipe", "`pairforge run` needs `prompts:`")
    small = recipe.model_copy(deep=True)
    prompts = prompts_from_file(recipe.prompts).head(q.prompts)
    path = RunDir(run_dir).quick_prompts if scratch is None else scratch / RunDir(run_dir).quick_prompts.name
    check_output(path.parent, "folder", "run_dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(prompts.select(S.PROMPT_ID, S.PROMPT), path)
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
