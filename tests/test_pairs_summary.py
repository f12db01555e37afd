"""The pairs summary is one typed result: what `pairs build` writes is what it returns and what a reader gets back,
and a hand-edited summary is one line naming the file and the field, in the report and in a later build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from conftest import SAMPLE, one_line_error
from pairforge.cli import app
from pairforge.config import PairsConfig
from pairforge.pairs.build_files import build_from_files
from pairforge.pairs.summary import PairsSummary

SAMPLE_FILES = [SAMPLE / f"{name}.json" for name in ("strong", "medium", "weak")]


def invoke(*args: Any):
    return CliRunner().invoke(app, [*map(str, args)])


def test_the_summary_written_reads_back_as_the_summary_returned(tmp_path: Path) -> None:
    cfg = PairsConfig(inputs=SAMPLE_FILES, rank="strong > medium > weak", eval_fraction=0.2, out=tmp_path / "p.jsonl")
    result = build_from_files(cfg)
    path = tmp_path / "p.summary.json"
    assert PairsSummary.read(path) == result.summary
    assert json.loads(path.read_text()) == result.summary.to_json()  # nothing written that the type does not hold
    assert result.summary.total("train") + result.summary.total("eval") == result.summary.lengths.all.pairs
    assert "verification" not in json.loads(path.read_text())  # ranked: nothing to verify, nothing written


def test_a_verified_summary_reads_back_whole(tmp_path: Path, jsonl) -> None:
    rows = [{"prompt": f"Question {p}?", "source": s, "response": f"{s} says {p} " + "word " * (p % 5), "score": v}
            for p in range(12) for s, v in (("a", 3.0 + p % 3), ("b", 4.0))]
    out = tmp_path / "v.jsonl"
    cfg = PairsConfig(inputs=[jsonl("in.jsonl", rows)], rank="a > b", strategy="verified", out=out)
    verified = build_from_files(cfg).summary
    assert verified.verification is not None and verified.verification["a>b"].candidates == 12
    assert PairsSummary.read(tmp_path / "v.summary.json") == verified


def test_a_hand_edited_summary_is_one_line_in_the_report(tmp_path: Path) -> None:
    out = tmp_path / "run" / "pairs.jsonl"
    assert invoke("pairs", "build", *SAMPLE_FILES, "--rank", "strong > medium > weak", "--out", out).exit_code == 0
    summary = out.with_name("pairs.summary.json")
    data = json.loads(summary.read_text())
    data["lengths"]["all"]["chosen"]["mean"] = "long"
    summary.write_text(json.dumps(data))
    one_line_error(invoke("report", tmp_path / "run", "--out", tmp_path / "report.html"), "pairs.summary.json",
                   "field 'lengths.all.chosen.mean'", "expected a pairs summary as `pairforge pairs build` writes it")


def test_a_build_beside_an_unreadable_summary_removes_no_split(tmp_path: Path) -> None:
    """A split file beside a summary this version cannot read is not known to be an earlier build's: it stays."""
    out = tmp_path / "pairs.jsonl"
    flags = ["--rank", "strong > medium > weak", "--out", out]
    assert invoke("pairs", "build", *SAMPLE_FILES, *flags, "--eval-fraction", "0.3").exit_code == 0
    split = tmp_path / "pairs.eval.jsonl"
    summary = out.with_name("pairs.summary.json")
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "outputs": "all of them"}))
    assert invoke("pairs", "build", *SAMPLE_FILES, *flags).exit_code == 0
    assert split.exists()
    assert invoke("pairs", "build", *SAMPLE_FILES, *flags, "--eval-fraction", "0.3").exit_code == 0
    assert invoke("pairs", "build", *SAMPLE_FILES, *flags).exit_code == 0
    assert not split.exists()  # its own build's summary lists it: removed, as before
