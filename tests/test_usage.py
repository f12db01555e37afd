"""Tokens and cost: every request's prompt and completion tokens in the store (from a real llama.cpp server's usage,
from the tokenizer of a local model), a source's `price`, the dry runs' estimate and the summaries after a run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import free_port

import pairforge as pf
from conftest import one_line_error, write_jsonl
from pairforge.generation.answers import generate
from pairforge.recipe import load_recipe
from pairforge.requests.store import Store
from pairforge.requests.usage import UsageSummary

PRICE = {"input": 2.0, "output": 10.0}  # USD per million tokens
PROMPTS = ["Name a color.", "Write one short sentence about the number seven and why people like it."]


def pairforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "250"})  # a table's rows on one line each


def write_recipe(folder: Path, sources: list[dict[str, Any]], **sections: Any) -> Path:
    write_jsonl(folder / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": "prompts.jsonl", "sources": sources, **sections}), encoding="utf-8")
    return recipe


def local(model: Path, **settings: Any) -> dict[str, Any]:
    return {"name": "tiny", "model": str(model), "max_new_tokens": 2, "temperature": 0, "price": PRICE, **settings}


def stored(out: Path) -> list[dict[str, Any]]:
    """Every stored answer's value, in prompt order (the keys end with the prompt id's position in the file)."""
    store = Store(out / "store.sqlite")
    try:
        keys = [key for (key,) in store.db.execute("SELECT key FROM results")]
        return [entry.value for entry in store.get(keys).values()]  # type: ignore[misc]
    finally:
        store.close()


def dollars(prompt: int, completion: int) -> float:
    return (prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6


def test_a_local_models_prompt_tokens_are_its_tokenizers_count_and_old_rows_still_read(
        tmp_path: Path, tiny_model_dir: Path, embedded_tokenizer: Any) -> None:
    recipe = write_recipe(tmp_path, [local(tiny_model_dir)])
    out = tmp_path / "out"
    result = generate(load_recipe(recipe), out, show_progress=False)
    expected = sorted(len(embedded_tokenizer.apply_chat_template([{"role": "user", "content": p}], return_dict=True,
                                                                 add_generation_prompt=True)["input_ids"])
                      for p in PROMPTS)
    values = stored(out)
    # each row's own prompt, not the padded batch width (the two prompts differ in length)
    assert sorted(v["prompt_tokens"] for v in values) == expected and expected[0] < expected[1]
    completion = sum(v["tokens"] for v in values)
    usage = result.usage["tiny"]
    assert (usage.answers, usage.prompt_tokens, usage.completion_tokens) == (2, sum(expected), completion)
    assert usage.cost == pytest.approx(dollars(sum(expected), completion))
    assert UsageSummary.read(out / "generate.summary.json").sources["tiny"] == usage

    # the estimate counts the same prompts with the same tokenizer; completions at max_new_tokens
    (line,) = pf.estimate(recipe).lines
    assert (line.stage, line.source, line.requests, line.prompt_tokens, line.completion_tokens, line.counted) == \
        ("generate", "tiny", 2, sum(expected), 4, True)
    assert line.cost == pytest.approx(dollars(sum(expected), 4))

    # a store written before prompt tokens were recorded: its rows read, their prompt tokens are unknown
    with sqlite3.connect(out / "store.sqlite") as db:
        db.execute("UPDATE results SET value = json_remove(value, '$.prompt_tokens')")
    answers = (out / "responses.parquet").read_bytes()
    again = pairforge("generate", str(recipe), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "0 + 2 answers unknown" in again.stderr and "cached ones included" in again.stderr
    assert (out / "responses.parquet").read_bytes() == answers
    old = UsageSummary.read(out / "generate.summary.json").sources["tiny"]
    assert (old.answers, old.prompt_tokens, old.unknown, old.completion_tokens) == (2, 0, 2, completion)


@pytest.mark.slow
def test_an_api_sources_tokens_are_the_servers_usage(tmp_path: Path, llama_server: Any) -> None:
    source = {"name": "served", "backend": "openai", "model": "smollm2", "base_url": llama_server.base_url,
              "temperature": 0, "max_new_tokens": 4, "price": PRICE}
    recipe = write_recipe(tmp_path, [source])
    result = generate(load_recipe(recipe), tmp_path / "out", show_progress=False)
    usage = []
    for prompt in PROMPTS:  # the same request over bare HTTP: what the server says it used
        body = json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"{llama_server.base_url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            usage.append(json.loads(answer.read())["usage"])
    values = stored(tmp_path / "out")
    assert sorted((v["prompt_tokens"], v["tokens"]) for v in values) == \
        sorted((u["prompt_tokens"], u["completion_tokens"]) for u in usage)
    spent = result.usage["served"]
    prompt, completion = sum(u["prompt_tokens"] for u in usage), sum(u["completion_tokens"] for u in usage)
    assert (spent.prompt_tokens, spent.completion_tokens) == (prompt, completion)
    assert spent.cost == pytest.approx(dollars(prompt, completion))
    # before a run, a server's prompts are estimated (characters / 4), and said to be
    (line,) = pf.estimate(recipe).lines
    assert not line.counted and line.completion_tokens == 8


def test_run_dry_run_estimates_every_stage_that_asks_a_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    write_jsonl(tmp_path / "teacher.jsonl", [{"prompt": p, "response": "An answer of some length."} for p in PROMPTS])
    judge = {"kind": "llm-pairwise", "llm": local(tiny_model_dir, name="judge", max_new_tokens=1)}
    recipe = write_recipe(tmp_path, [{"name": "teacher", "backend": "file", "path": "teacher.jsonl"},
                                     local(tiny_model_dir)], run_dir="run", judge=judge,
                          pairs={"rank": "teacher > tiny"})
    result = pairforge("run", str(recipe), "--dry-run")
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip() + "/" + line.split("│")[2].strip(): line
            for line in result.stderr.splitlines() if line.count("│") > 5}
    assert {"generate/tiny", "judge/judge", "total/"} <= set(rows), result.stderr
    assert "cost = tokens x price / 1e6" in result.stderr
    estimate = pf.estimate(recipe)  # the same numbers from Python
    assert [(x.stage, x.requests) for x in estimate.lines] == [("generate", 2), ("judge", 4)]  # both orders
    for line in estimate.lines:
        assert line.cost == pytest.approx(dollars(line.prompt_tokens, line.completion_tokens))
        cells = [c.strip() for c in rows[f"{line.stage}/{line.source}"].split("│")[3:7]]
        assert cells == [str(line.requests), str(line.prompt_tokens), str(line.completion_tokens),
                         f"${line.cost:.4f}"]
    assert estimate.cost == pytest.approx(sum(x.cost for x in estimate.lines))  # type: ignore[misc]
    assert not (tmp_path / "run").exists()


def test_generate_dry_run_estimates_and_writes_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path, [local(tiny_model_dir), local(tiny_model_dir, name="cheap", price=None)])
    result = pairforge("generate", str(recipe), "--out", str(tmp_path / "out"), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "│ generate" in line]
    assert len(lines) == 2 and "$" in lines[0] and lines[1].rstrip(" │").endswith("-")  # no price: no cost
    assert "nothing was asked or written" in result.stderr and not (tmp_path / "out").exists()


def test_an_unreachable_server_stops_generate_dry_run_in_one_line(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    recipe = write_recipe(tmp_path, [{"name": "served", "backend": "openai", "model": "m", "base_url": closed}])
    one_line_error(pairforge("generate", str(recipe), "--out", str(tmp_path / "out"), "--dry-run"),
                   "source 'served'", closed, "does not answer")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_judge_server_stops_run_dry_run_in_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    judge = {"kind": "llm-pairwise", "llm": {"backend": "openai", "model": "m", "base_url": closed}}
    recipe = write_recipe(tmp_path, [local(tiny_model_dir), local(tiny_model_dir, name="other")], run_dir="run",
                          judge=judge, pairs={"rank": "tiny > other"})
    one_line_error(pairforge("run", str(recipe), "--dry-run"), "source 'judge'", closed, "does not answer")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("price, field", [
    ({"input": -1, "output": 1}, "sources.0.price.input"),
    ({"input": "cheap", "output": 1}, "sources.0.price.input"),
    ({"input": 1}, "sources.0.price.output"),
    ({"input": 1, "output": 1, "cached": 0.5}, "sources.0.price.cached"),
])
def test_a_bad_price_is_one_line_naming_the_field(tmp_path: Path, price: dict[str, Any], field: str) -> None:
    recipe = write_recipe(tmp_path, [{"name": "a", "price": price}])
    one_line_error(pairforge("generate", str(recipe), "--out", str(tmp_path / "out"), "--dry-run"), field)


def test_the_judges_tokens_and_the_reports_cost_table(tmp_path: Path, tiny_model_dir: Path) -> None:
    judge = {"kind": "llm-pairwise", "llm": local(tiny_model_dir, name="judge", max_new_tokens=1)}
    recipe = write_recipe(tmp_path, [local(tiny_model_dir), local(tiny_model_dir, name="other", price=None)],
                          judge=judge)
    out = tmp_path / "out"
    generated = pf.generate(recipe, out)
    judged = pf.judge(recipe, out).summary.usage
    assert judged is not None and judged.answers == 4  # 2 prompts, one pair of sources, both orders
    assert judged.cost == pytest.approx(dollars(judged.prompt_tokens, judged.completion_tokens))
    pf.report(out, tmp_path / "report.html")
    page = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Cost" in page and "cached ones included" in page
    rows = {cells[1].strip(): [c.strip() for c in cells[2:6]] for cells in
            (line.split("|") for line in page.splitlines()) if len(cells) > 6}
    tiny, other = generated.usage["tiny"], generated.usage["other"]
    assert rows["generate: tiny"] == [str(tiny.answers), str(tiny.prompt_tokens), str(tiny.completion_tokens),
                                      f"${tiny.cost:.4f}"]
    assert rows["generate: other"][3] == "-"  # no price, no cost
    assert rows["judge"][1:3] == [str(judged.prompt_tokens), str(judged.completion_tokens)]
    assert rows["total"][1] == str(tiny.prompt_tokens + other.prompt_tokens + judged.prompt_tokens)


def test_a_new_price_redoes_no_stage(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pairforge import pipeline

    def fingerprints(price: dict[str, float] | None) -> dict[str, str]:
        judge = {"kind": "llm-pairwise", "llm": local(tiny_model_dir, name="judge", price=price)}
        recipe = write_recipe(tmp_path, [local(tiny_model_dir, price=price), local(tiny_model_dir, name="other")],
                              run_dir="run", judge=judge, pairs={"rank": "tiny > other"}, eval={"judge": judge})
        return {unit.name: unit.fingerprint() for unit in pipeline.plan(load_recipe(recipe), tmp_path / "run").stages}

    assert "eval" in fingerprints(None)  # eval's LLM judge's price counts no more than the judge stage's
    assert fingerprints(PRICE) == fingerprints({"input": 5.0, "output": 50.0}) == fingerprints(None)


def test_generate_dry_run_of_a_shard_estimates_that_shard(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A shard's dry run is one node's bill: the shards' estimates add up to the whole run's, never N times it."""
    recipe = write_recipe(tmp_path, [local(tiny_model_dir)])

    def requests(*shard: str) -> int:
        result = pairforge("generate", str(recipe), "--out", str(tmp_path / "out"), "--dry-run", *shard)
        assert result.returncode == 0, result.stderr
        line = next(line for line in result.stderr.splitlines() if "│ generate" in line)
        return int(line.split("│")[3])

    assert requests("--shard", "1/2") + requests("--shard", "2/2") == requests() == len(PROMPTS)
    one_line_error(pairforge("generate", str(recipe), "--out", str(tmp_path / "out"), "--dry-run", "--shard", "0/2"),
                   "--shard", "expected K/N")
