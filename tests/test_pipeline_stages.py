"""`pairforge run` stage by stage: which stages a changed setting or input file runs again (fingerprints in
<run_dir>/stages/*.json), `--to` and `--from`, and a prompt of several chat turns from generate to train.

Recipes use file sources (data/sample) and a tiny random Llama trained for one step, so every run is short.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from conftest import SAMPLE, write_jsonl

pytestmark = pytest.mark.slow

ALL = ["generate", "judge", "rank", "pairs", "train:sft", "train:dpo", "eval", "report"]


def run(recipe: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """`pairforge run RECIPE FLAGS`, and what it said of each stage: 'running' or 'skipped'."""
    result = subprocess.run([sys.executable, "-m", "pairforge", "run", str(recipe), *flags], capture_output=True,
                            text=True, timeout=900)
    said = dict(re.findall(r"^(\S+): (running|skipped)", result.stderr, flags=re.MULTILINE))
    return result, said


def run_ok(recipe: Path, *flags: str) -> dict[str, str]:
    result, said = run(recipe, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return said


def markers(run_dir: Path) -> dict[str, int]:
    """Each finished stage's marker file and its modification time (ns)."""
    return {p.stem.replace("train-", "train:"): p.stat().st_mtime_ns for p in (run_dir / "stages").glob("*.json")}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Recipe:
    """A recipe in a test folder: its own copies of the prompts and answer files (so a test can edit them), three
    file sources of clearly different quality, a similarity judge, ranked pairs, SFT then DPO on a tiny model
    (one step each), and an evaluation against the strong source's answers."""

    def __init__(self, folder: Path, tiny_model_dir: Path, prompts: int = 10) -> None:
        self.folder, self.run_dir = folder, folder / "run"
        rows = json.loads((SAMPLE / "strong.json").read_text())[:prompts]
        self.prompts = write_jsonl(folder / "prompts.jsonl", [{"instruction": r["instruction"]} for r in rows])
        for name in ("strong", "medium", "weak"):
            (folder / f"{name}.json").write_text((SAMPLE / f"{name}.json").read_text())
        tiny = {"model": str(tiny_model_dir), "max_steps": 1, "max_length": 64, "batch_size": 4}
        self.data: dict[str, Any] = {
            "run_dir": str(self.run_dir), "prompts": str(self.prompts),
            "sources": [{"name": n, "backend": "file", "path": str(folder / f"{n}.json")}
                        for n in ("strong", "medium", "weak")],
            "judge": {"kind": "similarity", "reference": "strong"},
            "ranking": {"bootstrap": 20},
            "pairs": {"rank": "strong > medium > weak", "eval_fraction": 0.3},
            "runs": [{"name": "sft", "method": "sft", **tiny},
                     {"name": "dpo", "method": "dpo", "after": "sft", **tiny}],
            "eval": {"reference_source": "strong", "max_new_tokens": 3, "bootstrap": 20},
        }
        self.path = folder / "recipe.yaml"
        self.write()

    def write(self, **changes: Any) -> Path:
        self.data = merged(self.data, changes)
        self.path.write_text(yaml.safe_dump(self.data), encoding="utf-8")
        return self.path

    def with_run(self, name: str, **changes: Any) -> list[dict[str, Any]]:
        return [{**r, **changes} if r["name"] == name else r for r in self.data["runs"]]


def check_reran(recipe: Recipe, expected: list[str], *flags: str) -> None:
    """Run the recipe; exactly `expected` (and the report, which is always rebuilt) run, every other stage is
    skipped, and only the run stages' markers are rewritten."""
    before = markers(recipe.run_dir)
    said = run_ok(recipe.path, *flags)
    ran = [s for s in ALL if said.get(s) == "running"]
    assert ran == [*expected, "report"], said
    assert all(said[s] == "skipped" for s in ALL if s not in ran), said
    after = markers(recipe.run_dir)
    assert sorted(s for s in ALL if after[s] != before.get(s)) == sorted(ran)


def test_a_changed_setting_or_input_file_reruns_its_stage_and_the_later_ones_only(tmp_path: Path,
                                                                                  tiny_model_dir: Path) -> None:
    recipe = Recipe(tmp_path, tiny_model_dir)
    first = run_ok(recipe.path)
    assert [first.get(s) for s in ALL] == ["running"] * len(ALL)
    check_reran(recipe, [])  # nothing changed: every finished stage is skipped

    recipe.write(eval={"max_new_tokens": 4})
    check_reran(recipe, ["eval"])
    recipe.write(runs=recipe.with_run("dpo", beta=0.2))
    check_reran(recipe, ["train:dpo", "eval"])
    recipe.write(runs=recipe.with_run("sft", lr=1e-5))
    check_reran(recipe, ["train:sft", "train:dpo", "eval"])  # dpo starts from sft's model: it trains again
    recipe.write(pairs={"pair_types": "adjacent"})
    check_reran(recipe, ["pairs", "train:sft", "train:dpo", "eval"])
    recipe.write(judge={"reference": "medium"})
    check_reran(recipe, ["judge", "rank", "pairs", "train:sft", "train:dpo", "eval"])

    weak = json.loads((tmp_path / "weak.json").read_text())  # an input file of the first stage is edited
    weak[0]["output"] = "Drink soda and skip sleep."
    (tmp_path / "weak.json").write_text(json.dumps(weak))
    check_reran(recipe, ALL[:-1])
    responses = pl.read_parquet(recipe.run_dir / "responses.parquet")
    assert "Drink soda and skip sleep." in responses["response"].to_list()


def test_run_to_pairs_stops_after_pairs_and_from_train_reruns_train_and_later(tmp_path: Path,
                                                                              tiny_model_dir: Path) -> None:
    recipe = Recipe(tmp_path, tiny_model_dir)
    said = run_ok(recipe.path, "--to", "pairs")
    assert said == {"generate": "running", "judge": "running", "rank": "running", "pairs": "running"}
    assert sorted(markers(recipe.run_dir)) == ["generate", "judge", "pairs", "rank"]
    assert (recipe.run_dir / "pairs.parquet").exists()
    assert not any((recipe.run_dir / p).exists() for p in ("train", "eval", "report.html"))

    check_reran(recipe, ["train:sft", "train:dpo", "eval"], "--from", "train")  # the data stages are kept
    metrics = recipe.run_dir / "train" / "sft" / "metrics.jsonl"
    trained = metrics.stat().st_mtime_ns
    check_reran(recipe, ["train:sft", "train:dpo", "eval"], "--from", "train")  # finished, run again on purpose
    assert metrics.stat().st_mtime_ns != trained
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["step"] for row in steps if "train/loss" in row] == [1]  # started over, nothing appended


def test_pairs_built_from_the_run_s_ranking_follow_a_changed_ranking(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = Recipe(tmp_path, tiny_model_dir)
    copy = [{**r, "generator": "copy"} for r in json.loads((SAMPLE / "strong.json").read_text())]
    (tmp_path / "copy.json").write_text(json.dumps(copy))  # the reference's own answers: similarity 1
    recipe.data.pop("eval")
    recipe.write(sources=[*recipe.data["sources"][:1], {"name": "copy", "backend": "file",
                                                        "path": str(tmp_path / "copy.json")},
                          recipe.data["sources"][2]],
                 pairs={"rank": None, "rank_from": "ranking", "eval_fraction": 0.0}, runs=[])
    run_ok(recipe.path)
    assert json.loads((recipe.run_dir / "ranking.json").read_text())["rank"] == "copy > weak"
    recipe.write(ranking={"min_win_probability": 0.999})  # now no order is large enough to count
    result, said = run(recipe.path)
    assert json.loads((recipe.run_dir / "ranking.json").read_text())["rank"] == ""
    assert said["rank"] == "running" and said["pairs"] == "running", said
    assert result.returncode == 2 and "no source order is significant" in result.stderr


@pytest.mark.parametrize("edited", ["reference", "prompts"])
def test_an_edited_eval_reference_or_prompts_file_reruns_eval(tmp_path: Path, tiny_model_dir: Path,
                                                              edited: str) -> None:
    recipe = Recipe(tmp_path, tiny_model_dir, prompts=6)
    reference = tmp_path / "reference.json"
    reference.write_text((tmp_path / "strong.json").read_text())
    eval_prompts = write_jsonl(tmp_path / "eval-prompts.jsonl", [{"prompt": r["instruction"]} for r in
                                                                 json.loads(reference.read_text())[:3]])
    recipe.write(eval={"reference_source": None, "reference": str(reference), "prompts": str(eval_prompts)},
                 runs=recipe.data["runs"][:1])
    run_ok(recipe.path)
    if edited == "reference":
        rows = json.loads(reference.read_text())
        rows[0]["output"] = "A different reference answer."
        reference.write_text(json.dumps(rows))
    else:
        eval_prompts.write_text(eval_prompts.read_text().splitlines(keepends=True)[0])  # one prompt of three
    said = run_ok(recipe.path)
    assert said["eval"] == "running", said


def test_prompts_of_several_chat_turns_go_from_generate_through_pairs_to_train(tmp_path: Path,
                                                                                 tiny_model_dir: Path) -> None:
    """A prompt given as several chat messages (system, user, assistant, user) is answered through the chat template
    of all its turns, kept whole in the pairs, and trained on through the same template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pairforge.sequences.tokenize import tokenize_pairs

    conversations = [[{"role": "system", "content": "You answer in one short sentence."},
                      {"role": "user", "content": f"Pick a number near {i}."},
                      {"role": "assistant", "content": f"{i + 1}."},
                      {"role": "user", "content": "Why that one?"}] for i in range(6)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": c} for c in conversations])
    tiny = {"model": str(tiny_model_dir), "max_new_tokens": 6, "dtype": "float32"}  # as the check below
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "prompts": str(prompts),
        "sources": [{"name": "greedy", "temperature": 0, "batch_size": 1, **tiny},
                    {"name": "hot", "temperature": 1.5, "seed": 3, **tiny}],
        "pairs": {"rank": "greedy > hot", "filters": {"drop_truncated": False}},  # a random model rarely stops
        "runs": [{"name": "dpo", "method": "dpo", "model": str(tiny_model_dir), "max_steps": 1, "max_length": 256,
                  "batch_size": 4}]}), encoding="utf-8")
    said = run_ok(recipe, "--to", "train")
    assert said == {s: "running" for s in ("generate", "pairs", "train:dpo")}
    run_dir = tmp_path / "run"

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    configured = model.generation_config.eos_token_id
    eos = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    responses = pl.read_parquet(run_dir / "responses.parquet")
    greedy = responses.filter(pl.col("source") == "greedy")
    assert greedy["prompt"].to_list() == conversations  # every turn kept, in order
    for turns, answer in zip(conversations, greedy["response"], strict=True):
        ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        tokens = out[0, ids["input_ids"].shape[1]:].tolist()
        end = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
        assert answer == tokenizer.decode(tokens[:end], skip_special_tokens=True)  # asked with all four turns

    pairs = pl.read_parquet(run_dir / "pairs.parquet")
    assert pairs.height > 0 and set(pairs["pair_type"]) == {"greedy>hot"}
    by_prompt = dict(zip(greedy["prompt_id"], greedy["response"], strict=True))
    for row in pairs.iter_rows(named=True):
        assert row["prompt"] in conversations
        assert row["chosen"] == [{"role": "assistant", "content": by_prompt[row["prompt_id"]]}]
    trained = json.loads((run_dir / "train" / "dpo" / "run.json").read_text())
    assert trained["prompt_format"] == "chat" and trained["tokenize"]["pairs"] == pairs.height
    assert trained["tokenize"]["truncated"] == 0 and not trained["tokenize"]["dropped"]
    tokenized, _ = tokenize_pairs(pairs, tokenizer, max_length=256)
    for pair, turns in zip(tokenized, pairs["prompt"].to_list(), strict=True):
        expected = tokenizer.apply_chat_template(turns, add_generation_prompt=True, return_dict=True)["input_ids"]
        assert pair.chosen.ids[:pair.chosen.answer_start] == expected  # the trainer sees all four turns
