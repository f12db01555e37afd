"""Bad state left on disk or in a recipe: one line naming the file (or recipe key) and what was expected, exit
code 2, no traceback, and nothing the user already has is removed or rewritten.

Cases handled:
- the request store `store.sqlite` that is garbage bytes, a folder, an SQLite file whose `results` table has
  another shape, or a row whose value is not JSON or lacks 'text' (the store is left exactly as it was);
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import one_line_error
from pairforge.cli import app


def invoke(*args: Any):
    return CliRunner().invoke(app, [*map(str, args)])


# --- the request store -------------------------------------------------------------------------------------------


@pytest.fixture
def gen_recipe(tmp_path: Path) -> Path:
    """A recipe with one model source; nothing is loaded or asked before the store is read."""
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Hi."}\n{"prompt": "Why?"}\n', encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": "prompts.jsonl",
                                      "sources": [{"name": "tiny", "model": "no-such/model", "max_new_tokens": 4}]}))
    return recipe


def _other_schema(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE results (x int)")
        db.execute("INSERT INTO results VALUES (7)")


@pytest.mark.parametrize(("make", "found"), [
    (lambda p: p.write_bytes(b"garbage\n"), "cannot be opened"),
    (_other_schema, "found table results(x)"),
])
def test_store_that_is_not_a_store_is_refused_and_kept(tmp_path: Path, gen_recipe: Path, make, found: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    store = out / "store.sqlite"
    make(store)
    before = store.read_bytes()
    line = one_line_error(invoke("generate", gen_recipe, "--out", out), "store.sqlite",
                                 "expected a pairforge store (SQLite, table results(key, kind, value", found,
                                 "move it away to start over")
    assert "Error" not in line  # no exception class name leaks into the line
    assert store.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["store.sqlite"]


def test_store_that_is_a_folder(tmp_path: Path, gen_recipe: Path) -> None:
    out = tmp_path / "out"
    (out / "store.sqlite").mkdir(parents=True)
    (out / "store.sqlite" / "mine.txt").write_text("keep me")
    one_line_error(invoke("generate", gen_recipe, "--out", out), "store.sqlite", "found a folder",
                          "move it away to start over")
    assert (out / "store.sqlite" / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(("value", "found"), [
    ('{"a": 1}', "found an object without 'text' (keys: a)"),
    ("{not json", "found text that is not JSON"),
    ("[1, 2]", "found array [1, 2]"),
])
def test_store_row_that_is_not_an_answer(tmp_path: Path, gen_recipe: Path, value: str, found: str) -> None:
    from pairforge.generation.answers import source_requests
    from pairforge.recipe import load_recipe
    from pairforge.records import prompts_from_file
    from pairforge.requests.store import Store

    recipe = load_recipe(gen_recipe)
    key = source_requests(recipe.sources[0], prompts_from_file(recipe.prompts), 1)[0].key
    out = tmp_path / "out"
    store = Store(out / "store.sqlite")
    store.put(key, "generation", {"text": "fine", "finish_reason": "stop"})
    store.db.execute("UPDATE results SET value = ? WHERE key = ?", (value, key))
    store.close()
    one_line_error(invoke("generate", gen_recipe, "--out", out), "store.sqlite row key gen:tiny:",
                          "expected a JSON object with 'text'", found, "move the store away to start over")
    rows = sqlite3.connect(out / "store.sqlite").execute("SELECT key, value FROM results").fetchall()
    assert rows == [(key, value)]
    assert not (out / "responses.parquet").exists()


def test_store_answers_read_back_as_written(tmp_path: Path) -> None:
    from pairforge.requests.store import Store

    store = Store(tmp_path / "store.sqlite")
    store.put("a", "generation", {"text": "hi", "finish_reason": "stop"})
    store.put("s", "score", {"score": 0.5})
    assert {k: e.value for k, e in store.get(["a", "s"]).items()} == {"a": {"text": "hi", "finish_reason": "stop"},
                                                                     "s": {"score": 0.5}}
    store.close()
    assert json.loads(sqlite3.connect(tmp_path / "store.sqlite").execute(
        "SELECT value FROM results WHERE key = 's'").fetchone()[0]) == {"score": 0.5}


# --- report on hand-edited run outputs ---------------------------------------------------------------------------

_INTERVAL = {"value": 0.5, "low": 0.4, "high": 0.6}
_LEADERBOARD = {"judge": "similarity", "prompts": 4, "reference": "ref.json",
                "models": [{"model": "a", "prompts": 4, "mean_length": 7.0, "reference_length": 9.0, "score": _INTERVAL,
                            "unjudged": 0}]}
_RANKING = {"rank": "a > b", "confidence": 0.95, "min_win_probability": 0.55, "comparisons": 8, "prompts": 8,
            "sources": [{"name": "a", "strength": 1.0, "low": 0.5, "high": 1.5},
                        {"name": "b", "strength": -1.0, "low": -1.5, "high": -0.5}],
            "adjacent": [{"stronger": "a", "weaker": "b", "probability": 0.99, "win_probability": 0.8,
                          "significant": True}]}
_METRICS = [{"step": 1, "stage": 0, "train/loss": 0.69, "train/rewards/margins": 0.0, "train/rewards/accuracies": 0.5},
            {"step": 2, "stage": 0, "train/loss": 0.6, "train/rewards/margins": 0.1, "train/rewards/accuracies": 1.0}]


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in data))
    else:
        path.write_text(json.dumps(data))
    return path


def _run_outputs(root: Path, **replace: Any) -> Path:
    """A run folder with a training run, a ranking and a leaderboard; `replace` swaps one file's content (or adds
    one)."""
    files = {"train/dpo/run.json": {"config": {"method": "dpo"}}, "train/dpo/metrics.jsonl": _METRICS,
             "ranking.json": _RANKING, "eval/leaderboard.json": _LEADERBOARD}
    for name, data in {**files, **replace}.items():
        _write(root / name, data)
    return root


def test_report_of_well_formed_outputs(tmp_path: Path) -> None:
    run = _run_outputs(tmp_path / "run")
    result = invoke("report", run, "--out", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert "Sources" in result.stderr and "Training" in result.stderr and "Evaluation" in result.stderr


@pytest.mark.parametrize(("name", "data", "fragments"), [
    ("train/dpo/metrics.jsonl", [_METRICS[0], {**_METRICS[1], "train/loss": "x"}],
     ("metrics.jsonl line 2, field 'train/loss'", "expected a number or null, found string 'x'")),
    ("train/dpo/metrics.jsonl", [{**_METRICS[0], "step": "one"}],
     ("metrics.jsonl line 1, field 'step'", "expected an integer, found string 'one'")),
    ("eval/leaderboard.json", [], ("leaderboard.json", "expected a JSON object with 'judge'", "found array []")),
    ("eval/leaderboard.json", {k: v for k, v in _LEADERBOARD.items() if k != "judge"},
     ("leaderboard.json: field 'judge'", "Field required", "expected a JSON object with 'judge'")),
    ("eval/leaderboard.json", {**_LEADERBOARD, "models": [{**_LEADERBOARD["models"][0], "score": 0.5}]},
     ("leaderboard.json: field 'models.0.score'", "should be a dictionary")),
    ("eval/leaderboard.json", {**_LEADERBOARD, "models": [{**_LEADERBOARD["models"][0], "mean_length": "long"}]},
     ("leaderboard.json: field 'models.0.mean_length'", "should be a valid number")),
    ("ranking.json", {}, ("ranking.json: field 'rank'", "Field required", "as `pairforge rank` writes it")),
    ("ranking.json", {**_RANKING, "adjacent": [{**_RANKING["adjacent"][0], "significant": "maybe"}]},
     ("ranking.json: field 'adjacent.0.significant'", "should be a valid boolean")),
    ("sources/judge.summary.json", {"judge": "similarity", "answers": 2, "scored": 1, "per_source": {"a": {}}},
     ("judge.summary.json: field 'per_source.a.answers'", "Field required")),
    ("train/dpo/run.json", {}, ("run.json: field 'config': Field required", "expected a JSON object as `pairforge "
                                "train` writes it")),
    ("train/dpo/run.json", {"config": {"lr": 1e-3}}, ("run.json: field 'config'", "expected 'method' in it")),
])
def test_report_on_hand_edited_outputs(tmp_path: Path, name: str, data: Any, fragments: tuple[str, ...]) -> None:
    run = _run_outputs(tmp_path / "run", **{name: data})
    page = tmp_path / "report.html"
    page.write_text("an earlier report")
    one_line_error(invoke("report", run, "--out", page), *fragments)
    assert page.read_text() == "an earlier report"
    assert not page.with_suffix(".md").exists()


# --- a recipe whose list is a scalar -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sources", "runs"])
@pytest.mark.parametrize("command", [["run"], ["train", "--config"], ["pairs", "build", "--config"], ["rank"],
                                     ["curriculum", "show", "pairs.parquet", "--config"]])
def test_recipe_list_that_is_a_number(tmp_path: Path, key: str, command: list[str]) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"{key}: 5\n")
    one_line_error(invoke(*command, recipe), "recipe.yaml line 1", f"field '{key}'",
                          "expected a list, found number 5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


# --- a model named by the recipe that is no sentence-embedding model ---------------------------------------------


def _not_a_model(folder: Path) -> str:
    """A folder whose config.json names no model (sentence-transformers fails late on it with a ValueError)."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return str(folder)


@pytest.mark.parametrize(("model", "found"), [
    ("/nonexistent/model", "'/nonexistent/model': no such model folder"),
    (None, "is not a model folder (no modules.json, and no config.json naming a model_type)"),
])
def test_similarity_judge_model_checked_before_the_store(tmp_path: Path, jsonl, long_rows, model: str | None,
                                                         found: str) -> None:
    model = model or _not_a_model(tmp_path / "notamodel")
    responses = jsonl("responses.jsonl", long_rows)
    recipe = tmp_path / "judge.yaml"
    recipe.write_text(yaml.safe_dump({"judge": {"kind": "similarity", "reference": "gpt-4", "model": model}}))
    out = tmp_path / "out"
    one_line_error(invoke("judge", recipe, "--out", out, "--responses", responses), "judge.model", found,
                          "expected a sentence-transformers model folder, 'embedded' or a hub id")
    assert not out.exists()  # no empty store.sqlite left behind


@pytest.fixture
def curriculum_recipe(tmp_path: Path, jsonl) -> Path:
    jsonl("pairs.jsonl", [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No idea."} for i in range(8)])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"train": {
        "pairs": "pairs.jsonl", "model": "embedded", "out": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2,
        "prompt_format": "text", "curriculum": {"schedule": "sorted", "difficulty": "embedding-similarity",
                       "embedding_model": _not_a_model(tmp_path / "notamodel")}}}))
    return recipe


def test_curriculum_embedding_model_in_curriculum_show(tmp_path: Path, curriculum_recipe: Path) -> None:
    one_line_error(invoke("curriculum", "show", tmp_path / "pairs.jsonl", "--config", curriculum_recipe,
                                 "--out", tmp_path / "plot"),
                          "curriculum.embedding_model", "notamodel' is not a model folder",
                          "expected a sentence-transformers model folder")
    assert not (tmp_path / "plot").exists()


def test_curriculum_embedding_model_checked_before_fresh_clears_the_run(tmp_path: Path,
                                                                       curriculum_recipe: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    one_line_error(invoke("train", "--config", curriculum_recipe, "--fresh"), "curriculum.embedding_model",
                          "is not a model folder")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n'


# --- LoRA targets the model does not have ------------------------------------------------------------------------

@pytest.mark.parametrize(("targets", "found"), [(["nope"], "found [nope]"), ([], "found an empty list")])
def test_lora_targets_checked_before_fresh_clears_the_run(tmp_path: Path, jsonl, tiny_model_dir: Path,
                                                          targets: list[str], found: str) -> None:
    jsonl("pairs.jsonl", [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No idea."} for i in range(8)])
    recipe = tmp_path / "recipe.yaml"
    train = {"pairs": "pairs.jsonl", "model": str(tiny_model_dir), "out": str(tmp_path / "run"), "max_steps": 1,
             "batch_size": 2, "prompt_format": "text", "lora": {"target_modules": targets}}
    recipe.write_text(yaml.safe_dump({"train": train}))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    line = one_line_error(invoke("train", "--config", recipe, "--fresh"), "lora.target_modules", found,
                                 "matches none of its modules", "q_proj", "'all-linear'")
    assert "Peft" not in line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_judge_score_row_that_is_no_number_is_one_line(tmp_path: Path) -> None:
    """A score row's 'score' must be a number or null: "high" read back fine and failed later, building a
    Float64 column."""
    from pairforge.errors import InputError
    from pairforge.requests.store import Store

    store = Store(tmp_path / "store.sqlite")
    store.put("score:a", "score", {"score": 0.5})
    store.put("score:b", "score", {"score": "high"})
    assert store.get(["score:a"])["score:a"].value == {"score": 0.5}
    with pytest.raises(InputError, match=r"row key score:b: expected a JSON object with 'score', found 'score' that "
                                         r"is string 'high' \(expected a number or null\)"):
        store.get(["score:b"])
    store.close()


# --- a training run's record (run.json) damaged after training ----------------------------------------------------

def _pipeline_recipe(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """File sources, ranked pairs, one DPO step on the tiny model, an evaluation against the strong answers."""
    from conftest import sample_recipe

    return sample_recipe(tmp_path, [{"name": "dpo", "model": str(tiny_model_dir), "max_steps": 1, "max_length": 64,
                                     "batch_size": 4}], prompts=10, pairs={"eval_fraction": 0.3},
                         eval={"reference_source": "strong", "max_new_tokens": 3, "bootstrap": 20})


@pytest.mark.parametrize(("damage", "found"), [("{bad", "cannot be read (JSONDecodeError"),
                                               ("[1, 2]", "found array [1, 2]")])
def test_a_damaged_run_record_is_one_line(tmp_path: Path, tiny_model_dir: Path, damage: str, found: str) -> None:
    """run.json hand-edited or cut short by a full disk: `train` into that run and `run --from eval` (which asks the
    trained model in its recorded prompt format) say the file and what was expected, instead of a JSONDecodeError."""
    import subprocess
    import sys

    recipe = _pipeline_recipe(tmp_path, tiny_model_dir)
    assert invoke("run", recipe, "--to", "train").exit_code == 0
    record = tmp_path / "run" / "train" / "dpo" / "run.json"
    record.write_text(damage)
    weights = (record.parent / "model" / "model.safetensors").read_bytes()
    for args in (["train", "--config", recipe, "--run", "dpo"], ["run", recipe, "--from", "eval"]):
        result = subprocess.run([sys.executable, "-m", "pairforge", *map(str, args)], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        error = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # `run` shows its plan first
        assert len(error) == 1 and all(f in error[0] for f in ("run.json", found, "expected a JSON object as "
                                                                "`pairforge train` writes it")), result.stderr
        assert record.read_text() == damage
        assert (record.parent / "model" / "model.safetensors").read_bytes() == weights
