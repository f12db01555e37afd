"""The `generate` stage: every (prompt, source, sample) answered once, committed as it completes.

`answer_all` is the loop shared with the LLM judge: requests whose key is already in the store are
skipped (failures too, unless `retry_failed`), the rest go to the backend, and each outcome is written
to the store the moment it arrives, with a live progress line (done/total, tokens/s, errors, retries,
ETA). `generate` builds the requests from a recipe and exports the successes to `responses.parquet`
atomically; failures are never exported as answers, they wait in the store for `--retry-failed`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pairforge import schema as S
from pairforge.config import Recipe, SourceConfig
from pairforge.errors import InputError
from pairforge.formats import prompts_from_file, responses_from_files
from pairforge.generate.base import Backend, Completion, Request, check_source, make_backend
from pairforge.generate.store import Store, opened
from pairforge.io import check_output, read_records, write_table

RESPONSES_FILE = "responses.parquet"
STORE_FILE = "store.sqlite"


@dataclass
class Tally:
    """What happened to one source's (or judge's) requests in this run."""

    total: int = 0
    cached: int = 0  # done in an earlier run
    done: int = 0  # done now
    failed: int = 0  # failed now (kept in the store with the reason)
    failed_before: int = 0  # failed in an earlier run and not retried
    retries: int = 0
    tokens: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class _StoreReporter:
    """Commits each outcome to the store and advances the progress line."""

    def __init__(self, store: Store, kind: str, tally: Tally, progress: Progress, task: Any) -> None:
        self.store, self.kind, self.tally, self.progress, self.task = store, kind, tally, progress, task
        self.started = time.perf_counter()

    def completed(self, request: Request, completion: Completion) -> None:
        self.store.put(request.key, self.kind, {"text": completion.text, "finish_reason": completion.finish_reason,
                                                "tokens": completion.tokens,
                                                "first_token_logprobs": completion.first_token_logprobs})
        self.tally.done += 1
        self.tally.tokens += completion.tokens
        self._advance()

    def failed(self, request: Request, reason: str) -> None:
        self.store.put_failure(request.key, self.kind, reason)
        self.tally.failed += 1
        self.tally.reasons[reason.split(":")[0]] += 1
        self._advance()

    def retried(self, request: Request, reason: str) -> None:
        self.tally.retries += 1
        self._advance(0)

    def _advance(self, step: int = 1) -> None:
        t = self.tally
        t.seconds = time.perf_counter() - self.started
        self.progress.update(self.task, advance=step, stats=f"{t.tokens_per_s:6.1f} tok/s  errors {t.failed}  "
                                                            f"retries {t.retries}")


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not enabled)


def answer_all(requests: list[Request], backend: Callable[[], Backend], store: Store, kind: str, label: str,
               progress: Progress, retry_failed: bool = False) -> Tally:
    """Answer the requests not yet in the store; the backend is only built when something is left to do."""
    known = store.get(r.key for r in requests)
    tally = Tally(total=len(requests))
    tally.cached = sum(1 for e in known.values() if e.ok)
    tally.failed_before = sum(1 for e in known.values() if not e.ok) if not retry_failed else 0
    todo = [r for r in requests if r.key not in known or (retry_failed and not known[r.key].ok)]
    task = progress.add_task(label, total=len(requests), completed=len(requests) - len(todo), stats="")
    if todo:
        backend().run(todo, _StoreReporter(store, kind, tally, progress, task))
    return tally


def cache_key(kind: str, settings: dict[str, Any], *parts: Any) -> str:
    """A readable, stable key: kind:part:...:hash-of-settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return ":".join([kind, *map(str, parts), digest])


def request_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)


@dataclass
class GenerateResult:
    tallies: dict[str, Tally]
    responses: Path
    exported: int

    @property
    def failed(self) -> int:
        return sum(t.failed + t.failed_before for t in self.tallies.values())


def generate(recipe: Recipe, out_dir: Path, retry_failed: bool = False, only: list[str] | None = None,
             show_progress: bool = True) -> GenerateResult:
    """Answer the recipe's prompts with its sources; export every success to <out_dir>/responses.parquet."""
    check_output(out_dir, "folder", "--out")
    if recipe.prompts is None:
        raise InputError("recipe", "expected `prompts:` (a file of prompts to answer)")
    if not recipe.sources:
        raise InputError("recipe", "expected `sources:` (the models that answer)")
    unknown = sorted(set(only or []) - {s.name for s in recipe.sources})
    if unknown:
        raise InputError("--source", f"no source named '{unknown[0]}' in the recipe "
                         f"(found {', '.join(s.name for s in recipe.sources)})")
    only = only or [s.name for s in recipe.answering_sources]  # a reviser that only revises answers nothing
    for source in recipe.sources:
        if not only or source.name in only:
            check_source(source)
    prompts = prompts_from_file(recipe.prompts)
    if prompts.is_empty():
        raise InputError(str(recipe.prompts), "no prompts in the file")
    tallies: dict[str, Tally] = {}
    with opened(out_dir / STORE_FILE) as store:
        with progress_bar(show_progress) as progress:
            for source in recipe.sources:
                if only and source.name not in only or source.backend == "file":
                    continue
                requests = source_requests(source, prompts, recipe.samples_per_source)
                tallies[source.name] = answer_all(requests, lambda s=source: make_backend(s), store, "generation",
                                                  source.name, progress, retry_failed)
        frame = exported_responses(store, recipe, prompts)
        for source in recipe.sources:
            if source.backend == "file" and (not only or source.name in only):
                found = frame.filter(pl.col(S.SOURCE) == source.name).height
                tallies[source.name] = Tally(total=prompts.height * recipe.samples_per_source, cached=found)
    path = write_table(frame, out_dir / RESPONSES_FILE)
    return GenerateResult(tallies, path, frame.height)


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


def file_answers(source: SourceConfig, prompts: pl.DataFrame, samples: int) -> pl.DataFrame:
    """A file source's answers to the recipe's prompts (those it has; the pairs stage counts the rest)."""
    assert source.path is not None
    frame = responses_from_files([read_records(source.path)], "auto")
    found = frame[S.SOURCE].unique().to_list()
    if len(found) > 1:
        raise InputError(str(source.path), f"source '{source.name}' takes one model's answers, but the file has "
                         f"answers from {len(found)} ({', '.join(sorted(found)[:4])}); split it per model")
    index = prompts.select(S.PROMPT_ID).with_row_index("_index").with_columns(pl.col("_index").cast(pl.Int64))
    return (frame.filter(pl.col(S.SAMPLE) < samples).join(index, on=S.PROMPT_ID)
            .select(S.PROMPT_ID, "_index", pl.lit(source.name).alias(S.SOURCE), S.SAMPLE, S.RESPONSE,
                    pl.col(S.FINISH_REASON).fill_null("stop")))


def exported_responses(store: Store, recipe: Recipe, prompts: pl.DataFrame) -> pl.DataFrame:
    """The responses records of every successful answer of the recipe's sources, in prompt order."""
    rows: dict[str, list[Any]] = {c: [] for c in (S.PROMPT_ID, "_index", S.SOURCE, S.SAMPLE, S.RESPONSE,
                                                   S.FINISH_REASON)}
    files = [file_answers(s, prompts, recipe.samples_per_source) for s in recipe.sources if s.backend == "file"]
    for source in recipe.sources:
        if source.backend == "file":
            continue
        settings = source.cache_settings()
        keys = {cache_key("gen", settings, source.name, pid, sample): (index, pid, sample)
                for index, pid in enumerate(prompts[S.PROMPT_ID]) for sample in range(recipe.samples_per_source)}
        for key, entry in store.get(keys).items():
            if entry.ok:
                index, pid, sample = keys[key]
                for column, value in zip(rows, (pid, index, source.name, sample, entry.value["text"],  # type: ignore[index]
                                                entry.value["finish_reason"]), strict=True):  # type: ignore[index]
                    rows[column].append(value)
    answers = pl.concat([pl.DataFrame(rows, schema=_ANSWER_SCHEMA), *files])
    return (answers.join(prompts.select(S.PROMPT_ID, S.PROMPT, "dataset"), on=S.PROMPT_ID, how="left")
            .with_columns(pl.lit(None, pl.Float64).alias(S.SCORE))
            .sort("_index", S.SOURCE, S.SAMPLE).select(*S.RESPONSE_COLUMNS, "dataset"))
