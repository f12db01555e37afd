"""Iterative rounds (`rounds: 2`): the policy answers again in round 2 as the model round 1 trained, round 2
trains from it, a kill -9 in round 2 resumes there without redoing round 1, and bad round settings are one line.

A tiny random Llama is the policy ("@round"), between two file sources of clearly different quality."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from conftest import REPO, SAMPLE, write_jsonl

pytestmark = pytest.mark.slow


def recipe(folder: Path, tiny_model_dir: Path, **changes: Any) -> Path:
    rows = json.loads((SAMPLE / "strong.json").read_text())[:10]
    prompts = write_jsonl(folder / "prompts.jsonl", [{"instruction": r["instruction"]} for r in rows])
    tiny = {"model": str(tiny_model_dir), "max_steps": 1, "max_length": 64, "batch_size": 4}
    data: dict[str, Any] = {
        "run_dir": str(folder / "run"), "prompts": str(prompts), "rounds": 2,
        "sources": [{"name": "strong", "backend": "file", "path": str(SAMPLE / "strong.json")},
                    {"name": "policy", "model": "@round", "max_new_tokens": 4, "batch_size": 16},
                    {"name": "weak", "backend": "file", "path": str(SAMPLE / "weak.json")}],
        "judge": {"kind": "similarity", "reference": "strong"},
        "ranking": {"bootstrap": 20},
        "pairs": {"rank": "strong > policy > weak", "eval_fraction": 0.3, "filters": {"drop_truncated": False}},
        "runs": [{"name": "dpo", "method": "dpo", **tiny}],
        "eval": {"reference_source": "strong", "max_new_tokens": 3, "bootstrap": 20},
        **changes,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def pairforge_run(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pairforge", "run", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def said(stderr: str) -> dict[str, str]:
    import re

    return dict(re.findall(r"^(\S+): (running|skipped)", stderr, flags=re.MULTILINE))


def test_round_two_answers_with_round_one_model_and_resumes_after_kill_9(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = recipe(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    first = pairforge_run(path)
    generated = run / "round-2" / "stages" / "generate.json"
    deadline = time.monotonic() + 600
    while not generated.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert generated.exists(), first.communicate()[1][-3000:]
    first.send_signal(signal.SIGKILL)  # in round 2, after its generation, before its training
    first.wait()
    assert not (run / "round-2" / "stages" / "eval.json").exists(), "the run should be killed inside round 2"
    round_one = {p.name: p.stat().st_mtime_ns for p in (run / "round-1" / "stages").glob("*.json")}
    assert set(round_one) == {f"{s}.json" for s in ("generate", "judge", "rank", "pairs", "train-dpo", "eval")}

    again = pairforge_run(path)
    _, stderr = again.communicate(timeout=900)
    assert again.returncode == 0, stderr[-3000:]
    stages = said(stderr)
    assert all(stages[f"round-1:{s}"] == "skipped" for s in ("generate", "judge", "rank", "pairs", "train:dpo", "eval"))
    assert stages["round-2:generate"] == "skipped"
    assert all(stages[f"round-2:{s}"] == "running" for s in ("rank", "pairs", "train:dpo", "eval")), stages
    assert {p.name: p.stat().st_mtime_ns for p in (run / "round-1" / "stages").glob("*.json")} == round_one

    # round 2: the policy answered as round 1's trained model, and round 2 trained from that model
    trained_once = run / "round-1" / "train" / "dpo" / "model"
    config = json.loads((run / "round-2" / "train" / "dpo" / "run.json").read_text())["config"]
    assert config["model"] == str(trained_once)
    keys = [k for (k,) in sqlite3.connect(run / "store.sqlite").execute("SELECT key FROM results")]
    policy = [k for k in keys if k.startswith("gen:policy:")]
    assert len(policy) == 2 * 10  # ten prompts in each round, the second round under another model's settings
    assert not (run / "round-1" / "store.sqlite").exists()  # one store for the whole run
    for k in (1, 2):
        answers = pl.read_parquet(run / f"round-{k}" / "responses.parquet")
        assert sorted(answers["source"].unique()) == ["policy", "strong", "weak"]
    boards = [json.loads((run / f"round-{k}" / "eval" / "leaderboard.json").read_text()) for k in (1, 2)]
    assert [[m["model"] for m in b["models"]] for b in boards] == [["base", "dpo"]] * 2  # the same base each round
    base = [next(m for m in b["models"] if m["model"] == "base")["score"] for b in boards]
    assert base[0] == base[1]  # the base is the original model in both rounds (and its answers were cached)
    page = (run / "report.html").read_text()
    assert "<section id='rounds'>" in page and "round-2" in page


@pytest.mark.parametrize(("changes", "expected"), [
    ({"rounds": 0}, "field 'rounds': Input should be greater than or equal to 1"),
    ({"round_run": "sft"}, "round_run 'sft' is not a run that trains a policy (runs: dpo)"),
    ({"sources": [{"name": "api", "backend": "openai", "model": "@round", "base_url": "http://localhost:1/v1"}]},
     "source 'api': model '@round' needs a local backend (transformers or vllm), not openai"),
])
def test_bad_round_settings_are_one_line(tmp_path: Path, tiny_model_dir: Path, changes: dict[str, Any],
                                         expected: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pairforge", "run", str(recipe(tmp_path, tiny_model_dir,
                                                                                   **changes)), "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_round_two_training_depends_on_round_one_policy_and_a_set_base_model_is_kept(tmp_path: Path,
                                                                                   tiny_model_dir: Path) -> None:
    """Round 2's runs start from round 1's policy, so that policy's marker is an input of round 2's training
    (retraining round 1 retrains round 2 even when round 2's pairs come out the same); a recipe's own
    eval.base_model is the baseline in every round."""
    from pairforge.pipeline import plan
    from pairforge.recipe import load_recipe
    from pairforge.rounds import round_recipe

    path = recipe(tmp_path, tiny_model_dir)
    loaded = load_recipe(path)
    stages = {s.name: s for s in plan(loaded, tmp_path / "run").stages}
    policy_marker = tmp_path / "run" / "round-1" / "stages" / "train-dpo.json"
    assert policy_marker in stages["round-2:train:dpo"].inputs
    assert policy_marker not in stages["round-1:train:dpo"].inputs
    data = yaml.safe_load(path.read_text())
    data["eval"]["base_model"] = "someone/another-base"
    path.write_text(yaml.safe_dump(data))
    assert all(round_recipe(load_recipe(path), tmp_path / "run", k).eval.base_model == "someone/another-base"
               for k in (1, 2))


def test_later_rounds_are_estimated_from_round_one(tmp_path: Path) -> None:
    """The plan of recipes/iterative.yaml gives round 2 a time estimate too (its models are round 1's trained
    folders): training as long as round 1's, generation for the "@round" source alone — what round 1's
    estimate is with the other local source left out, however much more that one costs."""
    from pairforge.pipeline import plan
    from pairforge.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "iterative.yaml")
    plain = next(s for s in recipe.sources if s.name == "plain")
    plain.max_new_tokens, plain.batch_size = 512, 8  # much dearer than the policy's answers
    stages = {s.name: s.estimate_s for s in plan(recipe, tmp_path / "run").stages}
    for run in ("sft", "dpo"):
        assert stages[f"round-2:train:{run}"] == stages[f"round-1:train:{run}"] is not None
    recipe.sources = [s for s in recipe.sources if s.name != "plain"]
    policy_alone = {s.name: s.estimate_s for s in plan(recipe, tmp_path / "run").stages}["round-1:generate"]
    assert stages["round-2:generate"] == pytest.approx(policy_alone) and policy_alone < stages["round-1:generate"] / 5
    assert stages["round-2:eval"] == stages["round-1:eval"] is not None


def test_train_run_of_an_iterative_recipe_is_named_with_its_round(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`pairforge train --config R --run round-2:dpo` (the accelerate-launch entry) trains round 2's dpo where
    `pairforge run` would, from round 1's policy; a name without its round is one line."""
    from pairforge.errors import InputError
    from pairforge.options import train_section

    path = recipe(tmp_path, tiny_model_dir)
    cfg = train_section(path, "round-2:dpo")
    assert cfg.out == tmp_path / "run" / "round-2" / "train" / "dpo"
    assert cfg.model == str(tmp_path / "run" / "round-1" / "train" / "dpo" / "model")
    assert cfg.pairs == tmp_path / "run" / "round-2" / "pairs.parquet"
    with pytest.raises(InputError, match="round-K:NAME"):
        train_section(path, "dpo")
