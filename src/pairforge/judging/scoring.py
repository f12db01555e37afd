"""The `judge` stage: score every answer (reward model, similarity) or compare answers pairwise (LLM).

Inputs: the responses file (`generate`'s, or any file the pairs stage reads). Outputs in the run folder:
`responses.scored.parquet` (the responses with `score` filled: the judge's score, or for the pairwise
judge the answer's mean probability of beating the other sources' answers to the same prompt — so the
`scored` and `verified` pair strategies use it directly) and, for the pairwise judge,
`judgments.parquet` (one row per comparison, both orders) that `pairforge rank` reads. Every score and
verdict is cached in the run's store.sqlite, keyed by the judge's settings and the answers' text.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pairforge import layout
from pairforge import schema as S
from pairforge.config import JudgeConfig, SourceConfig
from pairforge.errors import InputError
from pairforge.files import check_output, read_records, write_table
from pairforge.judging import pairwise
from pairforge.judging.pointwise import check_reward_model, reward_scores, similarity_scores
from pairforge.judging.summary import JudgeSummary, JudgeTally, SourceStats
from pairforge.models import check_sentence_model
from pairforge.recipe import Recipe
from pairforge.records import responses_from_files
from pairforge.requests.backends.base import Request, check_source
from pairforge.requests.engine import answer_all, cache_key, make_backend, progress_bar, request_seed
from pairforge.requests.shards import Shard
from pairforge.requests.store import Store, opened
from pairforge.text import prompt_text


@dataclass
class JudgeResult:
    scored: Path
    judgments: Path | None
    summary: JudgeSummary


def judge(recipe: Recipe, out_dir: Path, responses: Path | None = None, retry_failed: bool = False,
          show_progress: bool = True, store_path: Path | None = None, shard: Shard | None = None) -> JudgeResult:
    """Judge the answers in `responses` (default <out_dir>/responses.parquet). A `shard` asks the LLM judge about its
    prompts only, into its own store, and writes no file: `scored` is that store, `judgments` None, the summary
    counts the shard's answers and comparisons."""
    check_output(out_dir, "folder", "--out")
    cfg = recipe.judge
    if cfg is None:
        raise InputError("recipe", "expected a `judge:` section (kind: reward-model | llm-pairwise | similarity)")
    if shard and cfg.kind != "llm-pairwise":
        raise InputError("--shard", f"the {cfg.kind} judge sends no requests to split: it scores on this machine; "
                         "run it without --shard")
    path = responses or out_dir / layout.RESPONSES
    if not path.exists():
        raise InputError(str(path), "no responses to judge: run `pairforge generate` first or pass --responses")
    frame = responses_from_files([read_records(path)], "long")
    if cfg.reference and cfg.reference not in set(frame[S.SOURCE]):
        raise InputError("judge.reference", f"no answers from source '{cfg.reference}' in {path} "
                         f"(sources: {', '.join(sorted(set(frame[S.SOURCE])))})")
    frame = _sampled_prompts(frame, cfg)  # the whole run's sample: every shard draws the same prompts
    frame = shard.keep(frame) if shard else frame
    check_judge(cfg)
    with opened(store_path or out_dir / layout.STORE, shard) as store:
        if shard and frame.is_empty():  # a shard that holds none of the prompts: nothing to ask
            scores, judgments, tally = [], None, JudgeTally(comparisons=0)
        else:
            scores, judgments, tally = judge_frame(frame, cfg, store, retry_failed, show_progress)
    scored = frame.with_columns(pl.Series(S.SCORE, scores, dtype=pl.Float64))
    summary = JudgeSummary.model_validate(  # the tally's fields as the judge set them (see JudgeTally)
        {"judge": cfg.kind, "answers": frame.height, "scored": int(scored[S.SCORE].is_not_null().sum()),
         **tally.model_dump(), "per_source": _per_source(scored)})
    if shard:
        return JudgeResult(store.path, None, summary)
    judgments_path = write_table(judgments, out_dir / layout.JUDGMENTS) if judgments is not None else None
    if judgments is None:  # an earlier pairwise judge's verdicts must not outlive it: rank reads them first
        (out_dir / layout.JUDGMENTS).unlink(missing_ok=True)
    scored_path = write_table(scored, out_dir / layout.SCORED)
    summary.write(out_dir / layout.JUDGE_SUMMARY)
    return JudgeResult(scored_path, judgments_path, summary)


def judge_frame(frame: pl.DataFrame, cfg: JudgeConfig, store: Store, retry_failed: bool = False,
                show_progress: bool = True) -> tuple[list[float | None], pl.DataFrame | None, JudgeTally]:
    """Scores for every row of a responses frame (in row order), the pairwise judgments if any, the tally."""
    if cfg.kind == "llm-pairwise":
        return _pairwise(frame, cfg, store, retry_failed, show_progress)
    scores, summary = _pointwise(frame, cfg, store, show_progress)
    return scores, None, summary


def _sampled_prompts(frame: pl.DataFrame, cfg: JudgeConfig) -> pl.DataFrame:
    ids = frame[S.PROMPT_ID].unique(maintain_order=True).to_list()
    if cfg.max_prompts is None or cfg.max_prompts >= len(ids):
        return frame
    keep = set(random.Random(cfg.seed).sample(ids, cfg.max_prompts))
    return frame.filter(pl.col(S.PROMPT_ID).is_in(keep))


def _text_hash(*texts: str) -> str:
    return hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:12]


def _pointwise(frame: pl.DataFrame, cfg: JudgeConfig, store: Store,
               show_progress: bool) -> tuple[list[float | None], JudgeTally]:
    settings = cfg.cache_settings()
    references: dict[str, str] = {}
    if cfg.kind == "similarity":
        ref_rows = frame.filter((pl.col(S.SOURCE) == cfg.reference) & (pl.col(S.SAMPLE) == 0))
        references = dict(zip(ref_rows[S.PROMPT_ID], ref_rows[S.RESPONSE], strict=True))
    rows = frame.select(S.PROMPT_ID, S.PROMPT, S.SOURCE, S.SAMPLE, S.RESPONSE).to_dicts()
    keys: list[str | None] = []
    for row in rows:
        reference = references.get(row[S.PROMPT_ID], "")
        if cfg.kind == "similarity" and (row[S.SOURCE] == cfg.reference or not reference):
            keys.append(None)  # the reference itself, or no reference answer to compare with
            continue
        keys.append(cache_key("score", settings, row[S.SOURCE], row[S.PROMPT_ID], row[S.SAMPLE],
                              _text_hash(str(row[S.PROMPT]), row[S.RESPONSE], reference)))
    known = store.get(k for k in keys if k)
    todo = [i for i, k in enumerate(keys) if k and k not in known]
    with progress_bar(show_progress) as progress:
        task = progress.add_task(cfg.kind, total=len(rows), completed=len(rows) - len(todo), stats="")
        if todo:
            if cfg.kind == "reward-model":
                values = reward_scores(cfg, [rows[i][S.PROMPT] for i in todo], [rows[i][S.RESPONSE] for i in todo],
                                       lambda n: progress.update(task, advance=n))
            else:
                values = similarity_scores(cfg, [rows[i][S.RESPONSE] for i in todo],
                                           [references[rows[i][S.PROMPT_ID]] for i in todo])
                progress.update(task, advance=len(todo))
            for i, value in zip(todo, values, strict=True):
                store.put(keys[i], "score", {"score": value})  # type: ignore[arg-type]
    entries = store.get(k for k in keys if k)
    scores = [entries[k].value["score"] if k else None for k in keys]  # type: ignore[index]
    return scores, JudgeTally(cached=sum(1 for k in keys if k and k in known),
                              without_reference=sum(1 for k in keys if k is None))


def check_judge(cfg: JudgeConfig) -> None:
    """Fail before any work (before the store is created) when the judge cannot run: a missing package or key, a
    causal LM as reward model, a similarity model that is no sentence-embedding model."""
    if cfg.kind == "llm-pairwise":
        check_source(judge_llm(cfg))
    elif cfg.kind == "reward-model":
        check_reward_model(cfg.model)
    elif cfg.kind == "similarity":
        check_sentence_model(cfg.model, "judge.model")


def judge_llm(cfg: JudgeConfig) -> SourceConfig:
    """The judge model's settings; greedy and short unless the recipe says otherwise."""
    assert cfg.llm is not None
    defaults = {"name": "judge", "temperature": 0.0, "max_new_tokens": 8}
    return cfg.llm.model_copy(update={k: v for k, v in defaults.items() if k not in cfg.llm.model_fields_set})


def _pairwise(frame: pl.DataFrame, cfg: JudgeConfig, store: Store, retry_failed: bool,
              show_progress: bool) -> tuple[list[float | None], pl.DataFrame, JudgeTally]:
    llm = judge_llm(cfg)
    settings = {**llm.cache_settings(), "template": pairwise.TEMPLATE_VERSION}
    first = frame.filter(pl.col(S.SAMPLE) == 0)
    by_prompt: dict[str, dict[str, str]] = {}
    prompts: dict[str, str] = {}
    for row in first.select(S.PROMPT_ID, S.PROMPT, S.SOURCE, S.RESPONSE).iter_rows(named=True):
        by_prompt.setdefault(row[S.PROMPT_ID], {})[row[S.SOURCE]] = row[S.RESPONSE]
        prompts[row[S.PROMPT_ID]] = prompt_text(row[S.PROMPT], with_roles=True)
    comparisons: list[tuple[str, str, str, str, str]] = []  # prompt_id, x, y, key x-first, key y-first
    requests: list[Request] = []
    for prompt_id, answers in by_prompt.items():
        for x, y in _matchups(sorted(answers), cfg.reference):
            keys = []
            for a, b in ((x, y), (y, x)):
                key = cache_key("judge", settings, prompt_id, a, b, _text_hash(prompts[prompt_id], answers[a],
                                                                                answers[b]))
                keys.append(key)
                requests.append(Request(key, pairwise.judge_messages(prompts[prompt_id], answers[a], answers[b]),
                                        request_seed(llm.seed, key), top_logprobs=5))
            comparisons.append((prompt_id, x, y, keys[0], keys[1]))
    if not requests:
        raise InputError("judge", "nothing to compare: the pairwise judge needs at least two sources answering the "
                         "same prompt")
    with progress_bar(show_progress) as progress:
        tally = answer_all(requests, lambda: make_backend(llm), store, "judgment", "judge", progress, retry_failed,
                            llm.price)
    entries = store.get(r.key for r in requests)
    rows = []
    for prompt_id, x, y, key_xy, key_yx in comparisons:
        verdicts = [_verdict(entries.get(k)) for k in (key_xy, key_yx)]
        rows.append({S.PROMPT_ID: prompt_id, "source_a": x, "source_b": y,
                     "p_a": pairwise.both_orders(*verdicts), "p_a_shown_first": verdicts[0].p_first,
                     "p_b_shown_first": verdicts[1].p_first, "method_ab": verdicts[0].method,
                     "method_ba": verdicts[1].method})
    judgments = pl.DataFrame(rows, schema={S.PROMPT_ID: pl.String, "source_a": pl.String, "source_b": pl.String,
                                           "p_a": pl.Float64, "p_a_shown_first": pl.Float64,
                                           "p_b_shown_first": pl.Float64, "method_ab": pl.String,
                                           "method_ba": pl.String})
    shown_first = pl.concat([judgments["p_a_shown_first"], judgments["p_b_shown_first"]]).drop_nulls()
    summary = JudgeTally(comparisons=judgments.height, unreadable=int(judgments["p_a"].is_null().sum()),
                         failed_requests=tally.failed + tally.failed_before, retries=tally.retries,
                         p_first_shown_wins=float(shown_first.mean()) if len(shown_first) else None,
                         verdicts_from_logprobs=int((judgments["method_ab"] == "logprobs").sum()
                                                    + (judgments["method_ba"] == "logprobs").sum()),
                         usage=tally.usage)
    return _win_rates(frame, judgments), judgments, summary


def _matchups(sources: list[str], reference: str | None) -> list[tuple[str, str]]:
    if reference is None:
        return list(itertools.combinations(sources, 2))
    return [(s, reference) for s in sources if s != reference and reference in sources]


def _verdict(entry: Any) -> pairwise.Verdict:
    if entry is None or not entry.ok:
        return pairwise.Verdict(None, "failed")
    return pairwise.read_verdict(entry.value["text"], entry.value.get("first_token_logprobs") or {})


def _win_rates(frame: pl.DataFrame, judgments: pl.DataFrame) -> list[float | None]:
    """Each sample-0 answer's mean probability of beating the answers it was compared with."""
    wins = pl.concat([
        judgments.select(S.PROMPT_ID, pl.col("source_a").alias(S.SOURCE), pl.col("p_a").alias("p")),
        judgments.select(S.PROMPT_ID, pl.col("source_b").alias(S.SOURCE), (1 - pl.col("p_a")).alias("p")),
    ]).group_by(S.PROMPT_ID, S.SOURCE).agg(pl.col("p").mean()).with_columns(pl.lit(0, pl.Int64).alias(S.SAMPLE))
    joined = frame.select(S.PROMPT_ID, S.SOURCE, S.SAMPLE).join(wins, on=[S.PROMPT_ID, S.SOURCE, S.SAMPLE],
                                                                  how="left", maintain_order="left")
    return joined["p"].to_list()


def _per_source(scored: pl.DataFrame) -> dict[str, SourceStats]:
    stats = (scored.group_by(S.SOURCE).agg(pl.len().alias("answers"), pl.col(S.SCORE).count().alias("scored"),
                                           pl.col(S.SCORE).mean().alias("mean"), pl.col(S.SCORE).std().alias("std"))
             .sort("mean", descending=True, nulls_last=True))
    return {row.pop(S.SOURCE): SourceStats(**row) for row in stats.to_dicts()}

