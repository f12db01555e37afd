"""Filters that keep unusable answers and pairs out of training, each one counted.

Three levels, applied in this order and column-wise:
  answers  empty/whitespace, truncated (finish_reason == 'length'), leaked role markers, too short,
           too long. An answer dropped here never enters a pair, so a scored strategy picks the
           best *usable* answer instead of losing the prompt.
  prompts  decontamination: a prompt sharing a word n-gram (default 13) with an eval prompt is
           dropped with all its answers. Prompts shorter than n words match only when equal as a whole.
  pairs    identical after case/whitespace normalisation (always on: chosen == rejected teaches
           nothing), near-duplicates (word-set Jaccard >= threshold), length ratio out of bounds.
Each answer or pair is counted under the first reason that drops it.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from pairforge import schema as S
from pairforge.config import FilterConfig
from pairforge.errors import InputError
from pairforge.io import read_records
from pairforge.models import load_tokenizer

LENGTH = "length"  # per-answer length in the configured unit
DROP = "drop_reason"


def with_lengths(responses: pl.DataFrame, cfg: FilterConfig) -> pl.DataFrame:
    """Add the length of every answer, in words or in tokens of the configured tokenizer."""
    if cfg.length_unit == "words":
        return responses.with_columns(pl.col(S.RESPONSE).str.count_matches(r"\S+").cast(pl.Int64).alias(LENGTH))
    tokenizer = load_tokenizer(cfg.tokenizer)
    ids = tokenizer(responses[S.RESPONSE].to_list(), add_special_tokens=False)["input_ids"]
    return responses.with_columns(pl.Series(LENGTH, [len(i) for i in ids], dtype=pl.Int64))


def answer_drop_reasons(cfg: FilterConfig) -> list[tuple[str, pl.Expr]]:
    """(reason, condition) for answers, in the order they are checked."""
    text = pl.col(S.RESPONSE)
    reasons = [("empty answer", text.str.strip_chars().str.len_chars() == 0)]
    if cfg.drop_truncated:
        reasons.append(("truncated (finish_reason=length)", pl.col(S.FINISH_REASON).fill_null("") == "length"))
    if cfg.role_markers:
        reasons.append(("leaked role marker", text.str.contains(cfg.role_markers)))
    if cfg.min_length is not None:
        reasons.append((f"shorter than {cfg.min_length} {cfg.length_unit}", pl.col(LENGTH) < cfg.min_length))
    if cfg.max_length is not None:
        reasons.append((f"longer than {cfg.max_length} {cfg.length_unit}", pl.col(LENGTH) > cfg.max_length))
    return reasons


def pair_drop_reasons(cfg: FilterConfig) -> list[tuple[str, pl.Expr]]:
    """(reason, condition) for candidate pairs (columns chosen/rejected/chosen_length/...)."""
    def norm(column: str) -> pl.Expr:
        return pl.col(column).str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()

    reasons = [("chosen == rejected", norm("chosen") == norm("rejected"))]
    if cfg.near_duplicate is not None:
        words_c = pl.col("chosen").str.to_lowercase().str.extract_all(r"\w+").list.unique()
        words_r = pl.col("rejected").str.to_lowercase().str.extract_all(r"\w+").list.unique()
        union = words_c.list.set_union(words_r).list.len()
        jaccard = words_c.list.set_intersection(words_r).list.len() / pl.when(union > 0).then(union).otherwise(1)
        reasons.append((f"near-duplicate (Jaccard >= {cfg.near_duplicate})", jaccard >= cfg.near_duplicate))
    if cfg.length_ratio is not None:
        low, high = cfg.length_ratio
        ratio = pl.col("chosen_length") / pl.max_horizontal(pl.col("rejected_length"), pl.lit(1))
        reasons.append((f"length ratio outside [{low}, {high}]", (ratio < low) | (ratio > high)))
    return reasons


def apply(frame: pl.DataFrame, reasons: list[tuple[str, pl.Expr]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split rows into (kept, dropped-with-`drop_reason`), naming the first reason that applies."""
    if not reasons:
        return frame, frame.clear().with_columns(pl.lit(None, pl.String).alias(DROP))
    first = pl.coalesce([pl.when(cond.fill_null(False)).then(pl.lit(name)) for name, cond in reasons])
    marked = frame.with_columns(first.alias(DROP))
    return marked.filter(pl.col(DROP).is_null()).drop(DROP), marked.filter(pl.col(DROP).is_not_null())


# --- decontamination -------------------------------------------------------------------------------

def contaminated_prompts(responses: pl.DataFrame, eval_files: list[Path], n: int) -> set[str]:
    """prompt_ids whose text shares a word n-gram with any prompt of the eval files."""
    eval_grams: set[tuple[str, ...]] = set()
    for path in eval_files:
        for text in _eval_prompt_texts(path):
            eval_grams |= _ngrams(_words(text), n)
    prompts = responses.select(S.PROMPT_ID, S.PROMPT).unique(S.PROMPT_ID)
    return {
        pid for pid, prompt in prompts.iter_rows()
        if _ngrams(_words(_prompt_text(prompt)), n) & eval_grams
    }


def _eval_prompt_texts(path: Path) -> list[str]:
    records = read_records(path)
    keys = [k for k in ("prompt", "instruction", "question") if k in records.columns]
    if not keys:
        raise InputError(str(path), "eval prompt file: expected a prompt (or instruction) field", row="row 1")
    return [_prompt_text(row.get(keys[0])) for row in records.as_rows() if row.get(keys[0]) is not None]


def _prompt_text(prompt: str | list[dict[str, str]]) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m["role"] != "assistant")


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", text.lower()))


def _ngrams(words: tuple[str, ...], n: int) -> set[tuple[str, ...]]:
    if len(words) < n:
        return {words} if words else set()
    return {words[i : i + n] for i in range(len(words) - n + 1)}
