"""The trainer consumes exactly the curriculum's order: staged, sorted, pacing; after resume; on 2 processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from conftest import preference_rows, rewind
from pairforge.train_config import CurriculumConfig, TrainConfig
from pairforge.training.curriculum import difficulty_of, order_batches
from pairforge.training.trainer import train

pytestmark = pytest.mark.slow

STAGED = {"schedule": "staged", "stages": [{"pair_types": ["easy"]}, {"pair_types": ["hard"], "restart_lr": True}]}


@pytest.fixture
def curriculum_pairs(tmp_path: Path) -> Path:
    rows = [{**r, "margin": 2.0 if r["pair_type"] == "easy" else 1.0} for r in preference_rows(40)]
    pl.DataFrame(rows).write_parquet(tmp_path / "pairs.parquet")
    return tmp_path / "pairs.parquet"


def settings(tiny_model_dir, pairs, out, curriculum, **overrides) -> TrainConfig:
    base = dict(model=str(tiny_model_dir), pairs=pairs, out=out, batch_size=4, lr=5e-3, max_length=64,
                warmup_ratio=0.0, epochs=2, curriculum=curriculum, seed=1)
    return TrainConfig(**{**base, **overrides})


def consumed(out: Path, rank: int = 0) -> list[list[int]]:
    return [json.loads(line)["rows"] for line in (out / f"consumed-{rank}.jsonl").read_text().splitlines()]


def expected(pairs: Path, curriculum: dict, batch: int, epochs: int = 2, seed: int = 1) -> list[list[int]]:
    frame = pl.read_parquet(pairs)
    cfg = CurriculumConfig(**curriculum)
    types = frame["pair_type"].to_list()
    return order_batches(difficulty_of(frame, cfg.difficulty), types, cfg, batch, epochs, seed).batches


@pytest.mark.parametrize("curriculum", [
    STAGED, {"schedule": "sorted"}, {"schedule": "pacing", "start_fraction": 0.3, "full_at": 0.5},
])
def test_trainer_consumes_the_plan(tiny_model_dir, curriculum_pairs, tmp_path, curriculum):
    out = tmp_path / "run"
    result = train(settings(tiny_model_dir, curriculum_pairs, out, curriculum), progress=False)
    assert consumed(out) == expected(curriculum_pairs, curriculum, 4)
    rows = [m for m in result.metrics if "train/loss" in m]
    if curriculum is STAGED:
        stages = [m["stage_name"] for m in rows]
        assert stages[0] == "stage 1: easy" and stages[-1] == "stage 2: hard"
        assert "train/rewards/accuracies/easy" in rows[0] and "train/rewards/accuracies/hard" in rows[-1]
        first_hard = next(m for m in rows if m["stage"] == 1)
        assert first_hard["lr"] == pytest.approx(5e-3)  # the learning rate restarted with the hard stage


def test_order_survives_resume_mid_stage(tiny_model_dir, curriculum_pairs, tmp_path):
    out = tmp_path / "run"
    cfg = settings(tiny_model_dir, curriculum_pairs, out, STAGED, save_steps=3, keep_checkpoints=10)
    train(cfg, progress=False)
    rewind(out, 3)  # back to step 3, inside stage 1
    resumed = train(cfg, progress=False)
    assert resumed.metrics[0]["step"] == 4 and resumed.metrics[0]["stage_name"] == "stage 1: easy"
    assert consumed(out) == expected(curriculum_pairs, STAGED, 4)


def test_two_processes_each_take_their_share_in_order(tiny_model_dir, curriculum_pairs, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"train": {"model": str(tiny_model_dir), "pairs": str(curriculum_pairs),
                                            "out": str(tmp_path / "two"), "batch_size": 2, "lr": 5e-3,
                                            "epochs": 2, "seed": 1, "max_length": 64, "curriculum": STAGED}}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
               "-m", "pairforge", "train", "--config", str(recipe)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shares = zip(consumed(tmp_path / "two", 0), consumed(tmp_path / "two", 1), strict=True)
    assert [a + b for a, b in shares] == expected(curriculum_pairs, STAGED, 4)


def test_reference_margin_matches_an_independent_computation(tiny_model_dir, curriculum_pairs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pairforge.sequences.tokenize import encode

    curriculum = {"schedule": "sorted", "difficulty": "reference-margin", "shuffle_within": False}
    out = tmp_path / "run"
    train(settings(tiny_model_dir, curriculum_pairs, out, curriculum, method="sft", epochs=1), progress=False)

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    margins = []
    for row in pl.read_parquet(curriculum_pairs).iter_rows(named=True):
        per_token = []
        for answer in (row["chosen"], row["rejected"]):
            seq = encode(tokenizer, row["prompt"], answer)
            ids = torch.tensor([seq.ids])
            with torch.no_grad():
                logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            picked = logps.gather(1, ids[0, 1:, None]).squeeze(1)[seq.answer_start - 1 :]
            per_token.append(float(picked.sum()) / len(picked))
        margins.append(-(per_token[0] - per_token[1]))
    order = [i for batch in consumed(out) for i in batch]
    assert order == sorted(range(len(margins)), key=lambda i: (margins[i], i))
    assert np.corrcoef(margins, range(len(margins)))[0, 1] != 1.0  # not just the file order


def test_staged_sft_and_dpo_runs_work(tiny_model_dir, curriculum_pairs, tmp_path):
    for method in ("sft", "dpo"):
        result = train(settings(tiny_model_dir, curriculum_pairs, tmp_path / method, STAGED, method=method),
                       progress=False)
        losses = [m["train/loss"] for m in result.metrics if "train/loss" in m]
        assert len(losses) == 20 and all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_curriculum_from_the_command_line(tiny_model_dir, curriculum_pairs, tmp_path):
    from typer.testing import CliRunner

    from pairforge.cli import app

    args = ["train", "--model", str(tiny_model_dir), "--pairs", str(curriculum_pairs), "--out", str(tmp_path / "r"),
            "--batch-size", "4", "--epochs", "1", "--seed", "1", "--curriculum", "sorted"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    order = [i for batch in consumed(tmp_path / "r") for i in batch]
    margins = pl.read_parquet(curriculum_pairs)["margin"].to_list()
    assert [margins[i] for i in order] == sorted(margins, reverse=True)  # big gap = easy = first


def test_phased_sft_trains_difficulty_stages_in_order(tiny_model_dir, tmp_path):
    """Phased instruction tuning: SFT on the chosen answers, staged by a difficulty column (a judge's score of
    each example, say); the trainer consumes the planned order — every row of the easy stage, then the rest."""
    rng = np.random.default_rng(3)
    rows = [{**r, "judged_difficulty": float(rng.uniform())} for r in preference_rows(40)]
    pairs = tmp_path / "sft.parquet"
    pl.DataFrame(rows).write_parquet(pairs)
    phased = {"schedule": "staged", "difficulty": "column:judged_difficulty",
              "stages": [{"difficulty": [0.0, 0.5]}, {"difficulty": [0.5, 1.0]}]}
    out = tmp_path / "run"
    result = train(settings(tiny_model_dir, pairs, out, phased, method="sft", epochs=1), progress=False)
    order = consumed(out)
    assert order == expected(pairs, phased, 4, epochs=1)
    easy = {i for i, r in enumerate(rows) if r["judged_difficulty"] < 0.5}
    seen = [i for batch in order for i in batch]
    assert set(seen[: len(easy)]) == easy and set(seen[len(easy):]) == set(range(40)) - easy
    names = [m["stage_name"] for m in result.metrics if "train/loss" in m]
    assert names[0].startswith("stage 1") and names[-1].startswith("stage 2")
