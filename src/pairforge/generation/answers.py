"""The `generate` stage: every (prompt, source, sample) answered once, committed as it completes.

`generate` builds one request per (prompt, source, sample) from a recipe, has the request engine
answer those not yet in the store, and exports the successes to `responses.parquet` atomically; failures
are never exported as answers, they wait in the store for `--retry-failed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from pairforge import layout
from pairforge import schema as S
from pairforge.config import SourceConfig
from pairforge.errors import InputError
from pairforge.files import check_output, read_records, write_table
from pairforge.generation.summary import GenerationSummary
from pairforge.recipe import Recipe
from pairforge.records import prompts_from_file, responses_from_files
from pairforge.requests.backends.base import Request, check_source
from pairforge.requests.engine import Tally, answer_all, cache_key, make_backend, progress_bar, request_seed
from pairforge.requests.shards import Shard
from pairforge.requests.store import Store, opened
from pairforge.requests.usage import UsageSummary
from pairforge.text import prompt_preview


def generate(recipe: Recipe, out_dir: Path, retry_failed: bool = False, only: list[str] | None = None,
             show_progress: bool = True, store_path: Path | None = None, shard: Shard | None = None
             ) -> GenerationSummary:
    """Answer the recipe's prompts with its sources; export every success to <out_dir>/responses.parquet. A `shard`
    answers only its prompts into its own store and exports nothing: the summary's `responses` is that store and
    `exported` the answers it holds (the unsharded call merges the shards and writes responses.parquet)."""
    check_output(out_dir, "folder", "--out")
    only = checked_sources(recipe, only)
    assert recipe.prompts is not None
    prompts = prompts_from_file(recipe.prompts)
    if prompts.is_empty():
        raise InputError(str(recipe.prompts), "no prompts in the file")
    tallies: dict[str, Tally] = {}
    with opened(store_path or out_dir / layout.STORE, shard) as store:
        with progress_bar(show_progress) as progress:
            for source in recipe.sources:
                if only and source.name not in only or source.backend == "file":
                    continue
                requests = source_requests(source, shard.keep(prompts) if shard else prompts,
                                           recipe.samples_per_source)
                tallies[source.name] = answer_all(requests, lambda s=source: make_backend(s), store, "generation",
                                                  source.name, progress, retry_failed, source.price)
        usage = {name: tally.usage for name, tally in tallies.items()}  # asked ones: file sources join below
        if shard:
            return GenerationSummary(tallies, store.path, sum(t.cached + t.done for t in tallies.values()), usage)
        frame = exported_responses(store, recipe, prompts)
        for source in recipe.sources:
            if source.backend == "file" and (not only or source.name in only):
                found = frame.filter(pl.col(S.SOURCE) == source.name).height
                tallies[source.name] = Tally(total=prompts.height * recipe.samples_per_source, cached=found)
    path = write_table(frame, out_dir / layout.RESPONSES)
    written = UsageSummary(sources=usage).write(out_dir / layout.GENERATE_SUMMARY)
    return GenerationSummary(tallies, path, frame.height, usage, written)


def checked_sources(recipe: Recipe, only: list[str] | None = None) -> list[str]:
    """The names of the sources that answer (`only` those, checked to be answering sources), each checked to run
    here (`check_source`): what `generate` and its dry run ask."""
    if recipe.prompts is None:
        raise InputError("recipe", "expected `prompts:` (a file of prompts to answer)")
    if not recipe.sources:
        raise InputError("recipe", "expected `sources:` (the models that answer)")
    unknown = sorted(set(only or []) - {s.name for s in recipe.sources})
    if unknown:
        raise InputError("--source", f"no source named '{unknown[0]}' in the recipe "
                         f"(found {', '.join(s.name for s in recipe.sources)})")
    answering = [s.name for s in recipe.answering_sources]  # a reviser that only revises answers nothing
    revising = sorted(set(only or []) - set(answering))
    if revising:
        raise InputError("--source", f"source '{revising[0]}' only revises answers (pairs.revision.reviser): it "
                         "answers no prompts; `pairforge revise` asks it")
    only = only or answering
    for source in recipe.sources:
        if source.name in only:
            check_source(source)
    return only


def source_requests(source: SourceConfig, prompts: pl.DataFrame, samples: int) -> list[Request]:
    settings = source.cache_settings()
    requests = []
    for prompt_id, prompt in zip(prompts[S.PROMPT_ID], prompts[S.PROMPT].to_list(), strict=True):
        messages = S.to_messages(prompt, source.system)
        for sample in range(samples):
            key = cache_key("gen", settings, source.name, prompt_id, sample)
            requests.append(Request(key, messages, request_seed(source.seed, key)))
    return requests


_ANSWER_SCHEMA = {S.PROMPT_ID: pl.String, "_index": pl.Int64, S.SOURCE: pl.String, S.SAMPLE: pl.Int64,
                  S.RESPONSE: pl.String, S.FINISH_REASON: pl.String}


def read_file_source(source: SourceConfig) -> pl.DataFrame:
    """Every answer of a file source's file, checked to be one model's (`pairforge run` checks this before any
    stage runs, so a bad file never fails a run after its API sources were paid for)."""
    assert source.path is not None
    frame = responses_from_files([read_records(source.path)], "auto")
    found = frame[S.SOURCE].unique().to_list()
    if len(found) > 1:
        raise InputError(str(source.path), f"source '{source.name}' takes one model's answers, but the file has "
                         f"answers from {len(found)} ({', '.join(sorted(found)[:4])}); split it per model")
    return frame


def file_answers(source: SourceConfig, prompts: pl.DataFrame, samples: int, prompts_path: Path | None = None
                 ) -> pl.DataFrame:
    """A file source's answers to the recipe's prompts (those it has; the pairs stage counts the rest).

    An answer belongs to a recipe prompt by prompt_id when the two texts agree, else by its text: a file without
    ids answers prompts that carry their own. The same id on two different texts is refused, never paired across
    prompts (`pairs build` refuses the same across its input files)."""
    frame = read_file_source(source).with_row_index("_row")
    index = (prompts.select(S.PROMPT_ID, S.PROMPT).with_row_index("_index")
             .with_columns(pl.col("_index").cast(pl.Int64), _question_ids(prompts[S.PROMPT]).alias("_question"),
                           S.prompt_ids(prompts[S.PROMPT]).alias("_text")))
    frame = frame.with_columns(_question_ids(frame[S.PROMPT]).alias("_question"),
                               S.prompt_ids(frame[S.PROMPT]).alias("_text"))
    by_id = frame.join(index.select(S.PROMPT_ID, "_index", pl.col(S.PROMPT).alias("_theirs"),
                                    pl.col("_question").alias("_their_question")), on=S.PROMPT_ID, how="left")
    clash = by_id.filter(pl.col("_index").is_not_null() & (pl.col("_question") != pl.col("_their_question")))
    if not clash.is_empty():
        row = clash.row(0, named=True)
        raise InputError(str(source.path), f"prompt_id {row[S.PROMPT_ID]!r} is {prompt_preview(row[S.PROMPT])} "
                         f"here but {prompt_preview(row['_theirs'])} in {prompts_path or 'the prompts file'}: the "
                         "answers would be paired across prompts; give both files the same ids, or leave prompt_id "
                         "out of this one",
                         row=read_records(source.path).label(row["_row"]), field=S.PROMPT_ID)
    by_text = index.unique("_text", keep="first", maintain_order=True).select("_text", pl.col("_index").alias("_t"),
                                                                               pl.col(S.PROMPT_ID).alias("_tid"))
    matched = (by_id.join(by_text, on="_text", how="left")
               .with_columns(pl.coalesce("_index", "_t").alias("_index"), pl.coalesce(
                   pl.when(pl.col("_index").is_not_null()).then(pl.col(S.PROMPT_ID)), "_tid").alias(S.PROMPT_ID)))
    return (matched.filter(pl.col("_index").is_not_null() & (pl.col(S.SAMPLE) < samples))
            .select(S.PROMPT_ID, "_index", pl.lit(source.name).alias(S.SOURCE), S.SAMPLE, S.RESPONSE,
                    pl.col(S.FINISH_REASON).fill_null("stop")))


def _question_ids(prompts: pl.Series) -> pl.Series:
    """The id of each prompt without its system turn: an answer asked under a system prompt answers the same
    question (a source's own `system:` keeps prompt ids too)."""
    if prompts.dtype == pl.String:
        return S.prompt_ids(prompts)
    turns = prompts.list.eval(pl.element().filter(pl.element().struct.field("role") != "system"))
    return S.prompt_ids(turns)


def exported_responses(store: Store, recipe: Recipe, prompts: pl.DataFrame) -> pl.DataFrame:
    """The responses records of every successful answer of the recipe's answering sources, in prompt order (a
    source that only revises now has none, whatever it answered before)."""
    rows: dict[str, list[Any]] = {c: [] for c in (S.PROMPT_ID, "_index", S.SOURCE, S.SAMPLE, S.RESPONSE,
                                                   S.FINISH_REASON)}
    files = [file_answers(s, prompts, recipe.samples_per_source, recipe.prompts)
             for s in recipe.sources if s.backend == "file"]
    for source in recipe.answering_sources:
        if source.backend == "file":
            continue
        settings = source.cache_settings()
        keys = {cache_key("gen", settings, source.name, pid, sample): (index, pid, sample)
                for index, pid in enumerate(prompts[S.PROMPT_ID]) for sample in range(recipe.samples_per_source)}
        for key, entry in store.get(keys).items():
            if entry.ok:
                index, pid, sample = keys[key]
                for column, value in zip(rows, (pid, index, source.name, sample, entry.value["text"],  # type: ignore[index]
                                                entry.value.get("finish_reason")), strict=True):  # type: ignore[index]
                    rows[column].append(value)
    answers = pl.concat([pl.DataFrame(rows, schema=_ANSWER_SCHEMA), *files])
    return (answers.join(prompts.select(S.PROMPT_ID, S.PROMPT, "dataset"), on=S.PROMPT_ID, how="left")
            .with_columns(pl.lit(None, pl.Float64).alias(S.SCORE))
            .sort("_index", S.SOURCE, S.SAMPLE).select(*S.RESPONSE_COLUMNS, "dataset"))
