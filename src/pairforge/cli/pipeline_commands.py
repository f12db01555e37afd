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
from pairforge.cli.common import console, fail_cleanly, said_sharded, say, shard_option, show
from pairforge.config import EvalConfig
from pairforge.layout import RunDir
from pairforge.recipe import Recipe

if TYPE_CHECKING:
    from pairforge.evaluation.leaderboard import Leaderboard
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
    dtype: str | None = typer.Option(None, help=f"--models: {options.choices(EvalConfig, 'dtype')} while answering "
                                     f"({_EVAL['dtype']}: bfloat16 where the device computes it natively)"),
    backend: str | None = typer.Option(None, help=f"--models: what answers, {options.choices(EvalConfig, 'backend')} "
                                       f"({_EVAL['backend']}; vllm: a GPU and pip install 'pairforge\\[vllm]')"),
    vllm: str | None = typer.Option(None, help="--backend vllm: the engine's settings as a YAML mapping, "
                                    "'{tensor_parallel_size: 2, gpu_memory_utilization: 0.8}' (docs/eval.md)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="ask the models and the judge again where they "
                                      "failed before"),
    shard: str | None = shard_option(asking="answer and judge"),
) -> None:
    """Judge models against reference answers: win rate, interval, length-controlled win rate, leaderboard."""
    def command() -> None:
        from pairforge.api.post_training import evaluate

        result = evaluate(outputs or [], reference, models=models or [], judge=judge, out=out, prompts=prompts,
                          baseline=baseline, retry_failed=retry_failed, max_new_tokens=max_new_tokens,
                          temperature=temperature, bootstrap=bootstrap, batch_size=batch_size, dtype=dtype,
                          backend=backend, vllm=options.parse_engine(vllm), shard=shard)
        _show_leaderboard(result)
        if shard:
            said_sharded(shard, out, "eval")
        else:
            console.print(f"wrote {out / 'leaderboard.json'}, {out / 'eval.parquet'}", highlight=False)

    fail_cleanly(command)


def _show_outcome(recipe: Recipe, run_dir: Path) -> None:
    """After `pairforge run`: the declared order checked, the (last round's) leaderboard, every round's scores."""
    from pairforge.evaluation.leaderboard import Leaderboard
    from pairforge.judging.ranking import Ranking
    from pairforge.reporting.sections import round_entries
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
    if (pooled := render.comparisons(board)) is not None:
        show(pooled)
    for note in render.leaderboard_notes(board):
        say(note)


def report_command(
    paths: list[Path] = typer.Argument(..., help="run folders / files: pairs summaries, training runs, judge and "
                                       "eval outputs"),
    out: Path = typer.Option(Path("report.html"), help="the HTML page; the Markdown twin and PNGs go beside it"),
) -> None:
    """One self-contained HTML report (and a Markdown twin) of pairs, sources, training and evaluation."""
    def command() -> None:
        from pairforge.api.post_training import report

        sections = report(paths, out)
        console.print(f"wrote {out} and {out.with_suffix('.md')} ({', '.join(s.title for s in sections)})",
                      highlight=False)

    fail_cleanly(command)


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
    def command() -> None:
        from pairforge import pipeline
        from pairforge.api.recipes import checked_plan, estimate
        from pairforge.api.recipes import run as run_recipe

        if dry_run:  # takes no lock and writes nothing: --quick's prompts go to a folder gone once they are counted
            cfg, run_dir = pipeline.load(recipe, quick)
            with tempfile.TemporaryDirectory(prefix="pairforge-") as scratch:
                small = pipeline.quick_recipe(cfg, run_dir, Path(scratch)) if quick else cfg
                the_plan, warnings = checked_plan(small, run_dir, from_stage, to_stage, retry_failed, dry_run)
                cost = estimate(the_plan.recipe)  # --quick's prompts are counted before their folder goes
            _show_plan(recipe, run_dir, quick, the_plan, warnings)
            grid, how = render.estimate(cost)
            show(grid)
            say(how)
            console.print("dry run: the recipe is valid and its inputs read; nothing was run", highlight=False)
            return
        started = [0.0]

        def planned(the_plan: Plan, warnings: list[str]) -> None:
            _show_plan(recipe, the_plan.folder.root, quick, the_plan, warnings)
            started[0] = time.perf_counter()

        def progress(name: str, message: str) -> None:
            console.print(f"[bold]{name}[/]: {message}", highlight=False)

        result = run_recipe(recipe, quick, from_stage=from_stage, to_stage=to_stage, retry_failed=retry_failed,
                            progress=progress, on_plan=planned)
        show(render.finished(result.stages, time.perf_counter() - started[0]))
        _show_outcome(result.recipe, result.run_dir)

    fail_cleanly(command)


def _show_plan(path: Path, run_dir: Path, quick: bool, the_plan: Plan, warnings: list[str]) -> None:
    """The stages with their sizes and estimates, then every warning, one line each."""
    show(render.plan(f"plan: {path.name}{' (quick)' if quick else ''} -> {run_dir}", the_plan.stages))
    for line in warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
