"""pairforge from Python (`import pairforge as pf`): answers in a DataFrame give the pairs `pairs build` gives from
the file, the pairs go to TRL in memory, bad rows are one InputError naming row and field, and train, evaluate and
run take data in memory and return what they did."""

from __future__ import annotations

import copy
import json
import math
import pydoc
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

import pairforge as pf
from conftest import SAMPLE, preference_rows, sample_recipe
from pairforge.cli import app
from pairforge.errors import InputError
from pairforge.evaluation.leaderboard import Leaderboard

RANK = "gpt-4 > chatgpt > davinci"


def answers(prompts: int = 12) -> list[dict[str, Any]]:
    """Three sources of clearly different quality answering `prompts` prompts (long format)."""
    quality = {"gpt-4": "A careful, correct answer to", "chatgpt": "A short answer to", "davinci": "Something about"}
    return [{"prompt": f"Question {i}: why is the sky blue on day {i}?", "source": source, "response": f"{text} {i}."}
            for source, text in quality.items() for i in range(prompts)]


def cli_pairs(tmp_path: Path, rows: list[dict[str, Any]], *flags: str) -> Path:
    """`pairforge pairs build` on the rows as a JSONL file; returns the pairs file."""
    source = tmp_path / "answers.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "cli" / "pairs.parquet"
    result = CliRunner().invoke(app, ["pairs", "build", str(source), "--out", str(out), *flags])
    assert result.exit_code == 0, result.output
    return out


def in_memory(kind: str, rows: list[dict[str, Any]]) -> Any:
    if kind == "polars":
        return pl.DataFrame(rows)
    if kind == "pandas":
        return pd.DataFrame(rows)
    from datasets import Dataset

    return Dataset.from_list(rows)


@pytest.mark.parametrize("kind", ["polars", "pandas", "datasets"])
def test_answers_in_memory_give_the_pairs_the_command_gives_from_the_file(tmp_path: Path, kind: str) -> None:
    rows = answers()
    cli = cli_pairs(tmp_path, rows, "--rank", RANK, "--eval-fraction", "0.3")
    pairs = pf.build_pairs(in_memory(kind, rows), rank=RANK, eval_fraction=0.3)
    assert pairs.eval is not None and pairs.eval.height and pairs.train.height  # both splits hold pairs
    assert_frame_equal(pairs.train, pl.read_parquet(cli))
    assert_frame_equal(pairs.eval, pl.read_parquet(cli.with_name("pairs.eval.parquet")))
    assert pairs.summary.pairs == json.loads(cli.with_name("pairs.summary.json").read_text())["pairs"]


def test_pairs_write_writes_what_the_command_writes(tmp_path: Path) -> None:
    rows = answers()
    cli = cli_pairs(tmp_path, rows, "--rank", RANK, "--eval-fraction", "0.3")
    written = pf.build_pairs(tmp_path / "answers.jsonl", rank=RANK, eval_fraction=0.3).write(tmp_path / "api" /
                                                                                               "pairs.parquet").written
    assert [p.name for p in written] == ["pairs.parquet", "pairs.eval.parquet", "pairs.summary.json"]
    for path in written[:2]:
        assert path.read_bytes() == (cli.parent / path.name).read_bytes()
    summary = written[2].read_text().replace(str(tmp_path / "api"), str(tmp_path / "cli"))
    assert summary == cli.with_name("pairs.summary.json").read_text()


def test_a_dataframe_without_eval_split_has_no_eval(tmp_path: Path) -> None:
    pairs = pf.build_pairs(pl.DataFrame(answers(4)), rank=RANK)
    assert pairs.eval is None and list(pairs.to_dataset()) == ["train"]
    written = pairs.write(tmp_path / "pairs.jsonl").written
    summary = json.loads(written[-1].read_text())
    assert summary["inputs"] == [{"file": "<polars.DataFrame>", "records": 12, "format": "long"}]


def test_to_dataset_trains_trl_dpo_two_steps_in_memory(tmp_path: Path, embedded_tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    pairs = pf.build_pairs(pd.DataFrame(answers()), rank=RANK, eval_fraction=0.3)
    dataset = pairs.to_dataset()
    assert set(dataset) == {"train", "eval"} and dataset["train"].num_rows == pairs.train.height
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(embedded_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=embedded_tokenizer.pad_token_id,
        eos_token_id=embedded_tokenizer.eos_token_id))
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=2, per_device_train_batch_size=4, report_to=[],
                     save_strategy="no", logging_steps=1, use_cpu=True, max_length=128, dataset_num_proc=None)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=dataset["train"],
                         processing_class=embedded_tokenizer)
    assert trainer.train().global_step == 2
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


def test_a_missing_column_is_one_input_error_naming_the_frame() -> None:
    frame = pl.DataFrame(answers(3)).drop("response")
    with pytest.raises(InputError) as caught:
        pf.build_pairs(frame, rank=RANK)
    assert str(caught.value).startswith("<polars.DataFrame>") and "response" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_wrong_type_in_row_3_is_one_input_error_naming_row_and_field() -> None:
    rows = answers(3)
    rows[2]["response"] = 42
    with pytest.raises(InputError) as caught:
        pf.build_pairs(pd.DataFrame(rows), rank=RANK)
    assert (caught.value.location, caught.value.row, caught.value.field) == ("<pandas.DataFrame>", "row 3", "response")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("given", ["series", "dataset_dict", "nothing"])
def test_a_table_that_is_not_one_is_one_input_error(given: str) -> None:
    """A pandas Series, a DatasetDict (not one split of it) or an empty list: one line saying what was expected."""
    from datasets import Dataset, DatasetDict

    rows = answers(2)
    data = {"series": pd.Series([1, 2]), "dataset_dict": DatasetDict({"train": Dataset.from_list(rows)}),
            "nothing": []}[given]
    with pytest.raises(InputError, match="expected") as caught:
        pf.build_pairs(data, rank=RANK)
    assert "\n" not in str(caught.value)


def test_a_bad_setting_is_the_flags_one_line_error() -> None:
    with pytest.raises(InputError, match="eval-fraction"):
        pf.build_pairs(pl.DataFrame(answers(3)), rank=RANK, eval_fraction=1.5)


def test_train_on_pairs_in_memory_writes_a_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "dpo"
    result = pf.train(pl.DataFrame(preference_rows(8)), method="dpo", model=str(tiny_model_dir), out=out,
                      max_steps=2, batch_size=4, max_length=64, progress=False)
    assert result.steps == 2 and (out / "model" / "config.json").exists()
    saved = Path(json.loads((out / "run.json").read_text())["config"]["pairs"])  # the run's pairs, by content
    assert saved.parent == out and saved.name.startswith("pairs-")
    assert_frame_equal(pl.read_parquet(saved), pl.DataFrame(preference_rows(8)))


def test_other_pairs_trained_into_a_finished_runs_folder_leave_its_pairs_file(tmp_path: Path,
                                                                                tiny_model_dir: Path) -> None:
    """A second `train` of other pairs into the same folder is refused (other settings) and the first run's pairs
    file, which its run.json names, is still the one it trained on (it was overwritten before the refusal)."""
    out = tmp_path / "dpo"
    settings = {"method": "dpo", "model": str(tiny_model_dir), "out": out, "max_steps": 1, "batch_size": 4,
                "max_length": 64, "progress": False}
    pf.train(pl.DataFrame(preference_rows(8)), **settings)
    first = Path(json.loads((out / "run.json").read_text())["config"]["pairs"])
    with pytest.raises(InputError, match="other settings"):
        pf.train(pl.DataFrame(preference_rows(6)), **settings)
    assert_frame_equal(pl.read_parquet(first), pl.DataFrame(preference_rows(8)))


def test_train_runs_in_a_worker_thread(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Only the main thread may catch Ctrl-C: training from a thread pool (a notebook's worker) trains all the same."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(pf.train, pl.DataFrame(preference_rows(8)), method="dpo", model=str(tiny_model_dir),
                             out=tmp_path / "dpo", max_steps=1, batch_size=4, max_length=64, progress=False).result()
    assert result.steps == 1


def test_a_filtered_dataset_gives_only_the_rows_it_shows() -> None:
    """`Dataset.filter` / `.select` keep the whole table and an indices mapping: the rows shown are the ones read."""
    from datasets import Dataset

    rows = answers()
    kept = Dataset.from_list(rows).filter(lambda row: row["prompt"] in {rows[0]["prompt"], rows[3]["prompt"]})
    pairs = pf.build_pairs(kept, rank=RANK)
    assert pairs.summary.prompts == 2 and pairs.summary.responses == kept.num_rows


def test_train_refuses_bad_pairs_in_memory_before_writing(tmp_path: Path) -> None:
    rows = preference_rows(4)
    rows[2]["chosen"] = None
    with pytest.raises(InputError) as caught:
        pf.train(pd.DataFrame(rows), out=tmp_path / "dpo")
    assert (caught.value.row, caught.value.field) == ("row 3", "chosen")
    assert not (tmp_path / "dpo").exists()


def test_evaluate_outputs_in_memory_writes_a_leaderboard(tmp_path: Path) -> None:
    board = pf.evaluate(outputs={"close": pd.read_json(SAMPLE / "medium.json"),
                                 "weak": pl.read_json(SAMPLE / "weak.json")},
                        reference=pl.read_json(SAMPLE / "strong.json"), judge="similarity", out=tmp_path / "eval",
                        bootstrap=200, progress=False)
    assert [m.model for m in board.models] == ["close", "weak"] and board.prompts == 50
    assert Leaderboard.read(tmp_path / "eval" / "leaderboard.json") == board
    saved = {p.name for p in (tmp_path / "eval").iterdir()}  # tables saved as <name>.outputs.*, never as eval.parquet
    assert {"close.outputs.jsonl", "weak.outputs.parquet", "reference.parquet"} <= saved
    table = board.to_polars()
    assert table["model"].to_list() == ["close", "weak"] and table["value"][0] > table["value"][1]
    assert (table["low"] <= table["value"]).all() and (table["value"] <= table["high"]).all()


def test_run_from_python_returns_what_it_did(tmp_path: Path) -> None:
    recipe = sample_recipe(tmp_path, runs=[])
    result = pf.run(recipe, to_stage="pairs")
    assert [s.stage for s in result.stages] == ["generate", "pairs"]
    assert result.pairs == tmp_path / "run" / "pairs.parquet" and result.pairs.exists()
    again = pf.run(pf.Recipe.load(recipe), to_stage="pairs")  # a Recipe in memory runs in its run_dir
    assert {s.status for s in again.stages} == {"skipped"} and again.run_dir == result.run_dir


def test_the_api_is_listed_by_help_and_loads_lazily() -> None:
    text = pydoc.render_doc(pf, renderer=pydoc.plaintext)
    for name in pf.__all__:
        assert f"{name}(" in text or f"class {name}" in text, name
    assert "Preference pairs from `answers`" in text  # the docstrings, not only the names
    code = "import sys, pairforge; assert not {'polars', 'torch'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_stage_package_imported_leaves_the_function_its_name() -> None:
    import pairforge.evaluation.compare  # noqa: F401 - Python sets a subpackage on its parent on import
    import pairforge.training.trainer  # noqa: F401

    assert callable(pf.train) and callable(pf.evaluate) and pf.train.__module__ == "pairforge.api.post_training"


def test_a_filter_given_keeps_the_other_filters() -> None:
    rows = answers(4)
    rows[0]["response"] = "Human: " + rows[0]["response"]  # a role marker: dropped by the default filter
    pairs = pf.build_pairs(pl.DataFrame(rows), rank=RANK, filters={"min_length": 1})
    assert pairs.config.filters.min_length == 1 and pairs.config.filters.role_markers
    assert pairs.train.height == 3 * 3 + 1  # the prompt whose best answer was dropped pairs the other two


def test_generate_from_python_holds_the_folder_and_returns_its_answers(tmp_path: Path) -> None:
    from pairforge.folder_lock import held
    from pairforge.layout import RunDir

    recipe = sample_recipe(tmp_path, runs=[])
    with held(RunDir(tmp_path / "run").lock, "--out"), pytest.raises(InputError, match="--out"):
        pf.generate(recipe, tmp_path / "run")  # another command writes there
    result = pf.generate(recipe, tmp_path / "run")
    assert result.exported == 16 and result.failed == 0  # 8 prompts, 2 sources
    assert pl.read_parquet(result.responses)["source"].unique().sort().to_list() == ["strong", "weak"]


@pytest.mark.parametrize("outputs", ["unnamed", "bare"])
def test_evaluate_outputs_need_a_name_each(tmp_path: Path, outputs: str) -> None:
    """A table in a list, or a table alone, has no model name: one line, nothing saved (was 'None.parquet')."""
    table = pl.read_json(SAMPLE / "weak.json")
    given = [table] if outputs == "unnamed" else table
    with pytest.raises(InputError, match="outputs"):
        pf.evaluate(outputs=given, reference=SAMPLE / "strong.json", out=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_train_into_a_run_folder_in_use_is_refused_like_the_command(tmp_path: Path) -> None:
    """`pf.train(out=<run>/train/NAME)` holds the run folder as `pairforge train` does: while another writer holds
    it, one line naming the folder, and nothing trained."""
    from pairforge.folder_lock import held
    from pairforge.layout import RunDir

    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)  # a run folder (pairforge run's markers live here)
    with held(RunDir(run).lock, "run_dir"), pytest.raises(InputError, match="in use") as caught:
        pf.train(pl.DataFrame(preference_rows(4)), out=run / "train" / "dpo", max_steps=1, progress=False)
    assert caught.value.location == "--out" and str(run) in str(caught.value)
    assert not (run / "train" / "dpo" / "model").exists()
