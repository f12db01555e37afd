"""Outputs: every output location is checked before any work (one line, exit 2), no command overwrites
its own input, and a command that fails its checks leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import SAMPLE
from pairforge.cli import app

RANK = ["--rank", "strong > medium > weak"]
INPUTS = [str(SAMPLE / f"{name}.json") for name in ("strong", "medium", "weak")]


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def recipe(folder: Path, **sections: object) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def test_an_output_that_is_an_input_is_refused(tmp_path, long_rows):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in long_rows))
    before = answers.read_bytes()
    assert_refused(run("pairs", "build", answers, "--rank", "gpt-4 > chatgpt > davinci", "--out", answers),
                   "--out", "is also an input: it would be overwritten")
    assert answers.read_bytes() == before
    summary = tmp_path / "pairs.summary.json"
    summary.write_text("{}")
    assert_refused(run("report", summary, "--out", summary), "expected a name ending in .html")
    assert summary.read_text() == "{}"


def test_report_refuses_a_page_name_that_is_not_html(tmp_path):
    assert run("pairs", "build", *INPUTS, *RANK, "--out", tmp_path / "pairs.parquet").exit_code == 0
    assert_refused(run("report", tmp_path, "--out", tmp_path / "r.txt"), "r.txt: expected a name ending in .html")
    assert not (tmp_path / "r.txt").exists() and not (tmp_path / "r.md").exists()


def test_a_file_where_a_folder_is_needed_is_found_before_any_work(tmp_path, tiny_model_dir):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    gen = recipe(tmp_path, prompts=str(prompts), sources=[{"name": "tiny", "model": str(tiny_model_dir)}],
                 judge={"kind": "similarity", "reference": "tiny"})
    pairs = tmp_path / "pairs.parquet"
    assert run("pairs", "build", *INPUTS, *RANK, "--out", pairs).exit_code == 0
    cases = [
        (["generate", gen, "--out", blocker], "blocker is a file: expected a folder"),
        (["judge", gen, "--out", blocker], "blocker is a file: expected a folder"),
        (["rank", gen, "--out", blocker], "blocker is a file: expected a folder"),
        (["eval", "--outputs", INPUTS[0], "--reference", INPUTS[0], "--out", blocker], "is a file: expected a folder"),
        (["train", "--pairs", pairs, "--model", tiny_model_dir, "--out", blocker], "is a file: expected a folder"),
        (["curriculum", "show", pairs, "--out", blocker], "curriculum.png cannot be created"),
        (["pairs", "build", *INPUTS, *RANK, "--out", blocker / "pairs.parquet"], "blocker is a file, not a folder"),
        (["report", tmp_path, "--out", blocker / "r.html"], "blocker is a file, not a folder"),
    ]
    for args, message in cases:
        assert_refused(run(*args), "--out", message)
        assert blocker.read_text() == "keep me"
    run_recipe = recipe(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path, prompts=str(prompts),
                        sources=[{"name": "tiny", "model": str(tiny_model_dir)}], run_dir=str(blocker))
    assert_refused(run("run", run_recipe, "--dry-run"), "run_dir", "blocker is a file: expected a folder")


def test_a_folder_where_a_file_is_needed(tmp_path):
    (tmp_path / "pairs.parquet").mkdir()
    assert_refused(run("pairs", "build", *INPUTS, *RANK, "--out", tmp_path / "pairs.parquet"),
                   "pairs.parquet is a folder: expected a file path")
    (tmp_path / "x.html").mkdir()
    assert run("pairs", "build", *INPUTS, *RANK, "--out", tmp_path / "p.parquet").exit_code == 0
    assert_refused(run("report", tmp_path / "p.summary.json", "--out", tmp_path / "x.html"), "x.html is a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot be tested as root")
def test_a_read_only_folder_is_found_before_any_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_refused(run("pairs", "build", *INPUTS, *RANK, "--out", locked / "pairs.parquet"), "cannot be written")
    finally:
        locked.chmod(0o755)


def test_failed_checks_leave_nothing_behind(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    missing_model = recipe(tmp_path, prompts=str(prompts), sources=[{"name": "x", "model": str(tmp_path / "nope")}])
    assert_refused(run("generate", missing_model, "--out", tmp_path / "gen"), "no such model folder")
    assert not (tmp_path / "gen").exists()

    assert_refused(run("eval", "--outputs", tmp_path / "missing.json", "--reference", INPUTS[0], "--out",
                       tmp_path / "eval"), "missing.json")
    assert not (tmp_path / "eval").exists()

    answers = tmp_path / "judged"
    answers.mkdir()
    responses = answers / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt": f"q{i}", "source": s, "response": s})
                                 + "\n" for i in range(2) for s in "ab"))
    causal = recipe(tmp_path, judge={"kind": "reward-model", "model": str(tiny_model_dir)})
    before = snapshot(answers)
    assert_refused(run("judge", causal, "--out", answers, "--responses", responses), "not a reward model")
    assert snapshot(answers) == before  # no store.sqlite, no scores


def test_dry_run_checks_the_stage_names(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    path = recipe(tmp_path, prompts=str(prompts), sources=[{"name": "x", "model": "embedded"}],
                  run_dir=str(tmp_path / "run"))
    for option in ("--to", "--from"):
        assert_refused(run("run", path, "--dry-run", option, "bogus"), option, "no stage 'bogus' in this recipe")


@pytest.mark.parametrize("blocked", ["eval", "stages", "train", "run-quick"])
def test_a_file_where_the_run_needs_a_folder_is_found_before_any_work(tmp_path, tiny_model_dir, blocked):
    """A file named like a folder the run writes in (its evaluation, its stage records, its training runs, the
    --quick run folder) is one line before any stage runs, not a FileExistsError traceback at the stage that makes
    the folder; the file is kept."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": r["instruction"]}) + "\n"
                               for r in json.loads(Path(INPUTS[0]).read_text())[:12]))
    path = recipe(tmp_path, run_dir=str(tmp_path / "run"), prompts=str(prompts),
                  sources=[{"name": n, "backend": "file", "path": INPUTS[i]} for i, n in enumerate(["strong", "weak"])],
                  pairs={"rank": "strong > weak", "eval_fraction": 0.3},
                  runs=[{"name": "dpo", "model": str(tiny_model_dir), "max_steps": 1}],
                  eval={"reference_source": "strong", "bootstrap": 20})
    folder = tmp_path / blocked if blocked == "run-quick" else tmp_path / "run" / blocked
    folder.parent.mkdir(exist_ok=True)
    folder.write_text("keep me")
    before = snapshot(tmp_path)
    for args in (["--dry-run"], []):
        result = run("run", path, *(["--quick"] if blocked == "run-quick" else []), *args)
        assert_refused(result, "run_dir", f"{folder} is a file: expected a folder")
    assert snapshot(tmp_path) == before
