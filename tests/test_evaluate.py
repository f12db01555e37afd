"""The eval stage: outputs files and model folders against reference answers, leaderboard, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import SAMPLE
from pairforge.config import JudgeConfig, SourceConfig
from pairforge.evaluate.run import EvalSettings, evaluate


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True, timeout=600)


def outputs_file(path: Path, answers: list[tuple[str, str]], generator: str) -> Path:
    path.write_text(json.dumps([{"instruction": i, "output": o, "generator": generator, "dataset": "toy"}
                                for i, o in answers]), encoding="utf-8")
    return path


@pytest.mark.slow
def test_outputs_files_ranked_by_similarity_with_intervals(tmp_path: Path) -> None:
    result = run_cli("eval", "--outputs", f"close={SAMPLE / 'medium.json'}", "--outputs", str(SAMPLE / "weak.json"),
                     "--reference", str(SAMPLE / "strong.json"), "--judge", "similarity", "--out", str(tmp_path),
                     "--bootstrap", "200")
    assert result.returncode == 0, result.stderr
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert [m["model"] for m in board["models"]] == ["close", "weak"] and board["prompts"] == 50
    close = board["models"][0]
    assert close["score"]["low"] <= close["score"]["value"] <= close["score"]["high"]
    assert close["vs_next"]["model"] == "weak" and 0 <= close["vs_next"]["p_value"] <= 1


@pytest.mark.slow
def test_models_answer_in_alpaca_eval_shape_and_unreadable_verdicts_are_counted(tmp_path: Path,
                                                                               tiny_model_dir: Path) -> None:
    """A model folder answers the prompts (AlpacaEval's model_outputs.json), an LLM judge compares it with
    the reference in both orders; a random tiny judge gives unreadable verdicts: counted, left out."""
    questions = [f"Name a fruit number {i}." for i in range(4)]
    reference = outputs_file(tmp_path / "ref.json", [(q, "An apple.") for q in questions], "ref-model")
    judge = JudgeConfig(kind="llm-pairwise", llm=SourceConfig(model=str(tiny_model_dir), max_new_tokens=3))
    result = evaluate([f"tiny={tiny_model_dir}"], [], reference, judge, tmp_path / "eval",
                      settings=EvalSettings(max_new_tokens=6, bootstrap=100), show_progress=False)
    outputs = pd.read_json(tmp_path / "eval" / "tiny.model_outputs.json")  # what alpaca_eval's loader does
    assert {"instruction", "output", "generator", "dataset"} <= set(outputs.columns)
    assert outputs["instruction"].tolist() == questions and set(outputs["generator"]) == {"tiny"}
    assert outputs["output"].map(lambda o: isinstance(o, str)).all()
    entry = result["models"][0]
    summary = result["judge_summary"]
    assert summary["comparisons"] == 4 and entry["unjudged"] == summary["unreadable"]
    if entry["unjudged"] < 4:
        assert 0 <= entry["win_rate"]["value"] <= 1
    else:
        assert "win_rate" not in entry  # nothing usable: no number invented
    again = evaluate([f"tiny={tiny_model_dir}"], [], reference, judge, tmp_path / "eval",
                     settings=EvalSettings(max_new_tokens=6, bootstrap=100), show_progress=False)
    assert again["models"] == result["models"]  # answers and verdicts come from the store


def test_reward_model_judge_gives_win_rates_and_length_control(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pairforge.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_model_dir), reward_head=True)
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    questions = [f"Question {i}?" for i in range(12)]
    reference = outputs_file(tmp_path / "ref.json", [(q, "Yes.") for q in questions], "ref")
    longer = outputs_file(tmp_path / "long.json", [(q, "Yes, and here is why " * (i + 1)) for i, q in
                                                   enumerate(questions)], "long")
    same = outputs_file(tmp_path / "same.json", [(q, "Yes.") for q in questions], "same")
    result = run_cli("eval", "--outputs", str(longer), "--outputs", str(same), "--reference", str(reference),
                     "--judge", f"reward-model:{tmp_path / 'rm'}", "--out", str(tmp_path / "eval"),
                     "--bootstrap", "100")
    assert result.returncode == 0, result.stderr
    board = {m["model"]: m for m in json.loads((tmp_path / "eval" / "leaderboard.json").read_text())["models"]}
    assert board["same"]["win_rate"]["value"] == 0.5  # identical answers: every verdict a tie
    assert set(board["long"]) >= {"win_rate", "length_controlled_win_rate", "per_dataset", "score"}
    assert board["long"]["mean_length"] > board["long"]["reference_length"]
    assert "reward-model vs reference, 12 prompts" in result.stderr


def test_outputs_missing_instructions_are_named(tmp_path: Path) -> None:
    reference = outputs_file(tmp_path / "ref.json", [("a?", "x"), ("b?", "y"), ("c?", "z")], "ref")
    partial = outputs_file(tmp_path / "m.json", [("a?", "x"), ("b?", "y")], "m")
    result = run_cli("eval", "--outputs", str(partial), "--reference", str(reference), "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "answers 2 of the 3 eval instructions; 1 are missing, e.g. 'c?'" in result.stderr
    assert not (tmp_path / "e" / "leaderboard.json").exists()


def test_an_empty_eval_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ref.json").write_text("[]")
    result = run_cli("eval", "--outputs", str(tmp_path / "ref.json"), "--reference", str(tmp_path / "ref.json"),
                     "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "ref.json: file is empty: expected at least one record" in result.stderr


@pytest.mark.slow
def test_every_model_is_tested_against_the_baseline_with_an_interval(tmp_path: Path) -> None:
    """`copy` answers exactly as the reference does, so it must be significantly better than the weak
    answers; for every model the difference is the gap of the scores, lies inside its interval, and the
    sentence the CLI prints follows from the interval."""
    result = run_cli("eval", "--outputs", f"copy={SAMPLE / 'strong.json'}", "--outputs",
                     f"medium={SAMPLE / 'medium.json'}", "--outputs", f"weak={SAMPLE / 'weak.json'}", "--reference",
                     str(SAMPLE / "strong.json"), "--baseline", "weak", "--out", str(tmp_path), "--bootstrap", "500")
    assert result.returncode == 0, result.stderr
    board = {m["model"]: m for m in json.loads((tmp_path / "leaderboard.json").read_text())["models"]}
    assert "vs_baseline" not in board["weak"]
    for name in ("copy", "medium"):
        versus = board[name]["vs_baseline"]
        gap = board[name]["score"]["value"] - board["weak"]["score"]["value"]
        assert versus["model"] == "weak" and abs(versus["difference"] - gap) < 1e-9
        assert versus["low"] <= versus["difference"] <= versus["high"]
        words = ("significantly better than" if versus["low"] > 0 else "significantly worse than"
                 if versus["high"] < 0 else "not significantly different from")
        assert f"{name} is {words} weak" in result.stderr
    assert board["copy"]["vs_baseline"]["low"] > 0 and board["copy"]["vs_baseline"]["significant"]


def test_an_unknown_baseline_is_refused_before_any_work(tmp_path: Path) -> None:
    result = run_cli("eval", "--outputs", str(SAMPLE / "weak.json"), "--reference", str(SAMPLE / "strong.json"),
                     "--baseline", "base", "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "--baseline: no model named 'base' (models: weak)" in result.stderr
    assert not (tmp_path / "e").exists()
