"""The commands over whole runs and models: `run` (the recipe end to end), `eval` (models against reference
answers) and `report`; the first two end with the same leaderboard."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from typer.core import TyperCommand

from pairforge import options, render
from pairforge.cli.common import console, fail_cleanly, say, show, writing
from pairforge.config import EvalConfig
from pairforge.errors import InputError
from pairforge.layout import RunDir
from pairforge.recipe import Recipe

if TYPE_CHECKING:
    from pairforge.evaluate.leaderboard import Leaderboard
    from pairforge.pipeline import Plan

_EVAL = {name: info.default for name, info in EvalConfig.model_fields.items()}  # the flags' defaults: the recipe's


class ManyValues(TyperCommand):
    """`--models a=x b=y` as well as `--models a=x --models b=y`: a click option takes one value, so the words after
    one of `many` (up to the next option) are each given to it. The command has no positional arguments."""

    many = ("--models", "--outputs")

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        spread: list[str] = []
        option = None  # the option of `many` whose values are being read
        for arg in args:
            if arg.startswith("-"):
                option = arg.split("=", 1)[0] if arg.split("=", 1)[0] in self.many else None
            elif option is not None and spread[-1] != option:
                spread.append(option)
            spread.append(arg)
        return super().parse_args(ctx, spread)


def eval_command(
    models: list[str] | None = typer.Option(None, help="model folders or training runs to answer the prompts "
                                            "(NAME=PATH to name one); one or more: --models a=x b=y"),
    outputs: list[Path] | None = typer.Option(None, help="existing model_outputs.json files; one or more"),
    reference: Path = typer.Option(..., help="reference answers (AlpacaEval shape: instruction, output)"),
    prompts: Path | None = typer.Option(None, help="eval prompts (default: the reference's instructions)"),
    judge: str = typer.Option("similarity", help="a recipe YAML (its judge: section), 'similarity', or "
                              "'reward-model:PATH'"),
    out: Path = typer.Option(Path("eval"), help="folder: leaderboard.json, eval.parquet, *.model_outputs.json"),
    max_new_tokens: int | None = typer.Option(None, help=f"--models: answer length limit "
                                              f"({_EVAL['max_new_tokens']})"),
    temperature: float | None = typer.Option(None, help=f"--models: 0 = greedy ({_EVAL['temperature']})"),
    bootstrap: int | None = typer.Option(None, help=f"bootstrap resamples for intervals and paired tests "
                                         f"({_EVAL['bootstrap']})"),
    baseline: str | None = typer.Option(None, help="test every other model against this one (e.g. base): "
                                        "difference with its 95% interval"),
    batch_size: int | None = typer.Option(None, help=f"--models: prompts per generate() call "
                                          f"({_EVAL['batch_size']})"),
    dtype: str | None = typer.Option(None, help=f"--models: auto | float32 | bfloat16 | float16 while answering "
                                     f"({_EVAL['dtype']}: bfloat16 where the device computes it natively)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="ask the models and the judge again where they "
                                      "failed before"),
) -> None:
    """Judge models against reference answers: win rate, interval, length-controlled win rate, leaderboard."""
    def run() -> None:
        from pairforge.evaluate.run import EvalSettings, evaluate

        given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "bootstrap": bootstrap,
                 "batch_size": batch_size, "dtype": dtype}
        cfg = options.validated(EvalConfig, EvalConfig(), given)
        result = evaluate(models or [], outputs or [], reference, options.judge_config(judge), out, prompts,
                          EvalSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       bootstrap=cfg.bootstrap, baseline=baseline, batch_size=cfg.batch_size,
                                       dtype=cfg.dtype), retry_failed=retry_failed)
        _show_leaderboard(result)
        console.print(f"wrote {out / 'leaderboard.json'}, {out / 'eval.parquet'}", highlight=False)

    fail_cleanly(run)


def _show_outcome(recipe: Recipe, run_dir: Path) -> None:
    """After `pairforge run`: the declared order checked, the (last round's) leaderboard, every round's scores."""
    from pairforge.evaluate.leaderboard import Leaderboard
    from pairforge.judge.ranking import Ranking
    from pairforge.report import round_entries
    from pairforge.rounds import round_dir

    last = round_dir(run_dir, recipe, recipe.rounds)
    if last.ranking.exists() and (check := Ranking.read(last.ranking).declared_check):
        say(render.declared_check(check))
    if last.leaderboard.exists():
        _show_leaderboard(Leaderboard.read(last.leaderboard))
    if recipe.rounds > 1:
        show(render.rounds(round_entries(sorted(run_dir.glob("round-*/eval/leaderboard.json")))))
    if RunDir(run_dir).report.exists():
        say(f"report: {RunDir(run_dir).report}")


def _show_leaderboard(board: Leaderboard) -> None:
    show(render.leaderboard(board))
    for note in render.leaderboard_notes(board):
        say(note)


def report_command(
    paths: list[Path] = typer.Argument(..., help="run folders / files: pairs summaries, training runs, judge and "
                                       "eval outputs"),
    out: Path = typer.Option(Path("report.html"), help="the HTML page; the Markdown twin and PNGs go beside it"),
) -> None:
    """One self-contained HTML report (and a Markdown twin) of pairs, sources, training and evaluation."""
    def run() -> None:
        from pairforge.report import build_report

        sections = build_report(paths, out)
        console.print(f"wrote {out} and {out.with_suffix('.md')} ({', '.join(s.title for s in sections)})",
                      highlight=False)

    fail_cleanly(run)


def run_command(
    recipe: Path = typer.Argument(..., help="recipe YAML: prompts, sources, judge, pairs, runs, eval"),
    from_stage: str | None = typer.Option(None, "--from", help="run this stage and every later one again "
                                          "(generate, revise, judge, rank, pairs, train, train:NAME, eval, report; "
                                          "iterative: round-2, round-2:train)"),
    to_stage: str | None = typer.Option(None, "--to", help="stop after this stage (e.g. pairs: data only)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, check the input files, print the plan; run "
                                 "nothing"),
    quick: bool = typer.Option(False, "--quick", help="a smoke test: few prompts, short answers, 2 steps per run"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="ask again the requests (answers, revisions, "
                                      "verdicts) that failed before; they wait in the store"),
) -> None:
    """The whole recipe end to end in one run folder; finished stages are skipped, so a re-run resumes."""
    def run() -> None:
        from pairforge import pipeline

        cfg, run_dir = pipeline.load(recipe, quick)
        if dry_run:  # takes no lock and writes nothing: --quick's prompts go to a folder gone once they are counted
            with tempfile.TemporaryDirectory(prefix="pairforge-") as scratch:
                small = pipeline.quick_recipe(cfg, run_dir, Path(scratch)) if quick else cfg
                the_plan, warnings = _checked_plan(small, run_dir, from_stage, to_stage, retry_failed, dry_run)
            _show_plan(recipe, run_dir, quick, the_plan, warnings)
            console.print("dry run: the recipe is valid and its inputs read; nothing was run", highlight=False)
            return
        with writing(run_dir, "run_dir") as still_held:  # one command per run folder, from its first write on
            cfg = pipeline.quick_recipe(cfg, run_dir) if quick else cfg
            the_plan, warnings = _checked_plan(cfg, run_dir, from_stage, to_stage, retry_failed, dry_run)
            _show_plan(recipe, run_dir, quick, the_plan, warnings)
            if warnings:
                raise InputError(str(recipe), warnings[0])
            started = time.perf_counter()

            def progress(name: str, message: str) -> None:  # called as each stage begins: the folder still ours?
                still_held()
                console.print(f"[bold]{name}[/]: {message}", highlight=False)

            done = pipeline.run(the_plan, from_stage, progress, to_stage)
            show(render.finished(done, time.perf_counter() - started))
            _show_outcome(cfg, run_dir)

    fail_cleanly(run)


def _checked_plan(cfg: Recipe, run_dir: Path, start: str | None, stop: str | None, retry_failed: bool,
                  dry_run: bool) -> tuple[Plan, list[str]]:
    """The plan, checked: stage names, the folders it writes in, and what would stop it (`preflight`) as warnings;
    a dry run checks input files not there yet on their format samples."""
    from pairforge import pipeline

    checked, notes = pipeline.with_format_samples(cfg) if dry_run else (cfg, [])
    the_plan = pipeline.plan(checked, run_dir, retry_failed)
    pipeline.check_stage_names(the_plan, start, stop)
    pipeline.check_folders(the_plan)
    return the_plan, [*notes, *pipeline.preflight(checked)]


def _show_plan(path: Path, run_dir: Path, quick: bool, the_plan: Plan, warnings: list[str]) -> None:
    """The stages with their sizes and estimates, then every warning, one line each."""
    show(render.plan(f"plan: {path.name}{' (quick)' if quick else ''} -> {run_dir}", the_plan.stages))
    for line in warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
