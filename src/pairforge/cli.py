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
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

try:
    from typer._click.exceptions import UsageError  # typer >= 0.2x vendors click and exports no public name
except ImportError:
    from click import UsageError

from pairforge.config import CurriculumConfig, EvalConfig, JudgeConfig, PairsConfig, TrainConfig, load_recipe
from pairforge.errors import EXIT_BAD_INPUT, InputError
from pairforge.formatting import difference, interval, number, significance
from pairforge.io import check_output, write_json


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
console = Console(stderr=True, soft_wrap=True)  # one line per message, however narrow the terminal

T = TypeVar("T")


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
                 "strategy": strategy,
                 "scored_mode": scored_mode, "min_margin": min_margin, "format": format, "out": out,
                 "eval_fraction": eval_fraction, "prompt_format": prompt_format, "seed": seed,
                 "columns": _parse_columns(columns) if columns else None}
        filter_flags = {"drop_truncated": False if keep_truncated else None,
                        "role_markers": "" if no_role_marker_filter else None,
                        "near_duplicate": _parse_threshold(near_duplicate), "min_length": min_length,
                        "max_length": max_length, "length_unit": length_unit, "tokenizer": tokenizer,
                        "length_ratio": _parse_pair(length_ratio, "--length-ratio") if length_ratio else None,
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
    cfg = _validated(PairsConfig, base, {**flags, "filters": filters})
    if not cfg.inputs:
        raise InputError("pairs build", "expected at least one input file (or `inputs:` in the recipe)")
    result = build_from_files(cfg)
    print_summary(result.summary)
    console.print(f"wrote {', '.join(str(p) for p in result.written)}", highlight=False)


S = TypeVar("S", bound=BaseModel)


def _validated(model: type[S], base: S, flags: dict[str, Any]) -> S:
    """A recipe section with the flags given on the command line laid over it; errors name the flag."""
    merged = base.model_dump()
    merged.update({k: v for k, v in flags.items() if v is not None})
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        raise InputError("--" + _flag_of(error["loc"], message, flags).replace("_", "-"), message) from None


def _flag_of(location: tuple[Any, ...], message: str, flags: dict[str, Any]) -> str:
    """The flag an error is about: the innermost field named in its location (filters.near_duplicate ->
    near_duplicate), or, for a check across fields, the first flag given that the message names."""
    names = [part for part in location if isinstance(part, str)]
    if names:
        return names[-1]
    named = sorted((message.find(f"`{k}`"), k) for k, v in flags.items() if v is not None and f"`{k}`" in message)
    return named[0][1] if named else "options"


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

        base = _train_section(config, run_name)
        flags = {"method": _parse_method(method) if method else None, "model": model, "pairs": pairs,
                 "eval_pairs": eval_pairs, "out": out, "beta": beta, "lr": lr, "batch_size": batch_size,
                 "grad_accum": grad_accum, "epochs": epochs, "max_steps": max_steps, "max_length": max_length,
                 "target": target, "save_steps": save_steps, "seed": seed, "prompt_format": prompt_format,
                 "lora": {"merge": merge} if lora else None}
        if curriculum or difficulty:
            order = base.curriculum.model_dump() if base.curriculum else {}
            order.update({k: v for k, v in {"schedule": curriculum, "difficulty": difficulty}.items() if v})
            flags["curriculum"] = order
        cfg = _validated(TrainConfig, base, flags)
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
        table = Table(title="generate", title_justify="left")
        for column in ("source", "answers", "cached", "new", "failed", "retries", "tok/s"):
            table.add_column(column, justify="left" if column == "source" else "right")
        for name, t in result.tallies.items():
            table.add_row(name, str(t.total), str(t.cached), str(t.done), str(t.failed + t.failed_before),
                          str(t.retries), f"{t.tokens_per_s:.1f}" if t.done else "-")
        console.print(table)
        console.print(f"wrote {result.exported} answers to {result.responses}", highlight=False)
        if result.failed:
            reasons = Counter(r for t in result.tallies.values() for r in t.reasons.elements())
            detail = f" ({', '.join(f'{r}: {n}' for r, n in reasons.most_common(3))})" if reasons else ""
            console.print(f"[bold red]{result.failed} requests failed{detail}[/]; they are kept in the store and not "
                          "exported: run again with --retry-failed", highlight=False)
            raise typer.Exit(1)

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
        table = Table(title=f"judge: {summary['judge']}", title_justify="left")
        for column in ("source", "answers", "scored", "mean score" if summary["judge"] != "llm-pairwise" else
                       "win rate", "std"):
            table.add_column(column, justify="left" if column == "source" else "right")
        for name, s in summary["per_source"].items():
            table.add_row(name, str(s["answers"]), str(s["scored"]), number(s["mean"]), number(s["std"]))
        console.print(table)
        if summary["judge"] == "llm-pairwise":
            bias = summary["p_first_shown_wins"]
            console.print(f"{summary['comparisons']} comparisons, {summary['unreadable']} unreadable (left out), "
                          f"{summary['verdicts_from_logprobs']} verdicts from log-probs; the answer shown first "
                          f"wins {number(bias)} of the time (0.5 = no position bias)", highlight=False)
        written = [result.scored, *([result.judgments] if result.judgments else [])]
        console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
        if summary.get("failed_requests"):
            console.print(f"[bold red]{summary['failed_requests']} judge requests failed[/]; run again with "
                          "--retry-failed", highlight=False)
            raise typer.Exit(1)

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
        from pairforge.pairs.edits import sparkline
        from pairforge.revise import revise

        result = revise(load_recipe(recipe), out, responses, retry_failed)
        t, d = result.tally, result.edit_distance
        table = Table(title="revise", title_justify="left")
        for column in ("answers", "cached", "new", "failed", "retries", "edit distance q1 / median / q3",
                       "histogram 0..1"):
            table.add_column(column, justify="right")
        table.add_row(str(t.total), str(t.cached), str(t.done), str(result.failed), str(t.retries),
                      " / ".join(f"{d[k]:.3f}" for k in ("q1", "median", "q3")) if d["n"] else "-",
                      sparkline(d["histogram"]))
        console.print(table)
        console.print(f"wrote {result.exported} revisions to {result.revisions}", highlight=False)
        if result.failed:
            console.print(f"[bold red]{result.failed} revision requests failed[/]; they are kept in the store and "
                          "not exported: run again with --retry-failed", highlight=False)
            raise typer.Exit(1)

    _fail_cleanly(run)


@app.command("rank")
def rank_command(
    recipe: Path = typer.Argument(..., help="recipe YAML (its `ranking:` section, optional)"),
    out: Path = typer.Option(Path("."), help="run folder: reads judgments.parquet (or responses.scored.parquet)"),
) -> None:
    """Estimate source strength (Bradley-Terry, bootstrap intervals) from the judge's verdicts."""
    def run() -> None:
        from pairforge.judge.ranking import fit, read_comparisons
        from pairforge.judge.run import JUDGMENTS_FILE, SCORED_FILE

        cfg = load_recipe(recipe).ranking
        check_output(out / "ranking.json", "file", "--out")
        source, comparisons = read_comparisons(out / JUDGMENTS_FILE, out / SCORED_FILE)
        ranking = fit(comparisons, cfg.bootstrap, cfg.confidence, cfg.seed, cfg.min_win_probability)
        table = Table(title=f"source strength (Bradley-Terry, {ranking.prompts} prompts, "
                      f"{ranking.comparisons} comparisons from {source.name})", title_justify="left")
        for column in ("rank", "source", "strength", f"{cfg.confidence:.0%} interval", "P(above next)",
                       "P(beats next)"):
            table.add_column(column, justify="left" if column == "source" else "right")
        for i, name in enumerate(ranking.sources):
            nxt = i + 1 < len(ranking.sources)
            above = f"{ranking.stronger[i, i + 1]:.3f}" + (" *" if ranking.significant(i, i + 1) else "") if nxt else ""
            table.add_row(str(i + 1), name, f"{ranking.strength[i]:+.3f}",
                          f"[{ranking.low[i]:+.3f}, {ranking.high[i]:+.3f}]", above,
                          f"{ranking.win_probability(i, i + 1):.3f}" if nxt else "")
        console.print(table)
        console.print(f"significant order (* : P >= {cfg.confidence} and P(beats) >= {cfg.min_win_probability}): "
                      f"{ranking.rank or '(none)'}", highlight=False)
        console.print(f"wrote {write_json(ranking.to_json(), out / 'ranking.json')}; use it with "
                      "`pairs build --rank-from`", highlight=False)

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

        cfg = _validated(EvalConfig, EvalConfig(), {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                                    "bootstrap": bootstrap, "batch_size": batch_size, "dtype": dtype})
        result = evaluate(models or [], outputs or [], reference, _judge_config(judge), out, prompts,
                          EvalSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       bootstrap=cfg.bootstrap, baseline=baseline, batch_size=cfg.batch_size,
                                       dtype=cfg.dtype))
        print_leaderboard(result)
        console.print(f"wrote {out / 'leaderboard.json'}, {out / 'eval.parquet'}", highlight=False)

    _fail_cleanly(run)


def _judge_config(text: str) -> JudgeConfig:
    if text.endswith((".yaml", ".yml")):
        cfg = load_recipe(Path(text)).judge
        if cfg is None:
            raise InputError(text, "expected a `judge:` section")
        return cfg
    kind, _, model = text.partition(":")
    if kind == "similarity":
        return JudgeConfig(kind="similarity", reference="reference", model=model or "embedded")
    if kind == "reward-model" and model:
        return JudgeConfig(kind="reward-model", model=model)
    raise InputError("--judge", f"expected a recipe .yaml, 'similarity' or 'reward-model:PATH', found '{text}'")


def print_leaderboard(result: dict[str, Any]) -> None:
    """The leaderboard: score or win rate with interval, lengths, paired tests against the next row and
    against the baseline (the untrained base), and a line per model saying whether it beats the baseline."""
    pairwise = result["judge"] != "similarity"
    against = next((e["vs_baseline"]["model"] for e in result["models"] if "vs_baseline" in e), None)
    table = Table(title=f"{result['judge']} vs reference, {result['prompts']} prompts", title_justify="left")
    columns = ["model", "win rate [95%]", "LC win rate [95%]"] if pairwise else ["model", "similarity [95%]"]
    for column in [*columns, "mean score" if pairwise else None, "words (ref)", "unjudged", "vs next (p)",
                   f"vs {against} [95%]" if against else None]:
        if column:
            table.add_column(column, justify="left" if column == "model" else "right")
    for entry in result["models"]:
        cells = [entry["model"]]
        keys = ("win_rate", "length_controlled_win_rate", "score") if pairwise else ("score",)
        cells += [interval(entry.get(k)) for k in keys]
        cells += [f"{entry['mean_length']:.0f} ({entry['reference_length']:.0f})", str(entry["unjudged"])]
        nxt = entry.get("vs_next")
        cells.append(f"{nxt['difference']:+.3f} (p={nxt['p_value']:.3f})" if nxt else "")
        if against:
            cells.append(difference(entry["vs_baseline"]) if "vs_baseline" in entry else "")
        table.add_row(*cells)
    console.print(table)
    for entry in result["models"]:
        if entry["unjudged"]:
            console.print(f"{entry['model']}: {entry['unjudged']} of {entry['prompts']} prompts got no usable verdict "
                          "and are left out of its numbers", highlight=False)
        if "vs_baseline" in entry:
            console.print(significance(entry["model"], entry["vs_baseline"]), highlight=False)
        nxt = entry.get("vs_next")
        if not against and nxt and nxt["p_value"] >= 0.05:
            console.print(f"{entry['model']} vs {nxt['model']}: not significant at this size (p = "
                          f"{nxt['p_value']:.2f}, {nxt['prompts']} prompts)", highlight=False)


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
                                          "(generate, revise, judge, rank, pairs, train, train:NAME, eval, report)"),
    to_stage: str | None = typer.Option(None, "--to", help="stop after this stage (e.g. pairs: data only)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, check the input files, print the plan; run "
                                 "nothing"),
    quick: bool = typer.Option(False, "--quick", help="a smoke test: few prompts, short answers, 2 steps per run"),
) -> None:
    """The whole recipe end to end in one run folder; finished stages are skipped, so a re-run resumes."""
    def run() -> None:
        from pairforge import pipeline

        cfg, run_dir = pipeline.load(recipe, quick)
        notes: list[str] = []
        if dry_run:
            cfg, notes = pipeline.with_format_samples(cfg)
        the_plan = pipeline.plan(cfg, run_dir)
        pipeline.check_stage_names(the_plan, from_stage, to_stage)
        check_output(run_dir, "folder", "run_dir")
        warnings = pipeline.preflight(cfg)
        table = Table(title=f"plan: {recipe.name}{' (quick)' if quick else ''} -> {run_dir}", title_justify="left")
        table.add_column("stage", no_wrap=True, min_width=max(len(s.name) for s in the_plan.stages))
        for column in ("what", "size", "estimate"):
            table.add_column(column, justify="right" if column == "estimate" else "left")
        for stage in the_plan.stages:
            table.add_row(stage.name, stage.what, stage.size, _duration(stage.estimate_s))
        known = [s.estimate_s for s in the_plan.stages if s.estimate_s is not None]
        table.add_row("[bold]total", "", "", ("~" if len(known) < len(the_plan.stages) else "") +
                      _duration(sum(known)) + " (rough, 2-core CPU)")
        console.print(table)
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
        summary = Table(title=f"done in {_duration(time.perf_counter() - started)}", title_justify="left")
        for column in ("stage", "status", "time"):
            summary.add_column(column)
        for entry in done:
            summary.add_row(entry["stage"], entry["status"], _duration(entry.get("seconds")))
        console.print(summary)
        ranking = run_dir / "ranking.json"
        check = json.loads(ranking.read_text()).get("declared_check") if ranking.exists() else None
        if check:
            console.print(f"declared order {check['declared']}: the judge's ranking confirms "
                          f"{', '.join(check['confirmed']) or 'nothing'}" + (f"; not confirmed: "
                          f"{', '.join(check['not_confirmed'])}" if check["not_confirmed"] else "") +
                          (f"; not judged (the judge's reference): {', '.join(check['not_judged'])}"
                           if check.get("not_judged") else ""), highlight=False)
        board = run_dir / "eval" / "leaderboard.json"
        if board.exists():
            print_leaderboard(json.loads(board.read_text()))
        if (run_dir / "report.html").exists():
            console.print(f"report: {run_dir / 'report.html'}", highlight=False)

    _fail_cleanly(run)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _train_section(config: Path | None, run_name: str | None) -> TrainConfig:
    """The recipe's `train:` section, or with --run one of its `runs:` placed in the pipeline's run folder."""
    if config is None:
        if run_name:
            raise InputError("--run", "needs --config (the recipe that lists the run)")
        return TrainConfig()
    if run_name is None:
        return load_recipe(config).train
    from pairforge import pipeline

    recipe, run_dir = pipeline.load(config)
    runs = {r.name: r for r in recipe.runs}
    if run_name not in runs:
        raise InputError("--run", f"no run '{run_name}' in {config} (runs: {', '.join(runs) or 'none'})")
    run = pipeline.run_config(runs[run_name], run_dir)
    return TrainConfig.model_validate(run.model_dump(exclude={"name", "after", "split"}))


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
        from pairforge.formats import read_pairs
        from pairforge.pairs.curriculum import difficulty_of, plan, write_plot

        base = (load_recipe(config).train.curriculum if config else None) or CurriculumConfig()
        cfg = _validated(CurriculumConfig, base, {"difficulty": difficulty, "schedule": schedule})
        if epochs < 1 or batch_size < 1:
            raise InputError("--epochs" if epochs < 1 else "--batch-size", "expected a positive number")
        check_output(out / "curriculum.png", "file", "--out")
        frame = read_pairs(pairs)
        values = difficulty_of(frame, cfg.difficulty, str(pairs), cfg.embedding_model)
        types = frame["pair_type"].cast(pl.String).to_list() if "pair_type" in frame.columns else ["all"] * len(values)
        result = plan(values, types, cfg, batch_size, epochs, seed)
        table = Table(title=f"curriculum: {cfg.schedule} by {cfg.difficulty}", title_justify="left")
        for column in ("stage", "batches", "pairs", "difficulty mean", "min", "max", "histogram (0..1)"):
            table.add_column(column, justify="left" if column in ("stage", "histogram (0..1)") else "right")
        for stage, name in enumerate(result.stage_names):
            rows = [i for b, s in zip(result.batches, result.stages, strict=True) if s == stage for i in b]
            if not rows:
                continue
            d = values[rows]
            table.add_row(name, str(sum(s == stage for s in result.stages)), str(len(rows)), f"{d.mean():.3f}",
                          f"{d.min():.3f}", f"{d.max():.3f}", _sparkline(d))
        console.print(table)
        if result.dropped:
            console.print(f"left out (drop_hardest): {result.dropped} pairs", highlight=False)
        console.print(f"wrote {write_plot(result, values, out / 'curriculum.png')}", highlight=False)

    _fail_cleanly(run)


def _sparkline(values: Any) -> str:
    import numpy as np

    counts, _ = np.histogram(np.clip(values, 0, 1), bins=10, range=(0, 1))
    bars = " ▁▂▃▄▅▆▇█"
    return "".join(bars[round(8 * c / counts.max())] if counts.max() else " " for c in counts)


def _parse_method(text: str) -> str | dict[str, float]:
    if "=" not in text:
        return text.strip()
    pairs = [_split_once(part, "=", "--method", "name=weight") for part in text.split(",") if part.strip()]
    try:
        return {name: float(weight) for name, weight in pairs}
    except ValueError:
        raise InputError("--method", f"expected 'name=weight,...' with numeric weights, found '{text}'") from None


def print_summary(summary: dict[str, Any]) -> None:
    """The summary as tables: pairs per type, drops by reason, verification, lengths."""
    table = Table(title=f"pairs ({summary['strategy']})", title_justify="left")
    table.add_column("pair type", no_wrap=True)
    splits = summary["pairs"]  # train, eval and, when kept apart, judge
    for split in splits:
        table.add_column(split, justify="right")
    for pair_type in sorted(set().union(*splits.values())):
        table.add_row(pair_type, *(str(counts.get(pair_type, 0)) for counts in splits.values()))
    table.add_row("[bold]total", *(f"[bold]{sum(counts.values())}" for counts in splits.values()))
    console.print(table)

    drops = Table(title="dropped", title_justify="left")
    for column in ("what", "reason", "count"):
        drops.add_column(column, justify="right" if column == "count" else "left")
    for reason, n in summary["dropped_answers"].items():
        drops.add_row("answers", reason, str(n))
    for reason, n in summary["dropped_prompts"].items():
        if n:
            drops.add_row("pairs" if reason.startswith("pairs") else "prompts", reason, str(n))
    for reason, per_type in summary["dropped_pairs"].items():
        drops.add_row("pairs", reason, ", ".join(f"{t}: {n}" for t, n in per_type.items()))
    console.print(drops if drops.row_count else "dropped: nothing")

    if "revision" in summary:
        from pairforge.pairs.edits import revision_table

        title, header, rows = revision_table(summary["revision"])
        revised = Table(title=title, title_justify="left")
        for column in header:
            revised.add_column(column, justify="left" if column in ("revisions", header[-1]) else "right")
        for row in rows:
            revised.add_row(*row)
        console.print(revised)

    if "verification" in summary:
        verify = Table(title="verification (scores vs declared order)", title_justify="left")
        for column in ("pair type", "candidates", "agree", "contradicted", "tied", "unscored", "disagreement"):
            verify.add_column(column, justify="left" if column == "pair type" else "right")
        for pair_type, s in summary["verification"].items():
            verify.add_row(pair_type, *(str(s[k]) for k in ("candidates", "agree", "contradicted", "tied", "unscored")),
                           f"{s['disagreement_rate']:.1%}")
        console.print(verify)

    lengths = summary["lengths"]
    table = Table(title=f"length ({lengths['unit']}): chosen vs rejected", title_justify="left")
    table.add_column("pair type", no_wrap=True)
    for column in ("pairs", "chosen mean / p90", "rejected mean / p90", "chosen longer"):
        table.add_column(column, justify="right")
    for name, s in [*lengths["per_pair_type"].items(), ("all", lengths["all"])]:
        table.add_row(name, str(s["pairs"]), f"{s['chosen']['mean']:.1f} / {s['chosen']['p90']:.0f}",
                      f"{s['rejected']['mean']:.1f} / {s['rejected']['p90']:.0f}", f"{s['chosen_longer_rate']:.0%}")
    console.print(table)


def _parse_columns(text: str) -> dict[str, str]:
    pairs = [_split_once(part, "=", "--columns", "source=column") for part in text.split(",") if part.strip()]
    return dict(pairs)


def _parse_pair(text: str, option: str) -> tuple[float, float]:
    low, high = _split_once(text, ",", option, "low,high")
    try:
        return float(low), float(high)
    except ValueError:
        raise InputError(option, f"expected two numbers 'low,high', found '{text}'") from None


def _parse_threshold(text: str | None) -> float | str | None:
    if text is None or text == "off":
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError("--near-duplicate", f"expected a number in [0, 1] or 'off', found '{text}'") from None


def _split_once(text: str, sep: str, option: str, shape: str) -> tuple[str, str]:
    left, found, right = text.partition(sep)
    if not found or not left.strip() or not right.strip():
        raise InputError(option, f"expected '{shape}', found '{text.strip()}'")
    return left.strip(), right.strip()
