"""Paths in a recipe are relative to the recipe's folder, so a recipe runs from anywhere: every path field of every
section (found from the models' `Path` fields), while outputs (`out`, written where the command runs, like --out)
and the words some path fields also take ('held-out', 'ranking') stay as written."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pairforge.recipe import load_recipe


def write(folder: Path, recipe: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return folder / "recipe.yaml"


def test_every_path_a_recipe_reads_is_relative_to_its_folder(tmp_path: Path) -> None:
    path = write(tmp_path / "recipes" / "mine", {
        "run_dir": "runs/x", "prompts": "data/prompts.jsonl",
        "sources": [{"name": "a", "backend": "file", "path": "data/a.json"}, {"name": "b"}],
        "pairs": {"inputs": ["data/answers.jsonl", "/abs/other.jsonl"], "rank_from": "data/ranking.json",
                  "out": "pairs.parquet", "filters": {"decontaminate": ["data/eval.jsonl"]}},
        "train": {"pairs": "data/pairs.parquet", "eval_pairs": "data/pairs.eval.parquet", "out": "runs/train"},
        "runs": [{"name": "dpo", "pairs": "p.parquet", "eval_pairs": "../e.parquet", "out": "runs/dpo"}],
        "eval": {"prompts": "data/eval.jsonl", "reference": "data/ref.json"},
    })
    recipe, here = load_recipe(path), tmp_path / "recipes" / "mine"

    def at(relative: str) -> Path:
        return Path(os.path.normpath(here / relative))

    assert (recipe.run_dir, recipe.prompts, recipe.sources[0].path) == (at("runs/x"), at("data/prompts.jsonl"),
                                                                        at("data/a.json"))
    assert recipe.pairs.inputs == [at("data/answers.jsonl"), Path("/abs/other.jsonl")]
    assert recipe.pairs.rank_from == at("data/ranking.json")
    assert recipe.pairs.filters.decontaminate == [at("data/eval.jsonl")]
    assert (recipe.train.pairs, recipe.train.eval_pairs) == (at("data/pairs.parquet"), at("data/pairs.eval.parquet"))
    assert (recipe.runs[0].pairs, recipe.runs[0].eval_pairs) == (at("p.parquet"), at("../e.parquet"))
    assert recipe.eval is not None
    assert (recipe.eval.prompts, recipe.eval.reference) == (at("data/eval.jsonl"), at("data/ref.json"))
    # outputs are written where the command runs, as its --out flag says
    assert (recipe.pairs.out, recipe.train.out, recipe.runs[0].out) == (Path("pairs.parquet"), Path("runs/train"),
                                                                        Path("runs/dpo"))


def test_the_words_a_path_field_takes_stay_words(tmp_path: Path) -> None:
    path = write(tmp_path / "r", {"pairs": {"rank_from": "ranking"},
                                  "eval": {"prompts": "held-out", "reference": "ref.json"}})
    recipe = load_recipe(path)
    assert recipe.eval is not None and recipe.eval.prompts == "held-out"
    assert str(recipe.pairs.rank_from) == "ranking"
