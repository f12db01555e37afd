"""The `revise` stage: a reviser source minimally edits one source's answers, through the cached request engine.

Every answer of `pairs.revision.original` in the run's responses is sent to the reviser as the revision
template with {instruction} (the prompt's text; chat turns joined by blank lines, as the completions endpoint
sees them) and {answer} filled in. The requests go through `answer_all` and the run's store.sqlite exactly as
generation does: each revision is committed the moment it arrives (kill -9 loses only those in flight), a
rerun asks nothing already answered, failures are kept with their reason for --retry-failed. The cache key
covers the reviser's answer-changing settings, the template and the original answer's text, so a new answer
or template is revised again, and a moved server (base_url) or more concurrency is not.

Output: revisions.parquet in the responses shape, so `pairs build` reads it beside the responses: source is
"<original>+<reviser>" (`RevisionConfig.revision_source`) and sample is the revised answer's sample; the
columns original_source, reviser, original and edit_distance record what was revised, by whom and how much.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pairforge import layout
from pairforge import schema as S
from pairforge.config import RevisionConfig, SourceConfig
from pairforge.edits import EditDistances, distribution, edit_distance
from pairforge.errors import InputError
from pairforge.files import check_output, read_records, write_table
from pairforge.recipe import Recipe
from pairforge.records import responses_from_files
from pairforge.requests.backends.base import Request, check_source
from pairforge.requests.engine import Tally, answer_all, cache_key, make_backend, progress_bar, request_seed
from pairforge.requests.shards import Shard
from pairforge.requests.store import opened
from pairforge.requests.usage import UsageSummary
from pairforge.text import prompt_text

_PLACEHOLDER = re.compile(r"\{(instruction|answer)\}")


@dataclass
class RevisionSummary:
    """What `revise` did (the CLI shows it with `render.revising`; of it only the reviser's tokens and cost are
    written, revise.summary.json)."""

    tally: Tally  # the reviser's requests
    revisions: Path  # the exported revisions (revisions.parquet)
    exported: int  # revisions in it
    edit_distance: EditDistances  # distribution of the exported revisions' edit distances
    reviser: str = ""  # the reviser's source name
    usage_file: Path | None = None  # revise.summary.json: the reviser's tokens and cost (`tally.usage`)

    @property
    def failed(self) -> int:
        return self.tally.failed + self.tally.failed_before


def revise(recipe: Recipe, out_dir: Path, responses: Path | None = None, retry_failed: bool = False,
           show_progress: bool = True, store_path: Path | None = None, shard: Shard | None = None) -> RevisionSummary:
    """Revise the original source's answers in `responses` (default <out_dir>/responses.parquet); write
    <out_dir>/revisions.parquet with every revision that came back. A `shard` revises only its prompts' answers into
    its own store and writes no file: the summary's `revisions` is that store, `exported` the revisions it holds."""
    check_output(out_dir, "folder", "--out")
    cfg = recipe.pairs.revision
    if cfg is None:
        raise InputError("recipe", "expected `pairs.revision` (reviser, original) with `strategy: revised`")
    reviser = next(s for s in recipe.sources if s.name == cfg.reviser)  # the recipe checked the name
    path = responses or out_dir / layout.RESPONSES
    if not path.exists():
        raise InputError(str(path), "no answers to revise: run `pairforge generate` first or pass --responses")
    frame = responses_from_files([read_records(path)], "long")
    originals = frame.filter(pl.col(S.SOURCE) == cfg.original)
    if originals.is_empty():
        raise InputError(str(path), f"no answers from source '{cfg.original}' (pairs.revision.original) to revise "
                         f"(sources: {', '.join(sorted(set(frame[S.SOURCE])))})")
    check_source(reviser)
    originals = shard.keep(originals) if shard else originals
    requests = revision_requests(originals, reviser, cfg)
    with opened(store_path or out_dir / layout.STORE, shard) as store:
        with progress_bar(show_progress) as progress:
            tally = answer_all(requests, lambda: make_backend(reviser), store, "revision", f"{cfg.reviser} revises",
                               progress, retry_failed, reviser.price)
        if shard:
            return RevisionSummary(tally, store.path, tally.cached + tally.done, distribution([]), reviser.name)
        entries = store.get(r.key for r in requests)
    texts = [entries[r.key].value if r.key in entries and entries[r.key].ok else None for r in requests]
    revisions = _revision_rows(originals, texts, cfg)
    written = write_table(revisions, out_dir / layout.REVISIONS)
    usage_file = UsageSummary(sources={reviser.name: tally.usage}).write(out_dir / layout.REVISE_SUMMARY)
    return RevisionSummary(tally, written, revisions.height, distribution(revisions["edit_distance"].to_list()),
                           reviser.name, usage_file)


def revision_requests(originals: pl.DataFrame, reviser: SourceConfig, cfg: RevisionConfig) -> list[Request]:
    """One request per original answer, keyed by the reviser's settings, the template and the answer's text."""
    settings = {**reviser.cache_settings(), "template": cfg.template}
    requests = []
    for prompt_id, prompt, sample, answer in originals.select(S.PROMPT_ID, S.PROMPT, S.SAMPLE, S.RESPONSE).iter_rows():
        instruction = prompt_text(prompt)
        asked = fill(cfg.template, instruction, answer)
        answer_hash = hashlib.sha256(answer.encode()).hexdigest()[:12]
        key = cache_key("revise", settings, reviser.name, cfg.original, prompt_id, sample, answer_hash)
        requests.append(Request(key, S.to_messages(asked, reviser.system), request_seed(reviser.seed, key)))
    return requests


def fill(template: str, instruction: str, answer: str) -> str:
    """The template with both placeholders filled in one pass (an answer quoting '{instruction}' stays as is;
    other braces in the template are text)."""
    values = {"instruction": instruction, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _revision_rows(originals: pl.DataFrame, values: list[dict[str, Any] | None], cfg: RevisionConfig) -> pl.DataFrame:
    """The revisions that came back, in the originals' order, as responses rows with their provenance."""
    done = [i for i, v in enumerate(values) if v is not None]
    rows = originals.select(pl.all().gather(done))
    text = [values[i]["text"] for i in done]  # type: ignore[index]
    finish = [values[i]["finish_reason"] for i in done]  # type: ignore[index]
    distance = [edit_distance(o, r) for o, r in zip(rows[S.RESPONSE], text, strict=True)]
    return rows.select(
        S.PROMPT_ID, S.PROMPT, pl.lit(cfg.revision_source).alias(S.SOURCE), S.SAMPLE,
        pl.Series(S.RESPONSE, text, pl.String), pl.Series(S.FINISH_REASON, finish, pl.String),
        pl.lit(None, pl.Float64).alias(S.SCORE), pl.col(S.SOURCE).alias("original_source"),
        pl.lit(cfg.reviser).alias("reviser"), pl.col(S.RESPONSE).alias("original"),
        pl.Series("edit_distance", distance, pl.Float64),
    )
