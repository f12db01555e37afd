"""Bad input: one line naming file, row and field; exit code 2; no traceback; nothing written is lost.

Errors (exit 2): malformed JSON, a non-object line, wrong types, missing prompt/response, NaN or
infinite scores, an empty file, a file that is not UTF-8, an unknown source in --rank or
--pair-types, a rank with a cycle or a source twice, the same (prompt, source, sample) twice, an
unknown recipe key, an unknown --prompt-format or a bad train.prompt_format / eval.dtype /
eval.batch_size. Skipped and counted instead: a prompt with only one source (see test_pairs.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import one_line_error
from pairforge.cli import app

RANK = ["--rank", "gpt-4 > chatgpt > davinci"]


def run_cli(*args: str):
    return CliRunner().invoke(app, ["pairs", "build", *map(str, args)])


def test_malformed_json_line(tmp_path, long_rows):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in long_rows[:3]) + '\n{"prompt": "x", "source": \n')
    one_line_error(run_cli(path, *RANK), "a.jsonl", "line 4", "not valid JSON")


def test_line_that_is_not_an_object(jsonl):
    path = jsonl("a.jsonl", [{"prompt": "p", "source": "a", "response": "r"}])
    path.write_text(path.read_text() + "[1, 2]\n")
    one_line_error(run_cli(path, *RANK), "line 2", "expected a JSON object")


def test_wrong_type(jsonl, long_rows):
    long_rows[4]["response"] = 42
    one_line_error(run_cli(jsonl("a.jsonl", long_rows), *RANK),
                          "a.jsonl line 5", "field 'response'", "expected a string, found number 42")


def test_missing_response_field(jsonl, long_rows):
    del long_rows[2]["response"]
    one_line_error(run_cli(jsonl("a.jsonl", long_rows), *RANK), "line 3", "'response'", "field missing")


def test_missing_prompt_field_everywhere(jsonl):
    one_line_error(run_cli(jsonl("a.jsonl", [{"source": "a", "response": "r"}]), *RANK),
                          "cannot tell the input format", "found response, source")


@pytest.mark.parametrize("bad", ["NaN", "Infinity"])
def test_nan_score_in_json(tmp_path, long_rows, bad):
    lines = [json.dumps({**r, "score": 1.0}) for r in long_rows]
    lines[6] = lines[6].replace("1.0", bad)
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    one_line_error(run_cli(tmp_path / "a.jsonl", *RANK), "line 7", "field 'score'", "finite number")


def test_nan_score_in_parquet(tmp_path, long_rows):
    scores = [1.0] * len(long_rows)
    scores[3] = float("nan")
    pl.DataFrame(long_rows).with_columns(pl.Series("score", scores)).write_parquet(tmp_path / "a.parquet")
    one_line_error(run_cli(tmp_path / "a.parquet", *RANK), "a.parquet row 4", "field 'score'", "finite")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    one_line_error(run_cli(tmp_path / "empty.jsonl", *RANK), "empty.jsonl", "file is empty")


def test_not_utf8(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "ok", "source": "a", "response": "ok"}\n'
                                            '{"prompt": "caf\xe9", "source": "a", "response": "x"}\n'.encode("latin-1"))
    one_line_error(run_cli(tmp_path / "latin1.jsonl", *RANK), "latin1.jsonl line 2", "not UTF-8", "0xe9")


def test_unknown_source_in_rank(jsonl, long_rows):
    one_line_error(run_cli(jsonl("a.jsonl", long_rows), "--rank", "gpt-5 > chatgpt"),
                          "--rank", "'gpt-5' is not in the input", "chatgpt, davinci, gpt-4")


def test_pair_type_with_unknown_source(jsonl, long_rows):
    one_line_error(run_cli(jsonl("a.jsonl", long_rows), *RANK, "--pair-types", "gpt-4>llama"),
                          "--pair-types", "'llama'")


@pytest.mark.parametrize(("rank", "message"), [("gpt-4 > chatgpt > gpt-4", "appears twice"),
                                               ("gpt-4 > chatgpt; chatgpt > gpt-4", "cycle")])
def test_bad_rank(jsonl, long_rows, rank, message):
    one_line_error(run_cli(jsonl("a.jsonl", long_rows), "--rank", rank), "--rank", message)


def test_same_answer_id_twice(jsonl, long_rows):
    rows = [{**r, "sample": 0} for r in long_rows] + [{**long_rows[0], "sample": 0}]
    one_line_error(run_cli(jsonl("a.jsonl", rows), *RANK), "line 10", "appeared before")


def test_wrong_type_in_nested_record(jsonl):
    answers = [{"model": "a", "answer": "x", "rank": 1}, {"model": "b", "answer": None, "rank": 2}]
    row = {"prompt": "p", "answers": answers}
    one_line_error(run_cli(jsonl("n.jsonl", [row]), "--strategy", "scored"),
                          "line 1", "answers[1].answer", "expected a string, found null")


def test_unknown_recipe_key_names_its_line(tmp_path, jsonl, long_rows):
    jsonl("a.jsonl", long_rows)
    (tmp_path / "recipe.yaml").write_text("pairs:\n  inputs: [a.jsonl]\n  rank: gpt-4 > chatgpt\n  pair_typo: all\n")
    one_line_error(run_cli("--config", tmp_path / "recipe.yaml"), "recipe.yaml line 4", "pairs.pair_typo",
                          "unknown key")


def test_failed_run_keeps_the_previous_output(tmp_path, jsonl, long_rows):
    good = jsonl("good.jsonl", long_rows)
    out = tmp_path / "pairs.parquet"
    assert run_cli(good, *RANK, "--out", out).exit_code == 0
    before = out.read_bytes()
    bad = jsonl("bad.jsonl", long_rows[:-1] + [{"prompt": "p", "source": "a"}])
    one_line_error(run_cli(bad, *RANK, "--out", out), "bad.jsonl")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "pairs.parquet",
                                                          "pairs.summary.json"]


def test_console_script_exit_code_and_stderr(tmp_path):
    (tmp_path / "a.jsonl").write_text("not json\n")
    done = subprocess.run([sys.executable, "-m", "pairforge", "pairs", "build", str(tmp_path / "a.jsonl"), *RANK],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "line 1" in done.stderr and "Traceback" not in done.stderr


def test_unknown_prompt_format_flag(jsonl, long_rows):
    one_line_error(run_cli(jsonl("a.jsonl", long_rows), *RANK, "--prompt-format", "xml"), "--prompt-format",
                          "'auto', 'chat' or 'text'")


@pytest.mark.parametrize(("section", "line"), [("train:\n  prompt_format: html\n", "train.prompt_format"),
                                               ("eval:\n  dtype: float8\n", "eval.dtype"),
                                               ("eval:\n  batch_size: 0\n", "eval.batch_size")])
def test_bad_recipe_values_of_the_format_and_eval_options(tmp_path, section, line):
    from pairforge.errors import InputError
    from pairforge.recipe import load_recipe

    (tmp_path / "recipe.yaml").write_text(section)
    with pytest.raises(InputError) as error:
        load_recipe(tmp_path / "recipe.yaml")
    assert line in str(error.value) and "line 2" in str(error.value) and "\n" not in str(error.value)


def test_a_prompt_longer_than_the_context_fails_alone_before_generation(tmp_path, tiny_model_dir):
    """The tiny model's context is 512 tokens: the long prompt is a recorded failure with its reason (exit 1,
    --retry-failed to try again), the short one is answered."""
    import yaml

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n" + json.dumps({"prompt": "word " * 600}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": str(prompts), "sources": [
        {"name": "tiny", "model": str(tiny_model_dir), "max_new_tokens": 4}]}))
    result = CliRunner().invoke(app, ["generate", str(recipe), "--out", str(tmp_path / "gen")])
    assert result.exit_code == 1 and "1 requests failed" in result.output, result.output
    assert "more than the model's context of 512 tokens" in result.output
    answers = pl.read_parquet(tmp_path / "gen" / "responses.parquet")
    assert answers["prompt"].to_list() == ["Say hi."]


def test_no_pair_at_all_is_an_error_that_says_what_was_left_out(jsonl, tmp_path):
    rows = [{"prompt": f"q{i}", "source": s, "response": "same answer"} for i in range(3) for s in ("a", "b")]
    out = tmp_path / "pairs.parquet"
    one_line_error(run_cli(jsonl("same.jsonl", rows), "--rank", "a > b", "--out", out),
                          "no pair for training could be built from 6 answers", "chosen == rejected 3")
    assert not out.exists()


@pytest.mark.parametrize("option, value, message", [
    ("--bootstrap", "0", "--bootstrap: Input should be greater than or equal to 10"),
    ("--bootstrap", "-5", "--bootstrap: Input should be greater than or equal to 10"),
    ("--max-new-tokens", "0", "--max-new-tokens: Input should be greater than or equal to 1"),
    ("--temperature", "-1", "--temperature: Input should be greater than or equal to 0"),
    ("--batch-size", "x", "Invalid value for '--batch-size'"),
])
def test_eval_option_values_are_checked_before_any_work(tmp_path, option, value, message):
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi."}]))
    result = CliRunner().invoke(app, ["eval", "--outputs", str(reference), "--reference", str(reference),
                                      option, value, "--out", str(tmp_path / "eval")])
    one_line_error(result, message)
    assert not (tmp_path / "eval").exists()


def test_one_prompt_id_given_to_two_prompts_is_refused(jsonl, tmp_path):
    """Pairing by a shared id would put the answer to "B?" under prompt "A?" and lose "B?": refused, naming both."""
    rows = [{"prompt_id": "q1", "prompt": "A?", "source": "strong", "response": "a strong"},
            {"prompt_id": "q1", "prompt": "A?", "source": "weak", "response": "a weak"},
            {"prompt_id": "q1", "prompt": "B?", "source": "weak", "response": "b weak"}]
    out = tmp_path / "pairs.parquet"
    one_line_error(run_cli(jsonl("a.jsonl", rows), "--rank", "strong > weak", "--out", out),
                   "a.jsonl line 3", "field 'prompt_id'", "'q1'", "line 1", "two different prompts")
    assert not out.exists()


def test_one_prompt_id_given_to_two_prompts_in_a_prompts_file(jsonl):
    from pairforge.errors import InputError
    from pairforge.records import prompts_from_file

    path = jsonl("prompts.jsonl", [{"prompt_id": "q1", "prompt": "A?"}, {"prompt_id": "q1", "prompt": "B?"}])
    with pytest.raises(InputError) as error:
        prompts_from_file(path)
    assert "prompts.jsonl line 2" in str(error.value) and "'q1'" in str(error.value)


def test_nothing_left_for_training_says_the_split_took_it(jsonl, tmp_path):
    rows = [{"prompt": f"Question {p}?", "source": s, "response": f"{s} answers {p}"}
            for p in range(2) for s in ("strong", "weak")]
    line = one_line_error(run_cli(jsonl("a.jsonl", rows), "--rank", "strong > weak", "--eval-fraction", "0.99",
                                  "--out", tmp_path / "pairs.parquet"), "no pair for training")
    assert "left out: nothing" not in line and "held out" in line and "2 prompts" in line, line
