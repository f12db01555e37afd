"""Curriculum difficulty scores and schedules: orders that follow the configuration, and clear errors."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from pairforge.cli import app
from pairforge.errors import InputError
from pairforge.train_config import CurriculumConfig
from pairforge.training.curriculum import difficulty_of, order_batches, pacing_pool

RNG = np.random.default_rng(0)
DIFFICULTY = np.round(RNG.random(60), 1)  # many ties, so tie shuffling matters
TYPES = ["gpt-4>davinci" if d < 0.5 else "gpt-4>chatgpt" for d in DIFFICULTY]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def rows_of_stage(result, stage: int) -> list[int]:
    return [i for b, s in zip(result.batches, result.stages, strict=True) if s == stage for i in b]


def make(schedule: str, epochs: int = 1, **settings):
    return order_batches(DIFFICULTY, TYPES, CurriculumConfig(schedule=schedule, **settings), 8, epochs, seed=3)


def test_sorted_and_anti_follow_difficulty_every_epoch_with_seeded_ties():
    for schedule, sign in (("sorted", 1), ("anti", -1)):
        result = make(schedule, epochs=2)
        order = flat(result.batches)
        assert sorted(order[:60]) == list(range(60)) and sorted(order[60:]) == list(range(60))
        for epoch in (order[:60], order[60:]):
            assert all(sign * (DIFFICULTY[a] - DIFFICULTY[b]) <= 0 for a, b in zip(epoch, epoch[1:], strict=False))
        assert order[:60] != order[60:]  # ties reshuffled per epoch
        assert make(schedule, epochs=2).batches == result.batches  # and by seed, reproducibly


def test_random_is_a_seeded_permutation_per_epoch():
    first, again = make("random", epochs=2), make("random", epochs=2)
    assert first.batches == again.batches
    order = flat(first.batches)
    assert sorted(order[:60]) == list(range(60)) and order[:60] != sorted(order[:60])


def test_buckets_are_in_order_and_shuffled_inside():
    result = make("buckets", buckets=3)
    assert result.stage_names == ["bucket 1", "bucket 2", "bucket 3"]
    per_bucket = [rows_of_stage(result, k) for k in range(3)]
    assert [len(b) for b in per_bucket] == [20, 20, 20]
    assert max(DIFFICULTY[per_bucket[0]]) <= min(DIFFICULTY[per_bucket[1]])
    assert max(DIFFICULTY[per_bucket[1]]) <= min(DIFFICULTY[per_bucket[2]])


def test_staged_pair_types_epochs_and_restarts():
    stages = [{"pair_types": ["gpt-4>davinci"], "epochs": 2}, {"pair_types": ["gpt-4>chatgpt"], "restart_lr": True}]
    result = make("staged", stages=stages)
    easy = [i for i, t in enumerate(TYPES) if t == "gpt-4>davinci"]
    stage_rows = [rows_of_stage(result, k) for k in (0, 1)]
    assert sorted(stage_rows[0]) == sorted(easy * 2) and all(TYPES[i] == "gpt-4>chatgpt" for i in stage_rows[1])
    assert result.stages == sorted(result.stages)  # stage 1 entirely before stage 2, batches never mixed
    assert result.restarts == [result.stages.index(1)]


def test_staged_by_difficulty_range_and_drop_hardest():
    result = make("staged", stages=[{"difficulty": [0.0, 0.5]}, {"difficulty": [0.5, 1.01]}], drop_hardest=0.25)
    used = flat(result.batches)
    assert result.dropped == 15 and len(used) == 45
    assert max(DIFFICULTY[used]) <= sorted(DIFFICULTY)[44]
    easy, rest = rows_of_stage(result, 0), rows_of_stage(result, 1)
    assert sorted(easy) == [i for i in range(60) if DIFFICULTY[i] < 0.5]  # every pair of the first range, once
    assert len(rest) == 45 - len(easy) and all(0.5 <= DIFFICULTY[i] < 1.01 for i in rest)
    assert used[:len(easy)] == easy  # the first range is trained first
    assert result.stage_names == ["stage 1: difficulty [0.0, 0.5)", "stage 2: difficulty [0.5, 1.01)"]


# c(t) = c0 + (1 - c0) * (t / T)^p with c0 = 0.2 and T = full_at * steps = 0.5 * 32 = 16; the pool is c(t) of the
# 60 pairs, rounded up. Worked by hand at steps where (t / 16)^p is exact:
#   root   (p = 1/2): t=1 -> 0.2 + 0.8 * 1/4 = 0.4 -> 24 pairs; t=9 -> 0.2 + 0.8 * 3/4 = 0.8 -> 48
#   linear (p = 1):   t=4 -> 0.2 + 0.8 * 1/4 = 0.4 -> 24 pairs; t=12 -> 0.2 + 0.8 * 3/4 = 0.8 -> 48
PACING_BY_HAND = {"root": {0: 12, 1: 24, 9: 48, 16: 60}, "linear": {0: 12, 4: 24, 12: 48, 16: 60}}


@pytest.mark.parametrize("pacing", ["root", "linear"])
def test_pacing_pool_follows_its_function(pacing):
    result = make("pacing", epochs=4, pacing=pacing, start_fraction=0.2, full_at=0.5)
    pools = result.pool_sizes
    assert len(pools) == len(result.batches) == 4 * math.ceil(60 / 8)
    assert {t: pools[t] for t in PACING_BY_HAND[pacing]} == PACING_BY_HAND[pacing]
    assert pools == sorted(pools) and pools[15] < 60 and set(pools[16:]) == {60}  # all pairs from T = 16 on
    assert 12 < pools[1] < pools[2] and (pools[3] > 24 if pacing == "root" else pools[3] < 24)  # root grows faster
    easiest = sorted(range(60), key=lambda i: DIFFICULTY[i])
    for batch, pool in zip(result.batches, result.pool_sizes, strict=True):
        assert max(DIFFICULTY[batch]) <= DIFFICULTY[easiest[pool - 1]]
    assert pacing_pool(0, 10, 100, 8, CurriculumConfig(schedule="pacing", start_fraction=0.01)) == 8  # one batch


@pytest.mark.parametrize("pacing, step", [("root", 4), ("linear", 8)])
def test_pacing_pool_is_exact_where_the_share_is_a_whole_number_of_pairs(pacing, step):
    cfg = CurriculumConfig(schedule="pacing", pacing=pacing, start_fraction=0.2, full_at=0.5)
    assert pacing_pool(step, 32, 60, 8, cfg) == 36  # c = 0.2 + 0.8 * 1/2 = 0.6 of 60 pairs


def test_difficulty_from_columns():
    frame = pl.DataFrame({"margin": [2.0, 1.0], "chosen_score": [9.0, 6.0], "rejected_score": [1.0, 4.0],
                          "custom": [0.3, 0.7]})
    assert difficulty_of(frame, "strength-gap").tolist() == [0.0, 0.5]
    assert difficulty_of(frame, "score-margin").tolist() == [0.0, 0.75]
    assert difficulty_of(frame, "column:custom").tolist() == [0.3, 0.7]


@pytest.mark.slow
def test_embedding_similarity_with_the_embedded_minilm():
    frame = pl.DataFrame({"chosen": ["The capital of France is Paris.", "Water boils at 100 degrees Celsius."],
                          "rejected": ["Paris is the capital of France.", "I like turtles."]})
    near, far = difficulty_of(frame, "embedding-similarity")
    assert near > 0.9 > 0.3 > far


def test_bad_curriculum_input(tmp_path):
    frame = pl.DataFrame({"prompt": ["p"] * 4, "chosen": ["a"] * 4, "rejected": ["b"] * 4,
                          "pair_type": ["x>y"] * 4, "margin": [1.0] * 4, "score": [1.0, float("nan"), 2.0, 3.0]})
    with pytest.raises(InputError, match="pair type 'x>z' is not in the data"):
        order_batches(np.zeros(4), ["x>y"] * 4,
                      CurriculumConfig(schedule="staged", stages=[{"pair_types": ["x>z"]}]), 2, 1, 0)
    with pytest.raises(InputError, match="selects no pairs"):
        order_batches(np.zeros(4), ["x>y"] * 4,
                      CurriculumConfig(schedule="staged", stages=[{"difficulty": [0.5, 1]}]), 2, 1, 0)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        CurriculumConfig(schedule="staged", stages=[{"pair_types": ["x>y"], "epochs": 0}])
    frame.write_parquet(tmp_path / "p.parquet")
    for args, message in ((["--difficulty", "column:nope"], "no column 'nope'"),
                          (["--difficulty", "column:score"], "row 2, field 'score': expected finite numbers"),
                          (["--difficulty", "hardness"], "unknown difficulty 'hardness'")):
        result = CliRunner().invoke(app, ["curriculum", "show", str(tmp_path / "p.parquet"), *args])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_curriculum_show_prints_stages_and_writes_a_plot(tmp_path):
    from conftest import SAMPLE

    answers = [str(SAMPLE / f"{name}.json") for name in ("strong", "medium", "weak")]
    result = CliRunner().invoke(app, ["pairs", "build", *answers, "--rank", "strong > medium > weak",
                                      "--out", str(tmp_path / "p.parquet")])
    assert result.exit_code == 0
    shown = CliRunner().invoke(app, ["curriculum", "show", str(tmp_path / "p.parquet"), "--schedule", "buckets",
                                     "--out", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "bucket 1" in shown.stderr and "bucket 3" in shown.stderr
    png = (tmp_path / "curriculum.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _curriculum_cli(*args: object):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pairforge", "curriculum", "show", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_curriculum_show_staged_without_stages_names_real_flags(tmp_path):
    """The staged schedule needs stages, which only a recipe gives: the error named a flag `--options` that does
    not exist; it names --schedule and says where stages come from."""
    from conftest import one_line_error

    pl.DataFrame({"prompt": ["p", "q"], "chosen": ["a", "b"], "rejected": ["c", "d"], "margin": [1.0, 2.0]}
                 ).write_parquet(tmp_path / "p.parquet")
    line = one_line_error(_curriculum_cli(tmp_path / "p.parquet", "--schedule", "staged", "--out", tmp_path),
                          "--schedule", "the staged schedule needs `stages`", "--run NAME")
    assert "--options" not in line


def test_curriculum_show_a_recipe_runs_staged_curriculum(tmp_path):
    """`--run NAME` shows that run's curriculum (its stages, batch size and pairs file, as `pairforge run` trains
    it), not the recipe's top-level train section, which it ignored."""
    import yaml

    from conftest import SAMPLE, one_line_error

    answers = [str(SAMPLE / f"{name}.json") for name in ("strong", "medium", "weak")]
    assert CliRunner().invoke(app, ["pairs", "build", *answers, "--rank", "strong > medium > weak",
                                    "--out", str(tmp_path / "run" / "pairs.parquet")]).exit_code == 0
    stages = [{"pair_types": ["strong>weak"]}, {"pair_types": ["medium>weak", "strong>medium"]}]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "prompts": answers[0],
        "sources": [{"name": n, "backend": "file", "path": a}
                    for n, a in zip(["strong", "medium", "weak"], answers, strict=True)],
        "train": {"curriculum": {"schedule": "sorted"}},
        "runs": [{"name": "sft", "method": "sft"},
                 {"name": "dpo", "batch_size": 5, "curriculum": {"schedule": "staged", "stages": stages}}]}))
    result = _curriculum_cli("--config", recipe, "--run", "dpo", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "curriculum: staged by strength-gap" in result.stderr
    assert re.search(r"stage 1: strong>weak\s*│\s*10\s*│\s*50\s*│", result.stderr), result.stderr  # batches of 5
    assert re.search(r"stage 2: medium>weak, strong>medium\s*│\s*20\s*│\s*100\s*│", result.stderr), result.stderr
    assert (tmp_path / "curriculum.png").exists()
    one_line_error(_curriculum_cli("--config", recipe, "--run", "nope"), "--run", "no run 'nope'", "runs: sft, dpo")
    one_line_error(_curriculum_cli("--run", "dpo"), "--run", "needs --config")


def test_a_random_order_needs_no_margin_column(tmp_path, tiny_model_dir):
    """A random order of a TRL pairs file (prompt/chosen/rejected, no margin): shown (no difficulty, no plot) and
    trained on, where both asked for the margin column that only its difficulty would have used."""
    from conftest import one_line_error, preference_rows
    from pairforge.training.curriculum import needs_difficulty, shown_difficulty

    frame = pl.DataFrame([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in preference_rows(12)])
    frame.write_parquet(tmp_path / "trl.parquet")
    result = _curriculum_cli(tmp_path / "trl.parquet", "--schedule", "random", "--batch-size", "4", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"all\s*│\s*3\s*│\s*12\s*│\s*-\s*│\s*-\s*│\s*-\s*│", result.stderr), result.stderr
    assert "no difficulty to plot" in result.stderr and not (tmp_path / "curriculum.png").exists()
    random = CurriculumConfig(schedule="random")
    assert not needs_difficulty(random) and np.isnan(shown_difficulty(frame, random, "trl.parquet")).all()
    assert needs_difficulty(CurriculumConfig(schedule="random", drop_hardest=0.2))
    one_line_error(_curriculum_cli(tmp_path / "trl.parquet", "--schedule", "sorted"), "trl.parquet",
                   "no column 'margin'")
    from pairforge.train_config import TrainConfig
    from pairforge.training.trainer import train

    trained = train(TrainConfig(model=str(tiny_model_dir), pairs=tmp_path / "trl.parquet", out=tmp_path / "run",
                                batch_size=4, max_length=64, max_steps=1, prompt_format="text",
                                curriculum={"schedule": "random"}), progress=False)
    assert trained.steps == 1
