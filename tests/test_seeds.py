"""Training seeds per run (`seeds: [0, 1]` -> runs NAME@SEED): the expansion every stage sees, bad values, and a
small pipeline end to end (train folders per seed, the run's row over its seeds, a pooled comparison)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import sample_recipe
from pairforge.recipe import Recipe


def pairforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True, timeout=1200)


def runs_of(tmp_path: Path, runs: list[dict[str, Any]], **sections: Any) -> list[tuple[str, int, str | None]]:
    recipe = Recipe.load(sample_recipe(tmp_path, runs, **sections))
    return [(run.name, run.seed, run.after) for run in recipe.runs]


def test_a_seeded_run_is_one_run_per_seed_and_after_pairs_them_seed_by_seed(tmp_path: Path) -> None:
    assert runs_of(tmp_path, [{"name": "sft", "method": "sft", "seeds": [0, 2]},
                              {"name": "dpo", "after": "sft", "seeds": [0, 2]}, {"name": "slic", "method": "slic"}]) \
        == [("sft@0", 0, None), ("sft@2", 2, None), ("dpo@0", 0, "sft@0"), ("dpo@2", 2, "sft@2"), ("slic", 0, None)]


def test_seeds_after_an_unseeded_run_all_start_from_it_and_one_seed_can_be_named(tmp_path: Path) -> None:
    assert runs_of(tmp_path, [{"name": "sft", "method": "sft"}, {"name": "dpo", "after": "sft", "seeds": [1, 2]}]) \
        == [("sft", 0, None), ("dpo@1", 1, "sft"), ("dpo@2", 2, "sft")]
    assert runs_of(tmp_path, [{"name": "sft", "method": "sft", "seeds": [0, 1]}, {"name": "dpo", "after": "sft@1"}]) \
        == [("sft@0", 0, None), ("sft@1", 1, None), ("dpo", 0, "sft@1")]


def test_the_plan_and_from_name_each_seed(tmp_path: Path) -> None:
    recipe = sample_recipe(tmp_path, [{"name": "sft", "method": "sft", "seeds": [0, 1]},
                                      {"name": "dpo", "after": "sft", "seeds": [0, 1]}])
    result = pairforge("run", str(recipe), "--dry-run", "--from", "train:dpo@1")
    assert result.returncode == 0, result.stderr
    assert "train:sft@1" in result.stderr and "dpo after sft@1" in result.stderr
    refused = pairforge("run", str(recipe), "--dry-run", "--from", "train:dpo")
    assert refused.returncode == 2 and "no stage 'train:dpo'" in refused.stderr


SFT = {"name": "sft", "method": "sft"}


@pytest.mark.parametrize("runs, extra, expected", [
    ([{**SFT, "seeds": []}], {}, "field 'runs.0.seeds': expected at least one seed"),
    ([{**SFT, "seeds": [1, 1]}], {}, "field 'runs.0.seeds': expected distinct seeds, found 1 twice"),
    ([{**SFT, "seeds": [0, -1]}], {}, "field 'runs.0.seeds.1': Input should be greater than or equal to 0"),
    ([{**SFT, "seeds": [2**32]}], {}, "field 'runs.0.seeds.0': Input should be less than or equal to 4294967295"),
    ([{**SFT, "seeds": [1.5]}], {}, "field 'runs.0.seeds.0': Input should be a valid integer"),
    ([{**SFT, "seeds": ["a"]}], {}, "field 'runs.0.seeds.0': Input should be a valid integer"),
    ([{**SFT, "seeds": [True]}], {}, "field 'runs.0.seeds.0': Input should be a valid integer"),
    ([{**SFT, "seeds": 3}], {}, "field 'runs.0.seeds': expected a list, found number 3"),
    ([{**SFT, "seeds": [0, 1], "seed": 1}], {}, "field 'runs.0': run 'sft': `seed: 1` disagrees with `seeds: [0, 1]`"),
    ([{**SFT, "name": "sft@0"}], {}, "field 'runs.0.name': run name 'sft@0': '@SEED' names are made by `seeds"),
    ([{**SFT, "seeds": [0, 1]}, {"name": "dpo", "after": "sft"}], {},
     "field 'runs': run 'dpo' (no seeds) starts after 'sft', which has seeds [0, 1]: which seed?"),
    ([{**SFT, "seeds": [0, 1]}, {"name": "dpo", "after": "sft", "seeds": [0, 2]}], {},
     "run 'dpo' (seeds [0, 2]) starts after 'sft', which has seeds [0, 1]: which seed?"),
    ([{**SFT, "seeds": [0, 1]}, SFT], {}, "field 'runs': run name 'sft' is used twice"),
    ([{**SFT, "seeds": [0, 1]}], {"rounds": 2}, "run 'sft' has seeds: which seed's model answers the next round? "
     "expected round_run: sft@SEED"),
    ([{"name": "rm", "method": "reward-model", "split": "judge", "seeds": [0, 1]}, {"name": "dpo"}],
     {"pairs": {"eval_fraction": 0.3, "judge_fraction": 0.3},
      "eval": {"prompts": "held-out", "reference_source": "strong", "judge_run": "rm"}},
     "eval.judge_run 'rm' has seeds: which seed's reward model scores the answers? expected eval.judge_run: rm@SEED"),
])
def test_bad_seeds_are_one_line_naming_the_field(tmp_path: Path, runs: list[dict[str, Any]], extra: dict[str, Any],
                                                 expected: str) -> None:
    result = pairforge("run", str(sample_recipe(tmp_path, runs, **extra)), "--dry-run")
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_seeded_pipeline_trains_each_seed_and_compares_runs_over_prompts_and_seeds(tmp_path: Path,
                                                                                    tiny_model_dir: Path) -> None:
    tiny = {"max_steps": 1, "batch_size": 4, "max_length": 64, "seeds": [0, 1]}
    recipe = sample_recipe(tmp_path, [{"name": "sft", "method": "sft", "model": str(tiny_model_dir), **tiny},
                                      {"name": "dpo", "after": "sft", **tiny}],
                           prompts=16, pairs={"eval_fraction": 0.5},
                           eval={"prompts": "held-out", "reference_source": "strong", "max_new_tokens": 4,
                                 "bootstrap": 50})
    result = pairforge("run", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("sft", "dpo"):
        for seed in (0, 1):
            info = json.loads((run / "train" / f"{name}@{seed}" / "run.json").read_text())
            assert info["config"]["seed"] == seed and (run / "train" / f"{name}@{seed}" / "model").is_dir()
    assert json.loads((run / "train" / "dpo@1" / "run.json").read_text())["config"]["model"] == str(
        run / "train" / "sft@1" / "model")
    board = json.loads((run / "eval" / "leaderboard.json").read_text())
    rows = {m["model"]: m for m in board["models"]}
    assert set(rows) == {"base", "sft", "dpo", "sft@0", "sft@1", "dpo@0", "dpo@1"}
    assert rows["sft"]["seeds"] == [0, 1] and rows["dpo"]["vs_baseline"]["model"] == "base"
    pooled = {frozenset((c["model"], c["versus"]["model"])): c["versus"] for c in board["comparisons"]}
    assert 0 < pooled[frozenset(("sft", "dpo"))]["p_value"] <= 1
    assert "sft (2 seeds)" in (run / "report.md").read_text()
