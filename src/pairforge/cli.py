"""The `pairforge` command: one sub-command per stage.

Every flag is also a recipe key (`--config recipe.yaml` reads the recipe's section; flags given on the
command line win). Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:
    from typer._click.exceptions import UsageError  # typer >= 0.2x vendors click and exports no public name
except ImportError:
    from click import UsageError

from pairforge import options, render
from pairforge.config import CurriculumConfig, EvalConfig, PairsConfig, TrainConfig
from pairforge.errors import EXIT_BAD_INPUT, InputError
from pairforge.files import check_output
from pairforge.layout import RunDir
from pairforge.recipe import Recipe, load_recipe


class _OneLineUsageErrors(TyperGroup):
    """An option of the wrong type ('--bootstrap x') or an unknown option is bad input like any other: one
    line and exit 2, instead of click's usage box."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "pairforge"
            console.print(f"[bold red]error:[/] {escape(exc.format_message())} (see {command} --help)",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
pairs_app = typer.Typer(no_args_is_help=True, help="Build preference pairs from answers of several models.")
app.add_typer(pairs_app, name="pairs")
curriculum_app = typer.Typer(no_args_is_help=True, help="Inspect a curriculum before training on it.")
app.add_typer(curriculum_app, name="curriculum")
console = Console(stderr=True, soft_wrap=True, emoji=False)  # one line per message; "train:dpo" is no emoji

T = TypeVar("T")


def _show(*grids: render.Grid | None) -> None:
    for grid in grids:
        if grid is not None:
            console.print(render.terminal(grid))


def _say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def _stop_on_failures(failed: int, what: str, detail: str = "") -> None:
    """Failed requests are kept in the store (never exported as answers): exit 1 and say how to retry them."""
    if failed:
        console.print(f"[bold red]{failed} {what} failed{detail}[/]; they are kept in the store: run again with "
                      "--retry-failed", highlight=False)
        raise typer.Exit(1)


def _fail_cleanly(run: Callable[[], T]) -> T:
    """Run a command; bad input becomes one line and exit 2."""
    try:
        return run()
    except InputError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


@pairs_app.command("build")
def pairs_build(
    inputs: list[Path] = typer.Argument(None, help="answer files: JSONL, JSON, Parquet or a saved HF dataset folder"),
    rank: str | None = typer.Option(None, help="strength order, strongest first: 'gpt-4 > chatgpt > davinci'"),
    rank_from: Path | None = typer.Option(None, help="or a ranking.json from `pairforge rank` (significant orders)"),
    pair_types: str | None = typer.Option(None, help="'all' (default), 'adjacent', 'extremes' or 'a>b,c>d'"),
    strategy: str | None = typer.Option(None, help="ranked | scored | verified (default: ranked if --rank) | revised "
                                        "(the recipe's pairs.revision; inputs: answers and `pairforge revise`'s "
                                        "revisions.parquet)"),
    scored_mode: str | None = typer.Option(None, help="scored: best-worst | best-random | all"),
    min_margin: float | None = typer.Option(None, help="scored: smallest score gap that makes a pair"),
    format: str | None = typer.Option(None, "--format", help="auto | long | wide | ultrafeedback | nectar | sharegpt"),
    columns: str | None = typer.Option(None, help="wide format: source=column pairs, 'gpt4=out_gpt4,chatgpt=out2'"),
    out: Path | None = typer.Option(None, help="output .parquet or .jsonl (default pairs.parquet)"),
    eval_fraction: float | None = typer.Option(None, help="share of prompts held out into <out>.eval.*"),
    prompt_format: str | None = typer.Option(None, help="chat (default: conversational records, trained through "
                                             "the chat template) | text (plain strings, for answers that "
                                             "continued the prompt as plain text)"),
    seed: int | None = typer.Option(None, help="seed for best-random"),
    keep_truncated: bool = typer.Option(False, "--keep-truncated", help="keep answers with finish_reason=length"),
    no_role_marker_filter: bool = typer.Option(False, "--no-role-marker-filter", help="keep answers with role markers"),
    near_duplicate: str | None = typer.Option(None, help="Jaccard threshold for near-duplicates (0.9), or 'off'"),
    min_length: int | None = typer.Option(None, help="drop answers shorter than this"),
    max_length: int | None = typer.Option(None, help="drop answers longer than this"),
    length_unit: str | None = typer.Option(None, help="words (default) | tokens"),
    tokenizer: str | None = typer.Option(None, help="tokenizer for --length-unit tokens (default: embedded)"),
    length_ratio: str | None = typer.Option(None, help="keep pairs with len(chosen)/len(rejected) in 'low,high'"),
    decontaminate: list[Path] | None = typer.Option(None, help="eval prompt file(s) to decontaminate against"),
    ngram: int | None = typer.Option(None, help="n-gram size for --decontaminate (13)"),
    config: Path | None = typer.Option(None, help="recipe YAML; its `pairs:` section gives the defaults"),
) -> None:
    """Turn answers of models of different strength into a TRL-ready pairs file and a summary."""
    def run() -> None:
        flags = {"inputs": inputs or None, "rank": rank, "rank_from": rank_from, "pair_types": pair_types,
                 "strategy": strategy, "scored_mode": scored_mode, "min_margin": min_margin, "format": format,
                 "out": out,
                 "eval_fraction": eval_fraction, "prompt_format": prompt_format, "seed": seed,
                 "columns": options.parse_columns(columns) if columns else None}
        filter_flags = {"drop_truncated": False if keep_truncated else None,
                        "role_markers": "" if no_role_marker_filter else None,
                        "near_duplicate": options.parse_threshold(near_duplicate), "min_length": min_length,
                        "max_length": max_length, "length_unit": length_unit, "tokenizer": tokenizer,
                        "length_ratio": options.parse_pair(length_ratio, "--length-ratio") if length_ratio else None,
                        "decontaminate": decontaminate or None, "ngram": ngram}
        _run_pairs_build(config, flags, filter_flags)

    _fail_cleanly(run)


def _run_pairs_build(config: Path | None, flags: dict[str, Any], filter_flags: dict[str, Any]) -> None:
    from pairforge.pairs.run import build_from_files  # keeps `pairforge --help` fast

    base = load_recipe(config).pairs if config else PairsConfig()
    filters = base.filters.model_dump()
    filters.update({k: v for k, v in filter_flags.items() if v is not None})
    if filter_flags["near_duplicate"] == "off":
        filters["near_duplicate"] = None
    if filters["role_markers"] == "":
        filters["role_markers"] = None
    cfg = options.validated(PairsConfig, base, {**flags, "filters": filters})
    if not cfg.inputs:
        raise InputError("pairs build", "expected at least one input file (or `inputs:` in the recipe)")
    result = build_from_files(cfg)
    _show(*render.pairs_summary(result.summary))
    if not render.pair_drops(result.summary).rows:
        _say("dropped: nothing")
    console.print(f"wrote {', '.join(str(p) for p in result.written)}", highlight=False)


@app.command("train")
def train_command(
    method: str | None = typer.Option(None, help="dpo | cdpo | robust | hinge | ipo | apo_zero | apo_down | simpo | "
                                         "r-dpo | slic | sft, or a weighted sum 'dpo=1,sft=0.2'"),
    model: str | None = typer.Option(None, help="'embedded' (default), a model folder or a hub id"),
    pairs: Path | None = typer.Option(None, help="pairs file (ours or TRL prompt/chosen/rejected)"),
    eval_pairs: Path | None = typer.Option(None, help="held-out pairs (default: <pairs>.eval.*)"),
    out: Path | None = typer.Option(None, help="output folder (model/, checkpoints/, metrics.jsonl)"),
    beta: float | None = typer.Option(None, help="DPO-family beta (0.1)"),
    lr: float | None = typer.Option(None, help="learning rate (5e-7)"),
    batch_size: int | None = typer.Option(None, help="pairs per device per micro-batch (8)"),
    grad_accum: int | None = typer.Option(None, help="micro-batches per optimiser step (1)"),
    epochs: int | None = typer.Option(None, help="epochs (1)"),
    max_steps: int | None = typer.Option(None, help="stop after this many optimiser steps"),
    max_length: int | None = typer.Option(None, help="max tokens of prompt + answer (1024)"),
    target: str | None = typer.Option(None, help="sft/slic likelihood target column (chosen)"),
    lora: bool = typer.Option(False, "--lora", help="train a LoRA adapter; reference = adapter disabled"),
    merge: bool = typer.Option(False, "--merge", help="with --lora: save the merged model"),
    prompt_format: str | None = typer.Option(None, help="auto (follow the records) | chat | text"),
    save_steps: int | None = typer.Option(None, help="checkpoint every N steps"),
    fresh: bool = typer.Option(False, "--fresh", help="delete an earlier run in --out (checkpoints, model, "
                               "metrics) and start over; without it a run resumes, and only with the same settings"),
    seed: int | None = typer.Option(None, help="seed (0)"),
    curriculum: str | None = typer.Option(None, help="order by difficulty: sorted | anti | buckets | pacing | "
                                          "random (staged needs stages: use a recipe)"),
    difficulty: str | None = typer.Option(None, help="with --curriculum: strength-gap | score-margin | "
                                          "reference-margin | embedding-similarity | column:NAME"),
    config: Path | None = typer.Option(None, help="recipe YAML; its `train:` section gives the defaults"),
    run_name: str | None = typer.Option(None, "--run", help="with --config: train this entry of the recipe's "
                                        "`runs:` (in its run folder, as `pairforge run` would; for accelerate launch)"),
) -> None:
    """Post-train a model on preference pairs (SFT, DPO and relatives, SLiC-HF); resumes from its checkpoints."""
    def run() -> None:
        from pairforge.train.trainer import TrainingStopped, train

        base = options.train_section(config, run_name)
        flags = {"method": options.parse_method(method) if method else None, "model": model, "pairs": pairs,
                 "eval_pairs": eval_pairs, "out": out, "beta": beta, "lr": lr, "batch_size": batch_size,
                 "grad_accum": grad_accum, "epochs": epochs, "max_steps": max_steps, "max_length": max_length,
                 "target": target, "save_steps": save_steps, "seed": seed, "prompt_format": prompt_format,
                 "lora": {"merge": merge} if lora else None}
        if curriculum or difficulty:
            order = base.curriculum.model_dump() if base.curriculum else {}
            order.update({k: v for k, v in {"schedule": curriculum, "difficulty": difficulty}.items() if v})
            flags["curriculum"] = order
        cfg = options.validated(TrainConfig, base, flags)
        if cfg.pairs is None:
            raise InputError("--pairs", "expected a pairs file (or `pairs:` in the recipe's train section)")
        try:
            result = train(cfg, fresh=fresh)
        except TrainingStopped as exc:
            console.print(f"[bold red]stopped:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted: checkpoint saved; run the same command again to resume", highlight=False)
            raise typer.Exit(130) from None
        done = "already trained (same data and settings; --fresh trains again)" if result.already_trained else "trained"
        console.print(f"{done} {result.steps} steps; model in {result.out / 'model'}, metrics in "
                      f"{result.out / 'metrics.jsonl'}", highlight=False)

    _fail_cleanly(run)


@app.command("generate")
def generate_command(
    recipe: Path = typer.Argument(..., help="recipe YAML with `prompts:` and `sources:`"),
    out: Path = typer.Option(Path("."), help="folder for responses.parquet and the cache store.sqlite"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="try again the requests that failed before"),
    source: list[str] | None = typer.Option(None, help="only this source (repeatable)"),
) -> None:
    """Answer the prompts with every source; resumes where it stopped (cached in <out>/store.sqlite)."""
    def run() -> None:
        from pairforge.generate.run import generate

        result = generate(load_recipe(recipe), out, retry_failed, source)
        _show(render.generation(result.tallies))
        console.print(f"wrote {result.exported} answers to {result.responses}", highlight=False)
        reasons = Counter(r for t in result.tallies.values() for r in t.reasons.elements())
        _stop_on_failures(result.failed, "requests", f" ({', '.join(f'{r}: {n}' for r, n in reasons.most_common(3))})"
                          if reasons else "")

    _fail_cleanly(run)


@app.command("judge")
def judge_command(
    recipe: Path = typer.Argument(..., help="recipe YAML with a `judge:` section"),
    out: Path = typer.Option(Path("."), help="run folder: reads responses.parquet, writes responses.scored.parquet"),
    responses: Path | None = typer.Option(None, help="answers to judge (default: <out>/responses.parquet)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="ask the judge again where it failed before"),
) -> None:
    """Score answers (reward model, similarity) or compare them pairwise with an LLM judge, both orders."""
    def run() -> None:
        from pairforge.judge.run import judge

        result = judge(load_recipe(recipe), out, responses, retry_failed)
        summary = result.summary
        _show(render.judge_summary(summary))
        if summary["judge"] == "llm-pairwise":
            _say(render.position_bias(summary))
        written = [result.scored, *([result.judgments] if result.judgments else [])]
        console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
        _stop_on_failures(summary.get("failed_requests", 0), "judge requests")

    _fail_cleanly(run)


@app.command("revise")
def revise_command(
    recipe: Path = typer.Argument(..., help="recipe YAML with `pairs: {strategy: revised, revision: ...}`"),
    out: Path = typer.Option(Path("."), help="run folder: reads responses.parquet, writes revisions.parquet"),
    responses: Path | None = typer.Option(None, help="answers to revise (default: <out>/responses.parquet)"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="ask the reviser again where it failed before"),
) -> None:
    """Have the reviser minimally edit the original source's answers (cached in <out>/store.sqlite, resumable)."""
    def run() -> None:
        from pairforge.revise import revise

        result = revise(load_recipe(recipe), out, responses, retry_failed)
        _show(render.revising(result.tally, result.edit_distance))
        _say(f"wrote {result.exported} revisions to {result.revisions}")
        _stop_on_failures(result.failed, "revision requests")

    _fail_cleanly(run)


@app.command("rank")
def rank_command(
    recipe: Path = typer.Argument(..., help="recipe YAML (its `ranking:` section, optional)"),
    out: Path = typer.Option(Path("."), help="run folder: reads judgments.parquet (or responses.scored.parquet)"),
) -> None:
    """Estimate source strength (Bradley-Terry, bootstrap intervals) from the judge's verdicts."""
    def run() -> None:
        from pairforge import stages

        ranked = stages.rank(load_recipe(recipe), RunDir(out))
        result = ranked.ranking.to_json()
        _show(render.ranking(result, ranked.evidence.name))
        _say(render.significant_order(result))
        _say(f"wrote {ranked.written}; use it with `pairs build --rank-from`")

    _fail_cleanly(run)


@app.command("eval")
def eval_command(
    models: list[str] | None = typer.Option(None, help="model folders or training runs to answer the prompts "
                                            "(NAME=PATH to name one); repeatable"),
    outputs: list[Path] | None = typer.Option(None, help="existing model_outputs.json files; repeatable"),
    reference: Path = typer.Option(..., help="reference answers (AlpacaEval shape: instruction, output)"),
    prompts: Path | None = typer.Option(None, help="eval prompts (default: the reference's instructions)"),
    judge: str = typer.Option("similarity", help="a recipe YAML (its judge: section), 'similarity', or "
                              "'reward-model:PATH'"),
    out: Path = typer.Option(Path("eval"), help="folder: leaderboard.json, eval.parquet, *.model_outputs.json"),
    max_new_tokens: int = typer.Option(256, help="--models: answer length limit"),
    temperature: float = typer.Option(0.0, help="--models: 0 = greedy"),
    bootstrap: int = typer.Option(1000, help="bootstrap resamples for intervals and paired tests"),
    baseline: str | None = typer.Option(None, help="test every other model against this one (e.g. base): "
                                        "difference with its 95% interval"),
    batch_size: int = typer.Option(8, help="--models: prompts per generate() call"),
    dtype: str = typer.Option("float32", help="--models: float32 | bfloat16 | float16 while answering"),
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
                                       dtype=cfg.dtype))
        _show_leaderboard(result)
        console.print(f"wrote {out / 'leaderboard.json'}, {out / 'eval.parquet'}", highlight=False)

    _fail_cleanly(run)


def _show_outcome(recipe: Recipe, run_dir: Path) -> None:
    """After `pairforge run`: the declared order checked, the (last round's) leaderboard, every round's scores."""
    from pairforge.report import round_entries
    from pairforge.rounds import round_dir

    last = round_dir(run_dir, recipe, recipe.rounds)
    if last.ranking.exists() and (check := json.loads(last.ranking.read_text()).get("declared_check")):
        _say(render.declared_check(check))
    if last.leaderboard.exists():
        _show_leaderboard(json.loads(last.leaderboard.read_text()))
    if recipe.rounds > 1:
        _show(render.rounds(round_entries(sorted(run_dir.glob("round-*/eval/leaderboard.json")))))
    if RunDir(run_dir).report.exists():
        _say(f"report: {RunDir(run_dir).report}")


def _show_leaderboard(board: dict[str, Any]) -> None:
    _show(render.leaderboard(board))
    for note in render.leaderboard_notes(board):
        _say(note)


@app.command("report")
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

    _fail_cleanly(run)


@app.command("run")
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
        notes: list[str] = []
        if dry_run:
            cfg, notes = pipeline.with_format_samples(cfg)
        the_plan = pipeline.plan(cfg, run_dir, retry_failed)
        pipeline.check_stage_names(the_plan, from_stage, to_stage)
        check_output(run_dir, "folder", "run_dir")
        warnings = pipeline.preflight(cfg)
        _show(render.plan(f"plan: {recipe.name}{' (quick)' if quick else ''} -> {run_dir}", the_plan.stages))
        for line in [*notes, *warnings]:
            console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
        if dry_run:
            console.print("dry run: the recipe is valid and its inputs read; nothing was run", highlight=False)
            return
        if warnings:
            raise InputError(str(recipe), warnings[0])
        started = time.perf_counter()
        done = pipeline.run(the_plan, from_stage,
                            lambda name, message: console.print(f"[bold]{name}[/]: {message}", highlight=False),
                            to_stage)
        _show(render.finished(done, time.perf_counter() - started))
        _show_outcome(cfg, run_dir)

    _fail_cleanly(run)


@curriculum_app.command("show")
def curriculum_show(
    pairs: Path = typer.Argument(..., help="pairs file"),
    difficulty: str | None = typer.Option(None, help="strength-gap | score-margin | embedding-similarity | "
                                           "column:NAME"),
    schedule: str | None = typer.Option(None, help="random | staged | sorted | anti | buckets | pacing"),
    batch_size: int = typer.Option(8, help="pairs per batch (the global batch when training on several processes)"),
    epochs: int = typer.Option(1, help="epochs"),
    seed: int = typer.Option(0, help="seed"),
    config: Path | None = typer.Option(None, help="recipe YAML; its train.curriculum gives the defaults"),
    out: Path = typer.Option(Path("."), help="folder for curriculum.png"),
) -> None:
    """Print a curriculum's stages or buckets with their sizes and difficulty, and plot difficulty by step."""
    def run() -> None:
        from pairforge.records import read_pairs
        from pairforge.train.curriculum import difficulty_of, plan, write_plot

        base = (load_recipe(config).train.curriculum if config else None) or CurriculumConfig()
        cfg = options.validated(CurriculumConfig, base, {"difficulty": difficulty, "schedule": schedule})
        if epochs < 1 or batch_size < 1:
            raise InputError("--epochs" if epochs < 1 else "--batch-size", "expected a positive number")
        check_output(out / "curriculum.png", "file", "--out")
        frame = read_pairs(pairs)
        values = difficulty_of(frame, cfg.difficulty, str(pairs), cfg.embedding_model)
        types = frame["pair_type"].cast(pl.String).to_list() if "pair_type" in frame.columns else ["all"] * len(values)
        result = plan(values, types, cfg, batch_size, epochs, seed)
        _show(render.curriculum(f"curriculum: {cfg.schedule} by {cfg.difficulty}", result.stage_names,
                                result.batches, result.stages, values))
        if result.dropped:
            console.print(f"left out (drop_hardest): {result.dropped} pairs", highlight=False)
        console.print(f"wrote {write_plot(result, values, out / 'curriculum.png')}", highlight=False)

    _fail_cleanly(run)


