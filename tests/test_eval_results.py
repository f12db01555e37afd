"""The typed results of eval, judge and rank: what the real stage writes reads back equal, and written again is
the same file byte for byte (nulls the stage wrote stay null; fields it did not write stay absent)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from servers import FaultProxy, free_port

from conftest import SAMPLE
from pairforge.config import JudgeConfig, SourceConfig
from pairforge.evaluation.compare import EvalSettings, evaluate
from pairforge.evaluation.leaderboard import Leaderboard
from pairforge.judging.ranking import Ranking
from pairforge.judging.scoring import judge
from pairforge.judging.summary import JudgeSummary
from pairforge.layout import RunDir
from pairforge.rank_stage import rank
from pairforge.recipe import load_recipe
from pairforge.results import Result


def reads_back(kind: type[Result], path: Path, made: Result, tmp_path: Path) -> dict[str, Any]:
    """`path` (written by a stage) read as `kind` equals what the stage returned, and written again is the same
    file; its JSON."""
    read = kind.read(path)
    assert read == made
    assert read.write(tmp_path / f"again.{path.name}").read_bytes() == path.read_bytes()
    return json.loads(path.read_text())


def outputs(path: Path, answers: list[tuple[str, str]]) -> Path:
    path.write_text(json.dumps([{"instruction": q, "output": a, "generator": path.stem, "dataset": "toy"}
                                for q, a in answers]), encoding="utf-8")
    return path


QUESTIONS = ["What is the capital of France?", "How many legs does a spider have?", "What color is the sky?"]


def failing_judge(proxy: FaultProxy) -> JudgeConfig:
    """An LLM judge whose server fails every request: every verdict is missing, nothing is guessed."""
    return JudgeConfig(kind="llm-pairwise", llm=SourceConfig(backend="openai", model="judge",
                                                             base_url=proxy.base_url, max_retries=0))


def test_a_leaderboard_without_verdicts_reads_back_with_its_nulls(tmp_path: Path) -> None:
    """A pairwise judge that gave no verdict: the leaderboard has no win rate to rank by (a null value in the
    frame, every prompt unjudged), and its tally keeps the position bias it could not measure as null."""
    reference = outputs(tmp_path / "ref.json", [(q, "The answer.") for q in QUESTIONS])
    model = outputs(tmp_path / "model.json", [(q, "Maybe.") for q in QUESTIONS])
    proxy = FaultProxy(free_port(), every=1)
    try:
        board = evaluate([], [model], reference, failing_judge(proxy), tmp_path / "eval",
                         settings=EvalSettings(bootstrap=20), show_progress=False)
    finally:
        proxy.close()
    written = reads_back(Leaderboard, tmp_path / "eval" / "leaderboard.json", board, tmp_path)
    assert list(written) == ["judge", "prompts", "reference", "models", "judge_summary", "config"]
    assert written["judge_summary"] == {"comparisons": 3, "unreadable": 3, "failed_requests": 6, "retries": 0,
                                        "p_first_shown_wins": None, "verdicts_from_logprobs": 0,
                                        "usage": {"answers": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                  "unknown": 0}}  # an LLM judge's tokens: none answered
    assert written["models"] == [{"model": "model", "prompts": 3, "mean_length": 1.0, "reference_length": 2.0,
                                  "unjudged": 3}]
    assert board.measure.label == "win rate" and board.judge_summary.failed_requests == 6
    frame = board.to_polars()
    assert frame.select("model", "value", "low", "high", "difference", "p_value").rows() == [
        ("model", None, None, None, None, None)]


def test_a_judge_summary_without_verdicts_reads_back_with_its_nulls(tmp_path: Path) -> None:
    """judge.summary.json of a pairwise judge that gave no verdict: per-source means are null, as is the
    position bias; a pointwise count (cached) is absent, not null."""
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt": q, "source": s, "response": f"{s} says {i}"}) + "\n"
                                 for i, q in enumerate(QUESTIONS) for s in ("a", "b")))
    proxy = FaultProxy(free_port(), every=1)
    try:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"judge": failing_judge(proxy).model_dump(mode="json", exclude_unset=True)}))
        result = judge(load_recipe(recipe), tmp_path, responses, show_progress=False)
    finally:
        proxy.close()
    written = reads_back(JudgeSummary, tmp_path / "judge.summary.json", result.summary, tmp_path)
    assert "cached" not in written and written["p_first_shown_wins"] is None
    assert written["per_source"] == {s: {"answers": 3, "scored": 0, "mean": None, "std": None} for s in "ab"}
    assert result.summary.pairwise and result.summary.failed_requests == 6


def test_a_ranking_with_its_declared_check_reads_back_equal(tmp_path: Path) -> None:
    """`rank` on scores where a always beats b and b always beats c: ranking.json, with the recipe's declared
    order checked, reads back equal, and the order it states is the one the declared check confirms."""
    ids = [f"p{i}" for i in range(12)]
    scored = pl.DataFrame({"prompt_id": ids * 3, "prompt": ids * 3, "source": ["a"] * 12 + ["b"] * 12 + ["c"] * 12,
                           "sample": [0] * 36, "response": ["x"] * 36, "score": [0.9] * 12 + [0.5] * 12 + [0.1] * 12})
    scored.write_parquet(tmp_path / "responses.scored.parquet")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"pairs": {"rank": "a > b > c, a > d"}, "ranking": {"bootstrap": 100}}))
    ranked = rank(load_recipe(recipe), RunDir(tmp_path))
    written = reads_back(Ranking, ranked.written, ranked.ranking, tmp_path)
    assert list(written) == ["rank", "confidence", "min_win_probability", "comparisons", "prompts", "sources",
                             "adjacent", "declared_check"]
    assert ranked.ranking.rank == "a > b, a > c, b > c"
    assert written["declared_check"] == {"declared": "a > b > c, a > d", "confirmed": ["a > b", "a > c", "b > c"],
                                         "not_confirmed": [], "not_judged": ["a > d"]}


@pytest.mark.slow
def test_a_similarity_leaderboard_with_a_baseline_reads_back_equal(tmp_path: Path) -> None:
    """The similarity judge ranks by score, not win rate; every row's paired test against the baseline reads
    back equal, and the frame holds the same numbers as the rows."""
    files = {name: SAMPLE / f"{name}.json" for name in ("strong", "medium", "weak")}
    board = evaluate([], [f"copy={files['strong']}", f"medium={files['medium']}", f"weak={files['weak']}"],
                     files["strong"], JudgeConfig(kind="similarity", reference="reference"), tmp_path / "eval",
                     settings=EvalSettings(bootstrap=50, baseline="weak"), show_progress=False)
    reads_back(Leaderboard, tmp_path / "eval" / "leaderboard.json", board, tmp_path)
    assert board.measure.label == "score" and board.baseline == "weak"
    frame = board.to_polars()
    assert frame["model"].to_list() == [row.model for row in board.models] and frame["model"][0] == "copy"
    for row, record in zip(board.models, frame.iter_rows(named=True), strict=True):
        assert (record["value"], record["low"], record["high"]) == (row.score.value, row.score.low, row.score.high)
        versus = row.vs_baseline
        assert record["difference"] == (versus.difference if versus else None)
        assert record["p_value"] == (versus.p_value if versus else None)


def test_a_leaderboard_written_before_the_test_verdict_was_stored_is_read_by_its_interval(tmp_path: Path) -> None:
    """Older leaderboards had no `significant`: a difference whose interval excludes 0 reads as significant."""
    row = {"model": "a", "prompts": 4, "mean_length": 7.0, "reference_length": 9.0, "unjudged": 0,
           "score": {"value": 0.5, "low": 0.4, "high": 0.6}}
    versus = {"model": "b", "difference": 0.2, "low": 0.05, "high": 0.3, "p_value": 0.01, "prompts": 4}
    path = tmp_path / "leaderboard.json"
    path.write_text(json.dumps({"judge": "similarity", "prompts": 4, "reference": "ref.json", "models": [
        {**row, "vs_baseline": versus}, {**row, "model": "c", "vs_baseline": {**versus, "low": -0.1}}]}))
    board = Leaderboard.read(path)
    assert [row.vs_baseline.significant for row in board.models] == [True, False]
    assert board.judge_summary.failed_requests == 0  # no tally in the file: nothing failed that it knows of
