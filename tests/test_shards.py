"""Prompt shards: `--shard K/N` answers one bucket of prompts into its own store; the unsharded command (and
`pairforge run`) merges every shard store and asks only what no shard answered.

The HTTP tests talk to a real llama.cpp server (their own, so they can stop it) through a counting proxy.
"""

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
from servers import FaultProxy, LlamaServer
from test_generate import openai_source, prompts, run_cli, stored_rows, write_recipe
from typer.testing import CliRunner

import pairforge as pf
from conftest import one_line_error
from pairforge.cli import app
from pairforge.errors import InputError
from pairforge.folder_lock import held
from pairforge.records import prompts_from_file
from pairforge.requests.shards import Shard
from pairforge.requests.store import Store, opened

KEY_COLUMNS = ["prompt_id", "source", "sample"]


@pytest.fixture
def server(pairforge_cache: Path):
    """A llama.cpp server of this test's own (stopped by the test when it needs the server gone)."""
    from pairforge.models import embedded_gguf

    own = LlamaServer(embedded_gguf())
    own.start()
    yield own
    own.stop()


def greedy(base_url: str, **settings: Any) -> dict[str, Any]:
    return openai_source(base_url, **{"temperature": 0.0, "max_new_tokens": 8, **settings})


def shard_cli(recipe: Path, out: Path, shard: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pairforge", "generate", str(recipe), "--out", str(out),
                             "--shard", shard], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "2", "-1/2", "1/2/3", ""])
def test_a_bad_shard_is_one_line_in_the_cli_and_an_input_error_in_python(tmp_path: Path, text: str) -> None:
    recipe = write_recipe(tmp_path, prompts(2), [greedy("http://127.0.0.1:9/v1")])
    result = CliRunner().invoke(app, ["generate", str(recipe), "--out", str(tmp_path / "out"), "--shard", text])
    one_line_error(result, "--shard", "expected K/N with 1 <= K <= N (e.g. 2/8)", repr(text))
    with pytest.raises(InputError, match="expected K/N"):
        pf.generate(recipe, tmp_path / "out", shard=text)
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_every_prompt_falls_in_exactly_one_shard_of_any_n() -> None:
    ids = pl.DataFrame({"prompt_id": [f"{i:016x}" for i in range(400)]})
    for n in (1, 2, 3, 8):
        parts = [Shard(k, n).keep(ids)["prompt_id"].to_list() for k in range(1, n + 1)]
        assert sorted(sum(parts, [])) == ids["prompt_id"].to_list()
        assert min(map(len, parts)) > 400 / n / 2  # roughly even buckets
    assert Shard.parse(" 2 / 8 ") == Shard(2, 8) and str(Shard(2, 8)) == "2/8"
    # the bucket is a content hash: the same on every machine and every Python (never hash())
    assert [Shard(k, 4).holds("0123456789abcdef") for k in range(1, 5)] == [True, False, False, False]


def test_the_unsharded_store_merges_shard_successes_only(tmp_path: Path) -> None:
    main = tmp_path / "store.sqlite"
    with opened(main) as store:
        store.put("a", "generation", {"text": "main's a"})
        store.put_failure("b", "generation", "APIConnectionError: down")
    with opened(main, Shard(1, 2)) as one:
        one.put("a", "generation", {"text": "shard's a"})
        one.put("b", "generation", {"text": "shard's b"})
        one.put_failure("c", "generation", "APIConnectionError: down")
    with opened(main, Shard(2, 3)) as other:  # another N mixes in: keys are content
        other.put("d", "generation", {"text": "d"})
    with opened(main) as store:
        found = store.get(["a", "b", "c", "d"])
    assert found["a"].value == {"text": "main's a"}  # the first success wins
    assert found["b"].value == {"text": "shard's b"} and found["b"].error is None  # a success replaces a failure
    assert "c" not in found  # a shard's failure is this run's to ask
    assert found["d"].value == {"text": "d"}
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.sqlite")) == ["1-of-2.sqlite", "2-of-3.sqlite"]


def test_a_shard_asks_nothing_the_runs_own_store_already_answered(tmp_path: Path) -> None:
    """A folder whose store.sqlite already holds the answers (an earlier unsharded run, a killed one, a round
    before) split into shards afterwards: the shards must not pay for those answers again. The server does not
    exist, so any request a shard sent would fail."""
    from pairforge.generation.answers import generate, source_requests

    recipe = pf.Recipe.load(write_recipe(tmp_path, prompts(6), [greedy("http://127.0.0.1:9/v1", max_retries=0)]))
    out = tmp_path / "out"
    with opened(out / "store.sqlite") as store:
        for request in source_requests(recipe.sources[0], prompts_from_file(recipe.prompts), 1):
            store.put(request.key, "generation", {"text": "answered", "finish_reason": "stop", "tokens": 1})
    tallies = [generate(recipe, out, show_progress=False, shard=Shard(k, 2)).tallies["served"] for k in (1, 2)]
    assert [t.failed for t in tallies] == [0, 0] and sum(t.cached for t in tallies) == 6, tallies


def test_a_shard_stopped_by_bad_input_leaves_no_copy_of_the_runs_store(tmp_path: Path) -> None:
    main = tmp_path / "store.sqlite"
    with opened(main) as store:
        store.put("a", "generation", {"text": "the run's a"})
    with pytest.raises(InputError, match="does not load"), opened(main, Shard(1, 2)) as shard:
        assert shard.get(["a"])["a"].value == {"text": "the run's a"}  # the shard starts from the run's answers
        raise InputError("model", "does not load")
    assert not (tmp_path / "shards").exists()  # nothing but the copy was in it: a failed check leaves nothing


def test_fifty_thousand_shard_answers_all_merge(tmp_path: Path) -> None:
    """Two shards of 25k answers each come into the run's store whole, in one merge (how long it takes is a
    benchmark's figure, not a test's: ~0.6 s here)."""
    main = tmp_path / "store.sqlite"
    for k in (1, 2):
        shard = Store(Shard(k, 2).store(main))
        rows = [(f"gen:s:{k}-{i}:0:abc", "generation", json.dumps({"text": f"answer {i}"}), None, 1, 0.0)
                for i in range(25_000)]
        shard.db.execute("BEGIN")
        shard.db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)", rows)
        shard.db.execute("COMMIT")
        shard.close()
    with opened(main):
        pass
    assert sqlite3.connect(main).execute("SELECT COUNT(*) FROM results WHERE value IS NOT NULL").fetchone() == (50_000,)


def test_a_file_in_shards_that_is_no_store_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, prompts(2), [greedy("http://127.0.0.1:9/v1")])
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "1-of-2.sqlite").write_bytes(b"not a database at all, just bytes " * 40)
    result = CliRunner().invoke(app, ["generate", str(recipe), "--out", str(out)])
    one_line_error(result, "1-of-2.sqlite", "expected a pairforge store")
    assert sorted(p.name for p in out.rglob("*")) == ["1-of-2.sqlite", "shards"]


def test_a_second_copy_of_one_shard_stops_while_other_shards_run(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, prompts(2), [greedy("http://127.0.0.1:9/v1", max_retries=0)])
    out = tmp_path / "out"
    with held(Shard(1, 2).lock(out / "store.sqlite"), "--shard"):  # a running copy of shard 1/2
        second = CliRunner().invoke(app, ["generate", str(recipe), "--out", str(out), "--shard", "1/2"])
        one_line_error(second, "--shard", "in use by another pairforge command")
        other = pf.generate(recipe, out, shard="2/2")  # another shard runs beside it
    assert other.responses == out / "shards" / "2-of-2.sqlite"
    assert not (out / "responses.parquet").exists()


def test_the_merge_waits_for_a_running_shard_and_a_shard_for_a_running_merge(tmp_path: Path) -> None:
    """Merging a live shard would ask its remaining prompts twice (paid twice) and open a store another machine
    writes; a shard beside an unsharded command would be asked for the same prompts: both stop in one line, writing
    nothing, and go on once the other has ended."""
    recipe = write_recipe(tmp_path, prompts(2), [greedy("http://127.0.0.1:9/v1", max_retries=0)])
    out = tmp_path / "out"
    pf.generate(recipe, out, shard="1/2")  # the server is down: the shard's requests fail, its store exists
    with held(Shard(1, 2).lock(out / "store.sqlite"), "--shard"):  # shard 1/2 running again
        merge = CliRunner().invoke(app, ["generate", str(recipe), "--out", str(out)])
        one_line_error(merge, "1-of-2.sqlite", "still running", "expected finished shards")
    assert not (out / "store.sqlite").exists() and not (out / "responses.parquet").exists()
    with held(out / "pairforge.lock", "--out"):  # an unsharded command works in the folder
        shard = CliRunner().invoke(app, ["generate", str(recipe), "--out", str(out), "--shard", "2/2"])
        one_line_error(shard, "--shard", "in use by an unsharded command", "expected shards to run before it")
    assert not (out / "shards" / "2-of-2.sqlite").exists()
    assert pf.generate(recipe, out).failed == 2  # both ended: the merge runs (and asks the dead server again)


@pytest.mark.parametrize("kind", ["similarity", "reward-model"])
def test_shard_with_a_judge_that_sends_no_requests_is_one_line(tmp_path: Path, kind: str) -> None:
    answers = tmp_path / "responses.jsonl"
    answers.write_text("".join(json.dumps({"prompt": "p", "source": s, "response": s}) + "\n" for s in "ab"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"judge": {"kind": kind, "model": "m", "reference": "a"}}))
    result = CliRunner().invoke(app, ["judge", str(recipe), "--out", str(tmp_path / "out"), "--responses",
                                      str(answers), "--shard", "1/2"])
    one_line_error(result, "--shard", f"the {kind} judge sends no requests")


@pytest.mark.slow
def test_two_shards_at_once_then_the_unsharded_run_merges_without_asking(tmp_path: Path, server: LlamaServer) -> None:
    sources = [greedy(server.base_url), greedy(server.base_url, name="plain", endpoint="completions")]
    recipe = write_recipe(tmp_path, prompts(6), sources)
    out = tmp_path / "out"
    shards = [shard_cli(recipe, out, s) for s in ("1/2", "2/2")]
    for process in shards:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert "without --shard" in stderr and "shards/" in stderr
    assert not (out / "responses.parquet").exists() and not (out / "store.sqlite").exists()
    reference = pf.generate(recipe, tmp_path / "unsharded")  # the same recipe, one process
    server.stop()
    merged = run_cli("generate", str(recipe), "--out", str(out))
    assert merged.returncode == 0, merged.stderr
    frame = pl.read_parquet(out / "responses.parquet")
    assert frame.height == 6 * 2 and frame.select(KEY_COLUMNS).is_unique().all()
    assert frame["prompt_id"].value_counts()["count"].to_list() == [2] * 6
    summary = pf.generate(recipe, out)  # merged answers count as cached: nothing new, nothing failed
    assert summary.failed == 0 and {n: (t.cached, t.done) for n, t in summary.tallies.items()} == \
        {"served": (6, 0), "plain": (6, 0)}
    assert frame.equals(pl.read_parquet(reference.responses))  # sharded or not: the same rows


@pytest.mark.slow
def test_a_killed_shard_reasks_only_its_unanswered_prompts(tmp_path: Path, server: LlamaServer) -> None:
    proxy = FaultProxy(server.port, every=10**9)  # never a fault: counts the POSTs
    try:
        recipe = write_recipe(tmp_path, prompts(16), [greedy(proxy.base_url, max_new_tokens=24, concurrency=1)])
        out = tmp_path / "out"
        store = out / "shards" / "1-of-2.sqlite"
        total = Shard(1, 2).keep(prompts_from_file(tmp_path / "prompts.jsonl")).height
        process = shard_cli(recipe, out, "1/2")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and stored_rows(store) < 2:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        at_kill, asked = stored_rows(store), proxy.requests
        assert 1 <= at_kill < total, (at_kill, total)  # killed mid-way, or the rerun would prove nothing
        proxy.requests = 0
        again = shard_cli(recipe, out, "1/2")
        _, stderr = again.communicate(timeout=300)
        assert again.returncode == 0, stderr
        assert proxy.requests == total - at_kill, (proxy.requests, total, at_kill, asked)
        assert stored_rows(store) == total
    finally:
        proxy.close()


@pytest.mark.slow
def test_pairforge_run_merges_shard_stores_before_it_asks(tmp_path: Path, server: LlamaServer) -> None:
    proxy = FaultProxy(server.port, every=10**9)  # never a fault: counts the POSTs (run's preflight only GETs)
    try:
        recipe = write_recipe(tmp_path, prompts(4), [greedy(proxy.base_url)], run_dir=str(tmp_path / "run"))
        for shard in ("1/2", "2/2"):
            done = pf.generate(recipe, tmp_path / "run", shard=shard)
            assert done.failed == 0 and done.responses.parent == tmp_path / "run" / "shards"
        asked = proxy.requests
        result = run_cli("run", str(recipe), "--to", "generate")
        assert result.returncode == 0, result.stderr
        assert (asked, proxy.requests) == (4, 4)  # every answer came from the shards
    finally:
        proxy.close()
    frame = pl.read_parquet(tmp_path / "run" / "responses.parquet")
    assert frame.height == 4 and frame["prompt_id"].n_unique() == 4


def ids_in_both_shards(texts: list[str]) -> list[str]:
    """Prompts of which shard 1/2 and shard 2/2 each hold some (a test of two shards needs both to work)."""
    from pairforge.schema import prompt_ids, to_messages

    ids = prompt_ids(pl.Series([to_messages(t) for t in texts]))
    assert {Shard(1, 2).holds(i) for i in ids} == {True, False}, "pick other prompts"
    return texts


@pytest.mark.slow
def test_an_llm_judge_and_eval_split_into_shards_from_python(tmp_path: Path, server: LlamaServer) -> None:
    from pairforge.config import JudgeConfig, SourceConfig

    questions = ids_in_both_shards(["What is 2 + 2?", "Name a colour.", "Is ice cold?", "Say hi."])
    rows = [{"prompt": q, "source": s, "response": f"{s} says {i}"} for i, q in enumerate(questions)
            for s in ("x", "y")]
    answers = tmp_path / "responses.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name in ("x", "y"):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            [{"instruction": q, "output": f"{name} says {i}"} for i, q in enumerate(questions)]), encoding="utf-8")
    proxy = FaultProxy(server.port, every=10**9)  # never a fault: counts the POSTs
    try:
        llm = SourceConfig(backend="openai", model="smollm2", base_url=proxy.base_url, max_new_tokens=4)
        judge = JudgeConfig(kind="llm-pairwise", llm=llm)
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"judge": judge.model_dump(mode="json", exclude_unset=True)}))
        parts = [pf.judge(recipe, tmp_path / "run", responses=answers, shard=s) for s in ("1/2", "2/2")]
        assert sum(p.summary.comparisons for p in parts) == 4 and proxy.requests == 8  # both orders
        assert not (tmp_path / "run" / "responses.scored.parquet").exists()
        whole = pf.judge(recipe, tmp_path / "run", responses=answers)
        boards = [pf.evaluate({"x": tmp_path / "x.json"}, tmp_path / "y.json", judge=judge, out=tmp_path / "eval",
                              shard=s, bootstrap=50) for s in ("1/2", "2/2")]
        assert sum(b.prompts for b in boards) == 4 and proxy.requests == 16
        assert not (tmp_path / "eval" / "leaderboard.json").exists()
        board = pf.evaluate({"x": tmp_path / "x.json"}, tmp_path / "y.json", judge=judge, out=tmp_path / "eval",
                            bootstrap=50)
        assert proxy.requests == 16  # the unsharded calls merged every verdict: nothing asked again
    finally:
        proxy.close()
    assert whole.summary.failed_requests == 0 and pl.read_parquet(whole.judgments).height == 4
    assert board.prompts == 4 and board.judge_summary.failed_requests == 0 and board.judge_summary.comparisons == 4
    assert (tmp_path / "eval" / "leaderboard.json").exists()


@pytest.mark.slow
def test_revise_splits_into_shards_and_merges_without_a_request(tmp_path: Path, server: LlamaServer) -> None:
    questions = ids_in_both_shards(["What is 2 + 2?", "Name a colour.", "Is ice cold?", "Say hi."])
    answers = tmp_path / "responses.jsonl"
    answers.write_text("".join(json.dumps({"prompt": q, "source": "base", "response": f"Answer {i}."}) + "\n"
                               for i, q in enumerate(questions)), encoding="utf-8")
    proxy = FaultProxy(server.port, every=10**9)  # never a fault: counts the POSTs
    try:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({
            "sources": [{"name": "base", "backend": "file", "path": str(answers)}, greedy(proxy.base_url, name="ed")],
            "pairs": {"strategy": "revised", "revision": {"reviser": "ed", "original": "base"}}}))
        out = tmp_path / "run"
        parts = [pf.revise(recipe, out, responses=answers, shard=s) for s in ("1/2", "2/2")]
        assert sorted(p.tally.total for p in parts)[0] >= 1 and sum(p.exported for p in parts) == 4
        assert proxy.requests == 4 and not (out / "revisions.parquet").exists()
        whole = pf.revise(recipe, out, responses=answers)
        assert proxy.requests == 4 and (whole.tally.cached, whole.tally.done) == (4, 0)
    finally:
        proxy.close()
    assert pl.read_parquet(whole.revisions).height == 4


def test_a_huge_shard_count_is_one_line_not_a_file_name_too_long(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, prompts(2), [greedy("http://127.0.0.1:9/v1", max_retries=0)])
    huge = "1/" + "9" * 300  # a typo'd N: the shard's store and lock would be named after it
    result = CliRunner().invoke(app, ["generate", str(recipe), "--out", str(tmp_path / "out"), "--shard", huge])
    one_line_error(result, "--shard", "expected K/N")
    assert not (tmp_path / "out").exists()


def test_a_bad_row_in_a_shard_store_names_the_shard_and_stays_out_of_the_runs_store(tmp_path: Path) -> None:
    main = tmp_path / "store.sqlite"
    with opened(main, Shard(1, 2)) as shard:
        shard.put("gen:s:good:0:abc", "generation", {"text": "fine"})
        shard.put("gen:s:bad:0:abc", "generation", {"text": "hand-edited"})
    with sqlite3.connect(Shard(1, 2).store(main)) as db:
        db.execute("UPDATE results SET value = 'not json' WHERE key = 'gen:s:bad:0:abc'")
    for _ in range(2):  # the error must point where the fix is, and stay fixed once the run's store row is gone
        with pytest.raises(InputError, match=r"1-of-2\.sqlite.*not JSON"):
            with opened(main) as store:
                store.get(["gen:s:good:0:abc", "gen:s:bad:0:abc"])
    assert not main.exists() or sqlite3.connect(main).execute(
        "SELECT COUNT(*) FROM results WHERE key = 'gen:s:bad:0:abc'").fetchone() == (0,)


@pytest.mark.slow
def test_a_shard_run_after_an_unsharded_run_asks_nothing_it_answered(tmp_path: Path, server: LlamaServer) -> None:
    """Half a run done unsharded, then the rest handed to shards (or an array resubmitted after the merge): the
    shards must not pay again for answers the run's store already holds."""
    proxy = FaultProxy(server.port, every=10**9)  # never a fault: counts the POSTs
    try:
        recipe = write_recipe(tmp_path, prompts(6), [greedy(proxy.base_url, max_new_tokens=4)])
        out = tmp_path / "out"
        assert run_cli("generate", str(recipe), "--out", str(out)).returncode == 0
        asked = proxy.requests
        for k in (1, 2):
            assert run_cli("generate", str(recipe), "--out", str(out), "--shard", f"{k}/2").returncode == 0
        assert proxy.requests == asked  # every answer was already in store.sqlite
    finally:
        proxy.close()


def test_the_merge_stops_in_one_line_while_a_shard_still_runs(tmp_path: Path) -> None:
    """A merge started before the array is done (no `--dependency`) would ask a running shard's prompts a second
    time, paying twice; it stops in one line instead, and a shard killed earlier (its lock file left, not held) does
    not stop it."""
    recipe = write_recipe(tmp_path, prompts(2), [greedy("http://127.0.0.1:9/v1", max_retries=0)])
    out = tmp_path / "out"
    with opened(out / "store.sqlite", Shard(1, 2)) as shard:
        shard.put("gen:s:a:0:abc", "generation", {"text": "a"})
    with held(Shard(1, 2).lock(out / "store.sqlite"), "--shard"):  # shard 1/2 still answering
        result = CliRunner().invoke(app, ["generate", str(recipe), "--out", str(out)])
    one_line_error(result, "1-of-2", "still running")
    assert not (out / "store.sqlite").exists() and not (out / "responses.parquet").exists()
    Shard(1, 2).lock(out / "store.sqlite").write_text("pid 999999\n")  # what kill -9 leaves: a lock nobody holds
    with opened(out / "store.sqlite") as store:
        assert store.get(["gen:s:a:0:abc"])["gen:s:a:0:abc"].value == {"text": "a"}
