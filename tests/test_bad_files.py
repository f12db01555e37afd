"""Files that went wrong in the ways an adversarial tester found: one line naming file, row and field, exit 2, no
traceback; or, where the file is fine, the command works.

Handled here:
  1. JSONL lines end at "\\n" only: text holding U+2028 / U+0085 / \\x0b / \\x0c (polars writes them raw) reads back
     as written (pairs build -> curriculum show, the pairs reader, append-only logs).
  2. A pairs file mixing conversational (message lists) and plain-text records: the first line whose shape differs
     from the first record's, and the field (curriculum show, train).
  3. Chat roles: system / user / assistant only (pairforge has no tool turns); a prompt ends with the user's turn;
     chosen / rejected turns are the assistant's. Pairs (JSON and Parquet), answer files, prompt files, ShareGPT.
  4. A lone surrogate ("\\ud800", valid JSON) in any field, nested or not: "not valid Unicode text".
  5. Numbers out of range: a sample beyond 64 bits, an integer too large for a float (JSON digits, 1e400).
  6. A corrupt saved HF dataset folder: state.json not JSON or not {"_data_files": [...]}, an Arrow file missing
     or not Arrow; the folder and what was expected.
  7. Split files of an earlier build into the same --out (<stem>.eval/.judge, .jsonl or .parquet) that a build does
     not write are removed once it succeeds, so `train --pairs` never takes held-out pairs of other data; never
     an input or a file no build of ours wrote (the earlier summary lists what it wrote), and a failed build
     removes nothing. A build killed at any point between its file operations never leaves a pairs file beside a
     split of another build, and its rerun cleans up.
  8. An eval instruction answered twice in an outputs or the reference file (the last silently won): refused with
     its row and the row that answered it first, like `pairs build` refuses a repeated answer.
  9. A key written twice in one mapping of a recipe (YAML keeps the last silently): file, line, key, first line.
 10. A CSV / TSV / Excel input: not a supported format, with the supported ones listed (was "not valid JSON").
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import one_line_error
from pairforge.cli import app

RANK = ["--rank", "gpt-4 > chatgpt > davinci"]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- 1. JSONL line ends ----------------------------------------------------------------------------------

ODD_BREAKS = "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg"


def test_pairs_with_unicode_line_separators_read_back_unchanged(tmp_path, jsonl, long_rows):
    from pairforge.pair_files import read_pairs

    rows = [{**r, "prompt": r["prompt"] + ODD_BREAKS, "response": r["response"] + " \u2028\x85"} for r in long_rows]
    out = tmp_path / "p.jsonl"
    assert invoke("pairs", "build", jsonl("a.jsonl", rows), *RANK, "--out", out).exit_code == 0
    shown = invoke("curriculum", "show", out, "--difficulty", "strength-gap", "--out", tmp_path)
    assert shown.exit_code == 0, shown.output
    pairs = read_pairs(out)
    prompts = {m[-1]["content"] if isinstance(m, list) else m for m in pairs["prompt"].to_list()}
    assert prompts == {r["prompt"] for r in rows}
    answers = {a[-1]["content"] if isinstance(a, list) else a for a in pairs["chosen"].to_list()}
    assert answers <= {r["response"] for r in rows} and all(a.endswith(" \u2028\x85") for a in answers)


def test_a_log_line_holding_u2028_is_one_row(tmp_path):
    from pairforge.files import read_log

    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"note": ODD_BREAKS}, ensure_ascii=False) + "\r\n" + json.dumps({"step": 2}) + "\n")
    assert read_log(log) == [{"note": ODD_BREAKS}, {"step": 2}]


# --- 4. lone surrogates ----------------------------------------------------------------------------------

def test_lone_surrogate_in_an_answer(tmp_path, long_rows):
    lines = [json.dumps(r) for r in long_rows]
    lines[4] = lines[4].replace('"response": "', '"response": "\\ud800 ')
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    one_line_error(invoke("pairs", "build", tmp_path / "a.jsonl", *RANK, "--out", tmp_path / "p.jsonl"),
                          "a.jsonl line 5, field 'response'", "not valid Unicode text (a lone surrogate)")
    assert not (tmp_path / "p.jsonl").exists()


def test_lone_surrogate_in_a_nested_answer_of_a_json_array(tmp_path):
    rows = [{"prompt": "p", "answers": [{"model": "a", "answer": "x", "rank": 1},
                                        {"model": "b", "answer": "\udfff", "rank": 2}]}]
    (tmp_path / "n.json").write_text(json.dumps(rows))  # ensure_ascii: written as the escape \\udfff
    one_line_error(invoke("pairs", "build", tmp_path / "n.json", "--strategy", "scored", "--out",
                                 tmp_path / "p.jsonl"),
                          "n.json row 1, field 'answers[1].answer'", "lone surrogate")


def test_lone_surrogate_in_chosen(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "q", "chosen": "\\ud800", "rejected": "no"}\n')
    one_line_error(invoke("curriculum", "show", tmp_path / "pairs.jsonl", "--out", tmp_path),
                          "pairs.jsonl line 1, field 'chosen'", "not valid Unicode text (a lone surrogate)")


# --- 2. and 3. conversational pairs ------------------------------------------------------------------------

def chat(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def conversational(i: int) -> dict[str, object]:
    return {"prompt": chat("user", f"Question {i}?"), "chosen": chat("assistant", "Yes."),
            "rejected": chat("assistant", "No idea.")}


def test_pairs_mixing_conversational_and_plain_text_rows(tmp_path, jsonl):
    rows = [conversational(0), {"prompt": "Question 1?", "chosen": "Yes.", "rejected": "No idea."}]
    pairs = jsonl("mixed.jsonl", rows)
    for command in (["curriculum", "show", pairs, "--out", tmp_path], ["train", "--pairs", pairs, "--out",
                                                                       tmp_path / "run"]):
        one_line_error(invoke(*command), "mixed.jsonl line 2, field 'prompt'",
                              "expected a list of chat messages (conversational) like line 1",
                              "found string 'Question 1?'")
    assert not (tmp_path / "run").exists()


def test_a_plain_text_file_with_one_conversational_answer(tmp_path, jsonl):
    rows = [{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."} for i in range(3)]
    rows[2]["rejected"] = chat("assistant", "No.")
    one_line_error(invoke("curriculum", "show", jsonl("p.jsonl", rows), "--out", tmp_path),
                          "p.jsonl line 3, field 'rejected'", "expected a string (plain text) like line 1")


@pytest.mark.parametrize(("field", "value", "where", "message"), [
    ("prompt", chat("banana", "hi"), "prompt[0].role", "expected a role system, user or assistant, found "
                                                        "string 'banana'"),
    ("prompt", [*chat("user", "hi"), *chat("assistant", "hello")], "prompt[1].role",
     "expected role user: a prompt ends with the user's turn"),
    ("prompt", chat("system", "Be brief."), "prompt[0].role", "expected role user"),
    ("chosen", chat("user", "hi"), "chosen[0].role", "expected role assistant"),
    ("rejected", [*chat("assistant", "a"), *chat("tool", "{}")], "rejected[1].role", "found string 'tool'"),
])
def test_roles_of_conversational_pairs(tmp_path, jsonl, field, value, where, message):
    rows = [conversational(i) for i in range(3)]
    rows[1][field] = value
    pairs = jsonl("conv.jsonl", rows)
    for command in (["curriculum", "show", pairs, "--out", tmp_path], ["train", "--pairs", pairs, "--out",
                                                                       tmp_path / "run"]):
        one_line_error(invoke(*command), f"conv.jsonl line 2, field '{where}'", message)


def test_roles_in_a_parquet_pairs_file(tmp_path):
    import polars as pl

    from pairforge.schema import MESSAGES

    rows = [conversational(i) for i in range(3)]
    rows[2]["chosen"] = chat("user", "hi")
    frame = pl.DataFrame(rows, schema={"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES})
    frame.write_parquet(tmp_path / "pairs.parquet")
    one_line_error(invoke("curriculum", "show", tmp_path / "pairs.parquet", "--out", tmp_path),
                          "pairs.parquet row 3, field 'chosen[0].role'", "expected role assistant")


@pytest.mark.parametrize("prompt", [chat("banana", "hi"), [*chat("user", "hi"), *chat("assistant", "hello")]])
def test_roles_of_chat_prompts_in_answer_and_prompt_files(tmp_path, jsonl, long_rows, prompt):
    from pairforge.errors import InputError
    from pairforge.records import prompts_from_file

    rows = [{**r, "prompt": prompt} if i == 4 else r for i, r in enumerate(long_rows)]
    one_line_error(invoke("pairs", "build", jsonl("a.jsonl", rows), *RANK, "--out", tmp_path / "p.jsonl"),
                          "a.jsonl line 5, field 'prompt[")
    with pytest.raises(InputError, match=r"line 5, field 'prompt\["):
        prompts_from_file(tmp_path / "a.jsonl")


def test_sharegpt_answer_that_follows_no_user_turn(tmp_path, jsonl):
    row = {"model": "m", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "gpt", "value": "Hi"}]}
    one_line_error(invoke("pairs", "build", jsonl("s.jsonl", [row]), "--strategy", "scored", "--out",
                                 tmp_path / "p.jsonl"),
                          "s.jsonl line 1, field 'conversations[0].role'", "expected role user")


# --- 5. numbers out of range -----------------------------------------------------------------------------

def test_sample_number_too_large_for_64_bits(tmp_path, jsonl, long_rows):
    rows = [{**r, "score": 1.0 + i % 3, "sample": 0} for i, r in enumerate(long_rows)]
    rows[3]["sample"] = 10**30
    one_line_error(invoke("pairs", "build", jsonl("a.jsonl", rows), "--strategy", "scored", "--out",
                                 tmp_path / "p.jsonl"),
                          "a.jsonl line 4, field 'sample'", "expected an integer in range", "found number 1000000")


def test_a_rank_too_large_for_a_float(tmp_path):
    (tmp_path / "n.jsonl").write_text('{"prompt": "p", "answers": [{"model": "a", "answer": "x", "rank": 1}, '
                                      '{"model": "b", "answer": "y", "rank": 1' + "0" * 400 + "}]}\n")
    one_line_error(invoke("pairs", "build", tmp_path / "n.jsonl", "--strategy", "scored", "--out",
                                 tmp_path / "p.jsonl"), "n.jsonl line 1, field 'answers[1].rank'",
                          "expected a finite number")


# --- 6. corrupt saved HF dataset folders -----------------------------------------------------------------

def saved_dataset(folder, rows: list[dict[str, object]]):
    """A `Dataset.save_to_disk` folder as `datasets` writes it: one Arrow stream file listed in state.json."""
    import pyarrow as pa
    import pyarrow.ipc

    folder.mkdir()
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pyarrow.ipc.new_stream(
            sink, table.schema) as writer:
        writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    return folder


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "state.json").write_text("not json"), "state.json cannot be read (JSONDecodeError"),
    (lambda d: (d / "state.json").write_text("{}"), 'expected state.json as `save_to_disk` writes it: '
                                                     '{"_data_files": [{"filename": "....arrow"}, ...]}; found object'),
    (lambda d: (d / "state.json").write_text("[1]"), "found array [1]"),
    (lambda d: (d / "state.json").write_text('{"_data_files": [{"filename": 3}]}'), "found object {'filename': 3}"),
    (lambda d: (d / "data-00000-of-00001.arrow").unlink(), "state.json lists data-00000-of-00001.arrow, but there "
                                                             "is no such file"),
    (lambda d: (d / "data-00000-of-00001.arrow").write_bytes(b"garbage!"), "data-00000-of-00001.arrow is not a "
                                                                           "readable Arrow stream file"),
], ids=["state-not-json", "state-empty-object", "state-array", "filename-not-text", "arrow-missing", "arrow-garbage"])
def test_corrupt_saved_dataset_folder(tmp_path, long_rows, damage, message):
    folder = saved_dataset(tmp_path / "hf", long_rows)
    assert invoke("pairs", "build", folder, *RANK, "--out", tmp_path / "ok.jsonl").exit_code == 0
    damage(folder)
    one_line_error(invoke("pairs", "build", folder, *RANK, "--out", tmp_path / "p.jsonl"),
                          f"{folder}: ", message)


# --- 7. split files of an earlier build --------------------------------------------------------------------

def many_rows(n: int) -> list[dict[str, object]]:
    answers = {"gpt-4": "A careful, complete answer number {i}.", "chatgpt": "An answer {i}.", "davinci": "Hm {i}."}
    return [{"prompt": f"Question {i}?", "source": s, "response": a.format(i=i)} for i in range(n)
            for s, a in answers.items()]


def test_a_build_removes_split_files_an_earlier_build_wrote(tmp_path, jsonl):
    answers = jsonl("a.jsonl", many_rows(8))
    out = tmp_path / "st.jsonl"
    assert invoke("pairs", "build", answers, *RANK, "--eval-fraction", "0.5", "--out", out).exit_code == 0
    assert (tmp_path / "st.eval.jsonl").exists()
    (tmp_path / "st.judge.parquet").write_bytes(b"a hand-made split: no build of ours wrote it, so it is kept")
    (tmp_path / "st.eval.parquet.bak").write_bytes(b"not a split name: kept")
    result = invoke("pairs", "build", answers, *RANK, "--out", out)
    assert result.exit_code == 0, result.output
    assert "removed" in result.stderr and "st.eval.jsonl" in result.stderr
    assert not (tmp_path / "st.eval.jsonl").exists() and (tmp_path / "st.judge.parquet").exists()
    assert (tmp_path / "st.eval.parquet.bak").exists() and out.exists()


def test_a_failed_build_and_an_input_keep_the_split_files(tmp_path, jsonl):
    answers = jsonl("a.jsonl", many_rows(8))
    out = tmp_path / "st.jsonl"
    assert invoke("pairs", "build", answers, *RANK, "--eval-fraction", "0.5", "--out", out).exit_code == 0
    held_out = (tmp_path / "st.eval.jsonl").read_bytes()
    bad = jsonl("bad.jsonl", [{"prompt": "p", "source": "a"}])
    one_line_error(invoke("pairs", "build", bad, *RANK, "--out", out), "bad.jsonl")
    assert (tmp_path / "st.eval.jsonl").read_bytes() == held_out
    import polars as pl

    as_input = tmp_path / "st.judge.parquet"  # answers that happen to have a split's name: an input, never removed
    pl.DataFrame(many_rows(8)).write_parquet(as_input)
    assert invoke("pairs", "build", as_input, *RANK, "--out", out).exit_code == 0
    assert as_input.exists() and not (tmp_path / "st.eval.jsonl").exists()


# a `pairforge` process killed with SIGKILL just before its N-th file operation (os.replace / os.unlink: the renames
# and removals that put a build's files in place), as a crash or kill -9 at that point would leave it
KILLED_AT = """
import os, signal, sys
import pairforge.cli, pairforge.pairs.build_files
limit, done = int(sys.argv[1]), [0]
def counted(operation):
    def run(*args, **kwargs):
        done[0] += 1
        if done[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return operation(*args, **kwargs)
    return run
os.replace, os.unlink = counted(os.replace), counted(os.unlink)
sys.argv = ["pairforge", *sys.argv[2:]]
pairforge.cli.app()
"""


def test_a_build_killed_at_any_point_never_leaves_a_pairs_file_beside_another_build_s_split(tmp_path, jsonl):
    """Build A (eval split) is replaced by build B (judge split, no eval split) of other prompts; B is killed before
    each of its file operations in turn. Whatever is on disk then, a pairs file has only its own build's splits
    beside it (never A's held-out pairs beside B's pairs), and B's rerun leaves exactly B's files."""
    import subprocess
    import sys

    def rows(tag: str) -> list[dict[str, object]]:
        return [{**row, "prompt": f"{tag} {row['prompt']}"} for row in many_rows(12)]

    a, b = jsonl("a.jsonl", rows("Alpha")), jsonl("b.jsonl", rows("Beta"))
    (tmp_path / "b.yaml").write_text("pairs: {judge_fraction: 0.5}\n")
    (tmp_path / "killed_at.py").write_text(KILLED_AT)
    out = tmp_path / "st.jsonl"
    files = {split: tmp_path / f"st{split}.jsonl" for split in ("", ".eval", ".judge")}

    def builds() -> tuple[str | None, ...]:
        return tuple(next(t for t in ("Alpha", "Beta") if t in f.read_text()) if f.exists() else None
                     for f in files.values())

    build_b = ["pairs", "build", b, *RANK, "--config", tmp_path / "b.yaml", "--out", out]
    kills = 0
    for point in range(1, 40):
        assert invoke("pairs", "build", a, *RANK, "--eval-fraction", "0.5", "--out", out).exit_code == 0
        assert builds() == ("Alpha", "Alpha", None)
        killed = subprocess.run([sys.executable, tmp_path / "killed_at.py", str(point), *map(str, build_b)],
                                capture_output=True, text=True, timeout=300)
        if killed.returncode == 0:
            break
        assert killed.returncode == -9, killed.stderr
        kills += 1
        pairs, *splits = builds()
        assert pairs is None or set(splits) <= {pairs, None}, (point, builds())
        assert pairs != "Beta" or splits == [None, "Beta"], (point, builds())
        assert invoke(*build_b).exit_code == 0
        assert builds() == ("Beta", None, "Beta"), point
    assert kills >= 5 and builds() == ("Beta", None, "Beta")


# --- 8. an eval instruction answered twice -----------------------------------------------------------------

@pytest.mark.parametrize("repeated", ["outputs", "reference"])
def test_eval_instruction_answered_twice(tmp_path, repeated):
    rows = [{"instruction": f"Question {i}: what is {i} plus {i}?", "output": f"It is {2 * i}.", "generator": "m"}
            for i in range(4)]
    files = {name: tmp_path / f"{name}.json" for name in ("outputs", "reference")}
    for name, path in files.items():
        extra = [{**rows[1], "output": "Something else."}] if name == repeated else []
        path.write_text(json.dumps(rows + extra))
    result = invoke("eval", "--outputs", files["outputs"], "--reference", files["reference"], "--out", tmp_path / "ev")
    one_line_error(result, f"{repeated}.json row 5", "the instruction 'Question 1: what is 1 plus 1?' is "
                          "answered again (first at row 2)", f"one answer per eval instruction in the {repeated} file")
    assert not (tmp_path / "ev").exists()


# --- 9. a key twice in a recipe ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "where", "first"), [
    ("pairs: {rank: a > b}\npairs: {rank: b > a}\n", "recipe.yaml line 2, field 'pairs'", "first at line 1"),
    ("pairs:\n  rank: a > b\n  seed: 1\n  rank: b > a\n", "recipe.yaml line 4, field 'rank'", "first at line 2"),
], ids=["section-twice", "nested-key-twice"])
def test_recipe_key_written_twice(tmp_path, jsonl, long_rows, text, where, first):
    (tmp_path / "recipe.yaml").write_text(text)
    result = invoke("pairs", "build", jsonl("a.jsonl", long_rows), "--config", tmp_path / "recipe.yaml", "--out",
                    tmp_path / "p.jsonl")
    one_line_error(result, where, "the key appears twice in one mapping", first)
    assert not (tmp_path / "p.jsonl").exists()


def test_recipe_merge_key_may_be_overridden(tmp_path):
    from pairforge.recipe import load_recipe

    (tmp_path / "recipe.yaml").write_text("pairs: {<<: {rank: a > b, seed: 3}, rank: b > a}\n")
    assert load_recipe(tmp_path / "recipe.yaml").pairs.rank == "b > a"


# --- 10. CSV -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), [("answers.csv", "CSV"), ("answers.TSV", "TSV")])
def test_csv_is_said_to_be_unsupported(tmp_path, name, kind):
    (tmp_path / name).write_text("prompt,source,response\na,b,c\n")
    one_line_error(invoke("pairs", "build", tmp_path / name, *RANK, "--out", tmp_path / "p.jsonl"),
                          f"{name}: {kind} is not a supported input format",
                          "expected JSONL, JSON (an array of objects), Parquet or a saved HF dataset folder")


def test_a_text_prompt_beside_chat_answers_that_repeat_it_is_read_as_trl_reads_it(tmp_path) -> None:
    """HuggingFaceH4/ultrafeedback_binarized: prompt "hi", chosen [user "hi", assistant "a"]. TRL takes the
    answers' shared leading turns as the prompt; so do we (the role check refused these files as written)."""
    import polars as pl

    from pairforge.pair_files import read_pairs

    turns = [{"role": "user", "content": "hi"}]
    rows = [{"prompt": "hi", "chosen": [*turns, {"role": "assistant", "content": "a"}],
             "rejected": [*turns, {"role": "assistant", "content": "b"}], "score_chosen": 8.0}]
    (tmp_path / "h4.jsonl").write_text(json.dumps(rows[0]) + "\n")
    pl.DataFrame(rows).write_parquet(tmp_path / "h4.parquet")
    for name in ("h4.jsonl", "h4.parquet"):
        row = read_pairs(tmp_path / name).row(0, named=True)
        assert row["prompt"] == turns and row["chosen"] == [{"role": "assistant", "content": "a"}], name
        assert row["rejected"] == [{"role": "assistant", "content": "b"}]


def test_parquet_chat_prompt_with_null_content_is_refused_when_read(tmp_path, tiny_model_dir):
    """A null turn content passed the dtype check and failed later inside the chat template (jinja UndefinedError):
    refused at read time, naming the file, row and field, before any model is loaded."""
    import polars as pl
    import yaml

    from pairforge.schema import MESSAGES

    prompts = [chat("user", "Say hi."), [{"role": "system", "content": None}, *chat("user", "Say bye.")]]
    pl.DataFrame({"prompt": prompts}, schema={"prompt": MESSAGES}).write_parquet(tmp_path / "prompts.parquet")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": str(tmp_path / "prompts.parquet"), "sources": [
        {"name": "tiny", "model": str(tiny_model_dir), "max_new_tokens": 2}]}))
    one_line_error(invoke("generate", recipe, "--out", tmp_path / "gen"),
                   "prompts.parquet row 2, field 'prompt[0].content'", "expected a string, found null")
    assert not (tmp_path / "gen" / "responses.parquet").exists()
    answers = pl.DataFrame({"prompt": prompts, "source": ["a", "b"], "response": ["hi", "bye"]},
                           schema={"prompt": MESSAGES, "source": pl.String, "response": pl.String})
    answers.write_parquet(tmp_path / "answers.parquet")
    one_line_error(invoke("pairs", "build", tmp_path / "answers.parquet", "--strategy", "scored", "--out",
                          tmp_path / "p.jsonl"), "answers.parquet row 2, field 'prompt[0].content'")
