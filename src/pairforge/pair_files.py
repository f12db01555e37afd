"""Pairs files in: the pairs stage's output, the trainer's and `curriculum show`'s input, and any TRL preference
file (prompt/chosen/rejected, standard or conversational), every value checked at read time.

Answers in (responses of several models, in any of the shapes users have) live in `records`; this module reads
records that are already pairs.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pairforge.errors import InputError
from pairforge.fields import Field, check_fields, check_same_shape
from pairforge.files import Records, read_records

TRL_COLUMNS = ("prompt", "chosen", "rejected")


def check_pair_columns(columns: list[str], target_column: str | None, source: str) -> None:
    """TRL's three columns (and the likelihood target, when one is named) are there."""
    missing = [c for c in TRL_COLUMNS if c not in columns]
    if missing:
        raise InputError(source, f"missing column(s) {', '.join(missing)}: expected TRL's prompt/chosen/rejected "
                         f"(found {', '.join(columns)})")
    if target_column and target_column not in columns:
        raise InputError(source, f"the likelihood target column '{target_column}' is not in the file")


def read_pairs(path: Path, target_column: str | None = None) -> pl.DataFrame:
    """A pairs file (ours or any TRL prompt/chosen/rejected file), every value checked at read time: texts or
    chat messages where answers belong (roles system/user/assistant, a prompt ending with the user's turn, answers
    of assistant turns; a file conversational or plain text, not both), a finite weight >= 0, a text pair_type."""
    return checked_pairs(read_records(path), target_column)


def checked_pairs(
    records: Records, target_column: str | None = None, optional: tuple[Field, ...] = ()
) -> pl.DataFrame:
    """`read_pairs` of records already read; `optional` fields are checked too where the file has them."""
    records = _prompts_from_answers(records)
    check_pair_columns(records.columns, target_column, str(records.path))
    optional = (Field("weight", "number", required=False), Field("pair_type", "text", required=False), *optional)
    answers = [c for c in ("chosen", "rejected", target_column) if c]
    check_fields(records, [Field("prompt", "prompt"), *(Field(c, "answer") for c in dict.fromkeys(answers)),
                           *(f for f in optional if f.key in records.columns)])
    check_same_shape(records, chat_keys=("prompt", *answers))
    frame = records.frame if records.frame is not None else pl.DataFrame(records.rows, infer_schema_length=None,
                                                                          strict=False)
    negative = frame.select(pl.arg_where(pl.col("weight") < 0).first()).item() if "weight" in frame.columns else None
    if negative is not None:
        raise InputError(str(records.path), f"expected a weight >= 0, found {frame['weight'][negative]}",
                         row=records.label(negative), field="weight")
    return frame


def _prompts_from_answers(records: Records) -> Records:
    """TRL's rule for a text `prompt` beside chat answers that repeat it (HuggingFaceH4/ultrafeedback_binarized:
    prompt "hi", chosen [user "hi", assistant "a"]): the prompt is the answers' shared leading turns and the
    answers are what follows, so the chat template sees the user's turn once."""
    frame = records.frame
    if frame is not None and not (frame.schema.get("prompt") == pl.String
                                  and all(isinstance(frame.schema.get(k), pl.List) for k in ("chosen", "rejected"))):
        return records  # decided by the columns' types, without turning a large frame into rows
    rows = records.as_rows()
    if not rows or not all(isinstance(r.get("prompt"), str) and isinstance(r.get("chosen"), list)
                           and isinstance(r.get("rejected"), list) for r in rows):
        return records
    for row in rows:
        chosen, rejected = row["chosen"], row["rejected"]
        shared = next((i for i, (c, r) in enumerate(zip(chosen, rejected, strict=False)) if c != r),
                      min(len(chosen), len(rejected)))
        if shared:
            row["prompt"], row["chosen"], row["rejected"] = chosen[:shared], chosen[shared:], rejected[shared:]
    if records.rows is not None:
        return Records(records.path, rows=rows, line_numbers=records.line_numbers)
    return Records(records.path, frame=pl.DataFrame(rows, infer_schema_length=None, strict=False))
