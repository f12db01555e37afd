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

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pairforge import rank_stage, revision_stage
from pairforge import schema as S
from pairforge.config import SourceConfig
from pairforge.errors import InputError
from pairforge.evaluation import stage as eval_stage
from pairforge.files import check_output, write_table
from pairforge.generation import stage as generate_stage
from pairforge.judging import stage as judge_stage
from pairforge.layout import RunDir
from pairforge.pairs import stage as pairs_stage
from pairforge.recipe import Recipe, check_reads_apart, load_recipe
from pairforge.reporting import stage as report_stage
from pairforge.rounds import policy_run, round_dir, round_recipe
from pairforge.stage_unit import Round, StageMarker, StageRun, StageUnit
from pairforge.training import stage as train_stage

# one round's stages, in order (the report follows the last round)
STAGES = (generate_stage.units, revision_stage.units, judge_stage.units, rank_stage.units, pairs_stage.units,
          train_stage.units, eval_stage.units)


@dataclass
class Plan:
    recipe: Recipe
    folder: RunDir  # the run folder
    stages: list[StageUnit]


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
    units given their round's recipe and the previous round's trained policy (`Round`)."""
    from pairforge.records import prompts_from_file

    if recipe.prompts is None or not recipe.sources:
        raise InputError("recipe", "`pairforge run` needs `prompts:` and `sources:`")
    n_prompts = prompts_from_file(recipe.prompts).height
    units: list[StageUnit] = []
    first_round: dict[str, float | None] = {}
    for k in range(1, recipe.rounds + 1):
        folder = round_dir(run_dir, recipe, k)
        previous = [round_dir(run_dir, recipe, k - 1).marker(f"train:{policy_run(recipe)}")] if k > 1 else []
        this_round = round_recipe(recipe, run_dir, k)
        round_ = Round(recipe, this_round, k, folder, n_prompts, retry_failed, previous,
                       pairs_stage.pair_counts(this_round))
        for unit in (u for stage_units in STAGES for u in stage_units(round_)):
            unit.marker = folder.marker(unit.name)
            if k == 1:
                first_round[unit.name] = unit.estimate_s
            elif unit.estimate_s is None:  # round k does round 1's work on models of round 1's shape (a trained
                unit.estimate_s = first_round.get(unit.name)  # folder has no size known from its name)
            unit.name = f"round-{k}:{unit.name}" if recipe.rounds > 1 else unit.name
            units.append(unit)
    top = RunDir(run_dir)
    return Plan(recipe, top, [*units, report_stage.unit(recipe, top)])


def check_folders(plan_: Plan) -> None:
    """Every folder the run writes in is a folder or not there yet: a file in the way (`eval`, `stages`) is one
    line now, before any stage runs, not a traceback when a stage makes the folder."""
    recipe, root = plan_.recipe, plan_.folder.root
    rounds = [round_dir(root, recipe, k).folders() for k in range(1, recipe.rounds + 1)]
    folders = [*plan_.folder.folders(), *(f for folders in rounds for f in folders),
               *(s.work_dir for s in plan_.stages if s.work_dir), *(o.parent for s in plan_.stages for o in s.outputs)]
    for folder in dict.fromkeys(folders):
        check_output(folder, "folder", "run_dir")


def preflight(recipe: Recipe) -> list[str]:
    """What would stop a real run although the recipe is valid, before any stage: a missing key, package or file
    is a line returned (a dry run only warns); a file source that fails the generate stage's checks (read in full)
    or an API server that does not answer a ping is an InputError, in the dry run too."""
    from pairforge.files import read_records
    from pairforge.generation.answers import file_answers, read_file_source
    from pairforge.judging.scoring import judge_llm
    from pairforge.records import prompts_from_file, responses_from_files
    from pairforge.requests.backends.base import check_source

    recipe = round_recipe(recipe, Path("."), 1)  # '@round' sources are the base model in round 1
    problems = []
    judges = [judge_llm(j) for j in (recipe.judge, recipe.eval.judge if recipe.eval else None) if j and j.llm]
    asked = []
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
        else:
            asked.append(source)
    ping_servers(asked)
    if recipe.eval is not None and recipe.eval.reference is not None:
        responses_from_files([read_records(recipe.eval.reference)], "auto")
    return problems


def ping_servers(sources: list[SourceConfig]) -> None:
    """Every API server these sources ask (generation sources, a reviser, LLM judges) asked once for its model list:
    one that does not answer is an InputError naming the first source that uses it."""
    from pairforge.requests.backends.openai_api import unanswered_ping

    servers = set()
    for source in sources:
        if source.backend != "openai" or (source.base_url, source.api_key_env) in servers:
            continue
        servers.add((source.base_url, source.api_key_env))
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


def execute(plan_: Plan, start: str | None = None, progress: Callable[[str, str], None] = lambda s, m: None,
            stop: str | None = None) -> list[StageRun]:
    """Run the plan's stages from the first up to `stop` (the last one named so); skip finished ones unless
    at or after `start`. Returns what each did."""
    check_stage_names(plan_, start, stop)
    names = [s.name for s in plan_.stages]
    last = max(i for i, n in enumerate(names) if _is(n, stop)) if stop else len(names) - 1
    forced = False
    done = []
    for stage in plan_.stages[:last + 1]:
        forced = forced or _is(stage.name, start)
        done_file = stage.marker or plan_.folder.marker(stage.name)
        fingerprint = stage.fingerprint()
        marker = StageMarker.found(done_file)
        if not forced and stage.name != "report" and marker is not None and marker.finished(fingerprint):
            progress(stage.name, "skipped (finished, inputs and settings unchanged)")
            done.append(StageRun(stage.name, "skipped"))
            continue
        progress(stage.name, f"running: {stage.what}")
        fresh = _starts_fresh(stage, done_file, fingerprint)
        began = time.perf_counter()
        outputs = stage.produce_fresh() if fresh and stage.produce_fresh else stage.produce()
        seconds = time.perf_counter() - began
        written = [str(p) for p in outputs]
        StageMarker(fingerprint=stage.fingerprint(), outputs=written, seconds=seconds).write(done_file)
        done.append(StageRun(stage.name, "ran", seconds, written))
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


def _starts_fresh(stage: StageUnit, done_file: Path, fingerprint: str) -> bool:
    """A stage's partial work is resumed only when it was begun with the same settings and never finished;
    otherwise (settings changed, or a finished stage run again) its work folder starts over (`produce_fresh`), so
    a checkpoint made under other settings is never taken for this run's."""
    if stage.work_dir is None:
        return False
    started = done_file.with_suffix(".started")
    earlier = StageMarker.found(done_file)
    finished_before = earlier is not None and earlier.fingerprint == fingerprint
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


# --- --quick ---------------------------------------------------------------------------------------

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
