"""Property tests of the bad-input guarantee, per command: whatever file or option a user passes, the command
either works (exit 0) or says what is wrong in one line with exit 2 — no traceback, and no file in its
folders created or changed.

Files are generated the way they go wrong in practice: the right field names with wrong values (numbers,
nulls, NaN, lists, nested objects), missing or extra fields, JSON cut off mid-record, JSON arrays vs lines,
non-UTF-8 bytes, empty files, and Parquet columns of the wrong type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pairforge.cli import app

pytestmark = pytest.mark.slow

FIELDS = ["prompt", "chosen", "rejected", "weight", "pair_type", "source", "response", "score", "instruction",
          "output", "generator", "prompt_id", "sample", "source_a", "source_b", "p_a"]
SCALARS = st.one_of(st.text(max_size=12), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                    st.none(), st.booleans())
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2),
                   st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "x"]),
                                                   "content": SCALARS}), max_size=2),
                   st.dictionaries(st.sampled_from(["a", "content"]), SCALARS, max_size=2))
ROWS = st.lists(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6), min_size=0, max_size=5)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def text_files(draw: st.DrawFn) -> bytes:
    """A JSON/JSONL answers or pairs file as users get them wrong."""
    rows = draw(ROWS)
    kind = draw(st.sampled_from(["lines", "array", "torn", "garbage", "latin1", "empty"]))
    if kind == "lines":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if kind == "array":
        return json.dumps(rows).encode()
    if kind == "torn":
        text = "".join(json.dumps(r) + "\n" for r in rows)
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))].encode()
    if kind == "garbage":
        return draw(st.binary(max_size=40))
    if kind == "latin1":
        return ('{"prompt": "caf\u00e9", "chosen": "a", "rejected": "b"}\n').encode("latin-1")
    return b""


COLUMN_TYPES = {"text": pl.String, "number": pl.Float64, "int": pl.Int64, "bool": pl.Boolean,
                "texts": pl.List(pl.String)}


@st.composite
def parquet_frames(draw: st.DrawFn, names: list[str]) -> pl.DataFrame:
    """A Parquet file whose columns have some of the expected names, each of some (maybe wrong) type."""
    height = draw(st.integers(0, 4))
    columns = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    data: dict[str, pl.Series] = {}
    for name in columns:
        kind = draw(st.sampled_from(list(COLUMN_TYPES)))
        values: list[Any] = []
        for _ in range(height):
            if draw(st.booleans()) and draw(st.booleans()):
                values.append(None)
            elif kind == "text":
                values.append(draw(st.text(max_size=6)))
            elif kind == "number":
                values.append(draw(st.floats(allow_nan=True, allow_infinity=True)))
            elif kind == "int":
                values.append(draw(st.integers(-2, 3)))
            elif kind == "bool":
                values.append(draw(st.booleans()))
            else:
                values.append(draw(st.lists(st.text(max_size=3), max_size=2)))
        data[name] = pl.Series(name, values, dtype=COLUMN_TYPES[kind])
    return pl.DataFrame(data)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_outcome(args: list[str], folder: Path) -> None:
    before = snapshot(folder)
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {type(result.exception).__name__}: {result.exception}")
    assert result.exit_code in (0, 2), (args, result.output)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        assert snapshot(folder) == before, f"{args}: a failed command changed files"


def fresh(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    if folder.exists():
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@SETTINGS
@given(content=text_files(), suffix=st.sampled_from([".jsonl", ".json"]))
def test_pairs_build_on_any_file(tmp_path, content, suffix):
    folder = fresh(tmp_path, "pairs")
    path = folder / f"answers{suffix}"
    path.write_bytes(content)
    check_outcome(["pairs", "build", str(path), "--rank", "a > b", "--out", str(folder / "pairs.parquet")], folder)


@SETTINGS
@given(content=text_files(), method=st.sampled_from(["dpo", "sft", "dpo=1,sft=0.5", "dpo=-1", "sft=nan", "x=1",
                                                      "dpo=1,sft"]))
def test_train_on_any_pairs_file(tmp_path, content, method):
    """The model folder does not exist: a valid file gets exactly that error, after every check of the data."""
    folder = fresh(tmp_path, "train")
    path = folder / "pairs.jsonl"
    path.write_bytes(content)
    check_outcome(["train", "--pairs", str(path), "--method", method, "--model", str(folder / "no-model"),
                   "--out", str(folder / "run")], folder)


@SETTINGS
@given(frame=parquet_frames(["prompt", "chosen", "rejected", "pair_type", "weight", "difficulty"]),
       difficulty=st.sampled_from(["column:difficulty", "column:weight", "strength-gap", "score-margin", "bogus"]),
       schedule=st.sampled_from(["sorted", "buckets", "pacing", "staged", "nope"]),
       batch_size=st.integers(-1, 3))
def test_curriculum_show_on_any_pairs_parquet(tmp_path, frame, difficulty, schedule, batch_size):
    folder = fresh(tmp_path, "curriculum")
    frame.write_parquet(folder / "pairs.parquet")
    check_outcome(["curriculum", "show", str(folder / "pairs.parquet"), "--difficulty", difficulty, "--schedule",
                   schedule, "--batch-size", str(batch_size), "--out", str(folder)], folder)


@SETTINGS
@given(frame=parquet_frames(["prompt_id", "source", "sample", "score", "source_a", "source_b", "p_a"]),
       judged=st.booleans())
def test_rank_on_any_judge_output(tmp_path, frame, judged):
    folder = fresh(tmp_path, "rank")
    frame.write_parquet(folder / ("judgments.parquet" if judged else "responses.scored.parquet"))
    (folder / "recipe.yaml").write_text("ranking: {bootstrap: 10}\n")
    check_outcome(["rank", str(folder / "recipe.yaml"), "--out", str(folder)], folder)


@SETTINGS
@given(content=text_files(), bootstrap=st.sampled_from(["0", "-5", "10", "x"]),
       tokens=st.sampled_from(["0", "16"]), temperature=st.sampled_from(["-1", "0"]))
def test_eval_on_any_outputs_file_and_options(tmp_path, content, bootstrap, tokens, temperature):
    """The reward model does not exist: valid outputs and options get exactly that error."""
    folder = fresh(tmp_path, "eval")
    outputs = folder / "outputs.json"
    outputs.write_bytes(content)
    reference = folder / "reference.json"
    reference.write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi."}]))
    check_outcome(["eval", "--outputs", str(outputs), "--reference", str(reference), "--judge",
                   f"reward-model:{folder / 'no-model'}", "--bootstrap", bootstrap, "--max-new-tokens", tokens,
                   "--temperature", temperature, "--out", str(folder / "eval")], folder)

