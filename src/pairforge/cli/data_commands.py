"""The data-stage commands: answers in, pairs out (`pairs build`, `generate`, `judge`, `revise`, `rank`) and
`curriculum show`, which looks at a pairs file before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import typer

from pairforge import options, render
from pairforge.cli.common import console, fail_cleanly, said_sharded, say, shard_option, show, stop_on_failures
from pairforge.config import SEED_MAX, FilterConfig, PairsConfig, RevisionConfig, SourceConfig
from pairforge.errors import InputError
from pairforge.files import check_output
from pairforge.recipe import load_recipe
from pairforge.train_config import DIFFICULTIES_HELP, CurriculumConfig, TrainConfig

_PAIRS, _FILTERS = options.defaults(PairsConfig), options.defaults(FilterConfig)  # the flags' defaults: the recipe's
_REVISION, _TRAIN = options.defaults(RevisionConfig), options.defaults(TrainConfig)


def pairs_build(
    inputs: list[Path] = typer.Argument(None, help="answer files (or TRL preference files): JSONL, JSON, Parquet or a "
                                        "saved HF dataset folder"),
    rank: str | None = typer.Option(None, help="strength order, strongest first: 'gpt-4 > chatgpt > davinci'"),
    rank_from: Path | None = typer.Option(None, help="or a ranking.json from `pairforge rank` (significant orders)"),
    pair_types: str | None = typer.Option(None, help=f"'{_PAIRS['pair_types']}' (default), 'adjacent', 'extremes' or "
                                          "'a>b,c>d'"),
    strategy: str | None = typer.Option(None, help="ranked | scored | verified (default: ranked if --rank) | revised "
                                        "(the recipe's pairs.revision; inputs: answers and `pairforge revise`'s "
                                        "revisions.parquet)"),
    scored_mode: str | None = typer.Option(None, help=f"scored: {options.choices(PairsConfig, 'scored_mode')}"),
    min_margin: float | None = typer.Option(None, help="scored: smallest score gap that makes a pair"),
    min_edit: float | None = typer.Option(None, help="revised: keep revisions whose token edit distance is above this "
                                          "(0: drops only no-op revisions)"),
    max_edit: float | None = typer.Option(None, help=f"revised: and at most this ({_REVISION['max_edit']}): a larger "
                                          "edit rewrote the answer"),
    format: str | None = typer.Option(None, "--format", help="auto | long | wide | ultrafeedback | nectar | sharegpt "
                                      "| preference (TRL prompt/chosen/rejected pairs in: re-filtered and split)"),
    columns: str | None = typer.Option(None, help="wide format: source=column pairs, 'gpt4=out_gpt4,chatgpt=out2'"),
    out: Path | None = typer.Option(None, help=f"output .parquet or .jsonl (default {_PAIRS['out']})"),
    eval_fraction: float | None = typer.Option(None, help="share of prompts held out into <out>.eval.*"),
    prompt_format: str | None = typer.Option(None, help="auto (default): chat, a preference file's own | chat "
                                             "(conversational records, trained through the chat template) | text "
                                             "(plain strings, for answers that continued the prompt as plain text)"),
    seed: int | None = typer.Option(None, help="seed for best-random"),
    keep_truncated: bool = typer.Option(False, "--keep-truncated", help="keep answers with finish_reason=length"),
    no_role_marker_filter: bool = typer.Option(False, "--no-role-marker-filter", help="keep answers with role markers"),
    near_duplicate: str | None = typer.Option(None, help=f"Jaccard threshold for near-duplicates "
                                              f"({_FILTERS['near_duplicate']}), or 'off'"),
    min_length: int | None = typer.Option(None, help="drop answers shorter than this"),
    max_length: int | None = typer.Option(None, help="drop answers longer than this"),
    length_unit: str | None = typer.Option(None, help=f"{_FILTERS['length_unit']} (default) | tokens"),
    tokenizer: str | None = typer.Option(None, help=f"tokenizer for --length-unit tokens (default: "
                                         f"{_FILTERS['tokenizer']})"),
    length_ratio: str | None = typer.Option(None, help="keep pairs with len(chosen)/len(rejected) in 'low,high'"),
    decontaminate: list[Path] | None = typer.Option(None, help="eval prompt file(s) to decontaminate against"),
    ngram: int | None = typer.Option(None, help=f"n-gram size for --decontaminate ({_FILTERS['ngram']})"),
    config: Path | None = typer.Option(None, help="recipe YAML; its `pairs:` section gives the defaults"),
) -> None:
    """Turn answers of models of different strength into a TRL-ready pairs file and a summary."""
    def command() -> None:
        flags = {"inputs": inputs or None, "rank": rank, "rank_from": rank_from, "pair_types": pair_types,
                 "strategy": strategy, "scored_mode": scored_mode, "min_margin": min_margin, "format": format,
                 "out": out, "revision.min_edit": min_edit, "revision.max_edit": max_edit,
                 "eval_fraction": eval_fraction, "prompt_format": prompt_format, "seed": seed,
                 "columns": options.parse_columns(columns) if columns else None}
        filter_flags = {"drop_truncated": False if keep_truncated else None,
                        "role_markers": "" if no_role_marker_filter else None,
                        "near_duplicate": options.parse_threshold(near_duplicate), "min_length": min_length,
                        "max_length": max_length, "length_unit": length_unit, "tokenizer": tokenizer,
                        "length_ratio": options.parse_pair(length_ratio, "--length-ratio") if length_ratio else None,
                        "decontaminate": decontaminate or None, "ngram": ngram}
        _run_pairs_build(config, flags, filter_flags)

    fail_cleanly(command)


def _run_pairs_build(config: Path | None, flags: dict[str, Any], filter_flags: dict[str, Any]) -> None:
    from pairforge.pairs.build_files import build_from_files  # keeps `pairforge --help` fast

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
    show(*render.pairs_summary(result.summary))
    if not render.pair_drops(result.summary).rows:
        say("dropped: nothing")
    console.print(f"wrote {', '.join(str(p) for p in result.written)}", highlight=False)
    if result.removed:
        say(f"removed {', '.join(map(str, result.removed))} (split files of an earlier build that this one did not "
            "write)")



def generate_command(
    recipe: Path = typer.Argument(..., help="recipe YAML with `prompts:` and `sources:`"),
    out: Path = typer.Option(Path("."), help="folder for responses.parquet and the cache store.sqlite"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="try again the requests that failed before"),
    source: list[str] | None = typer.Option(None, help="only this source (repeatable)"),
    dtype: str | None = typer.Option(None, help=f"the local sources' weights: {options.choices(SourceConfig, 'dtype')} "
                                     "(default: each source's own, auto unless set)"),
    shard: str | None = shard_option(asking="answer"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the sources, ping every API server once, print the "
                                 "estimated requests, tokens and cost; answer nothing, write nothing"),
) -> None:
    """Answer the prompts with every source; resumes where it stopped (cached in <out>/store.sqlite)."""
    def command() -> None:
        from pairforge.api.data import generate, generate_estimate

        if dry_run:
            grid, how = render.estimate(generate_estimate(recipe, out, sources=source, dtype=dtype, shard=shard))
            show(grid)
            say(how)
            say("dry run: the sources are ready; nothing was asked or written")
            return
        result = generate(recipe, out, retry_failed=retry_failed, sources=source, dtype=dtype, shard=shard)
        show(render.generation(result), render.usage("tokens and cost", result.usage))
        if shard:
            said_sharded(shard, out, "generate")
        else:
            console.print(f"wrote {result.exported} answers to {result.responses}", highlight=False)
        reasons = result.reasons
        stop_on_failures(result.failed, "requests", f" ({', '.join(f'{r}: {n}' for r, n in reasons.most_common(3))})"
                          if reasons else "")

    fail_cleanly(command)


# `judge` and `revise` both ask a model about every answer of a run folder: the same three options

def _run_folder(writes: str) -> Any:
    return typer.Option(Path("."), help=f"run folder: reads responses.parquet, writes {writes}")


def _answers(to: str) -> Any:
    return typer.Option(None, help=f"answers to {to} (default: <out>/responses.parquet)")


def _retry_failed(asking: str) -> Any:
    return typer.Option(False, "--retry-failed", help=f"ask the {asking} again where it failed before")


def judge_command(
    recipe: Path = typer.Argument(..., help="recipe YAML with a `judge:` section"),
    out: Path = _run_folder(writes="responses.scored.parquet"),
    responses: Path | None = _answers(to="judge"),
    retry_failed: bool = _retry_failed(asking="judge"),
    shard: str | None = shard_option(asking="an LLM judge compares"),
) -> None:
    """Score answers (reward model, similarity) or compare them pairwise with an LLM judge, both orders."""
    def command() -> None:
        from pairforge.api.data import judge

        result = judge(recipe, out, responses=responses, retry_failed=retry_failed, shard=shard)
        summary = result.summary
        show(render.judge_summary(summary))
        if summary.usage is not None:
            show(render.usage("tokens and cost", {"judge": summary.usage}))
        if summary.pairwise:
            say(render.position_bias(summary))
        written = [result.scored, *([result.judgments] if result.judgments else [])]
        if shard:
            said_sharded(shard, out, "judge")
        else:
            console.print(f"wrote {', '.join(map(str, written))}", highlight=False)
        stop_on_failures(summary.failed_requests, "judge requests")

    fail_cleanly(command)


def revise_command(
    recipe: Path = typer.Argument(..., help="recipe YAML with `pairs: {strategy: revised, revision: ...}`"),
    out: Path = _run_folder(writes="revisions.parquet"),
    responses: Path | None = _answers(to="revise"),
    retry_failed: bool = _retry_failed(asking="reviser"),
    shard: str | None = shard_option(asking="revise the answers to"),
) -> None:
    """Have the reviser minimally edit the original source's answers (cached in <out>/store.sqlite, resumable)."""
    def command() -> None:
        from pairforge.api.data import revise

        result = revise(recipe, out, responses=responses, retry_failed=retry_failed, shard=shard)
        show(render.revising(result), render.usage("tokens and cost", {result.reviser: result.tally.usage}))
        if shard:
            said_sharded(shard, out, "revise")
        else:
            say(f"wrote {result.exported} revisions to {result.revisions}")
        stop_on_failures(result.failed, "revision requests")

    fail_cleanly(command)


def rank_command(
    recipe: Path = typer.Argument(..., help="recipe YAML (its `ranking:` section, optional)"),
    out: Path = typer.Option(Path("."), help="run folder: reads judgments.parquet (or responses.scored.parquet)"),
) -> None:
    """Estimate source strength (Bradley-Terry, bootstrap intervals) from the judge's verdicts."""
    def command() -> None:
        from pairforge.api.data import rank

        ranked = rank(recipe, out)
        show(render.ranking(ranked.ranking, ranked.evidence.name))
        say(render.significant_order(ranked.ranking))
        say(f"wrote {ranked.written}; use it with `pairs build --rank-from`")

    fail_cleanly(command)



def curriculum_show(
    pairs: Path | None = typer.Argument(None, help="pairs file (default: the train section's or --run's pairs)"),
    difficulty: str | None = typer.Option(None, help=DIFFICULTIES_HELP),
    schedule: str | None = typer.Option(None, help=f"{options.choices(CurriculumConfig, 'schedule')} (staged: its "
                                        "stages come from a recipe)"),
    batch_size: int | None = typer.Option(None, help="pairs per batch, the global batch when training on several "
                                          f"processes (default: the train section's, {_TRAIN['batch_size']})"),
    epochs: int | None = typer.Option(None, help=f"epochs (default: the train section's, {_TRAIN['epochs']})"),
    seed: int | None = typer.Option(None, help=f"seed (default: the train section's, {_TRAIN['seed']})"),
    config: Path | None = typer.Option(None, help="recipe YAML; its train.curriculum gives the defaults"),
    run_name: str | None = typer.Option(None, "--run", help="with --config: the curriculum of this entry of the "
                                        "recipe's `runs:` (round-K:NAME in an iterative recipe)"),
    out: Path = typer.Option(Path("."), help="folder for curriculum.png"),
) -> None:
    """Print a curriculum's stages or buckets with their sizes and difficulty, and plot difficulty by step."""
    def command() -> None:
        from pairforge.pair_files import read_pairs
        from pairforge.training.curriculum import order_batches, shown_difficulty, write_plot

        train = options.train_section(config, run_name)
        base = train.curriculum or CurriculumConfig()
        if schedule == "staged" and not base.stages:
            raise InputError("--schedule", "the staged schedule needs `stages`: expected a recipe whose train."
                             "curriculum (--config) or runs[].curriculum (--config with --run NAME) lists them")
        cfg = options.validated(CurriculumConfig, base, {"difficulty": difficulty, "schedule": schedule})
        sizes = {"--batch-size": train.batch_size if batch_size is None else batch_size,
                 "--epochs": train.epochs if epochs is None else epochs}
        bad = next((flag for flag, value in sizes.items() if value < 1), None)
        if bad:
            raise InputError(bad, f"expected a positive number, found {sizes[bad]}")
        seed_ = train.seed if seed is None else seed
        if not 0 <= seed_ <= SEED_MAX:
            raise InputError("--seed", f"expected an integer in [0, {SEED_MAX}], found {seed_}")
        path = pairs or train.pairs
        if path is None:
            raise InputError("curriculum show", "expected a pairs file (or --config with a train section's `pairs:`)")
        check_output(out / "curriculum.png", "file", "--out")
        frame = read_pairs(path)
        values = shown_difficulty(frame, cfg, str(path))
        types = frame["pair_type"].cast(pl.String).to_list() if "pair_type" in frame.columns else ["all"] * len(values)
        result = order_batches(values, types, cfg, sizes["--batch-size"], sizes["--epochs"], seed_)
        show(render.curriculum(f"curriculum: {cfg.schedule} by {cfg.difficulty}", result.stage_names,
                                result.batches, result.stages, values))
        if result.dropped:
            console.print(f"left out (drop_hardest): {result.dropped} pairs", highlight=False)
        if np.isnan(values).all():
            say(f"no difficulty to plot: the pairs file has none by {cfg.difficulty}, and a random order needs none")
        else:
            console.print(f"wrote {write_plot(result, values, out / 'curriculum.png')}", highlight=False)

    fail_cleanly(command)
