"""A run folder's integrity: one command writes it at a time (a lock, taken over from a dead holder), no stage
writes over a file the recipe reads, a stage whose requests failed is not finished, and the responses follow the
recipe's current sources."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from servers import FaultProxy, HeldServer

from conftest import one_line_error, write_jsonl
from pairforge.errors import InputError
from pairforge.folder_lock import held

PROMPTS = ["What is the capital of France?", "Name a primary color.", "How many legs does a spider have?"]


def pairforge(*args: str | Path, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pairforge", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def finished(process: subprocess.Popen[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def api_recipe(folder: Path, base_url: str, **changes: Any) -> Path:
    """Two sources: one asked over HTTP (at `base_url`), one answers file; ranked pairs."""
    prompts = write_jsonl(folder / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    weak = write_jsonl(folder / "weak.jsonl", [{"prompt": p, "source": "weak", "response": "No idea."}
                                               for p in PROMPTS])
    data = {"run_dir": str(folder / "run"), "prompts": str(prompts),
            "sources": [{"name": "api", "backend": "openai", "model": "held", "base_url": base_url,
                         "max_retries": 0, "timeout": 600},
                        {"name": "weak", "backend": "file", "path": str(weak)}],
            "pairs": {"rank": "api > weak"}, **changes}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@contextmanager
def busy(server: HeldServer, recipe: Path, stage: str, *flags: str) -> Iterator[subprocess.Popen[str]]:
    """`pairforge run RECIPE --to STAGE [FLAGS]` at work in its folder for the block (its requests held by
    `server`); then let finish (exit 0 checked), or killed when the block failed; the server is closed either way."""
    first = pairforge("run", recipe, "--to", stage, *flags)
    try:
        assert server.arrived.wait(timeout=300), "the first run never asked the server"
        yield first
        server.release()
        done = finished(first)
        assert done.returncode == 0, done.stderr
    finally:
        server.release()
        if first.poll() is None:
            first.kill()
        server.close()


def test_a_second_command_on_a_run_folder_in_use_stops_with_the_holder_s_pid(tmp_path: Path) -> None:
    """While one `pairforge run` works in its folder (its requests held by the server), a second `run` and a
    `generate --out` on the same folder exit 2 with one line naming the folder and the first one's pid; a dry run
    still checks (no lock); the first run then finishes as if alone."""
    server = HeldServer()
    recipe, run_dir = api_recipe(tmp_path, server.base_url), tmp_path / "run"
    dry = finished(pairforge("run", recipe, "--dry-run"))
    assert dry.returncode == 0, dry.stderr
    assert not run_dir.exists()  # a dry run writes nothing
    with busy(server, recipe, "generate") as first:
        second = finished(pairforge("run", recipe), timeout=120)
        one_line_error(second, "run_dir", str(run_dir), "in use", f"pid {first.pid}")
        stage = finished(pairforge("generate", recipe, "--out", run_dir), timeout=120)
        one_line_error(stage, "--out", str(run_dir), "in use", f"pid {first.pid}")
        assert finished(pairforge("run", recipe, "--dry-run")).returncode == 0
    responses = pl.read_parquet(run_dir / "responses.parquet")
    assert sorted(responses["source"]) == ["api"] * 3 + ["weak"] * 3
    assert set(responses.filter(pl.col("source") == "api")["response"]) == {"A held answer."}


def test_a_second_quick_run_writes_nothing_in_a_folder_in_use(tmp_path: Path) -> None:
    """`run --quick` writes its prompts into the run folder: a second one, of an edited recipe, on a folder in use
    must be refused before it writes them (it replaced the working run's prompts, then stopped)."""
    server = HeldServer()
    recipe, quick_dir = api_recipe(tmp_path, server.base_url), tmp_path / "run-quick"
    with busy(server, recipe, "generate", "--quick") as first:
        prompts = (quick_dir / "quick-prompts.parquet").read_bytes()
        edited = yaml.safe_load(recipe.read_text())
        recipe.write_text(yaml.safe_dump({**edited, "quick": {"prompts": 2}}), encoding="utf-8")
        second = finished(pairforge("run", recipe, "--quick"), timeout=120)
        one_line_error(second, "run_dir", "in use", f"pid {first.pid}")
        assert (quick_dir / "quick-prompts.parquet").read_bytes() == prompts
    assert pl.read_parquet(quick_dir / "responses.parquet").height == 6


def test_train_into_a_run_folder_in_use_stops_with_the_holder_s_pid(tmp_path: Path, tiny_model_dir: Path) -> None:
    """While a `pairforge run` works in its folder, `train --config RECIPE --run NAME` and `train --out
    <run>/train/NAME` (which write into it) exit 2 naming the folder and the run's pid; a process of `accelerate
    launch` other than the main one (RANK 1) does not check (the main one holds the folder for all of them). Once
    the run has ended, the same training runs, and leaves no lock behind."""
    server = HeldServer()
    recipe = api_recipe(tmp_path, server.base_url, train={"model": str(tiny_model_dir)},
                        runs=[{"name": "sft", "method": "sft", "max_steps": 1, "batch_size": 2}])
    run_dir = tmp_path / "run"
    with busy(server, recipe, "pairs") as first:
        by_run = finished(pairforge("train", "--config", recipe, "--run", "sft"), timeout=120)
        one_line_error(by_run, "--run", str(run_dir), "in use", f"pid {first.pid}")
        by_out = finished(pairforge("train", "--out", run_dir / "train" / "other", "--pairs", tmp_path / "pairs.jsonl",
                                    "--model", tiny_model_dir), timeout=120)
        one_line_error(by_out, "--out", str(run_dir), "in use", f"pid {first.pid}")
        env = {**os.environ, "RANK": "1"}
        other_rank = finished(pairforge("train", "--config", recipe, "--run", "sft", env=env), timeout=120)
        assert "in use" not in other_rank.stderr and "pairs.parquet" in other_rank.stderr, other_rank.stderr
    trained = finished(pairforge("train", "--config", recipe, "--run", "sft"))
    assert trained.returncode == 0, trained.stderr
    assert (run_dir / "train" / "sft" / "model").is_dir() and not (run_dir / "pairforge.lock").exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path: Path) -> None:
    """kill -9 leaves the lock file (with the dead pid) behind; the next run takes the folder and finishes."""
    server = HeldServer()
    try:
        recipe, run_dir = api_recipe(tmp_path, server.base_url), tmp_path / "run"
        first = pairforge("run", recipe, "--to", "generate")
        try:
            assert server.arrived.wait(timeout=300), "the first run never asked the server"
            assert (run_dir / "pairforge.lock").read_text().strip() == str(first.pid)
        finally:
            first.kill()
            first.wait()
        server.release()
        result = finished(pairforge("run", recipe, "--to", "generate"))
    finally:
        server.release()
        server.close()
    assert result.returncode == 0, result.stderr
    assert not (run_dir / "pairforge.lock").exists()  # a command that ends removes its lock
    assert pl.read_parquet(run_dir / "responses.parquet").height == 6


def file_recipe(folder: Path) -> Path:
    """Two answers files, ranked pairs: a run that needs no model or server."""
    sources = []
    for name, answer in (("strong", "Paris."), ("weak", "No idea.")):
        path = write_jsonl(folder / f"{name}.jsonl", [{"prompt": p, "source": name, "response": answer}
                                                      for p in PROMPTS])
        sources.append({"name": name, "backend": "file", "path": str(path)})
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(folder / "run"), "sources": sources, "pairs": {"rank": "strong > weak"},
        "prompts": str(write_jsonl(folder / "prompts.jsonl", [{"prompt": p} for p in PROMPTS]))}), encoding="utf-8")
    return recipe


def test_a_symlink_at_the_lock_path_is_refused_and_nothing_is_written_through_it(tmp_path: Path) -> None:
    """A symlink at the lock path (dangling, or to a user's file) is not our lock file: the run stops at once with one
    line naming it (never spins retrying the missing target), writes nothing through it and deletes nothing."""
    recipe, lock = file_recipe(tmp_path), tmp_path / "run" / "pairforge.lock"
    lock.parent.mkdir()
    users = tmp_path / "precious.txt"
    users.write_text("precious\n", encoding="utf-8")
    for target in (tmp_path / "nonexistent" / "x", users):
        lock.symlink_to(target)
        one_line_error(finished(pairforge("run", recipe), timeout=60), "run_dir", str(lock), "a symlink",
                       "expected a regular lock file")
        assert lock.is_symlink() and os.readlink(lock) == str(target)
        lock.unlink()
    assert users.read_text(encoding="utf-8") == "precious\n"
    assert not (tmp_path / "run" / "responses.parquet").exists()


def _immutable(path: Path, on: bool) -> bool:
    """chattr ±i on `path`; False where the file system or user cannot."""
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("odd", ["folder", "FIFO", "immutable file"])
def test_a_lock_path_that_is_not_a_writable_file_is_refused_and_kept(tmp_path: Path, odd: str) -> None:
    """A folder, a FIFO or a file nobody may write at the lock path: one line naming the path and what was expected,
    exit 2, and the thing is still there afterwards (pairforge deletes only the lock file it made)."""
    recipe, lock = file_recipe(tmp_path), tmp_path / "run" / "pairforge.lock"
    lock.parent.mkdir()
    if odd == "folder":
        lock.mkdir()
        (lock / "notes.txt").write_text("mine\n", encoding="utf-8")
    elif odd == "FIFO":
        os.mkfifo(lock)
    else:
        lock.write_text("123\n", encoding="ascii")
        if not _immutable(lock, True):  # no chattr, or a file system (tmpfs, some overlays) without the flag
            assert not os.environ.get("CI"), "chattr +i failed: CI's machine (root on ext4) must run this case"
            pytest.skip("chattr +i is not available here: an immutable file cannot be made")
    try:
        result = finished(pairforge("run", recipe), timeout=60)
    finally:
        if odd == "immutable file":
            _immutable(lock, False)
    expected = "a regular lock file pairforge can write" if odd == "immutable file" else f"is a {odd}"
    one_line_error(result, "run_dir", str(lock), expected, "expected a regular lock file")
    if odd == "folder":
        assert (lock / "notes.txt").read_text(encoding="utf-8") == "mine\n"
    elif odd == "FIFO":
        assert lock.is_fifo()
    else:
        assert lock.read_text(encoding="ascii") == "123\n"
    assert not (tmp_path / "run" / "responses.parquet").exists()


def test_a_run_folder_moved_while_held_stops_its_holder_and_keeps_the_new_holder_s_lock(tmp_path: Path) -> None:
    """The run folder renamed while a command holds it, and a second command locking a new folder at the same path:
    the first one's check between stages stops it with one line, and its ending leaves the second one's lock file."""
    folder = tmp_path / "run"
    with held(folder / "pairforge.lock", "run_dir") as still_held:
        still_held()  # nothing moved yet
        folder.rename(tmp_path / "run-moved")
        folder.mkdir()
        (folder / "pairforge.lock").write_text("999\n", encoding="ascii")  # the second command's lock
        with pytest.raises(InputError, match=f"{folder} was moved or removed while this command worked in it"):
            still_held()
    assert (folder / "pairforge.lock").read_text(encoding="ascii") == "999\n"
    assert (tmp_path / "run-moved").is_dir()


def test_run_stops_at_the_next_stage_when_its_folder_is_moved_away(tmp_path: Path) -> None:
    """`pairforge run` whose folder is renamed mid-stage: at the next stage it stops with an error line naming the
    folder, exit 2, and writes no later stage's outputs."""
    server = HeldServer()
    try:
        recipe, run_dir = api_recipe(tmp_path, server.base_url), tmp_path / "run"
        first = pairforge("run", recipe)
        try:
            assert server.arrived.wait(timeout=300), "the run never asked the server"
            run_dir.rename(tmp_path / "run-moved")
            server.release()
            result = finished(first)
        finally:
            if first.poll() is None:
                first.kill()
    finally:
        server.release()
        server.close()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the plan and the first stage's progress
    assert last.startswith(f"error: run_dir: {run_dir} was moved or removed while this command worked in it"), last
    assert not list(tmp_path.rglob("pairs.parquet"))


@pytest.mark.parametrize(("key", "output"), [("sources.0.path", "responses.parquet"),
                                             ("pairs.filters.decontaminate.0", "round-2/pairs.eval.parquet")])
def test_a_file_the_recipe_reads_that_the_run_writes_is_refused_up_front(tmp_path: Path, key: str,
                                                                          output: str) -> None:
    """A user's answers file (or any input) at one of the run's own output paths: the dry run, the run and the stage
    command refuse it before any work, naming the recipe key and the output; the file is left as it was."""
    run_dir = tmp_path / "run"
    (run_dir / output).parent.mkdir(parents=True)
    users = pl.DataFrame({"prompt": PROMPTS, "source": ["strong"] * 3, "response": ["Paris.", "Red.", "Eight."]})
    users.write_parquet(run_dir / output)
    before = (run_dir / output).read_bytes()
    weak = write_jsonl(tmp_path / "weak.jsonl", [{"prompt": p, "source": "weak", "response": "No idea."}
                                                 for p in PROMPTS])
    strong = run_dir / output if key.startswith("sources") else tmp_path / "strong.parquet"
    if not strong.exists():
        users.write_parquet(strong)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(run_dir),
        "prompts": str(write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])),
        "sources": [{"name": "strong", "backend": "file", "path": str(strong)},
                    {"name": "weak", "backend": "file", "path": str(weak)}],
        "pairs": {"rank": "strong > weak", **({"filters": {"decontaminate": [str(run_dir / output)]}}
                                              if key.startswith("pairs") else {})}}), encoding="utf-8")
    for command in (["run", recipe, "--dry-run"], ["run", recipe], ["generate", recipe, "--out", run_dir]):
        one_line_error(finished(pairforge(*command)), str(recipe), f"field '{key}'", f"run's output {output}",
                       str(run_dir / output))
    assert (run_dir / output).read_bytes() == before
    assert sorted(p.name for p in run_dir.rglob("*")) == sorted(Path(output).parts)  # nothing else written


# --- a stage with failed requests is not finished -------------------------------------------------------------

def failing_recipe(folder: Path, stage: str, base_url: str, base_model: Path | None = None) -> Path:
    """Answers files of a strong and a weak source, and a model asked over HTTP (at `base_url`) in `stage`: as a
    source that answers (generate), as the reviser of the weak answers (revise), as the pairwise judge (judge) or
    as the evaluation's pairwise judge of `base_model`'s answers against the strong ones (eval)."""
    files = {name: write_jsonl(folder / f"{name}.jsonl", [{"prompt": p, "source": name, "response": text}
                                                           for p in PROMPTS[:2]])
             for name, text in (("strong", "A full, careful answer."), ("weak", "No idea."))}
    asked = {"backend": "openai", "model": "asked", "base_url": base_url, "max_retries": 0}
    sources = [{"name": n, "backend": "file", "path": str(p)} for n, p in files.items()]
    data: dict[str, Any] = {"run_dir": str(folder / "run"), "pairs": {"rank": "strong > weak"},
                            "prompts": str(write_jsonl(folder / "prompts.jsonl", [{"prompt": p} for p in PROMPTS[:2]]))}
    if stage == "judge":
        data |= {"sources": sources, "judge": {"kind": "llm-pairwise", "llm": asked}}
    else:
        data["sources"] = [*sources, {"name": "api", **asked}]
    if stage == "revise":
        data["pairs"] = {"strategy": "revised", "revision": {"reviser": "api", "original": "weak"}}
    if stage == "eval":
        data |= {"sources": sources, "train": {"model": str(base_model)},
                 "eval": {"prompts": data["prompts"], "reference": str(files["strong"]), "max_new_tokens": 4,
                          "bootstrap": 10, "judge": {"kind": "llm-pairwise", "llm": asked}}}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("stage", "requests"), [("generate", 2), ("revise", 2), ("judge", 4)])
def test_a_stage_whose_requests_failed_is_not_finished_and_retry_failed_asks_again(tmp_path: Path, stage: str,
                                                                                   requests: int,
                                                                                   llama_server: Any) -> None:
    """Every request of the stage fails (the server answers each with an error): the run stops at that stage with
    how many failed and --retry-failed, and records no finished stage; a plain rerun runs the stage again without
    asking again (the failures wait in the store), `--retry-failed` asks them again."""
    # answers every request (POST) itself with an error, and counts it; the model list (the run's check that the
    # server answers) passes through to the real server
    failing = FaultProxy(llama_server.port, every=1)
    try:
        recipe = failing_recipe(tmp_path, stage, failing.base_url)
        marker = tmp_path / "run" / "stages" / f"{stage}.json"
        for flags, asked in (([], requests), ([], requests), (["--retry-failed"], 2 * requests)):
            result = finished(pairforge("run", recipe, "--to", stage, *flags))
            assert result.returncode == 2, result.stderr
            assert f"{stage}: {requests} requests failed" in result.stderr and "--retry-failed" in result.stderr
            assert "Traceback" not in result.stderr and not marker.exists()
            assert re.search(rf"^{stage}: running", result.stderr, flags=re.MULTILINE), result.stderr
            assert failing.requests == asked
    finally:
        failing.close()


def test_a_source_that_now_only_revises_has_no_answers_left_in_the_responses(tmp_path: Path) -> None:
    """A source answered the prompts; the recipe then makes it the reviser of another source's answers (it only
    revises now): the rerun's responses hold no answer of it (its old ones stay in the store, unused), and
    `generate --source` refuses to ask it for answers."""
    server = HeldServer(text="An answer from the server.")
    server.release()  # answers at once
    try:
        recipe = api_recipe(tmp_path, server.base_url)
        assert finished(pairforge("run", recipe, "--to", "generate")).returncode == 0
        responses = tmp_path / "run" / "responses.parquet"
        assert sorted(set(pl.read_parquet(responses)["source"])) == ["api", "weak"]
        api_recipe(tmp_path, server.base_url, pairs={"strategy": "revised",
                                                     "revision": {"reviser": "api", "original": "weak"}})
        result = finished(pairforge("run", recipe, "--to", "revise"))
        assert result.returncode == 0, result.stderr
        asked = finished(pairforge("generate", recipe, "--out", tmp_path / "other", "--source", "api"))
        one_line_error(asked, "--source", "source 'api' only revises answers")
    finally:
        server.close()
    assert set(pl.read_parquet(responses)["source"]) == {"weak"}
    assert set(pl.read_parquet(tmp_path / "run" / "revisions.parquet")["source"]) == {"weak+api"}


def test_an_eval_whose_judge_requests_failed_is_not_finished_and_retry_failed_asks_again(
        tmp_path: Path, tiny_model_dir: Path, llama_server: Any) -> None:
    """The evaluation's LLM judge fails every request (2 prompts x both orders; the proxy in front of the real server
    answers each POST with an error, its model list passes through): the run stops at eval with how many failed and
    --retry-failed and records no finished eval (nor runs the report), so a plain rerun runs it again (the failures
    wait in eval's store) and `run --retry-failed` asks them again."""
    failing = FaultProxy(llama_server.port, every=1)
    try:
        recipe = failing_recipe(tmp_path, "eval", failing.base_url, tiny_model_dir)
        run_dir = tmp_path / "run"
        for flags, asked in (([], 4), ([], 4), (["--retry-failed"], 8)):
            result = finished(pairforge("run", recipe, "--to", "eval", *flags))
            assert result.returncode == 2, result.stderr
            assert "eval: 4 requests failed" in result.stderr and "--retry-failed" in result.stderr
            assert "Traceback" not in result.stderr
            assert not (run_dir / "stages" / "eval.json").exists() and not (run_dir / "report.html").exists()
            assert re.search(r"^eval: running", result.stderr, flags=re.MULTILINE), result.stderr
            assert failing.requests == asked
    finally:
        failing.close()
