"""Generation: backends, the crash-safe store, resume after kill -9, retries against a misbehaving server.

The HTTP tests talk to a real llama.cpp server serving the embedded SmolLM2 GGUF (no mock), through a
fault-injecting proxy where the test is about failures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from servers import FaultProxy

from pairforge.config import SourceConfig
from pairforge.errors import InputError
from pairforge.generation.answers import generate, source_requests
from pairforge.recipe import load_recipe
from pairforge.requests.backends.base import Request
from pairforge.requests.store import Store


def write_recipe(folder: Path, prompts: list[str], sources: list[dict[str, Any]], **extra: Any) -> Path:
    prompt_file = folder / "prompts.jsonl"
    prompt_file.write_text("".join(f'{{"prompt": "{p}"}}\n' for p in prompts), encoding="utf-8")
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": "prompts.jsonl", "sources": sources, **extra}), encoding="utf-8")
    return recipe


def stored_rows(db: Path) -> int:
    """Rows in a run's store while another process writes it (0 until the file and its table exist)."""
    try:
        return sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0] if db.exists() else 0
    except sqlite3.OperationalError:
        return 0


def prompts(n: int) -> list[str]:
    return [f"Write one sentence about the number {i}." for i in range(n)]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


class Collect:
    def __init__(self) -> None:
        self.done: dict[str, Any] = {}
        self.failures: dict[str, str] = {}
        self.retries = 0

    def completed(self, request: Request, completion: Any) -> None:
        self.done[request.key] = completion

    def failed(self, request: Request, reason: str) -> None:
        self.failures[request.key] = reason

    def retried(self, request: Request, reason: str) -> None:
        self.retries += 1


def test_store_keeps_the_first_success_and_never_a_duplicate(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.sqlite")
    store.put_failure("k1", "generation", "RateLimitError: slow down")
    assert not store.get(["k1"])["k1"].ok
    store.put("k1", "generation", {"text": "first"})
    store.put("k1", "generation", {"text": "second"})
    store.put_failure("k1", "generation", "late failure")
    entry = store.get(["k1", "k2"])
    assert set(entry) == {"k1"}
    assert entry["k1"].value == {"text": "first"} and entry["k1"].error is None and entry["k1"].attempts == 2
    store.close()
    rows = sqlite3.connect(tmp_path / "store.sqlite").execute("SELECT COUNT(*) FROM results").fetchone()
    assert rows == (1,)


def test_batched_greedy_generation_equals_one_at_a_time(tiny_model_dir: Path) -> None:
    """Left padding done right: a prompt's answer does not depend on what it was batched with."""
    from pairforge.requests.backends.local import TransformersBackend

    texts = ["Hi.", "Tell me a long story about a dragon and a knight who meet.", "Why?", "List three fruits."]
    requests = [Request(f"k{i}", [{"role": "user", "content": t}]) for i, t in enumerate(texts)]
    answers = {}
    for batch_size in (1, 4):
        backend = TransformersBackend(SourceConfig(name="s", model=str(tiny_model_dir), temperature=0,
                                                   max_new_tokens=12, batch_size=batch_size))
        collect = Collect()
        backend.run(requests, collect)
        answers[batch_size] = {k: (c.text, c.finish_reason) for k, c in collect.done.items()}
    assert answers[1] == answers[4] and len(answers[1]) == 4
    assert all(reason == "length" for _, reason in answers[1].values())  # a random model does not stop


@pytest.mark.slow
def test_embedded_model_stops_at_stop_strings_and_eos(pairforge_cache: Path) -> None:
    from pairforge.requests.backends.local import TransformersBackend

    backend = TransformersBackend(SourceConfig(name="s", temperature=0, max_new_tokens=40, stop=[","]))
    collect = Collect()
    backend.run([Request("a", [{"role": "user", "content": "Name three colors, separated by commas."}]),
                 Request("b", [{"role": "user", "content": "Say only: OK"}])], collect)
    assert "," not in collect.done["a"].text and collect.done["a"].finish_reason == "stop"
    assert collect.done["b"].finish_reason == "stop" and "<|im_end|>" not in collect.done["b"].text


def test_generate_resumes_and_redoes_only_what_is_missing(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = {"name": "tiny", "model": str(tiny_model_dir), "temperature": 0.8, "max_new_tokens": 6}
    recipe = load_recipe(write_recipe(tmp_path, prompts(6), [source], samples_per_source=2))
    first = generate(recipe, tmp_path / "out", show_progress=False)
    assert first.exported == 12 and first.tallies["tiny"].done == 12
    exported = pl.read_parquet(first.responses)
    db = sqlite3.connect(tmp_path / "out" / "store.sqlite", isolation_level=None)
    db.execute("DELETE FROM results WHERE key IN (SELECT key FROM results LIMIT 5)")  # as if killed early
    db.close()
    again = generate(recipe, tmp_path / "out", show_progress=False)
    assert (again.tallies["tiny"].cached, again.tallies["tiny"].done) == (7, 5)
    frame = pl.read_parquet(again.responses)
    assert frame.height == 12 and frame.select("prompt_id", "source", "sample").is_unique().all()
    kept = exported.join(frame, on=["prompt_id", "sample"], suffix="_new")
    assert (kept["response"] == kept["response_new"]).sum() >= 7  # cached answers are not regenerated
    assert set(frame.columns) >= {"prompt_id", "prompt", "source", "sample", "response", "finish_reason"}


def test_a_changed_setting_is_a_new_answer_and_the_source_system_prompt_keeps_prompt_ids(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    source = {"name": "tiny", "model": str(tiny_model_dir), "temperature": 0, "max_new_tokens": 4}
    recipe = load_recipe(write_recipe(tmp_path, prompts(3), [source]))
    first = pl.read_parquet(generate(recipe, tmp_path / "out", show_progress=False).responses)
    recipe.sources[0].system = "You are terse."
    second = generate(recipe, tmp_path / "out", show_progress=False)
    assert second.tallies["tiny"].done == 3  # the system prompt changes the answers: not a cache hit
    recipe.sources[0].concurrency = 16  # does not change answers: a cache hit
    assert generate(recipe, tmp_path / "out", show_progress=False).tallies["tiny"].cached == 3
    assert sorted(pl.read_parquet(second.responses)["prompt_id"]) == sorted(first["prompt_id"])


def test_kill_9_mid_run_loses_nothing_and_duplicates_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = {"name": "tiny", "model": str(tiny_model_dir), "temperature": 0.7, "max_new_tokens": 24,
              "batch_size": 1}
    recipe = write_recipe(tmp_path, prompts(60), [source])
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "pairforge", "generate", str(recipe), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db_path = out / "store.sqlite"
    deadline = time.monotonic() + 300
    done_before = 0
    while time.monotonic() < deadline and process.poll() is None:
        done_before = stored_rows(db_path)
        if done_before >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 5 <= done_before < 60, "the run should be killed mid-way"
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    survived = db.execute("SELECT COUNT(*) FROM results WHERE value IS NOT NULL").fetchone()[0]
    db.close()
    result = run_cli("generate", str(recipe), "--out", str(out))
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(out / "responses.parquet")
    assert frame.height == 60 and frame["prompt_id"].n_unique() == 60
    assert frame["response"].str.len_chars().min() > 0
    rows = sqlite3.connect(db_path).execute("SELECT COUNT(*), SUM(attempts) FROM results").fetchone()
    assert rows == (60, 60), "every answer generated exactly once"
    assert survived >= done_before


def test_vllm_missing_is_one_clear_line(tmp_path: Path) -> None:
    if importlib.util.find_spec("vllm") is not None:  # a GPU extra; not on the CPU machines
        pytest.skip("vllm is installed here, so the message for a missing vllm cannot appear")
    recipe = write_recipe(tmp_path, prompts(1), [{"name": "big", "backend": "vllm", "model": "some/model"}])
    result = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "backend vllm needs the vllm package: pip install 'pairforge[vllm]'" in result.stderr


@pytest.mark.parametrize("sources, expected", [
    ([{"name": "a", "backend": "openai", "model": "m", "api_key_env": "PAIRFORGE_TEST_UNSET_KEY"}],
     "PAIRFORGE_TEST_UNSET_KEY (api_key_env) is not set"),
    ([{"name": "a"}, {"name": "a"}], "source name 'a' is used twice"),
    ([{"name": "a", "backend": "tgi"}], "sources.0.backend"),
    ([{"name": "a", "temperature": -1}], "sources.0.temperature"),
    # 'x:y' answering prompt 'q' would share the cache key of 'x' answering prompt 'y:q'
    ([{"name": "x"}, {"name": "x:y"}], "field 'sources.1.name': source name 'x:y' contains ':'"),
])
def test_bad_generation_recipes_are_one_line(tmp_path: Path, sources: list[dict[str, Any]], expected: str) -> None:
    recipe = write_recipe(tmp_path, prompts(1), sources)
    result = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "responses.parquet").exists()


def test_missing_prompt_field_names_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt here"}\n')
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("prompts: prompts.jsonl\nsources: [{name: a}]\n")
    result = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "prompts.jsonl line 2, field 'prompt'" in result.stderr


# --- against a real llama.cpp server ---------------------------------------------------------------------

def raw_completion(base_url: str, prompt: str, max_tokens: int) -> tuple[str, str]:
    """(text, finish_reason) of the server's greedy plain-text completion of `prompt`, asked over bare HTTP."""
    body = json.dumps({"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(f"{base_url}/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        choice = json.loads(answer.read())["choices"][0]
    return choice["text"], choice["finish_reason"]


def openai_source(base_url: str, **settings: Any) -> dict[str, Any]:
    return {"name": "served", "backend": "openai", "model": "smollm2", "base_url": base_url, "temperature": 0.7,
            "max_new_tokens": 16, **settings}


@pytest.mark.slow
def test_openai_backend_chat_and_completions_without_leaking_the_key(tmp_path: Path, llama_server: Any) -> None:
    secret = "sk-pairforge-test-secret-0123456789"
    sources = [openai_source(llama_server.base_url, api_key_env="PF_TEST_KEY"),
               openai_source(llama_server.base_url, name="plain", endpoint="completions", max_new_tokens=4,
                             temperature=0)]
    recipe = write_recipe(tmp_path, prompts(4), sources)
    result = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"), env={"PF_TEST_KEY": secret})
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(tmp_path / "out" / "responses.parquet")
    assert frame.height == 8 and set(frame["source"]) == {"served", "plain"}
    plain = frame.filter(pl.col("source") == "plain").sort("prompt")
    # the completions endpoint continues the prompt's own text, no chat template: what the server's
    # /v1/completions gives for the bare prompt, greedily, cut at 4 tokens
    expected = [raw_completion(llama_server.base_url, p, max_tokens=4) for p in plain["prompt"]]
    assert list(zip(plain["response"], plain["finish_reason"], strict=True)) == expected
    assert frame.filter(pl.col("source") == "served")["response"].str.len_chars().min() > 0
    for path in [*(tmp_path / "out").iterdir(), tmp_path / "recipe.yaml"]:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in result.stderr + result.stdout


@pytest.mark.slow
def test_every_row_completes_through_429_500_drops_and_garbage(tmp_path: Path, llama_server: Any) -> None:
    proxy = FaultProxy(llama_server.port, every=3)
    try:
        recipe = load_recipe(write_recipe(tmp_path, prompts(12), [openai_source(proxy.base_url, max_retries=10)]))
        result = generate(recipe, tmp_path / "out", show_progress=False)
    finally:
        proxy.close()
    tally = result.tallies["served"]
    injected = sum(n for fault, n in proxy.served.items() if fault != "ok")
    assert result.exported == 12 and tally.failed == 0
    assert set(proxy.served) - {"ok"} == set(FaultProxy.FAULTS), proxy.served  # every fault kind happened
    assert tally.retries == injected, (tally.retries, proxy.served)


@pytest.mark.slow
def test_failures_are_stored_with_their_reason_and_retried_on_request(tmp_path: Path, llama_server: Any) -> None:
    from servers import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    recipe = write_recipe(tmp_path, prompts(3), [openai_source(dead, max_retries=1)])
    failed = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
    assert failed.returncode == 1 and "3 requests failed (APIConnectionError: 3)" in failed.stderr
    assert pl.read_parquet(tmp_path / "out" / "responses.parquet").height == 0  # never exported as empty answers
    store = sqlite3.connect(tmp_path / "out" / "store.sqlite")
    errors = store.execute("SELECT error, attempts FROM results").fetchall()
    assert len(errors) == 3 and all(e.startswith("APIConnectionError") and a == 1 for e, a in errors)
    recipe.write_text(recipe.read_text().replace(dead, llama_server.base_url))
    not_retried = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
    assert not_retried.returncode == 1  # failures wait for --retry-failed
    retried = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"), "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert pl.read_parquet(tmp_path / "out" / "responses.parquet").height == 3


@pytest.mark.slow
def test_server_killed_and_restarted_mid_run(tmp_path: Path, pairforge_cache: Path) -> None:
    from servers import LlamaServer

    from pairforge.models import embedded_gguf

    server = LlamaServer(embedded_gguf())
    server.start()
    recipe = write_recipe(tmp_path, prompts(16), [openai_source(server.base_url, max_retries=12, concurrency=2)])
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "pairforge", "generate", str(recipe), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and stored_rows(out / "store.sqlite") < 4:
            time.sleep(0.1)
        server.stop()
        at_kill = stored_rows(out / "store.sqlite")  # rows stored once the server is gone: none can be added now
        time.sleep(2)
        server.start()
        _, stderr = process.communicate(timeout=300)
    finally:
        server.stop()
    assert 4 <= at_kill < 16, f"the server should be killed mid-run ({at_kill} of 16 answers stored)"
    assert process.returncode == 0, stderr
    frame = pl.read_parquet(out / "responses.parquet")
    assert frame.height == 16 and frame["prompt_id"].n_unique() == 16
    assert sqlite3.connect(out / "store.sqlite").execute("SELECT COUNT(*) FROM results").fetchone() == (16,)


def test_local_first_token_logprobs_are_the_models_own(tiny_model_dir: Path) -> None:
    """What the LLM judge reads from the transformers backend: log-softmax of the first answer position."""
    import torch

    from pairforge.requests.backends.local import TransformersBackend

    backend = TransformersBackend(SourceConfig(name="j", model=str(tiny_model_dir), temperature=0, max_new_tokens=2))
    messages = [{"role": "user", "content": "Answer A or B."}]
    collect = Collect()
    backend.run([Request("k", messages, top_logprobs=5), Request("short", [{"role": "user", "content": "Hi"}])],
                collect)
    got = collect.done["k"].first_token_logprobs
    ids = torch.tensor([backend._encode(messages)])
    with torch.no_grad():
        expected = torch.log_softmax(backend.model(ids).logits[0, -1].float(), dim=-1).topk(5)
    want = {backend.tokenizer.decode([i]): v for i, v in zip(expected.indices.tolist(), expected.values.tolist(),
                                                              strict=True)}
    assert got.keys() == want.keys()
    assert all(abs(got[k] - want[k]) < 1e-4 for k in want)


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.3, 1.0), (1.0, 0.8)])
def test_the_local_sampler_draws_from_the_tempered_nucleus_distribution(temperature, top_p):
    """The transformers backend's sampler (one uniform draw per row against the cumulative distribution)
    must give exactly softmax(logits / T) within the top_p nucleus: frequencies over 200k draws."""
    import torch

    from pairforge.requests.backends.local import InverseCdfSampler

    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    probs = torch.softmax(logits / temperature, dim=-1)
    order = probs.argsort(descending=True)
    kept = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for i in order.tolist():  # the smallest set of most likely tokens whose mass reaches top_p
        kept[i] = True
        mass += float(probs[i])
        if mass >= top_p:
            break
    expected = torch.where(kept, probs, 0.0)
    expected /= expected.sum()
    torch.manual_seed(0)
    n = 200_000
    picked = InverseCdfSampler(temperature, top_p)(torch.zeros(n, 1), logits.repeat(n, 1)).argmax(-1)
    frequencies = torch.bincount(picked, minlength=5).float() / n
    assert torch.allclose(frequencies, expected, atol=0.004), (frequencies, expected)
    assert (frequencies[~kept] == 0).all()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def file_source_recipe(folder: Path, prompt_rows: list[dict[str, Any]], ref_rows: list[dict[str, Any]]) -> Path:
    """Prompts and a `backend: file` source, each with the ids (or none) a test gives."""
    write_jsonl(folder / "ref.jsonl", ref_rows)
    write_jsonl(folder / "other.jsonl", [{"prompt": r["prompt"], "response": "x"} for r in prompt_rows])
    recipe = write_recipe(folder, [], [{"name": "ref", "backend": "file", "path": "ref.jsonl"},
                                       {"name": "other", "backend": "file", "path": "other.jsonl"}],
                          pairs={"rank": "ref > other"})
    write_jsonl(folder / "prompts.jsonl", prompt_rows)
    return recipe


def test_a_file_source_without_ids_answers_the_prompts_that_carry_their_own(tmp_path: Path) -> None:
    recipe = file_source_recipe(tmp_path, [{"prompt": "A?", "prompt_id": "k"}, {"prompt": "B?", "prompt_id": "k2"}],
                                [{"prompt": "B?", "response": "b"}, {"prompt": "A?", "response": "a"}])
    frame = pl.read_parquet(generate(load_recipe(recipe), tmp_path / "out", show_progress=False).responses)
    ref = frame.filter(pl.col("source") == "ref").select("prompt_id", "prompt", "response").rows()
    assert ref == [("k", "A?", "a"), ("k2", "B?", "b")]  # matched by text, under the prompts' own ids


def test_a_file_source_whose_ids_name_other_prompts_is_refused_in_the_dry_run(tmp_path: Path) -> None:
    recipe = file_source_recipe(tmp_path, [{"prompt": "A?", "prompt_id": "k"}, {"prompt": "B?", "prompt_id": "k2"}],
                                [{"prompt": "A?", "response": "a", "prompt_id": "k2"},
                                 {"prompt": "B?", "response": "b", "prompt_id": "k"}])
    result = run_cli("run", str(recipe), "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert all(s in result.stderr for s in ("ref.jsonl line 1", "'k2'", "'A?'", "'B?'", "prompts.jsonl"))
    with pytest.raises(InputError, match="paired across prompts"):  # the generate stage alone refuses it too
        generate(load_recipe(recipe), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out" / "responses.parquet").exists()


def test_request_keys_and_seeds_of_valid_recipes_stay_as_they_were() -> None:
    """Cached answers and sampling seeds derive from these keys: refusing ':' in source names must not move them."""
    source = SourceConfig(name="api", backend="openai", model="m", base_url="http://h", api_key_env="K")
    requests = source_requests(source, pl.DataFrame({"prompt_id": ["alpaca:12"], "prompt": ["Hi"]}), 2)
    assert [(r.key, r.seed) for r in requests] == [("gen:api:alpaca:12:0:edd898f9aaf2", 25250609),
                                                   ("gen:api:alpaca:12:1:edd898f9aaf2", 302756795)]
