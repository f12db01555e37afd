"""Local model folders are named by their content: a copy (or the same training repeated) is the same model, with
the same cache keys and sampling seeds; a model replaced in its folder is another one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl

from conftest import replace_weights
from pairforge.config import JudgeConfig, SourceConfig
from pairforge.fingerprints import model_content
from pairforge.requests.engine import cache_key, request_seed


def copy_of(model: Path, folder: Path) -> Path:
    """A copy written now: other paths and file times, the same content."""
    shutil.copytree(model, folder, copy_function=shutil.copy)
    return folder


def keys(model: Path) -> tuple[str, int, dict]:
    source = SourceConfig(name="policy", model=str(model), temperature=1.0)
    key = cache_key("gen", source.cache_settings(), "policy", "prompt-id", 0)
    return key, request_seed(source.seed, key), JudgeConfig(kind="reward-model", model=str(model)).cache_settings()


def test_a_copy_has_the_same_keys_and_seeds_and_a_replaced_model_other_ones(tiny_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    first, second = copy_of(tiny_model_dir, tmp_path / "a"), copy_of(tiny_model_dir, tmp_path / "b")
    assert keys(first) == keys(second)
    replace_weights(first, seed=1)
    assert keys(first)[0] != keys(second)[0] and keys(first)[2] != keys(second)[2]
    assert keys(first)[1] != keys(second)[1]  # another model samples with other seeds


def test_the_weights_are_read_once_per_state_of_the_files(tiny_model_dir: Path, tmp_path: Path,
                                                          pairforge_cache: Path) -> None:
    """An unchanged folder's content comes from the record kept under the cache (here made recognisable):
    no weight is read again; any rewrite of a file reads them again."""
    folder = copy_of(tiny_model_dir, tmp_path / "model")
    content = model_content(str(folder))
    assert content is not None and model_content("embedded") is None
    [record] = [p for p in (pairforge_cache / "model-content").glob("*.json")
                if json.loads(p.read_text())["folder"] == str(folder.resolve())]
    record.write_text(json.dumps({**json.loads(record.read_text()), "content": "as-recorded"}))
    assert model_content(str(folder)) == "as-recorded"
    (folder / "config.json").write_text((folder / "config.json").read_text())  # the same bytes, written again
    assert model_content(str(folder)) == content


def test_two_copies_of_a_model_sample_the_same_answers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two identical runs, each with its own copy of a trained model (as two fresh iterative runs have in
    round 2), sample the same answers at temperature 1."""
    from pairforge.generation.answers import generate
    from pairforge.recipe import load_recipe

    answers = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        model = copy_of(tiny_model_dir, folder / "model")
        (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Say {i}."}) + "\n" for i in range(4)))
        source = {"name": "policy", "model": str(model), "temperature": 1.0, "max_new_tokens": 8}
        (folder / "recipe.yaml").write_text(json.dumps({"prompts": "prompts.jsonl", "sources": [source]}))
        result = generate(load_recipe(folder / "recipe.yaml"), folder / "out", show_progress=False)
        answers.append(pl.read_parquet(result.responses)["response"].to_list())
    assert answers[0] == answers[1]


def test_where_a_folder_was_saved_from_is_not_its_content(tmp_path: Path) -> None:
    """A LoRA adapter names its base model by path: that base counts by its own content, and the path a config
    was loaded from counts not at all."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer.json").write_text("{}")
    for name, where in (("one", base), ("two", copy_of(base, tmp_path / "base-copy"))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(where),
                                                                         "_name_or_path": str(where), "r": 8}))
    assert model_content(str(tmp_path / "one")) == model_content(str(tmp_path / "two"))
    (base / "tokenizer.json").write_text('{"changed": 1}')
    assert model_content(str(tmp_path / "one")) != model_content(str(tmp_path / "two"))
