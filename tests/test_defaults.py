"""Defaults a user who sets nothing gets: LoRA's own learning rate, the machine's fast dtype for generation and
evaluation (resolved before it keys a cache), one default per eval flag, the train flags for dtype / LoRA rank /
trackers, and a finished run extended with more steps from its saved final state."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import one_line_error, preference_rows
from pairforge.cli import app
from pairforge.config import EvalConfig, SourceConfig
from pairforge.train_config import LoraSettings, TrainConfig
from pairforge.training.trainer import train


def fast_dtype() -> str:
    """The documented rule, written out again: bfloat16 where the device computes it natively (a CUDA GPU that
    says so; a CPU with AVX512-BF16 or AMX), float32 elsewhere."""
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def run_cli(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    pl.DataFrame(preference_rows(48)).write_parquet(tmp_path / "pairs.parquet")
    return tmp_path / "pairs.parquet"


def config(tiny_model_dir: Path, pairs_file: Path, out: Path, **overrides: Any) -> TrainConfig:
    settings = dict(model=str(tiny_model_dir), pairs=pairs_file, out=out, batch_size=8, max_length=64,
                    warmup_ratio=0.0, schedule="constant", seed=0)
    return TrainConfig(**{**settings, **overrides})


def train_rows(out: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]


# --- the learning rate -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("lora", "expected"), [(None, 5e-7), (LoraSettings(r=4, alpha=8), 1e-4)])
def test_lr_unset_is_5e_7_for_full_fine_tuning_and_1e_4_with_lora(tiny_model_dir: Path, pairs_file: Path,
                                                                   tmp_path: Path, lora: Any, expected: float) -> None:
    out = tmp_path / "run"
    train(config(tiny_model_dir, pairs_file, out, max_steps=1, lora=lora), progress=False)
    assert train_rows(out)[0]["lr"] == expected  # the rate the optimiser stepped with
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == expected  # recorded as used


# --- dtype and batch size for generation and evaluation ----------------------------------------------------------

def test_auto_dtype_is_resolved_before_it_keys_the_answers(tiny_model_dir: Path) -> None:
    from pairforge.generation.answers import source_requests

    prompts = pl.DataFrame({"prompt_id": ["a"], "prompt": ["Name a colour."]})
    local = SourceConfig(name="s", model=str(tiny_model_dir))
    assert local.dtype == "auto" and local.cache_settings()["dtype"] == fast_dtype()
    pinned = local.model_copy(update={"dtype": fast_dtype()})
    assert source_requests(local, prompts, 1)[0].key == source_requests(pinned, prompts, 1)[0].key
    served = SourceConfig(name="s", backend="openai", model="m", base_url="http://127.0.0.1:1/v1")
    assert served.cache_settings()["dtype"] == "float32"  # no weights here: the key its stores always held
    assert EvalConfig().dtype == "auto" and SourceConfig().batch_size == EvalConfig().batch_size == 32


@pytest.mark.slow
def test_an_evaluation_records_the_dtype_it_ran_in(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pairforge.config import JudgeConfig
    from pairforge.evaluation.compare import EvalSettings, evaluate

    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps([{"instruction": f"Name fruit {i}.", "output": "An apple.", "generator": "ref"}
                                     for i in range(3)]))
    evaluate([f"tiny={tiny_model_dir}"], [], reference, JudgeConfig(kind="similarity", reference="reference"),
             tmp_path / "eval", settings=EvalSettings(max_new_tokens=4, bootstrap=100), show_progress=False)
    settings = json.loads((tmp_path / "eval" / "leaderboard.json").read_text())["config"]["settings"]
    assert settings["dtype"] == fast_dtype() and settings["batch_size"] == EvalConfig().batch_size


def test_eval_flags_default_to_the_eval_sections_defaults() -> None:
    """`pairforge eval`, `EvalSettings` (the Python API) and a recipe's `eval:` section agree on every default."""
    from pairforge.cli.pipeline_commands import eval_command
    from pairforge.evaluation.compare import EvalSettings

    flags = {name: parameter.default.default for name, parameter in inspect.signature(eval_command).parameters.items()}
    for name in ("max_new_tokens", "temperature", "bootstrap", "batch_size", "dtype"):  # --judge, --reference: own
        assert flags[name] in (None, EvalConfig.model_fields[name].default), (name, flags[name])  # None: the section's
    for field in fields(EvalSettings):
        if field.name in EvalConfig.model_fields:
            assert field.default == EvalConfig.model_fields[field.name].default, field.name


# --- flags ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_takes_dtype_lora_rank_and_report_to_flags(tiny_model_dir: Path, pairs_file: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_cli("train", "--model", tiny_model_dir, "--pairs", pairs_file, "--out", out, "--max-length", 64,
                     "--max-steps", 1, "--lora", "--lora-rank", 4, "--dtype", "bfloat16", "--report-to", "tensorboard")
    assert result.exit_code == 0, result.output
    used = json.loads((out / "run.json").read_text())["config"]
    assert (used["lora"]["r"], used["dtype"], used["report_to"], used["lr"]) == (4, "bfloat16", ["tensorboard"], 1e-4)
    one_line_error(run_cli("train", "--pairs", pairs_file, "--out", tmp_path / "x", "--lora-rank", 0),
                   "--lora-rank", "greater than or equal to 1")


def test_generate_takes_a_dtype_flag_for_its_local_sources(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pairforge.generation.answers import source_requests
    from pairforge.records import prompts_from_file

    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Name a colour."}\n')
    source = {"name": "tiny", "model": str(tiny_model_dir), "max_new_tokens": 2, "temperature": 0}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prompts": "prompts.jsonl", "sources": [source]}))
    result = run_cli("generate", recipe, "--out", tmp_path / "out", "--dtype", "float16")
    assert result.exit_code == 0, result.output
    from pairforge.requests.store import Store

    key = source_requests(SourceConfig(**source, dtype="float16"), prompts_from_file(tmp_path / "prompts.jsonl"),
                          1)[0].key
    store = Store(tmp_path / "out" / "store.sqlite")
    assert key in store.get([key])  # answered in float16
    store.close()
    one_line_error(run_cli("generate", recipe, "--out", tmp_path / "out", "--dtype", "fp8"), "--dtype")


# --- extending a finished run --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("first", "more"), [({"max_steps": 2}, {"max_steps": 4}), ({}, {"epochs": 2})])
def test_a_finished_run_with_its_final_state_is_extended(tiny_model_dir: Path, pairs_file: Path, tmp_path: Path,
                                                         first: dict[str, int], more: dict[str, int]) -> None:
    """More steps (or epochs) on a finished run whose final state was saved continue it: the same losses as a run
    planned that long from the start (constant schedule), and only the new steps are trained."""
    whole = tmp_path / "whole"
    train(config(tiny_model_dir, pairs_file, whole, lr=5e-3, **more), progress=False)
    out = tmp_path / "run"
    done = train(config(tiny_model_dir, pairs_file, out, lr=5e-3, save_final_state=True, **first), progress=False)
    extended = train(config(tiny_model_dir, pairs_file, out, lr=5e-3, save_final_state=True, **more), progress=False)
    assert not extended.already_trained
    assert [m["step"] for m in extended.metrics if "train/loss" in m] == list(range(done.steps + 1, extended.steps + 1))
    assert [(r["step"], round(r["train/loss"], 6)) for r in train_rows(out)] == \
        [(r["step"], round(r["train/loss"], 6)) for r in train_rows(whole)]


def test_an_extension_trains_every_added_step_at_the_new_schedules_rate(tiny_model_dir: Path, pairs_file: Path,
                                                                      tmp_path: Path) -> None:
    """A linear schedule extended from 2 to 4 steps: steps 3 and 4 use the rates of a run planned for 4 steps (the
    first added step too, not the old schedule's final rate of 0)."""
    settings = dict(lr=5e-3, schedule="linear", save_final_state=True)
    whole = train(config(tiny_model_dir, pairs_file, tmp_path / "whole", max_steps=4, **settings), progress=False)
    train(config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=2, **settings), progress=False)
    extended = train(config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=4, **settings), progress=False)
    assert [(m["step"], m["lr"]) for m in extended.metrics if "train/loss" in m] == \
        [(m["step"], m["lr"]) for m in whole.metrics if "train/loss" in m][2:] == [(3, 2.5e-3), (4, 1.25e-3)]


@pytest.mark.slow
def test_a_finished_run_without_its_final_state_is_not_extended(tiny_model_dir: Path, pairs_file: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--model", tiny_model_dir, "--pairs", pairs_file, "--out", out, "--max-length", 64]
    assert run_cli("train", *args, "--max-steps", 2).exit_code == 0
    line = one_line_error(run_cli("train", *args, "--max-steps", 4), "max_steps 2 -> 4", "final state was not saved",
                          "--fresh", "save_final_state")
    assert "run.json" not in line and json.loads((out / "run.json").read_text())["finished_step"] == 2


def pipeline_recipe(tmp_path: Path, tiny_model_dir: Path, **run: Any) -> tuple[Path, Path]:
    """A recipe of one DPO run on the sample's 8 prompts, whose final state is saved: (its file, its run folder)."""
    from conftest import sample_recipe

    path = sample_recipe(tmp_path, [{"name": "dpo", "model": str(tiny_model_dir), "max_length": 64, "batch_size": 4,
                                     "save_final_state": True, **run}])
    return path, tmp_path / "run" / "train" / "dpo"


def pairforge_run(recipe: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pairforge", "run", str(recipe)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_a_pipeline_run_given_more_steps_continues_its_finished_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`pairforge run` after raising a run's max_steps: the run continues from its saved final state (its first
    step's log line and checkpoint kept) instead of starting over."""
    out = tmp_path / "run" / "train" / "dpo"
    for steps in (1, 2):
        path, out = pipeline_recipe(tmp_path, tiny_model_dir, max_steps=steps)
        pairforge_run(path)
        if steps == 1:
            first_line = (out / "metrics.jsonl").read_text().splitlines()[0]
    assert [r["step"] for r in train_rows(out)] == [1, 2]
    assert (out / "metrics.jsonl").read_text().splitlines()[0] == first_line  # step 1 not trained again
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


@pytest.mark.slow
def test_an_interrupted_extension_is_resumed_by_the_next_pipeline_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Ctrl-C during an extension, then `pairforge run` again: the extension resumes from its checkpoint; the
    original steps are not trained again (the folder is not cleared although the stage began as a fresh start)."""
    import signal
    import subprocess
    import sys
    import time

    path, out = pipeline_recipe(tmp_path, tiny_model_dir, max_steps=1, epochs=20, batch_size=1, save_steps=1)
    pairforge_run(path)
    first_line = (out / "metrics.jsonl").read_text().splitlines()[0]
    path, out = pipeline_recipe(tmp_path, tiny_model_dir, max_steps=60, epochs=20, batch_size=1, save_steps=1)
    process = subprocess.Popen([sys.executable, "-m", "pairforge", "run", str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / "step-000003" / "position.json").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    stopped_at = train_rows(out)[-1]["step"]
    assert 3 <= stopped_at < 60 and "finished_step" not in json.loads((out / "run.json").read_text())
    pairforge_run(path)
    assert [r["step"] for r in train_rows(out)] == list(range(1, 61))
    assert (out / "metrics.jsonl").read_text().splitlines()[0] == first_line  # step 1 not trained again


@pytest.mark.slow
def test_more_epochs_of_a_pacing_curriculum_train_the_run_again(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A pacing curriculum spreads its pool's growth over all epochs, so more epochs change the batches already
    trained: not an extension; the pipeline's changed settings start the run over (as any other change does)."""
    paced = {"schedule": "pacing", "start_fraction": 0.5}
    path, out = pipeline_recipe(tmp_path, tiny_model_dir, batch_size=1, epochs=1, curriculum=paced)
    pairforge_run(path)
    first_line = (out / "metrics.jsonl").read_text().splitlines()[0]
    path, out = pipeline_recipe(tmp_path, tiny_model_dir, batch_size=1, epochs=2, curriculum=paced)
    pairforge_run(path)
    steps = [r["step"] for r in train_rows(out)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) == 2 * 8
    assert (out / "metrics.jsonl").read_text().splitlines()[0] != first_line  # trained again from step 1
