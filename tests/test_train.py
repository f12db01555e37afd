"""The training engine on the tiny random Llama: invariants, learning, resume, LoRA, bad input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook
from typer.testing import CliRunner

from conftest import preference_rows, rewind
from pairforge.cli import app
from pairforge.train_config import LoraSettings, TrainConfig
from pairforge.training.trainer import TrainingStopped, TrainResult, train

pytestmark = pytest.mark.slow


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    pl.DataFrame(preference_rows(48)).write_parquet(tmp_path / "pairs.parquet")
    pl.DataFrame(preference_rows(16, offset=1000)).write_parquet(tmp_path / "pairs.eval.parquet")
    return tmp_path / "pairs.parquet"


def config(tiny_model_dir: Path, pairs_file: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(model=str(tiny_model_dir), pairs=pairs_file, out=out, batch_size=8, lr=5e-3, beta=0.1,
                    max_length=64, warmup_ratio=0.0, seed=0)
    return TrainConfig(**{**settings, **overrides})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_starts_at_log2_with_zero_rewards(tiny_model_dir, pairs_file, tmp_path, precompute):
    result = train(config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1,
                          precompute_reference=precompute), progress=False)
    first = result.metrics[0]  # the precomputed reference saw the training forwards' shapes: exact, as live
    assert abs(first["train/loss"] - math.log(2)) <= 1e-7
    assert first["train/rewards/chosen"] == 0.0 and first["train/rewards/rejected"] == 0.0


@pytest.mark.parametrize("reference", ["precomputed", "live", "lora"])
def test_bf16_dpo_starts_at_log2_on_every_reference_path(tiny_model_dir, pairs_file, tmp_path, reference):
    """The reference pass runs where the policy runs, under the same autocast: with bf16 the first step is
    exactly policy == reference (loss ln 2, rewards 0), whichever way the reference is computed."""
    extra = {"precomputed": {"precompute_reference": True}, "live": {"precompute_reference": False},
             "lora": {"precompute_reference": False, "lora": LoraSettings(r=4, alpha=8)}}[reference]
    result = train(config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=1, dtype="bfloat16", **extra),
                   progress=False)
    first = result.metrics[0]
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["train/rewards/chosen"] == 0.0 and first["train/rewards/rejected"] == 0.0


def test_short_dpo_run_learns_held_out_preferences(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    result = train(config(tiny_model_dir, pairs_file, out, epochs=3), progress=False)
    final = [m for m in result.metrics if "eval/loss" in m][-1]
    assert final["eval/rewards/accuracies"] > 0.9  # chance is 0.5
    assert final["eval/rewards/accuracies/easy"] > 0.9 and final["eval/rewards/accuracies/hard"] > 0.9
    train_rows = [m for m in metrics(out) if "train/loss" in m]
    assert train_rows[-1]["train/loss"] < train_rows[0]["train/loss"] < math.log(2) + 1e-6
    assert {"grad_norm", "lr", "tokens_per_s", "train/rewards/margins/easy"} <= set(train_rows[0])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(out / "model")).config.num_hidden_layers == 2


def test_resume_continues_the_same_loss_curve(tiny_model_dir, pairs_file, tmp_path):
    settings = dict(epochs=2, save_steps=3, grad_accum=2, batch_size=4, keep_checkpoints=5, save_final_state=True)
    whole = train(config(tiny_model_dir, pairs_file, tmp_path / "whole", **settings), progress=False)
    cut = tmp_path / "cut"
    train(config(tiny_model_dir, pairs_file, cut, **settings), progress=False)
    consumed_before = (cut / "consumed-0.jsonl").read_text().splitlines()
    rewind(cut, 3)
    resumed = train(config(tiny_model_dir, pairs_file, cut, **settings), progress=False)

    def losses(out: Path) -> list[tuple[int, float]]:
        return [(m["step"], round(m["train/loss"], 6)) for m in metrics(out) if "train/loss" in m]

    assert losses(cut) == losses(tmp_path / "whole") and resumed.steps == whole.steps == 12
    assert [m["step"] for m in resumed.metrics if "train/loss" in m] == list(range(4, 13))  # only after step 3
    assert (cut / "consumed-0.jsonl").read_text().splitlines()[:6] == consumed_before[:6]  # 3 steps x 2 micro
    optimizer = torch.load(cut / "checkpoints" / "step-000012" / "optimizer.bin", weights_only=False)
    assert {float(v["step"]) for v in optimizer["state"].values()} == {12.0}  # Adam's count went on from 3


def test_a_resume_in_another_batch_order_is_refused(tiny_model_dir, tmp_path):
    """share_prompt may change on resume, but without a curriculum rows then group by other widths, and the
    checkpoint's micro-batch count would point at other pairs (some replayed, some never seen): refused in
    one line; the same order resumes."""
    import random

    from pairforge.errors import InputError

    rng = random.Random(0)
    words = ("yes", "no", "maybe", "a", "number", "it", "is")
    answer = lambda: " " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 24)))  # noqa: E731
    rows = [{"prompt": f"Question {i}?", "chosen": answer(), "rejected": answer()} for i in range(32)]
    pl.DataFrame(rows).write_parquet(tmp_path / "varied.parquet")
    cfg = config(tiny_model_dir, tmp_path / "varied.parquet", tmp_path / "run", batch_size=4, save_steps=2,
                 keep_checkpoints=5, max_steps=6, prompt_format="text")
    train(cfg, progress=False)
    rewind(tmp_path / "run", 2)
    with pytest.raises(InputError, match="expected step-000002 to continue this run's batch order"):
        train(cfg.model_copy(update={"share_prompt": False}), progress=False)
    assert train(cfg, progress=False).steps == 6


def test_train_returns_the_run_it_wrote_and_a_finished_run_reads_back_the_same(tiny_model_dir, pairs_file, tmp_path):
    """`train`'s result is what the run folder holds: the record (run.json) and the metric rows read back equal,
    and a finished run found again is the same run."""
    from pairforge.training.result import TrainResult

    trained = train(config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=2), progress=False)
    found = TrainResult.read(tmp_path / "run")
    assert found.info == trained.info and found.metrics == trained.metrics and found.steps == trained.steps == 2
    assert trained.info.method == "dpo" and trained.model == tmp_path / "run" / "model" and trained.seconds > 0
    assert [m["step"] for m in trained.train_rows] == [1, 2] and trained.eval_rows[-1]["step"] == 2
    again = train(config(tiny_model_dir, pairs_file, tmp_path / "run", max_steps=2), progress=False)
    assert again.already_trained and again.info == trained.info and again.steps == 2


def test_the_final_save_is_the_model_and_a_finished_run_is_not_trained_again(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    args = ["--model", tiny_model_dir, "--pairs", pairs_file, "--out", out, "--batch-size", "8", "--max-steps", "2"]
    first = run_train(*args)
    assert first.exit_code == 0 and "trained 2 steps" in first.output, first.output
    assert (out / "model" / "model.safetensors").exists() and not (out / "checkpoints").exists()
    seconds = json.loads((out / "run.json").read_text())["seconds"]  # where the run's time went
    assert list(seconds) == ["load", "reference", "setup", "train", "eval", "save"] and min(seconds.values()) >= 0
    logged = (out / "metrics.jsonl").read_text()
    again = run_train(*args)
    assert again.exit_code == 0 and "already trained" in again.output, again.output
    assert (out / "metrics.jsonl").read_text() == logged  # no second eval row, nothing retrained


def test_a_torn_last_log_line_from_a_crash_is_tolerated_and_repaired(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    args = ["--model", tiny_model_dir, "--pairs", pairs_file, "--out", out, "--batch-size", "8", "--max-steps", "4",
            "--save-steps", "2"]
    assert run_train(*args).exit_code == 0
    rewind(out, 2)
    for log in ("metrics.jsonl", "consumed-0.jsonl"):
        with (out / log).open("a") as handle:
            handle.write('{"step": 3, "train/lo')  # killed in the middle of an append
    report = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "report.html")])
    assert report.exit_code == 0, report.output
    resumed = run_train(*args)
    assert resumed.exit_code == 0, resumed.output
    assert [m["step"] for m in metrics(out) if "train/loss" in m] == [1, 2, 3, 4]  # every line parses again
    assert [json.loads(line)["micro"] for line in (out / "consumed-0.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, broken\n{"step": 3}\n')
    damaged = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "report.html")])
    assert damaged.exit_code == 2 and "metrics.jsonl line 2: not valid JSON" in damaged.stderr


def test_a_resume_with_other_data_or_settings_is_refused_until_fresh(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    common = ["--model", tiny_model_dir, "--out", out, "--batch-size", "8", "--max-length", "64", "--save-steps", "2"]
    assert run_train("--pairs", pairs_file, "--lr", "5e-3", *common, "--max-steps", "4").exit_code == 0
    rewind(out, 2)
    other = tmp_path / "other.parquet"
    pl.DataFrame(preference_rows(48, offset=500)).write_parquet(other)
    cases = [(["--pairs", other, "--lr", "5e-3", "--max-steps", "4"], "the pairs file's contents"),
             (["--pairs", pairs_file, "--lr", "5e-4", "--max-steps", "4"], "lr 0.005 -> 0.0005"),
             (["--pairs", pairs_file, "--lr", "5e-3", "--max-steps", "5"], "max_steps 4 -> 5")]
    for args, change in cases:
        result = run_train(*args, *common)
        assert result.exit_code == 2 and change in result.stderr and "--fresh" in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 5e-3  # nothing rewritten
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Is 5 a number?"}\n')
    result = run_train("--pairs", bad, "--lr", "5e-3", *common, "--max-steps", "4", "--fresh")
    assert result.exit_code == 2 and "bad.jsonl" in result.stderr, result.output
    assert any((out / "checkpoints").iterdir()) and (out / "run.json").exists()  # --fresh deletes once it can train
    fresh = run_train("--pairs", pairs_file, "--lr", "5e-4", *common, "--max-steps", "5", "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert [m["step"] for m in metrics(out) if "train/loss" in m] == [1, 2, 3, 4, 5]
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 5e-4


def test_lora_reference_is_the_untouched_base(tiny_model_dir, pairs_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    result = train(config(tiny_model_dir, pairs_file, out, lora=LoraSettings(r=4, alpha=8), epochs=2,
                          precompute_reference=False), progress=False)
    assert result.metrics[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-7)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(out / "model"))
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    with torch.no_grad(), tuned.disable_adapter():
        torch.testing.assert_close(tuned(input_ids=ids).logits, base(input_ids=ids).logits)
    with torch.no_grad():
        assert not torch.allclose(tuned(input_ids=ids).logits, base(input_ids=ids).logits)


@pytest.mark.parametrize("method", ["slic", "sft", {"dpo": 1.0, "sft": 0.2}, "ipo", "simpo"])
def test_other_methods_train(tiny_model_dir, pairs_file, tmp_path, method):
    result = train(config(tiny_model_dir, pairs_file, tmp_path / "run", method=method, epochs=2), progress=False)
    losses = [m["train/loss"] for m in result.metrics if "train/loss" in m]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_nan_loss_stops_with_a_checkpoint(tiny_model_dir, pairs_file, tmp_path):
    with pytest.raises(TrainingStopped, match="loss is (nan|inf).*last good state is in") as info:
        train(config(tiny_model_dir, pairs_file, tmp_path / "run", method="sft", lr=1e8, epochs=3,
                     max_grad_norm=1e30), progress=False)
    assert (Path(str(info.value).rsplit(" ", 1)[-1]) / "position.json").exists()


def test_a_loss_gone_infinite_mid_window_checkpoints_the_steps_start(tiny_model_dir, tmp_path):
    """With grad_accum 2, an infinite loss in the second micro-batch of step 1 saves the state of that step's
    start: its position is micro-batch 0, so a resume replays the whole window, not half of it."""
    rows = [{**row, "weight": 3e38 if 2 <= i <= 5 else 1.0} for i, row in enumerate(preference_rows(8))]
    pl.DataFrame(rows).with_row_index("margin").write_parquet(tmp_path / "heavy.parquet")
    cfg = config(tiny_model_dir, tmp_path / "heavy.parquet", tmp_path / "run", batch_size=2, grad_accum=2,
                 save_steps=1, curriculum={"schedule": "sorted"})  # rows 2-5 are micro-batches 1 and 2 either way
    with pytest.raises(TrainingStopped, match="loss is inf at step 1"):
        train(cfg, progress=False)
    consumed = (tmp_path / "run" / "consumed-0.jsonl").read_text().splitlines()
    assert len(consumed) == 2  # it stopped in micro-batch 1, the second of the window
    position = json.loads((tmp_path / "run" / "checkpoints" / "step-000000" / "position.json").read_text())
    assert (position["step"], position["micro_batches"]) == (0, 0)


def run_train(*args: str):
    return CliRunner().invoke(app, ["train", *map(str, args)])


def test_train_cli_bad_input(tiny_model_dir, pairs_file, tmp_path):
    pl.DataFrame({"prompt": ["p"], "chosen": ["c"]}).write_parquet(tmp_path / "no_rejected.parquet")
    pl.DataFrame({"prompt": [], "chosen": [], "rejected": []}, schema=dict.fromkeys(
        ["prompt", "chosen", "rejected"], pl.String)).write_parquet(tmp_path / "empty.parquet")
    model = ["--model", tiny_model_dir, "--out", tmp_path / "run"]
    cases = [
        (["--pairs", tmp_path / "no_rejected.parquet", *model], "missing column(s) rejected"),
        (["--pairs", tmp_path / "empty.parquet", *model], "file is empty"),
        (["--pairs", tmp_path / "empty.parquet", "--method", "ppo", *model], "unknown method ppo"),
        (["--pairs", tmp_path / "empty.parquet", "--beta", "0", *model], "--beta: Input should be greater than 0"),
        (["--pairs", pairs_file, "--model", tmp_path], "cannot load a tokenizer from it"),
    ]
    for args, message in cases:
        result = run_train(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_train_refuses_wrong_pairs_before_loading_a_model(tiny_model_dir, pairs_file, tmp_path):
    """Wrong types, NaN or negative weights and bad loss weights are one line each, checked at read time
    (the model folder given here does not even exist); identical pairs are left out and counted."""
    good = pl.read_parquet(pairs_file)
    files = {
        "number_chosen.jsonl": [{"prompt": "p", "chosen": 3, "rejected": "r"}],
        "null_chosen.jsonl": [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": None,
                                                                                   "rejected": "r"}],
        "string_weight.jsonl": [{"prompt": "p", "chosen": "c", "rejected": "r", "weight": "high"}],
    }
    for name, rows in files.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    good.with_columns(pl.lit(float("nan")).alias("weight")).write_parquet(tmp_path / "nan_weight.parquet")
    good.with_columns(pl.lit(-1.0).alias("weight")).write_parquet(tmp_path / "negative_weight.parquet")
    missing = ["--model", tmp_path / "no-such-model", "--out", tmp_path / "run"]
    cases = [
        ("number_chosen.jsonl", [], "line 1, field 'chosen': expected a string or a list of {role, content} "
                                    "messages, found number 3"),
        ("null_chosen.jsonl", [], "line 2, field 'chosen': expected a string or a list of chat messages, found "
                                  "nothing"),
        ("string_weight.jsonl", [], "line 1, field 'weight': expected a number, found string 'high'"),
        ("nan_weight.parquet", [], "row 1, field 'weight': expected a finite number, found number nan"),
        ("negative_weight.parquet", [], "row 1, field 'weight': expected a weight >= 0, found -1.0"),
        ("nan_weight.parquet", ["--method", "dpo=-1,sft=nan"], "expected finite loss weights >= 0"),
    ]
    for name, extra, message in cases:
        result = run_train("--pairs", tmp_path / name, *missing, *extra)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, (name, result.output)
        assert message.split(": expected")[0] in result.stderr and message.split(", found")[0].split(": ")[-1] \
            in result.stderr, (name, result.stderr)
    assert not (tmp_path / "run").exists()

    same = good.with_columns(pl.when(pl.int_range(pl.len()) < 40).then(pl.col("chosen")).otherwise(
        pl.col("rejected")).alias("rejected"))
    same.write_parquet(tmp_path / "same.parquet")
    result = run_train("--pairs", tmp_path / "same.parquet", "--model", tiny_model_dir, "--out", tmp_path / "run2",
                       "--batch-size", "4", "--max-steps", "1")
    assert result.exit_code == 0 and "left out of" in result.output and "40 chosen == rejected" in result.output
    run = json.loads((tmp_path / "run2" / "run.json").read_text())
    assert run["pairs"] == 8 and run["tokenize"]["dropped"] == {"chosen == rejected (no signal)": 40}
    every = good.with_columns(pl.col("chosen").alias("rejected"))
    every.write_parquet(tmp_path / "all_same.parquet")
    result = run_train("--pairs", tmp_path / "all_same.parquet", "--model", tiny_model_dir, "--out", tmp_path / "r3")
    assert result.exit_code == 2 and "no pair left to train on (48 chosen == rejected" in result.stderr


def test_two_cpu_processes_follow_the_one_process_curve(tiny_model_dir, pairs_file, tmp_path):
    """torchrun starts 2 gloo processes (accelerate's MULTI_CPU); with half the batch each they must
    see the same global batches, gradients and learning-rate schedule as 1 process with the full batch —
    also when the pairs' weights make one process's half weigh more than the other's."""
    import subprocess
    import sys

    weighted = tmp_path / "weighted.parquet"
    pl.read_parquet(pairs_file).with_columns(weight=pl.Series([1.0, 3.0, 0.5, 2.0] * 12)).write_parquet(weighted)
    common = ["--model", str(tiny_model_dir), "--pairs", str(weighted), "--lr", "5e-3", "--epochs", "2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                "-m", "pairforge", "train"]
    done = subprocess.run([*torchrun, *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_train(*common, "--batch-size", "8", "--out", tmp_path / "one").exit_code == 0

    def losses(out: Path) -> list[float]:
        return [round(m["train/loss"], 5) for m in metrics(out) if "train/loss" in m]

    assert len(losses(tmp_path / "one")) == 12  # 48 pairs / 8 x 2 epochs, logged once per step
    assert losses(tmp_path / "two") == losses(tmp_path / "one")


@pytest.mark.parametrize("lora", [None, LoraSettings(r=8, alpha=16, merge=True)], ids=["full", "lora"])
def test_reward_model_learns_to_rank_held_out_pairs(tiny_model_dir, pairs_file, tmp_path, lora):
    """Full fine-tuning and LoRA (a PEFT-wrapped classifier, merged on save) both train a usable judge."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rm"
    result = train(config(tiny_model_dir, pairs_file, out, method="reward-model", epochs=3, lr=1e-2, lora=lora),
                   progress=False)
    final = [m for m in result.metrics if "eval/loss" in m][-1]
    assert final["eval/rewards/accuracies"] > 0.9
    reward_model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert reward_model.config.num_labels == 1


def test_embedded_smollm2_lora_dpo_on_chat_pairs_and_cached_reference(tmp_path, pairforge_cache):
    """The real SmolLM2-135M-Instruct with its chat template: LoRA DPO starts at log 2; a second run
    (another beta) reuses the reference log-probs cached on disk instead of recomputing them."""
    from conftest import SAMPLE

    strong, weak = (json.loads((SAMPLE / f"{name}.json").read_text())[:8] for name in ("strong", "weak"))
    rows = [{"prompt": [{"role": "user", "content": s["instruction"]}],
             "chosen": [{"role": "assistant", "content": s["output"]}],
             "rejected": [{"role": "assistant", "content": w["output"]}], "pair_type": "strong>weak"}
            for s, w in zip(strong, weak, strict=True)]
    pl.DataFrame(rows).write_parquet(tmp_path / "chat.parquet")
    settings = dict(model="embedded", pairs=tmp_path / "chat.parquet", batch_size=4, max_steps=2, lr=1e-4,
                    lora=LoraSettings(r=8, alpha=16), max_length=192)
    def cached_rows() -> dict[Path, int]:  # other tests of the session may have cached this model's pairs too
        return {path: pl.read_parquet(path).height for path in (pairforge_cache / "reference").glob("*.parquet")}

    before = cached_rows()
    first = train(TrainConfig(out=tmp_path / "a", **settings), progress=False)
    assert first.metrics[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(m["train/loss"]) for m in first.metrics if "train/loss" in m)
    assert (tmp_path / "a" / "model" / "adapter_config.json").exists()
    caches = [path for path, rows in cached_rows().items() if rows != before.get(path, 0)]
    assert len(caches) == 1 and cached_rows()[caches[0]] - before.get(caches[0], 0) == 8
    stamp = caches[0].stat().st_mtime_ns
    train(TrainConfig(out=tmp_path / "b", beta=0.3, **settings), progress=False)
    assert caches[0].stat().st_mtime_ns == stamp  # nothing new to compute, nothing rewritten


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_finishes_the_same_curve(tiny_model_dir, pairs_file, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    args = ["--model", str(tiny_model_dir), "--pairs", str(pairs_file), "--lr", "5e-3", "--epochs", "12",
            "--batch-size", "8"]
    command = [sys.executable, "-m", "pairforge", "train", *args, "--out", str(tmp_path / "cut")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics_file = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics_file.exists() and metrics_file.read_text().count("\n") >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "checkpoint saved" in stderr
    stopped_at = len(metrics(tmp_path / "cut"))
    assert 3 <= stopped_at < 72
    assert run_train(*args, "--out", tmp_path / "cut").exit_code == 0
    assert run_train(*args, "--out", tmp_path / "whole").exit_code == 0

    def losses(out: Path) -> list[float]:
        return [round(m["train/loss"], 5) for m in metrics(out) if "train/loss" in m]

    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_gradient_checkpointing_weights_and_merge(tiny_model_dir, pairs_file, tmp_path):
    """Gradient checkpointing changes memory, not numbers; a zero-weight pair teaches nothing; a merged
    LoRA run saves a plain model folder."""
    from transformers import AutoModelForCausalLM

    def curve(out: Path, **overrides) -> list[float]:
        rows = train(config(tiny_model_dir, pairs_file, out, max_steps=3, **overrides), progress=False).metrics
        return [round(m["train/loss"], 5) for m in rows if "train/loss" in m]

    assert curve(tmp_path / "plain") == curve(tmp_path / "checkpointed", gradient_checkpointing=True)

    weighted = pl.read_parquet(pairs_file).with_columns(pl.lit(1.0).alias("weight"))
    flipped = weighted.with_columns(pl.col("rejected").alias("chosen"), pl.col("chosen").alias("rejected"),
                                    pl.lit(0.0).alias("weight"))
    pl.concat([weighted, flipped]).write_parquet(tmp_path / "weighted.parquet")
    (tmp_path / "weighted.eval.parquet").write_bytes(pairs_file.with_name("pairs.eval.parquet").read_bytes())
    result = train(config(tiny_model_dir, tmp_path / "weighted.parquet", tmp_path / "w", epochs=2), progress=False)
    assert [m for m in result.metrics if "eval/loss" in m][-1]["eval/rewards/accuracies"] > 0.9

    train(config(tiny_model_dir, pairs_file, tmp_path / "merged", max_steps=2,
                 lora=LoraSettings(r=4, alpha=8, merge=True)), progress=False)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged" / "model"))
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_the_optimised_path_trains_like_the_plain_one(tiny_model_dir, pairs_file, tmp_path):
    """forward pieces, lean blocks and the cached reference only change how the work is done: the same
    losses, margins and gradient norms as one forward per batch through the plain modules with a live
    reference copy (gradients of the pieces add up to the batch's)."""
    from pairforge.sequences.logprobs import forward_pieces

    whole = train(config(tiny_model_dir, pairs_file, tmp_path / "whole", max_steps=4, lean_blocks=False,
                         precompute_reference=False), progress=False)
    pieces = train(config(tiny_model_dir, pairs_file, tmp_path / "pieces", max_steps=4, forward_tokens=40),
                   progress=False)
    rows = [(a, b) for a, b in zip(whole.metrics, pieces.metrics, strict=True) if "train/loss" in a]
    assert len(rows) == 4
    for a, b in rows:
        for key in ("train/loss", "train/rewards/margins", "grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (key, a["step"])

    from pairforge.models import load_tokenizer
    from pairforge.sequences.tokenize import tokenize_pairs

    tokenized, _ = tokenize_pairs(pl.DataFrame(preference_rows(8)), load_tokenizer(str(tiny_model_dir)),
                                  max_length=64)
    split = forward_pieces(tokenized, 40, share=True)
    assert [p for piece in split for p in piece] == tokenized and len(split) > 1
    assert all(len(piece) == 1 or len(piece) * max(p.packed_length for p in piece) <= 40 for piece in split)


def _embedding_inputs(cfg: TrainConfig) -> tuple[TrainResult, set[int]]:
    """Train, recording every token id that enters an embedding layer (the model's whole input)."""
    seen: set[int] = set()

    def record(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, torch.nn.Embedding):
            seen.update(args[0].flatten().tolist())

    hook = register_module_forward_pre_hook(record)
    try:
        return train(cfg, progress=False), seen
    finally:
        hook.remove()


def test_plain_sft_trains_on_the_target_alone_as_the_full_path_would(tiny_model_dir, pairs_file, tmp_path):
    """SFT's loss reads the chosen answer only, so the rejected one never enters the model in training
    (its tokens ' idea' and ' sorry' appear in no input); the losses are those of the same objective
    computed with both answers present (sft + 0 x dpo)."""
    from pairforge.models import load_tokenizer

    only = tmp_path / "pairs_no_eval.parquet"  # held-out scoring reads both answers, by design: none here
    pl.read_parquet(pairs_file).with_row_index("margin").write_parquet(only)
    staged = {"schedule": "staged", "stages": [{"pair_types": ["easy"]}, {"pair_types": ["hard"]}]}
    common = dict(max_steps=5, precompute_reference=False, curriculum=staged)  # the same order for both
    sft, sft_inputs = _embedding_inputs(config(tiny_model_dir, only, tmp_path / "sft", method="sft", **common))
    both, both_inputs = _embedding_inputs(config(tiny_model_dir, only, tmp_path / "both",
                                                 method={"sft": 1.0, "dpo": 0.0}, **common))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rejected_only = {tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))[0] for word in (" idea", " sorry")}
    assert rejected_only <= both_inputs and not rejected_only & sft_inputs
    assert "train/rewards/margins" not in sft.metrics[0] and "train/logps/target" in sft.metrics[0]
    losses = [[m["train/loss"] for m in run.metrics if "train/loss" in m] for run in (sft, both)]
    assert len(losses[0]) == 5 and losses[0] == pytest.approx(losses[1], abs=1e-5)


def _first_step_gradient(cfg: TrainConfig) -> torch.Tensor:
    """Every trained parameter's gradient as the first optimiser step sees it (after accumulation)."""
    seen: list[torch.Tensor] = []

    def record(optimizer: torch.optim.Optimizer, *_: object) -> None:
        if not seen:
            seen.append(torch.cat([p.grad.flatten() for group in optimizer.param_groups for p in group["params"]]))

    hook = register_optimizer_step_pre_hook(record)
    try:
        train(cfg, progress=False)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_gradient_accumulation_weighs_every_pair_as_one_big_batch_would(tiny_model_dir, tmp_path, method):
    """5 weighted pairs in micro-batches of 2, 2 and 1 accumulated into one step give the gradient of one batch
    of the 5: a short micro-batch, or one whose pairs weigh less, does not count more per pair."""
    weights = [1.0, 3.0, 0.5, 2.0, 1.0]
    rows = [{**row, "weight": weight} for row, weight in zip(preference_rows(5), weights, strict=True)]
    pl.DataFrame(rows).write_parquet(tmp_path / "five.parquet")
    common = dict(method=method, max_grad_norm=1e9, epochs=1)
    whole = _first_step_gradient(config(tiny_model_dir, tmp_path / "five.parquet", tmp_path / "whole",
                                        batch_size=5, **common))
    accumulated = _first_step_gradient(config(tiny_model_dir, tmp_path / "five.parquet", tmp_path / "accumulated",
                                              batch_size=2, grad_accum=3, **common))
    assert whole.norm() > 0
    assert (accumulated - whole).norm() / whole.norm() < 1e-5


def _one_adamw_step(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes of the gradients and of AdamW's two moments after one real optimiser step, set up as the trainer
    sets it up (fused AdamW over the parameters that require grad). AdamW's per-tensor step counters (one
    scalar each) are not moments and are left out."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    ids = torch.arange(1, 17).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert len(optimizer.state) == len(trainable)  # every trained tensor has its state, the frozen ones none
    gradients = sum(p.grad.nbytes for p in trainable)
    moments = sum(t.nbytes for state in optimizer.state.values() for key, t in state.items() if key != "step")
    return gradients, moments


def test_memory_model_counts_what_each_setting_keeps(tiny_model_dir):
    """Each part of the memory model against what torch actually holds on the real tiny model: the weights
    as the trainer loads them in each dtype, gradients and AdamW state after a real optimiser step (full and
    LoRA), the frozen copy the trainer makes for a live reference, one fp32 [chunk, vocab] head buffer.
    The activation counts are measured against saved-tensor hooks in tests/test_lean.py; here, only how
    they scale."""
    from peft import LoraConfig, get_peft_model

    from pairforge.models import load_causal_lm
    from pairforge.training.memory import estimate

    def held(model: torch.nn.Module) -> int:
        return sum(p.nbytes for p in model.parameters())

    chunk = 16
    for dtype in ("float32", "bfloat16", "float16"):
        model, _ = load_causal_lm(str(tiny_model_dir), dtype)  # the trainer's loader
        parameters = sum(p.numel() for p in model.parameters())
        precomputed = estimate(model.config, parameters, parameters, forward_tokens=100, chunk_tokens=chunk,
                               dtype=dtype)
        live = estimate(model.config, parameters, parameters, forward_tokens=100, chunk_tokens=chunk, dtype=dtype,
                        live_reference_copy=True)
        assert precomputed.weights == held(model), dtype
        assert precomputed.reference == 0  # precomputed reference log-probs: no second model
        assert live.reference == held(copy.deepcopy(model).eval().requires_grad_(False)), dtype  # as trainer.py
        # the head: one [chunk, vocab] buffer in fp32 whatever the training dtype (as _HeadLogps keeps it)
        logits = torch.nn.functional.linear(torch.zeros(chunk, model.config.hidden_size, dtype=model.dtype),
                                            model.lm_head.weight)
        assert precomputed.head == logits.float().nbytes, dtype

    # full fine-tuning: every parameter's gradient and two moments (in the weights' dtype), measured after a
    # real step; bfloat16 weights keep bfloat16 gradients and moments
    for dtype in ("bfloat16", "float32"):
        model, _ = load_causal_lm(str(tiny_model_dir), dtype)
        parameters = sum(p.numel() for p in model.parameters())
        full = estimate(model.config, parameters, parameters, forward_tokens=100, chunk_tokens=chunk, dtype=dtype)
        full_gradients, full_moments = _one_adamw_step(model)
        assert (full.gradients, full.optimizer) == (full_gradients, full_moments), dtype
    head = chunk * model.config.vocab_size * torch.finfo(torch.float32).bits // 8
    assert full.total == full.runtime + held(model) + full_gradients + full_moments + full.activations + head

    # LoRA (the default all-linear adapter): all weights held, only the adapter's gradients and moments (peft
    # keeps the adapter in fp32 on a bfloat16 model)
    for dtype in ("bfloat16", "float32"):
        torch.manual_seed(0)
        base, _ = load_causal_lm(str(tiny_model_dir), dtype)
        lora_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        trainable = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
        lora = estimate(lora_model.config, sum(p.numel() for p in lora_model.parameters()), trainable,
                        forward_tokens=100, chunk_tokens=chunk, dtype=dtype)
        lora_gradients, lora_moments = _one_adamw_step(lora_model)
        assert lora.weights == held(lora_model), dtype
        assert (lora.gradients, lora.optimizer) == (lora_gradients, lora_moments), dtype
    assert lora_gradients + lora_moments < (full_gradients + full_moments) / 10  # what LoRA is for

    # activations: per token of the largest forward and per layer, fewer with lean blocks (counts: test_lean.py)
    halved = estimate(model.config, parameters, parameters, forward_tokens=50, chunk_tokens=chunk)
    assert halved.activations * 2 == full.activations > 0
    deeper = model.config.to_dict() | {"num_hidden_layers": 2 * model.config.num_hidden_layers}
    doubled = estimate(type(model.config)(**deeper), parameters, parameters, forward_tokens=100, chunk_tokens=chunk)
    assert doubled.activations == 2 * full.activations
    plain = estimate(model.config, parameters, parameters, forward_tokens=100, chunk_tokens=chunk, lean=False)
    assert full.activations < plain.activations
