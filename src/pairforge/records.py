"""Input shapes -> one responses frame (schema.RESPONSE_COLUMNS), validated with exact locations.

Shapes (detected from the fields, or named with `--format`):
  long           one row per (prompt, source, response); AlpacaEval's model_outputs.json
                 (instruction, output, generator) is this shape, one file per model.
  wide           one row per prompt, one column per source (`columns={"gpt4": "output_gpt4"}`).
  ultrafeedback  `completions: [{model, response, overall_score | ratings | annotations, custom_system_prompt}]`;
                 a completion's system prompt is the system turn of its answer's prompt (what that model
                 was asked), while prompt_id stays the instruction's, so answers asked under different
                 system prompts still pair (a pair's prompt is then its chosen answer's).
  nectar         `answers: [{model, answer, rank}]`; score = -rank (rank 1 is best).
  sharegpt       `conversations: [{from, value}]` or `messages: [{role, content}]`; the last
                 assistant turn is the response, the turns before it are the prompt.

A file with chosen and rejected fields is pairs, not answers (detected as `preference`): `pairs build` re-filters
and splits it (`pairs.preference`); every other reader of answers refuses it.

Errors (exit 2, one line naming file, row and field): a missing or mistyped field, a NaN score, an
unknown shape, the same (prompt, source, sample) twice. Skipped and counted instead: a wide row whose
source column is null (that source did not answer that prompt).

Flat shapes (long, wide) are adapted column-wise with polars, so a million Parquet rows never meet
a Python loop; JSON rows are type-checked row by row first, because JSON types vary per row and the
error must name the line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from pairforge import schema as S
from pairforge.errors import InputError, describe
from pairforge.fields import (
    Field,
    as_chat,
    checked_frame,
    is_finite,
    is_messages,
    turn_problem,
)
from pairforge.files import Records, read_records
from pairforge.text import prompt_preview

MESSAGES = S.MESSAGES
_ALIASES = {
    "prompt": ("prompt", "instruction", "question"),
    "response": ("response", "output", "completion", "answer"),
    "source": ("source", "generator", "model"),
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
_CANONICAL_SCHEMA = {
    "_file": pl.Int32, "_row": pl.Int64, S.PROMPT_ID: pl.String, "system": pl.String, S.SOURCE: pl.String,
    S.SAMPLE: pl.Int64, S.RESPONSE: pl.String, S.FINISH_REASON: pl.String, S.SCORE: pl.Float64,
    "_own_id": pl.Boolean,  # the input gave this row's prompt_id (checked to name one prompt)
}


def detect_format(records: Records, columns: dict[str, str] | None) -> str:
    """Name the shape of a file from its fields; one clear line when nothing fits."""
    keys = set(records.columns)
    if columns:
        return "wide"
    if "chosen" in keys and "rejected" in keys:
        return "preference"
    if "completions" in keys:
        return "ultrafeedback"
    if "answers" in keys:
        return "nectar"
    if "conversations" in keys or "messages" in keys:
        return "sharegpt"
    if _pick(keys, "prompt") and _pick(keys, "response"):
        return "long"
    raise InputError(str(records.path), "cannot tell the input format: expected fields prompt/instruction and "
                     "response/output (long), completions (UltraFeedback), answers (Nectar), conversations or "
                     "messages (ShareGPT), chosen and rejected (a TRL preference file), or --columns for wide; found"
                     f" {', '.join(sorted(keys)) or 'none'}")


def responses_from_files(
    inputs: list[Records], fmt: str = "auto", columns: dict[str, str] | None = None
) -> pl.DataFrame:
    """All input files -> one validated responses frame with stable prompt ids and sample numbers."""
    frames = []
    for file_index, records in enumerate(inputs):
        shape = detect_format(records, columns) if fmt == "auto" else fmt
        if shape == "preference":
            raise InputError(str(records.path), "expected answers, found pairs (chosen and rejected): a preference "
                             "file is re-filtered and split by `pairs build`, not answered or judged")
        adapt = {"long": _long, "wide": _wide, "ultrafeedback": _ultrafeedback, "nectar": _nectar,
                 "sharegpt": _sharegpt}[shape]
        frame = adapt(records, columns or {})
        frames.append(frame.with_columns(pl.lit(file_index, pl.Int32).alias("_file")))
    return _finalise(frames, inputs)


def responses_frame(responses: list[S.Response]) -> pl.DataFrame:
    """Records built in Python (by a generator, a notebook, a test) -> the same validated frame."""
    rows = [{"prompt": r.prompt, "source": r.source, "response": r.response, "sample": r.sample,
             "finish_reason": r.finish_reason, "score": r.score, "system": r.system, "prompt_id": r.prompt_id}
            for r in responses]
    return responses_from_files([Records(Path("<responses>"), rows=rows)], "long")


def prompts_from_file(path: Path) -> pl.DataFrame:
    """Prompts to answer: distinct (prompt_id, prompt, dataset) rows in file order.

    Any file whose rows carry a prompt works: `prompt` / `instruction` (+ Alpaca's `input`) / `question`,
    as text or chat messages, with optional `system`, `prompt_id` and `dataset`; so a responses file or
    AlpacaEval's eval set is a prompt file too. A prompt that appears again is answered once.
    """
    records = read_records(path)
    keys = set(records.columns)
    prompt_key = _pick(keys, "prompt")
    if prompt_key is None:
        raise InputError(str(path), "missing field: expected prompt (or instruction, question)", row="row 1")
    fields = [Field(prompt_key, "prompt"), *[f for f in _optional_fields(keys) if f.key in ("system", "prompt_id")],
              *[Field(k, "text", required=False) for k in ("input", "dataset") if k in keys]]
    frame = checked_frame(records, fields)
    frame = frame.with_row_index("_row").select(
        "_row", _alpaca_prompt(frame, prompt_key).alias(S.PROMPT),
        *(pl.col(k) if k in frame.columns else pl.lit(None, pl.String).alias(k)
          for k in ("system", S.PROMPT_ID, "dataset")))
    if frame.schema[S.PROMPT] == MESSAGES or frame["system"].is_not_null().any():
        frame = frame.with_columns(_chat_prompt(frame))
    frame = frame.with_columns(S.prompt_ids(frame[S.PROMPT]).alias("_computed"), pl.lit(0).alias("_file"),
                               pl.col(S.PROMPT_ID).is_not_null().alias("_own_id"))
    refuse_shared_ids(frame, [records])
    ids = pl.coalesce(S.PROMPT_ID, "_computed")
    return frame.select(ids.alias(S.PROMPT_ID), S.PROMPT, "dataset").unique(S.PROMPT_ID, maintain_order=True)


def _alpaca_prompt(frame: pl.DataFrame, prompt_key: str) -> pl.Expr:
    """The prompt column; Alpaca's instruction + input joined by a blank line when input is non-empty."""
    prompt = pl.col(prompt_key)
    if "input" in frame.columns and prompt_key == "instruction":
        has_input = pl.col("input").fill_null("").str.strip_chars() != ""
        prompt = pl.when(has_input).then(prompt + "\n\n" + pl.col("input")).otherwise(prompt)
    return prompt


# --- flat shapes: type-check, then adapt column-wise -------------------------------------------------

def _long(records: Records, _: dict[str, str]) -> pl.DataFrame:
    keys = set(records.columns)
    prompt_key, response_key, source_key = (_pick(keys, role) for role in ("prompt", "response", "source"))
    if prompt_key is None or response_key is None:
        missing = "prompt (or instruction)" if prompt_key is None else "response (or output)"
        raise InputError(str(records.path), f"missing field: expected {missing} in a long-format file", row="row 1")
    fields = [Field(prompt_key, "prompt"), Field(response_key, "text"), *_optional_fields(keys)]
    if source_key:
        fields.append(Field(source_key, "text"))
    if "input" in keys and prompt_key == "instruction":
        fields.append(Field("input", "text", required=False))
    frame = checked_frame(records, fields)
    prompt = _alpaca_prompt(frame, prompt_key)
    source = pl.col(source_key) if source_key else pl.lit(records.path.stem)
    return _canonical(frame, prompt, source.alias(S.SOURCE), pl.col(response_key).alias(S.RESPONSE))


def _wide(records: Records, columns: dict[str, str]) -> pl.DataFrame:
    if not columns:
        raise InputError("--columns", "the wide format needs source=column pairs, e.g. gpt4=output_gpt4,chatgpt=out2")
    keys = set(records.columns)
    prompt_key = _pick(keys, "prompt")
    if prompt_key is None:
        raise InputError(str(records.path), "missing field: expected prompt (or instruction)", row="row 1")
    for source, column in columns.items():
        if column not in keys:
            raise InputError(str(records.path), f"--columns names column '{column}' for source '{source}', but the "
                             f"file has no such field (found {', '.join(sorted(keys))})")
    fields = [Field(prompt_key, "prompt"), *_optional_fields(keys - {"score", "sample", "finish_reason"}),
              *(Field(column, "text", required=False) for column in columns.values())]
    frame = checked_frame(records, fields)
    parts = [
        _canonical(frame, pl.col(prompt_key), pl.lit(source).alias(S.SOURCE), pl.col(column).alias(S.RESPONSE))
        .filter(pl.col(S.RESPONSE).is_not_null())  # that source did not answer this prompt
        for source, column in columns.items()
    ]
    return pl.concat(parts, how="vertical_relaxed")


def _optional_fields(keys: set[str]) -> list[Field]:
    optional = [Field("system", "text", False), Field("sample", "int", False), Field("finish_reason", "text", False),
                Field("score", "number", False), Field("prompt_id", "text", False)]
    return [f for f in optional if f.key in keys]


def _canonical(frame: pl.DataFrame, prompt: pl.Expr, source: pl.Expr, response: pl.Expr) -> pl.DataFrame:
    """Select the canonical columns; absent optional ones become typed nulls."""
    def optional(name: str) -> pl.Expr:
        dtype = _CANONICAL_SCHEMA[name]
        return (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)

    return frame.with_row_index("_row").select(
        pl.col("_row").cast(pl.Int64), prompt.alias(S.PROMPT), optional("system"), source, optional(S.SAMPLE),
        response, optional(S.FINISH_REASON), optional(S.SCORE), optional(S.PROMPT_ID),
        optional(S.PROMPT_ID).is_not_null().alias("_own_id"),
    )


# --- nested shapes: walk each record ------------------------------------------------------------------

def _ultrafeedback(records: Records, _: dict[str, str]) -> pl.DataFrame:
    def rows() -> Iterator[dict[str, Any]]:
        for index, row in enumerate(records.as_rows()):
            reader = _RowReader(records, index, row)
            prompt = reader.prompt(_pick(set(row), "prompt") or "instruction")
            for item_no, item in enumerate(reader.items("completions")):
                where = f"completions[{item_no}]"
                yield {"_row": index, S.PROMPT: prompt, S.SOURCE: reader.text(item, "model", where),
                       S.RESPONSE: reader.text(item, "response", where), S.SCORE: reader.rating(item, where),
                       "system": reader.text(item, "custom_system_prompt", where, required=False) or None}

    frame = _nested_frame(rows())
    if frame["system"].is_not_null().any():  # the id of the instruction alone: answers pair across system prompts
        frame = frame.with_columns(S.prompt_ids(frame[S.PROMPT]).alias(S.PROMPT_ID))
    return frame


def _nectar(records: Records, _: dict[str, str]) -> pl.DataFrame:
    def rows() -> Iterator[dict[str, Any]]:
        for index, row in enumerate(records.as_rows()):
            reader = _RowReader(records, index, row)
            prompt = reader.prompt("prompt")
            for item_no, item in enumerate(reader.items("answers")):
                where = f"answers[{item_no}]"
                rank = reader.number(item, "rank", where)
                yield {"_row": index, S.PROMPT: prompt, S.SOURCE: reader.text(item, "model", where),
                       S.RESPONSE: reader.text(item, "answer", where), S.SCORE: -rank}

    return _nested_frame(rows())


def _sharegpt(records: Records, _: dict[str, str]) -> pl.DataFrame:
    def rows() -> Iterator[dict[str, Any]]:
        for index, row in enumerate(records.as_rows()):
            reader = _RowReader(records, index, row)
            key = "conversations" if "conversations" in row else "messages"
            turns = [reader.turn(turn, f"{key}[{n}]") for n, turn in enumerate(reader.items(key))]
            last = max((n for n, t in enumerate(turns) if t["role"] == "assistant"), default=None)
            if last is None or last == 0:
                reader.fail(key, "expected a conversation with a user turn and then an assistant turn")
            reader.turns(turns[:last], key)
            source = next((row[k] for k in _ALIASES["source"] if isinstance(row.get(k), str)), records.path.stem)
            yield {"_row": index, S.PROMPT: turns[:last], S.SOURCE: source, S.RESPONSE: turns[last]["content"]}

    return _nested_frame(rows())


def _nested_frame(rows: Iterator[dict[str, Any]]) -> pl.DataFrame:
    materialised = list(rows)
    chat = any(isinstance(r[S.PROMPT], list) for r in materialised)
    for r in materialised:
        r[S.PROMPT] = as_chat(r[S.PROMPT]) if chat else r[S.PROMPT]
    schema = {"_row": pl.Int64, S.PROMPT: MESSAGES if chat else pl.String, S.SOURCE: pl.String,
              S.RESPONSE: pl.String, S.SCORE: pl.Float64, "system": pl.String}  # system: where a shape has one
    frame = pl.DataFrame(materialised, schema=schema)
    absent = {S.SAMPLE: pl.Int64, S.FINISH_REASON: pl.String, S.PROMPT_ID: pl.String}
    return frame.with_columns(*(pl.lit(None, dtype).alias(name) for name, dtype in absent.items()),
                              pl.lit(False).alias("_own_id"))


class _RowReader:
    """Typed access to one nested record; every failure names file, row and the field path."""

    def __init__(self, records: Records, index: int, row: dict[str, Any]):
        self.records, self.index, self.row = records, index, row

    def fail(self, field: str, problem: str) -> None:
        raise InputError(str(self.records.path), problem, row=self.records.label(self.index), field=field)

    def prompt(self, key: str) -> str | list[S.Message]:
        value = self.row.get(key)
        if not (isinstance(value, str) or is_messages(value)):
            self.fail(key, f"expected a string or a list of chat messages, found {describe(value)}")
        self.turns(value, key)
        return value

    def turns(self, prompt: str | list[S.Message], key: str) -> None:
        """A chat prompt's roles are ones a chat template knows, and it ends with the user's turn."""
        problem = turn_problem(prompt, "prompt") if isinstance(prompt, list) else None
        if problem is not None:
            self.fail(key + problem[0], problem[1])

    def items(self, key: str) -> list[dict[str, Any]]:
        value = self.row.get(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(key, f"expected a list of objects, found {describe(value)}")
        return value

    def text(self, item: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
        value = item.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            self.fail(f"{where}.{key}", f"expected a string, found {describe(value)}")
        return value

    def number(self, item: dict[str, Any], key: str, where: str) -> float:
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite(value):
            self.fail(f"{where}.{key}", f"expected a finite number, found {describe(value)}")
        return float(value)

    def rating(self, item: dict[str, Any], where: str) -> float | None:
        """overall_score, else the mean of `ratings` (list or dict), else of UltraFeedback's annotations."""
        if item.get("overall_score") is not None:
            return self.number(item, "overall_score", where)
        ratings = item.get("ratings")
        if isinstance(ratings, dict):
            ratings = list(ratings.values())
        if ratings is None and isinstance(item.get("annotations"), dict):
            ratings = [a.get("Rating") for a in item["annotations"].values() if isinstance(a, dict)]
            ratings = [float(r) for r in ratings if isinstance(r, (str, int, float)) and _is_number(str(r))]
        if ratings is None:
            return None
        values = {f"r{n}": r for n, r in enumerate(ratings)}
        numbers = [self.number(values, k, f"{where}.ratings") for k in values]
        return sum(numbers) / len(numbers) if numbers else None

    def turn(self, turn: dict[str, Any], where: str) -> S.Message:
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in _SHAREGPT_ROLES:
            self.fail(f"{where}.from", f"expected a role (human, gpt, system, user, assistant), found {describe(role)}")
        if not isinstance(content, str):
            self.fail(f"{where}.value", f"expected a string, found {describe(content)}")
        return {"role": _SHAREGPT_ROLES[role], "content": content}


# --- all files -> one frame -----------------------------------------------------------------------------

def _finalise(frames: list[pl.DataFrame], inputs: list[Records]) -> pl.DataFrame:
    """Unify prompt types, add prompt ids and sample numbers, refuse duplicate responses."""
    chat = any(f.schema[S.PROMPT] == MESSAGES or f["system"].is_not_null().any() for f in frames)
    if chat:
        frames = [f.with_columns(_chat_prompt(f)) for f in frames]
    frame = pl.concat(frames, how="diagonal_relaxed").select(list(_CANONICAL_SCHEMA) + [S.PROMPT])
    frame = frame.with_columns(S.prompt_ids(frame[S.PROMPT]).alias("_computed")).sort("_file", "_row")
    refuse_shared_ids(frame, inputs)
    frame = frame.with_columns(pl.coalesce(S.PROMPT_ID, "_computed").alias(S.PROMPT_ID))
    missing = pl.col(S.SAMPLE).is_null()
    if frame.select(missing.any()).item():
        # number rows without a sample 0, 1, ... per (prompt, source) in input order; the window is costly, so
        # skip it in the common case of one answer per prompt and source
        repeats = frame.select(pl.struct(S.PROMPT_ID, S.SOURCE).is_duplicated().any()).item()
        numbered = pl.int_range(pl.len()).over(S.PROMPT_ID, S.SOURCE, missing) if repeats else pl.lit(0)
        frame = frame.with_columns(pl.coalesce(S.SAMPLE, numbered.cast(pl.Int64)).alias(S.SAMPLE))
        if not repeats:
            return frame.select(S.RESPONSE_COLUMNS)
    _refuse_first(frame, ~pl.struct(S.PROMPT_ID, S.SOURCE, S.SAMPLE).is_first_distinct(), inputs,
                  "this prompt, source and sample appeared before (give each a distinct 'sample', or pass each "
                  "file once)")
    return frame.select(S.RESPONSE_COLUMNS)


def refuse_shared_ids(frame: pl.DataFrame, inputs: list[Records]) -> None:
    """A prompt_id the input gives (`_own_id`) names one prompt (`_computed`: the id of its text). Two prompts
    under one id would have their answers paired across prompts (the answer to "B?" under "A?") and one of them
    lost, so the second prompt is refused, naming the first."""
    own = frame.filter(pl.col("_own_id"))
    clash = own.select(pl.arg_where(pl.col("_computed") != pl.col("_computed").first().over(S.PROMPT_ID)).first())
    if clash.item() is None:
        return
    row = own.row(clash.item(), named=True)
    first = own.filter(pl.col(S.PROMPT_ID) == row[S.PROMPT_ID]).row(0, named=True)
    records, earlier = inputs[row["_file"]], inputs[first["_file"]]
    where = earlier.label(first["_row"]) if earlier is records else f"{earlier.path} {earlier.label(first['_row'])}"
    first_text, text = prompt_preview(first[S.PROMPT]), prompt_preview(row[S.PROMPT])
    raise InputError(str(records.path), f"prompt_id {row[S.PROMPT_ID]!r} is given to two different prompts "
                     f"({first_text} at {where}, {text} here): their answers would be paired across prompts; give "
                     "each prompt its own id, or leave prompt_id out to derive it",
                     row=records.label(row["_row"]), field=S.PROMPT_ID)


def _refuse_first(frame: pl.DataFrame, bad: pl.Expr, inputs: list[Records], problem: str) -> None:
    """Raise for the first row where `bad` holds, naming its file and row."""
    index = frame.select(pl.arg_where(bad).first()).item()
    if index is not None:
        row = frame.row(index, named=True)
        records = inputs[row["_file"]]
        raise InputError(str(records.path), problem, row=records.label(row["_row"]))


def _chat_prompt(frame: pl.DataFrame) -> pl.Expr:
    """A prompt column as chat messages, with the system prompt (if any) as the first message."""
    prompt = pl.col(S.PROMPT)
    if frame.schema[S.PROMPT] == pl.String:
        prompt = pl.concat_list(pl.struct(role=pl.lit("user"), content=prompt))
    system = pl.concat_list(pl.struct(role=pl.lit("system"), content=pl.col("system")))
    with_system = pl.when(pl.col("system").is_not_null()).then(pl.concat_list(system, prompt))
    return with_system.otherwise(prompt).alias(S.PROMPT)


def _is_number(text: str) -> bool:
    return text.replace(".", "", 1).isdigit()


def _pick(keys: set[str], role: str) -> str | None:
    return next((k for k in _ALIASES[role] if k in keys), None)
