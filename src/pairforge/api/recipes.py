"""A whole recipe from Python: `run` takes the steps `pairforge run` takes (the run folder held, the plan checked,
finished stages skipped) and returns a `RunResult`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pairforge.api.folders import writing
from pairforge.errors import InputError
from pairforge.layout import RunDir
from pairforge.recipe import Recipe, check_reads_apart, load_recipe
from pairforge.requests.shards import Shard, chosen
from pairforge.rounds import round_dir

if TYPE_CHECKING:
    from pairforge.costs import Estimate
    from pairforge.evaluation.leaderboard import Leaderboard
    from pairforge.judging.ranking import Ranking
    from pairforge.pipeline import Plan
    from pairforge.stage_unit import StageRun


@dataclass
class RunResult:
    """What a recipe run did and where its outputs are (the last round's, for an iterative recipe)."""

    run_dir: Path
    recipe: Recipe  # as run (--quick: shrunk)
    stages: list[StageRun] = field(default_factory=list)  # each stage: ran (seconds, outputs) or skipped
    leaderboard: Leaderboard | None = None  # eval/leaderboard.json
    ranking: Ranking | None = None  # ranking.json
    pairs: Path | None = None
    report: Path | None = None


def run(recipe: Recipe | str | Path, quick: bool = False, *, run_dir: str | Path | None = None,
        from_stage: str | None = None, to_stage: str | None = None, retry_failed: bool = False,
        progress: Callable[[str, str], None] | None = None,
        on_plan: Callable[[Plan, list[str]], None] | None = None) -> RunResult:
    """Run the recipe (a YAML path or a `Recipe`) end to end in its run folder, as `pairforge run` does: the folder
    held by this run alone, finished stages skipped (so a rerun resumes), `from_stage` and every later stage run
    again, `to_stage` the last. `quick` is the smoke test (few prompts, short answers, 2 steps per run) in the
    `-quick` folder beside. A `Recipe` runs in `run_dir` (default: its own `run_dir`). `progress(stage, message)`
    is called as each stage begins; `on_plan(plan, warnings)` once the plan is made; a warning stops the run."""
    from pairforge import pipeline
    from pairforge.evaluation.leaderboard import Leaderboard
    from pairforge.judging.ranking import Ranking

    cfg, folder, where = _recipe_and_folder(recipe, quick, run_dir)
    with writing(folder, "run_dir") as still_held:  # one command per run folder, from its first write on
        cfg = pipeline.quick_recipe(cfg, folder) if quick else cfg
        the_plan, warnings = checked_plan(cfg, folder, from_stage, to_stage, retry_failed)
        if on_plan is not None:
            on_plan(the_plan, warnings)
        if warnings:
            raise InputError(where, warnings[0])

        def stage_begins(name: str, message: str) -> None:  # the folder still ours?
            still_held()
            if progress is not None:
                progress(name, message)

        done = pipeline.execute(the_plan, from_stage, stage_begins, to_stage)
    last = round_dir(folder, cfg, cfg.rounds)
    found = {name: path if path.exists() else None for name, path in
             {"pairs": last.pairs(), "report": RunDir(folder).report}.items()}
    board = Leaderboard.read(last.leaderboard) if last.leaderboard.exists() else None
    ranking = Ranking.read(last.ranking) if last.ranking.exists() else None
    return RunResult(folder, cfg, done, board, ranking, **found)


def _recipe_and_folder(recipe: Recipe | str | Path, quick: bool,
                       run_dir: str | Path | None) -> tuple[Recipe, Path, str]:
    """The recipe, its run folder (`-quick` beside it for a smoke test) and the name its errors go by."""
    from pairforge import pipeline

    if not isinstance(recipe, Recipe) and run_dir is None:
        cfg, folder = pipeline.load(Path(recipe), quick)
        return cfg, folder, str(recipe)
    where = "recipe" if isinstance(recipe, Recipe) else str(recipe)
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    folder = Path(run_dir) if run_dir else recipe.run_dir
    if folder is None:
        raise InputError("run_dir", "expected a run folder for a Recipe given in memory (run_dir=..., or the "
                         "recipe's own run_dir)")
    check_reads_apart(recipe, folder, where)
    return recipe, folder.with_name(folder.name + "-quick") if quick else folder, where


def checked_plan(cfg: Recipe, run_dir: Path, start: str | None, stop: str | None, retry_failed: bool,
                 dry_run: bool = False) -> tuple[Plan, list[str]]:
    """The plan, checked: stage names, the folders it writes in, and what would stop it (`preflight`) as warnings;
    a dry run checks input files not there yet on their format samples."""
    from pairforge import pipeline

    checked, notes = pipeline.with_format_samples(cfg) if dry_run else (cfg, [])
    the_plan = pipeline.plan(checked, run_dir, retry_failed)
    pipeline.check_stage_names(the_plan, start, stop)
    pipeline.check_folders(the_plan)
    return the_plan, [*notes, *pipeline.preflight(checked)]


def estimate(recipe: Recipe | str | Path, stages: tuple[str, ...] = ("generate", "revise", "judge", "eval"),
             sources: list[str] | None = None, shard: str | Shard | None = None) -> Estimate:
    """What the recipe (a YAML path or a `Recipe`) will ask its models in these stages, before anything runs: requests,
    prompt tokens (each local model's tokenizer; a server's model at characters / 4), completion tokens at most and
    cost at each source's `price`, per stage and source (`sources`: only these; `shard="K/N"`: that shard's
    prompts). Asks no model, writes nothing; `pairforge run --dry-run` and `pairforge generate --dry-run` print it."""
    from pairforge.costs import Estimate
    from pairforge.costs import estimate as estimated

    cfg = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    result = estimated(cfg, stages, chosen(shard))
    return result if sources is None else Estimate([x for x in result.lines if x.source in sources], result.rounds)
