"""User-facing options no other test touches: `pairs build` flags, `rank` before `judge`, the judge's prompt
sample / retries / reference, `generate --source`, file sources, final 4xx answers, `eval` names and judges,
eval settings in a recipe, a model without a chat template, and the vLLM backend (where vllm is installed).

Each test fails when the option it names stops working: each was checked once against a copy of the code with
that option broken.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from servers import FaultProxy, StatusServer, free_port
from typer.testing import CliRunner

from conftest import SAMPLE, answer_failed_judge_requests, one_line_error, write_jsonl
from pairforge.cli import app
from pairforge.generation.answers import generate
from pairforge.judging.scoring import judge
from pairforge.recipe import load_recipe


def cli(*args: Any) -> Any:
    """`pairforge ARGS` in this process (fast: for commands that load no model)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def run_cli(*args: Any) -> subprocess.CompletedProcess[str]:
    """`pairforge ARGS` as a user runs it: its own process, exit code and stderr."""
    return subprocess.run([sys.executable, "-m", "pairforge", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def write_recipe(path: Path, **sections: Any) -> Path:
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


def long_rows(answers: dict[str, list[str]], prompts: list[str], **extra: dict[tuple[str, int], Any]) -> list[dict]:
    """Long-format rows: one per (source, prompt); `extra` sets a field on chosen (source, prompt index) rows."""
    rows = []
    for source, texts in answers.items():
        for i, prompt in enumerate(prompts):
            row = {"prompt": prompt, "source": source, "response": texts[i]}
            for field, where in extra.items():
                if (source, i) in where:
                    row[field] = where[(source, i)]
            rows.append(row)
    return rows


PROMPTS = ["Name the capital of France.", "How many legs does a spider have?", "What colour is a clear sky?"]


def build(tmp_path: Path, rows: list[dict[str, Any]], *flags: Any, out: str = "pairs.parquet") -> tuple[Any, Path]:
    answers = write_jsonl(tmp_path / "answers.jsonl", rows)
    result = cli("pairs", "build", answers, "--rank", "a > b", "--out", tmp_path / out, *flags)
    return result, tmp_path / out


def summary_of(out: Path) -> dict[str, Any]:
    return json.loads(out.with_name(f"{out.stem}.summary.json").read_text())


def prompts_of(pairs: Path) -> list[str]:
    frame = pl.read_parquet(pairs)
    return [turns[-1]["content"] for turns in frame["prompt"].to_list()]


# --- pairs build ---------------------------------------------------------------------------------------------

def test_columns_read_a_wide_file_one_source_per_column(tmp_path: Path) -> None:
    rows = [{"instruction": PROMPTS[0], "out_big": "Paris is the capital of France.", "out_small": "Maybe Lyon?"},
            {"instruction": PROMPTS[1], "out_big": "A spider has eight legs.", "out_small": None},
            {"instruction": PROMPTS[2], "out_big": "A clear daytime sky is blue.", "out_small": "Green, I think."}]
    wide = write_jsonl(tmp_path / "wide.jsonl", rows)
    out = tmp_path / "pairs.parquet"
    result = cli("pairs", "build", wide, "--columns", "big=out_big,small=out_small", "--rank", "big > small",
                 "--out", out)
    assert result.exit_code == 0, result.output
    pairs = pl.read_parquet(out)
    got = {(r["prompt"][-1]["content"], r["chosen"][-1]["content"], r["rejected"][-1]["content"], r["pair_type"])
           for r in pairs.to_dicts()}
    assert got == {(PROMPTS[0], "Paris is the capital of France.", "Maybe Lyon?", "big>small"),
                   (PROMPTS[2], "A clear daytime sky is blue.", "Green, I think.", "big>small")}
    summary = summary_of(out)
    assert summary["inputs"][0]["format"] == "wide" and summary["sources"] == {"big": 3, "small": 2}
    assert summary["dropped_prompts"]["only one source left"] == 1  # small did not answer the spider prompt

    missing = cli("pairs", "build", wide, "--columns", "big=out_big,small=out_tiny", "--rank", "big > small",
                  "--out", tmp_path / "other.parquet")
    one_line_error(missing, "--columns names column 'out_tiny' for source 'small'")


def test_length_ratio_keeps_pairs_inside_the_bounds(tmp_path: Path) -> None:
    a = ["one two three four five six seven eight nine ten eleven twelve", "alpha beta gamma delta epsilon zeta",
         "red green blue"]
    b = ["uno dos tres", "north south east west", "sun moon star planet comet nebula"]  # ratios 4, 1.5, 0.5
    everything, out = build(tmp_path, long_rows({"a": a, "b": b}, PROMPTS))
    assert everything.exit_code == 0, everything.output
    assert pl.read_parquet(out).height == 3
    bounded, out = build(tmp_path, long_rows({"a": a, "b": b}, PROMPTS), "--length-ratio", "0.8,2",
                         out="bounded.parquet")
    assert bounded.exit_code == 0, bounded.output
    assert prompts_of(out) == [PROMPTS[1]]
    assert summary_of(out)["dropped_pairs"] == {"length ratio outside [0.8, 2.0]": {"a>b": 2}}
    for bad, message in (("2,1", "expected 0 < low <= high"), ("2", "expected 'low,high'"),
                         ("a,b", "expected two numbers 'low,high'")):
        one_line_error(build(tmp_path, long_rows({"a": a, "b": b}, PROMPTS), "--length-ratio", bad,
                             out="bad.parquet")[0], message)
    assert not (tmp_path / "bad.parquet").exists()


def test_near_duplicate_threshold_and_off(tmp_path: Path) -> None:
    a = ["Paris is the capital of France.", "Water boils at one hundred degrees Celsius at sea level.",
         "A clear sky looks blue because air scatters blue light most."]
    b = ["The capital of France is Paris.",  # the same words in another order: Jaccard 1, not identical
         "Water boils at one hundred degrees Celsius.",  # 7 of 9 words shared: Jaccard 0.78
         "Grey."]
    rows = long_rows({"a": a, "b": b}, PROMPTS)
    default, out = build(tmp_path, rows)
    assert default.exit_code == 0, default.output
    assert prompts_of(out) == PROMPTS[1:]
    assert summary_of(out)["dropped_pairs"] == {"near-duplicate (Jaccard >= 0.9)": {"a>b": 1}}
    stricter, out = build(tmp_path, rows, "--near-duplicate", "0.7", out="strict.parquet")
    assert stricter.exit_code == 0, stricter.output
    assert prompts_of(out) == PROMPTS[2:]
    assert summary_of(out)["dropped_pairs"] == {"near-duplicate (Jaccard >= 0.7)": {"a>b": 2}}
    off, out = build(tmp_path, rows, "--near-duplicate", "off", out="off.parquet")
    assert off.exit_code == 0, off.output
    assert prompts_of(out) == PROMPTS and summary_of(out)["dropped_pairs"] == {}
    one_line_error(build(tmp_path, rows, "--near-duplicate", "most", out="bad.parquet")[0], "--near-duplicate",
                   "expected a number in [0, 1] or 'off', found 'most'")


def test_keep_truncated_keeps_answers_cut_at_the_length_limit(tmp_path: Path) -> None:
    rows = long_rows({"a": ["Paris, the capital of", "Eight legs.", "Blue."], "b": ["Rome.", "Six.", "Green."]},
                     PROMPTS, finish_reason={("a", 0): "length", ("a", 1): "stop", ("b", 0): "stop"})
    default, out = build(tmp_path, rows)
    assert default.exit_code == 0, default.output
    assert prompts_of(out) == PROMPTS[1:]
    summary = summary_of(out)
    assert summary["dropped_answers"] == {"truncated (finish_reason=length)": 1}
    assert summary["dropped_prompts"]["only one source left"] == 1
    kept, out = build(tmp_path, rows, "--keep-truncated", out="kept.parquet")
    assert kept.exit_code == 0, kept.output
    assert prompts_of(out) == PROMPTS and summary_of(out)["dropped_answers"] == {}


def test_no_role_marker_filter_keeps_answers_with_chat_markers(tmp_path: Path) -> None:
    leaked = ["Paris.<|im_end|>\n<|im_start|>user", "Eight.\nAssistant: anything else?", "Blue."]
    rows = long_rows({"a": leaked, "b": ["Rome.", "Six.", "Green."]}, PROMPTS)
    default, out = build(tmp_path, rows)
    assert default.exit_code == 0, default.output
    assert prompts_of(out) == PROMPTS[2:]
    assert summary_of(out)["dropped_answers"] == {"leaked role marker": 2}
    kept, out = build(tmp_path, rows, "--no-role-marker-filter", out="kept.parquet")
    assert kept.exit_code == 0, kept.output
    assert prompts_of(out) == PROMPTS and summary_of(out)["dropped_answers"] == {}
    chosen = [turns[-1]["content"] for turns in pl.read_parquet(out)["chosen"].to_list()]
    assert chosen == leaked  # kept as they are


def test_jsonl_output_with_its_eval_split_and_a_bad_suffix(tmp_path: Path) -> None:
    files = [SAMPLE / f"{n}.json" for n in ("strong", "medium", "weak")]
    out = tmp_path / "pairs.jsonl"
    result = cli("pairs", "build", *files, "--rank", "strong > medium > weak", "--eval-fraction", "0.3",
                 "--out", out)
    assert result.exit_code == 0, result.output
    summary = summary_of(out)
    assert summary["outputs"] == {"train": str(out), "eval": str(tmp_path / "pairs.eval.jsonl"),
                                  "summary": str(tmp_path / "pairs.summary.json")}
    splits = {}
    for name, path in (("train", out), ("eval", tmp_path / "pairs.eval.jsonl")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]  # one JSON per line
        assert len(records) == sum(summary["pairs"][name].values()) > 0
        assert all(r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == "assistant" for r in records)
        assert all(r["chosen_source"] + ">" + r["rejected_source"] == r["pair_type"] for r in records)
        splits[name] = {r["prompt_id"] for r in records}
    assert not splits["train"] & splits["eval"]  # held out by prompt

    bad = cli("pairs", "build", *files, "--rank", "strong > weak", "--out", tmp_path / "pairs.csv")
    one_line_error(bad, "--out", "pairs.csv", "expected a name ending in .parquet or .jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.eval.jsonl", "pairs.jsonl", "pairs.summary.json"]


def test_rank_and_rank_from_together_are_refused(tmp_path: Path) -> None:
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({"rank": "strong > weak", "confidence": 0.95}))
    files = [SAMPLE / "strong.json", SAMPLE / "weak.json"]
    alone = cli("pairs", "build", *files, "--rank-from", ranking, "--out", tmp_path / "from.parquet")
    assert alone.exit_code == 0, alone.output  # the ranking file itself is fine
    both = cli("pairs", "build", *files, "--rank", "strong > weak", "--rank-from", ranking, "--out",
               tmp_path / "both.parquet")
    one_line_error(both, "give either `rank` or `rank_from`, not both")
    recipe = write_recipe(tmp_path / "recipe.yaml", pairs={"inputs": [str(f) for f in files], "rank": "strong > weak",
                                                            "rank_from": str(ranking),
                                                            "out": str(tmp_path / "recipe.parquet")})
    one_line_error(cli("pairs", "build", "--config", recipe), "give either `rank` or `rank_from`, not both")
    assert not (tmp_path / "both.parquet").exists() and not (tmp_path / "recipe.parquet").exists()


@pytest.mark.parametrize("flags, option", [
    (["--near-duplicate", "1.5"], "--near-duplicate"),
    (["--length-ratio", "2,1"], "--length-ratio"),
    (["--rank-from", "RANKING"], "--rank"),
])
def test_a_bad_flag_value_is_reported_under_the_flag_given(tmp_path: Path, flags: list[str], option: str) -> None:
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({"rank": "a > b"}))
    rows = long_rows({"a": ["Paris.", "Eight.", "Blue."], "b": ["Rome.", "Six.", "Green."]}, PROMPTS)
    result, _ = build(tmp_path, rows, *[str(ranking) if f == "RANKING" else f for f in flags])
    assert one_line_error(result).startswith(f"error: {option}")


def test_rank_before_judge_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", ranking={"bootstrap": 20})
    out = tmp_path / "run"
    out.mkdir()
    one_line_error(cli("rank", recipe, "--out", out), "no judgments.parquet or responses.scored.parquet",
                   "run `pairforge judge` first")
    assert not any(out.iterdir())


# --- judge ---------------------------------------------------------------------------------------------------

def sampled_prompts(tmp_path: Path, responses: Path, seed: int, max_prompts: int, name: str) -> list[str]:
    recipe = load_recipe(write_recipe(tmp_path / f"{name}.yaml", judge={
        "kind": "similarity", "reference": "ref", "max_prompts": max_prompts, "seed": seed}))
    result = judge(recipe, tmp_path / name, responses=responses, show_progress=False)
    scored = pl.read_parquet(result.scored)
    assert result.summary.answers == scored.height == 2 * scored["prompt_id"].n_unique()
    return scored["prompt_id"].unique(maintain_order=True).to_list()


def test_judge_max_prompts_is_a_sample_fixed_by_its_seed(tmp_path: Path, pairforge_cache: Path) -> None:
    prompts = [f"Write one word about the number {i}." for i in range(12)]
    responses = write_jsonl(tmp_path / "responses.jsonl", long_rows(
        {"ref": [f"Number {i}." for i in range(12)], "a": [f"It is {i}." for i in range(12)]}, prompts))
    first = sampled_prompts(tmp_path, responses, seed=1, max_prompts=4, name="seed1")
    assert len(first) == 4
    assert sampled_prompts(tmp_path, responses, seed=1, max_prompts=4, name="seed1-again") == first
    others = [set(sampled_prompts(tmp_path, responses, seed=s, max_prompts=4, name=f"seed{s}")) for s in (2, 3)]
    assert any(o != set(first) for o in others)  # another seed, another sample
    assert len(sampled_prompts(tmp_path, responses, seed=1, max_prompts=50, name="all")) == 12


def pairwise_recipe(path: Path, base_url: str, **judge_settings: Any) -> Path:
    llm = {"backend": "openai", "model": "smollm2", "base_url": base_url, "max_retries": 0, "concurrency": 1}
    return write_recipe(path, judge={"kind": "llm-pairwise", "llm": llm, **judge_settings})


@pytest.mark.slow
def test_judge_exit_code_on_failed_requests_and_retry_failed(tmp_path: Path, llama_server: Any) -> None:
    answers = {"strong": ["The capital of France is Paris.", "A spider has eight legs."], "weak": ["Bananas.", "Legs."]}
    responses = write_jsonl(tmp_path / "responses.jsonl", long_rows(answers, PROMPTS[:2]))
    out = tmp_path / "run"
    flaky = FaultProxy(llama_server.port, every=2)  # every second request fails (500, drop, garbage, 429)
    try:
        recipe = pairwise_recipe(tmp_path / "recipe.yaml", flaky.base_url)
        failed = run_cli("judge", recipe, "--out", out, "--responses", responses)
    finally:
        flaky.close()
    assert flaky.requests == 4  # 2 prompts x 1 source pair x 2 orders, no retries
    assert failed.returncode == 1, failed.stderr
    assert "2 judge requests failed; they are kept in the store: run again with --retry-failed" in failed.stderr
    store = sqlite3.connect(out / "store.sqlite")
    assert store.execute("SELECT COUNT(*) FROM results WHERE value IS NULL").fetchone() == (2,)
    store.close()

    counter = FaultProxy(llama_server.port, every=10**9)  # faults off: forwards and counts
    try:
        recipe = pairwise_recipe(tmp_path / "recipe.yaml", counter.base_url)
        again = run_cli("judge", recipe, "--out", out, "--responses", responses)
        assert counter.requests == 0  # failures wait for --retry-failed
        assert again.returncode == 1 and "2 judge requests failed" in again.stderr
        retried = run_cli("judge", recipe, "--out", out, "--responses", responses, "--retry-failed")
        assert counter.requests == 2  # only the failed ones are asked again
    finally:
        counter.close()
    assert retried.returncode == 0, retried.stderr
    assert json.loads((out / "judge.summary.json").read_text())["failed_requests"] == 0
    judgments = pl.read_parquet(out / "judgments.parquet")
    assert judgments.height == 2 and "failed" not in set(judgments["method_ab"]) | set(judgments["method_ba"])


def stronger_letter(strength: dict[str, int]) -> Callable[[str, str, str], dict[str, Any]]:
    def reply(prompt_id: str, first: str, second: str) -> dict[str, Any]:
        p_first = 0.9 if strength[first] < strength[second] else 0.1
        return {"text": "A" if p_first > 0.5 else "B",
                "first_token_logprobs": {"A": math.log(p_first), "B": math.log(1 - p_first)}}
    return reply


def test_llm_pairwise_with_a_reference_compares_every_source_with_it_only(tmp_path: Path) -> None:
    answers = {"strong": ["The capital of France is Paris.", "A spider has eight legs."],
               "mid": ["Paris.", "Eight."], "weak": ["Bananas.", "Legs."]}
    responses = write_jsonl(tmp_path / "responses.jsonl", long_rows(answers, PROMPTS[:2]))
    failing = FaultProxy(free_port(), every=1)  # answers every request itself with an error, and counts it
    try:
        recipe = load_recipe(pairwise_recipe(tmp_path / "recipe.yaml", failing.base_url, reference="strong"))
        judge(recipe, tmp_path, responses=responses, show_progress=False)
        assert failing.requests == 8  # 2 prompts x 2 sources against the reference x 2 orders (not 3 pairs: 12)
        strength = {"strong": 0, "mid": 1, "weak": 2}
        assert answer_failed_judge_requests(tmp_path / "store.sqlite", stronger_letter(strength)) == 8
        result = judge(recipe, tmp_path, responses=responses, show_progress=False)
        assert failing.requests == 8
    finally:
        failing.close()
    judgments = pl.read_parquet(result.judgments)
    assert sorted(zip(judgments["source_a"], judgments["source_b"], strict=True)) == [
        ("mid", "strong"), ("mid", "strong"), ("weak", "strong"), ("weak", "strong")]
    assert judgments["p_a"].to_list() == pytest.approx([0.1] * 4)  # (0.1 + 1 - 0.9) / 2: the reference wins
    per_source = {s: v.mean for s, v in result.summary.per_source.items()}
    assert per_source == pytest.approx({"strong": 0.9, "mid": 0.1, "weak": 0.1})
    assert result.summary.comparisons == 4


# --- generate ------------------------------------------------------------------------------------------------

def generation_recipe(folder: Path, sources: list[dict[str, Any]], prompts: list[Any] | None = None) -> Path:
    prompt_file = write_jsonl(folder / "prompts.jsonl", [{"prompt": p} for p in (prompts or PROMPTS[:2])])
    return write_recipe(folder / "recipe.yaml", prompts=str(prompt_file), sources=sources)


def store_rows(out: Path) -> list[tuple[str, str | None, int]]:
    db = sqlite3.connect(out / "store.sqlite")
    rows = db.execute("SELECT key, error, attempts FROM results ORDER BY key").fetchall()
    db.close()
    return rows


def test_generate_source_answers_only_that_source(tmp_path: Path, tiny_model_dir: Path) -> None:
    tiny = {"model": str(tiny_model_dir), "max_new_tokens": 3}
    recipe = generation_recipe(tmp_path, [{"name": "a", "temperature": 0, **tiny},
                                          {"name": "b", "temperature": 0.9, **tiny}])
    out = tmp_path / "out"
    only_a = run_cli("generate", recipe, "--out", out, "--source", "a")
    assert only_a.returncode == 0, only_a.stderr
    assert [key.split(":")[1] for key, _, _ in store_rows(out)] == ["a", "a"]
    assert set(pl.read_parquet(out / "responses.parquet")["source"]) == {"a"}
    both = run_cli("generate", recipe, "--out", out)
    assert both.returncode == 0, both.stderr
    rows = store_rows(out)
    assert sorted(key.split(":")[1] for key, _, _ in rows) == ["a", "a", "b", "b"]
    assert all(attempts == 1 for _, _, attempts in rows)  # a's answers were not asked again


def test_generate_unknown_source_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    recipe = generation_recipe(tmp_path, [{"name": n, "backend": "file", "path": str(SAMPLE / f"{n}.json")}
                                          for n in ("strong", "weak")])
    result = cli("generate", recipe, "--out", tmp_path / "out", "--source", "medium")
    one_line_error(result, "--source", "no source named 'medium' in the recipe (found strong, weak)")
    assert not (tmp_path / "out").exists()


def test_file_source_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    missing = generation_recipe(tmp_path, [{"name": "gone", "backend": "file", "path": str(tmp_path / "no.json")}])
    one_line_error(cli("generate", missing, "--out", tmp_path / "out"), "source 'gone'",
                   "backend file: no such answers file", "no.json")
    assert not (tmp_path / "out").exists()

    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(json.loads((SAMPLE / "strong.json").read_text())[:2]
                                + json.loads((SAMPLE / "weak.json").read_text())[:2]))
    several = generation_recipe(tmp_path, [{"name": "both", "backend": "file", "path": str(mixed)}])
    one_line_error(cli("generate", several, "--out", tmp_path / "out"), "mixed.json",
                   "source 'both' takes one model's answers, but the file has answers from 2 (strong, weak)")
    assert not (tmp_path / "out").exists()

    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"instruction": "Hi", "output": "Hello"}\n{"instruction": "Bye", "output": 3}\n')
    bad_row = generation_recipe(tmp_path, [{"name": "torn", "backend": "file", "path": str(torn)}])
    one_line_error(cli("generate", bad_row, "--out", tmp_path / "out"), "torn.jsonl", "line 2", "output")


@pytest.mark.parametrize("status, error, final", [
    (400, "BadRequestError", True), (404, "NotFoundError", True), (422, "UnprocessableEntityError", True),
    (429, "RateLimitError", False), (408, "APIStatusError", False),
])
def test_a_non_retryable_4xx_is_final(tmp_path: Path, status: int, error: str, final: bool) -> None:
    server = StatusServer(status)
    try:
        source = {"name": "api", "backend": "openai", "model": "m", "base_url": server.base_url, "max_retries": 2,
                  "concurrency": 1}
        result = generate(load_recipe(generation_recipe(tmp_path, [source])), tmp_path / "out", show_progress=False)
    finally:
        server.close()
    tally = result.tallies["api"]
    assert result.failed == 2 and result.exported == 0
    assert server.posts == (2 if final else 6)  # 2 prompts, each asked once, or 1 + max_retries times
    assert tally.retries == (0 if final else 4)
    rows = store_rows(tmp_path / "out")
    assert len(rows) == 2 and all(attempts == 1 for _, _, attempts in rows)  # recorded once
    assert all(e is not None and e.startswith(f"{error}: Error code: {status}") for _, e, _ in rows), rows


def test_a_model_without_a_chat_template_is_asked_with_the_instruction_template(tmp_path: Path,
                                                                                tiny_model_dir: Path) -> None:
    """README: a model without a chat template (a base model) gets one Alpaca-style instruction template in
    generation (endpoint chat), not an error; a prompt of several turns fills it with the turns' text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pairforge.prompting import TEXT_TEMPLATE

    folder = tmp_path / "base-model"
    folder.mkdir()
    for file in tiny_model_dir.iterdir():
        if file.name != "chat_template.jinja":
            (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert not tokenizer.chat_template

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    source = {"name": "base", "model": str(folder), "endpoint": "chat", "temperature": 0, "max_new_tokens": 5,
              "batch_size": 1}
    recipe = generation_recipe(tmp_path, [source], prompts=["Name a colour.", turns])
    result = run_cli("generate", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    frame = pl.read_parquet(tmp_path / "out" / "responses.parquet")

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    configured = model.generation_config.eos_token_id
    eos = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    for instruction, answer in zip(["Name a colour.", "Be brief.\n\nSay hi."], frame["response"], strict=True):
        ids = tokenizer(TEXT_TEMPLATE.format(instruction=instruction), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        tokens = out[0, ids.shape[1]:].tolist()
        end = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
        assert answer == tokenizer.decode(tokens[:end], skip_special_tokens=True)


def test_vllm_backend_answers_and_caches(tmp_path: Path, pairforge_cache: Path) -> None:
    """Runs only where vllm is installed (a GPU machine); CI's CPU machines skip it."""
    pytest.importorskip("vllm", reason="vllm is not installed here (a GPU extra: pip install 'pairforge[vllm]')")
    sources = [{"name": "chat", "backend": "vllm", "model": "embedded", "temperature": 0, "max_new_tokens": 8},
               {"name": "plain", "backend": "vllm", "model": "embedded", "endpoint": "completions",
                "temperature": 0.7, "max_new_tokens": 8, "stop": ["."]}]
    recipe = load_recipe(generation_recipe(tmp_path, sources))
    first = generate(recipe, tmp_path / "out", show_progress=False)
    assert first.failed == 0 and first.exported == 4
    frame = pl.read_parquet(first.responses)
    assert frame["response"].str.len_chars().min() > 0
    assert set(frame["finish_reason"]) <= {"stop", "length"}
    assert not frame.filter(pl.col("source") == "plain")["response"].str.contains(".", literal=True).any()
    again = generate(recipe, tmp_path / "out", show_progress=False)
    assert all(t.cached == 2 and t.done == 0 for t in again.tallies.values())


# --- eval ----------------------------------------------------------------------------------------------------

def reference_file(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(json.loads((SAMPLE / "strong.json").read_text())[:n]))
    return path


def outputs_file(tmp_path: Path, name: str, n: int = 3) -> Path:
    path = tmp_path / f"{name}.json"
    rows = json.loads((SAMPLE / "weak.json").read_text())[:n]
    path.write_text(json.dumps([{**r, "generator": name} for r in rows]))
    return path


@pytest.mark.parametrize("value", ["vibes", "reward-model", "similarity.json"])
def test_a_bad_eval_judge_is_one_line(tmp_path: Path, value: str) -> None:
    result = cli("eval", "--outputs", outputs_file(tmp_path, "a"), "--reference", reference_file(tmp_path),
                 "--judge", value, "--out", tmp_path / "eval")
    one_line_error(result, "--judge", f"expected a recipe .yaml, 'similarity' or 'reward-model:PATH', found '{value}'")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("option, names", [
    ("--outputs", ["a=OUT", "a=OUT"]),
    ("--models", ["m=/nowhere/one", "m=/nowhere/two"]),
    ("--outputs", ["reference=OUT"]),
    ("--models", ["reference=/nowhere/one"]),
    ("--outputs", ["OUT", "OUT"]),  # named after the file: twice 'a'
])
def test_duplicate_or_reserved_model_names_are_refused(tmp_path: Path, option: str, names: list[str]) -> None:
    out = outputs_file(tmp_path, "a")
    args = [arg for name in names for arg in (option, name.replace("OUT", str(out)))]
    result = cli("eval", *args, "--reference", reference_file(tmp_path), "--out", tmp_path / "eval")
    name = "reference" if "reference=" in names[0] else names[0].split("=")[0] if "=" in names[0] else "a"
    one_line_error(result, option, f"two models are named '{name}' (or it is reserved): name them NAME=PATH")
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("option, value, expected", [
    ("--models", "../../x=/nowhere", "expected a name for files and folders"),  # its answers file would escape
    ("--outputs", "a/b=OUT", "expected a name for files and folders"),
    ("--models", "a=", "expected NAME=PATH or PATH, found no path"),
])
def test_a_model_name_that_cannot_name_its_file_is_refused(tmp_path: Path, option: str, value: str,
                                                             expected: str) -> None:
    value = value.replace("OUT", str(outputs_file(tmp_path, "a")))
    result = cli("eval", option, value, "--reference", reference_file(tmp_path), "--out", tmp_path / "eval")
    one_line_error(result, f"{option} {value}", expected)
    assert not (tmp_path / "eval").exists()


def test_a_name_used_by_outputs_and_models_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    result = cli("eval", "--outputs", f"a={outputs_file(tmp_path, 'a')}", "--models", f"a={tiny_model_dir}",
                 "--reference", reference_file(tmp_path), "--out", tmp_path / "eval", "--max-new-tokens", "2",
                 "--bootstrap", "20")
    one_line_error(result, "two models are named 'a'")


@pytest.mark.slow
def test_eval_reference_source_prompts_file_and_no_base_in_a_recipe(tmp_path: Path, tiny_model_dir: Path) -> None:
    """eval.reference_source: a source's answers are the reference; eval.prompts: a file of prompts instead of the
    held-out split; base: false: no row for the untrained model."""
    strong = json.loads((SAMPLE / "strong.json").read_text())
    medium = {r["instruction"]: r["output"] for r in json.loads((SAMPLE / "medium.json").read_text())}
    chosen = [strong[i]["instruction"] for i in (3, 7, 11)]
    prompts = write_jsonl(tmp_path / "eval-prompts.jsonl", [{"prompt": p} for p in chosen])
    tiny = {"model": str(tiny_model_dir), "max_steps": 1, "max_length": 64, "batch_size": 4}
    recipe = write_recipe(
        tmp_path / "recipe.yaml", run_dir=str(tmp_path / "run"), prompts=str(SAMPLE / "strong.json"),
        sources=[{"name": n, "backend": "file", "path": str(SAMPLE / f"{n}.json")}
                 for n in ("strong", "medium", "weak")],
        pairs={"rank": "strong > medium > weak", "pair_types": "strong>weak", "eval_fraction": 0.2},
        runs=[{"name": "dpo", "method": "dpo", **tiny}],
        eval={"reference_source": "medium", "prompts": str(prompts), "base": False, "max_new_tokens": 3,
              "bootstrap": 20})
    result = run_cli("run", recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    board = json.loads((run / "eval" / "leaderboard.json").read_text())
    assert [m["model"] for m in board["models"]] == ["dpo"]  # no base row
    assert not (run / "eval" / "base.model_outputs.json").exists() and "vs_baseline" not in board["models"][0]
    assert board["prompts"] == 3 and board["reference"] == str(run / "eval" / "reference.parquet")
    asked = json.loads((run / "eval" / "dpo.model_outputs.json").read_text())
    assert [r["instruction"] for r in asked] == chosen  # the prompts file, in its order
    reference = pl.read_parquet(run / "eval" / "reference.parquet")
    assert set(reference["source"]) == {"medium"}
    assert dict(zip(reference["prompt"], reference["response"], strict=True)) == medium  # medium's answers
    words = sum(len(medium[p].split()) for p in chosen) / 3
    assert board["models"][0]["reference_length"] == pytest.approx(words)


def test_every_command_has_help_under_its_own_name() -> None:
    """`--help` works for every command and sub-command, names it as a user types it (also when the app is
    called in-process, as a notebook or another tool would: click's fallback name is 'root'), and lists options."""
    import typer

    def commands(group: Any, path: list[str]) -> list[list[str]]:
        found = []
        for name, command in group.commands.items():  # a group has sub-commands (typer vendors its own click)
            found += commands(command, [*path, name]) if hasattr(command, "commands") else [[*path, name]]
        return found

    names = commands(typer.main.get_command(app), [])
    assert len(names) >= 10 and ["pairs", "build"] in names
    for name in names:
        result = cli(*name, "--help")
        assert result.exit_code == 0 and f"Usage: pairforge {' '.join(name)} [OPTIONS]" in result.output, name
        assert "--help" in result.output


def _loading(pid: int, library: str) -> bool:
    """Whether a process has mapped a shared library (its modules are loading past Python's own start-up)."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.5])
def test_ctrl_c_while_the_command_loads_is_one_line(tmp_path: Path, delay: float) -> None:
    """Ctrl-C in the first moments of `pairs build`, while torch / polars / transformers import: one line and exit
    130, never a KeyboardInterrupt traceback from inside an import. Each moment is counted from polars' library
    being mapped (our imports under way; Python's own start-up, before any pairforge code, is not ours to catch);
    a build that finished before the signal arrived exits 0."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "pairforge", "pairs", "build",
                                *[str(SAMPLE / f"{n}.json") for n in ("strong", "medium", "weak")],
                                "--rank", "strong > medium > weak", "--out", str(tmp_path / "pairs.parquet")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while process.poll() is None and not _loading(process.pid, "polars"):
        time.sleep(0.002)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    if process.returncode != 0:
        assert process.returncode == 130 and stderr.splitlines() == ["interrupted"], (process.returncode, stderr)


def test_eval_takes_several_values_after_one_models_or_outputs_flag(tmp_path: Path, tiny_model_dir: Path) -> None:
    """README's `eval --models sft=runs/sft dpo=runs/dpo` ran into "Got unexpected extra argument": the words after
    --models / --outputs, up to the next option, are each one value, as with the flag repeated."""
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(json.loads((SAMPLE / "strong.json").read_text())[:4]))
    out = tmp_path / "eval"
    result = run_cli("eval", "--models", f"a={tiny_model_dir}", f"b={tiny_model_dir}", "--reference", reference,
                     "--max-new-tokens", "2", "--bootstrap", "20", "--out", out)
    assert result.returncode == 0, result.stderr
    assert [m["model"] for m in json.loads((out / "leaderboard.json").read_text())["models"]] in (["a", "b"],
                                                                                                ["b", "a"])
    answers = [str(out / f"{n}.model_outputs.json") for n in ("a", "b")]
    for args in (["--outputs", *answers], ["--outputs", answers[0], "--outputs", answers[1]],
                 [f"--outputs={answers[0]}", answers[1]]):
        result = run_cli("eval", *args, "--reference", reference, "--bootstrap", "20", "--out", tmp_path / "again")
        assert result.returncode == 0, result.stderr
        assert len(json.loads((tmp_path / "again" / "leaderboard.json").read_text())["models"]) == 2
