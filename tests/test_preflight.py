"""`pairforge run` checks what would stop it before any stage runs, and `--dry-run` checks the same: every file
source read in full with the generate stage's own checks, every API server asked once whether it answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import FaultProxy, free_port

from conftest import one_line_error, write_jsonl


def pairforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True, timeout=600)


def recipe_with(folder: Path, sources: list[dict[str, Any]]) -> Path:
    """Three prompts, the given sources, pairs by declared rank; the run folder inside `folder`."""
    write_jsonl(folder / "prompts.jsonl", [{"prompt": f"Name the number {i}."} for i in range(3)])
    recipe = folder / "recipe.yaml"
    names = [s["name"] for s in sources]
    recipe.write_text(yaml.safe_dump({"run_dir": "run", "prompts": "prompts.jsonl", "sources": sources,
                                      "pairs": {"rank": " > ".join(names)}}))
    return recipe


def api_source(base_url: str) -> dict[str, Any]:
    return {"name": "served", "backend": "openai", "model": "smollm2", "base_url": base_url, "max_new_tokens": 4,
            "max_retries": 0}


def two_models_file(folder: Path) -> Path:
    """An answers file holding two models' answers (long format), given to one file source."""
    return write_jsonl(folder / "answers.jsonl", [{"prompt": f"Name the number {i}.", "source": model,
                                                   "response": f"{model} says {i}."}
                                                  for i in range(3) for model in ("big", "small")])


def test_a_file_source_of_two_models_fails_the_dry_run_in_one_line(tmp_path: Path) -> None:
    two_models_file(tmp_path)
    recipe = recipe_with(tmp_path, [{"name": "teacher", "backend": "file", "path": "answers.jsonl"},
                                    {"name": "other", "backend": "file", "path": "answers.jsonl"}])
    one_line_error(pairforge("run", str(recipe), "--dry-run"), "answers.jsonl", "source 'teacher' takes one model's "
                   "answers, but the file has answers from 2 (big, small); split it per model")


@pytest.mark.slow
def test_a_file_source_of_two_models_fails_before_the_api_sources_are_asked(tmp_path: Path,
                                                                          llama_server: Any) -> None:
    two_models_file(tmp_path)
    counter = FaultProxy(llama_server.port, every=10**9)  # faults off: forwards and counts every request
    try:
        recipe = recipe_with(tmp_path, [api_source(counter.base_url),
                                        {"name": "teacher", "backend": "file", "path": "answers.jsonl"}])
        result = pairforge("run", str(recipe))
    finally:
        counter.close()
    one_line_error(result, "answers.jsonl", "split it per model")
    assert counter.requests == 0  # no answer was asked for
    assert not (tmp_path / "run" / "stages").exists() and not (tmp_path / "run" / "store.sqlite").exists()


def test_a_server_that_does_not_answer_fails_the_dry_run_and_the_run(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    (tmp_path / "teacher.jsonl").write_text(json.dumps({"prompt": "Name the number 0.", "response": "Zero."}) + "\n")
    recipe = recipe_with(tmp_path, [{"name": "teacher", "backend": "file", "path": "teacher.jsonl"},
                                    api_source(closed)])
    for args in (["--dry-run"], []):
        line = one_line_error(pairforge("run", str(recipe), *args), "source 'served'", closed, "does not answer",
                              "APIConnectionError")
        assert "base_url" in line
    assert not (tmp_path / "run" / "stages").exists()


@pytest.mark.slow
def test_a_server_that_answers_passes_the_dry_run(tmp_path: Path, llama_server: Any) -> None:
    counter = FaultProxy(llama_server.port, every=10**9)
    try:
        recipe = recipe_with(tmp_path, [api_source(counter.base_url), api_source(counter.base_url) | {"name": "b"}])
        result = pairforge("run", str(recipe), "--dry-run")
    finally:
        counter.close()
    assert result.returncode == 0, result.stderr
    assert "dry run: the recipe is valid" in result.stderr and counter.requests == 0  # a ping asks for no answer
