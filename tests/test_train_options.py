"""Training options no other test touches, each checked against a value computed here from its documented
definition: every loss's step-1 value and gradient (so the named loss is the one trained, with the settings
passed through), the learning-rate schedules, weight decay, eval/logging steps, report_to, a `target` column,
the default length-grouped order, the "no full optimiser step" error and `train --config --run`."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import one_line_error, preference_rows
from pairforge.cli import app
from pairforge.train_config import TrainConfig
from pairforge.training.trainer import train

pytestmark = pytest.mark.slow

TARGET = "reference_answer"  # a likelihood-target column whose text differs from the chosen answer


def config(tiny_model_dir: Path, pairs_file: Path, out: Path, **overrides: Any) -> TrainConfig:
    settings = dict(model=str(tiny_model_dir), pairs=pairs_file, out=out, batch_size=8, lr=5e-3, beta=0.1,
                    max_length=64, warmup_ratio=0.0, seed=0)
    return TrainConfig(**{**settings, **overrides})


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def consumed(out: Path) -> list[list[int]]:
    return [json.loads(line)["rows"] for line in (out / "consumed-0.jsonl").read_text().splitlines()]


def run_cli(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def one_thread():
    """On a busy 2-core machine the tiny model's forward passes ran ~100x slower with 2 torch threads than with 1
    (threads waiting for each other); one thread changes no result beyond rounding."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def target_pairs(tmp_path: Path) -> Path:
    """16 pairs with a likelihood-target column whose answers are neither the chosen nor the rejected ones."""
    rows = [{**row, TARGET: f" Certainly: {i} is a whole number, so yes."}
            for i, row in enumerate(preference_rows(16))]
    pl.DataFrame(rows).write_parquet(tmp_path / "pairs.parquet")
    return tmp_path / "pairs.parquet"


# --- 1. each loss is the one trained, with its settings passed through -----------------------------------

# The module docstring of src/pairforge/training/losses.py, written out again with D = logp - ref (ref = the
# untrained policy, so D is 0 in value but carries the policy's gradient), z = b (Dc - Dr), e = label_smoothing.
FORMULAS = {
    "dpo": lambda v, s: -F.logsigmoid(v["z"]),
    "cdpo": lambda v, s: -(1 - s["e"]) * F.logsigmoid(v["z"]) - s["e"] * F.logsigmoid(-v["z"]),
    "robust": lambda v, s: (-(1 - s["e"]) * F.logsigmoid(v["z"]) + s["e"] * F.logsigmoid(-v["z"])) / (1 - 2 * s["e"]),
    "hinge": lambda v, s: torch.relu(1 - v["z"]),
    "ipo": lambda v, s: (v["Dc"] / v["nc"] - v["Dr"] / v["nr"] - 1 / (2 * s["b"])) ** 2,
    "apo_zero": lambda v, s: (1 - torch.sigmoid(s["b"] * v["Dc"])) + torch.sigmoid(s["b"] * v["Dr"]),
    "apo_down": lambda v, s: torch.sigmoid(s["b"] * v["Dc"]) + (1 - torch.sigmoid(v["z"])),
    "simpo": lambda v, s: -F.logsigmoid(s["b"] * v["lc"] / v["nc"] - s["b"] * v["lr"] / v["nr"] - s["gamma"]),
    "r-dpo": lambda v, s: -F.logsigmoid(v["z"] + s["alpha"] * (v["nc"] - v["nr"])),
    "slic": lambda v, s: torch.relu(s["delta"] - (v["lc"] - v["lr"]))
    + s["lam"] * (-v["lt"] if s["slic_nll"] == "sum" else -v["lt"] / v["nt"]),
    "sft": lambda v, s: -v["lt"] / v["nt"],
}

# (method, settings): each value is chosen so that a setting not passed through changes the step-1 loss or
# the step-1 gradient norm (cdpo/robust are ln 2 at step 1 whatever e is, but their gradient is (1-2e) and
# 1/(1-2e) times DPO's).
CASES = {
    "dpo": ("dpo", {}),
    "cdpo": ("cdpo", {"label_smoothing": 0.2}),
    "robust": ("robust", {"label_smoothing": 0.2}),
    "hinge": ("hinge", {"beta": 0.3}),
    "ipo": ("ipo", {"beta": 0.25}),
    "apo_zero": ("apo_zero", {"beta": 0.3}),
    "apo_down": ("apo_down", {"beta": 0.3}),
    "simpo": ("simpo", {"beta": 0.5, "gamma": 2.0}),
    "r-dpo": ("r-dpo", {"alpha": 0.1}),
    "slic": ("slic", {"delta": 3.0, "lam": 0.3}),
    "slic-mean": ("slic", {"delta": 3.0, "lam": 0.3, "slic_nll": "mean"}),
    "slic-target": ("slic", {"lam": 0.3, "target": TARGET}),
    "sft-target": ("sft", {"target": TARGET}),
    "dpo+sft": ({"dpo": 1.0, "sft": 0.2}, {}),
}


def step_one(tiny_model_dir: Path, frame: pl.DataFrame, rows: list[int], method: str | dict[str, float],
             cfg: TrainConfig) -> tuple[float, float, dict[str, torch.Tensor]]:
    """The untrained model's loss on `rows` by the documented formulas, and its gradient's norm, from a plain
    Hugging Face forward pass per answer (no pairforge log-prob code)."""
    from transformers import AutoModelForCausalLM

    from pairforge.models import load_tokenizer
    from pairforge.sequences.tokenize import tokenize_pairs

    tokenizer = load_tokenizer(str(tiny_model_dir))
    target = cfg.target if cfg.target != "chosen" else None
    tokenized, _ = tokenize_pairs(frame, tokenizer, max_length=cfg.max_length, target_column=target)
    by_row = {p.index: p for p in tokenized}
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    def answer_logp(seq) -> torch.Tensor:
        ids = torch.tensor([seq.ids])
        logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        return logps.gather(1, ids[0, 1:, None]).squeeze(1)[seq.answer_start - 1 :].sum()

    pairs = [by_row[i] for i in rows]
    lc = torch.stack([answer_logp(p.chosen) for p in pairs])
    lr = torch.stack([answer_logp(p.rejected) for p in pairs])
    targets = [p.target or p.chosen for p in pairs]
    lt = torch.stack([answer_logp(t) for t in targets])
    v = {"lc": lc, "lr": lr, "lt": lt, "Dc": lc - lc.detach(), "Dr": lr - lr.detach(),
         "nc": torch.tensor([float(p.chosen.answer_tokens) for p in pairs]),
         "nr": torch.tensor([float(p.rejected.answer_tokens) for p in pairs]),
         "nt": torch.tensor([float(t.answer_tokens) for t in targets])}
    v["z"] = cfg.beta * (v["Dc"] - v["Dr"])
    s = {"b": cfg.beta, "e": cfg.label_smoothing, "gamma": cfg.gamma, "alpha": cfg.alpha, "delta": cfg.delta,
         "lam": cfg.lam, "slic_nll": cfg.slic_nll}
    weights = {method: 1.0} if isinstance(method, str) else method
    loss = sum(w * FORMULAS[name](v, s) for name, w in weights.items()).mean()
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    return float(loss.detach()), float(grad_norm), {k: t.detach() for k, t in v.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_each_loss_is_the_one_trained_with_its_settings(tiny_model_dir, target_pairs, tmp_path, case):
    """Step 1 (policy == reference): the logged loss and gradient norm are the named loss's, computed here
    from its documented formula with the run's settings on the same pairs."""
    method, settings = CASES[case]
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, target_pairs, out, method=method, max_steps=1, **settings)
    first = train(cfg, progress=False).metrics[0]
    loss, grad_norm, v = step_one(tiny_model_dir, pl.read_parquet(target_pairs), consumed(out)[0], method, cfg)
    assert first["train/loss"] == pytest.approx(loss, abs=2e-5)
    assert first["grad_norm"] == pytest.approx(grad_norm, rel=1e-4)
    # the documented step-1 constants, where the formula gives one
    known = {"dpo": math.log(2), "cdpo": math.log(2), "robust": math.log(2), "hinge": 1.0, "ipo": (1 / 0.5) ** 2,
             "apo_zero": 1.0, "apo_down": 1.0}
    if case in known:
        assert first["train/loss"] == pytest.approx(known[case], abs=2e-5)
    if case == "r-dpo":  # the length term is really there: the chosen answers are longer than the rejected ones
        assert bool((v["nc"] > v["nr"]).all())
        expected = float(F.softplus(-settings["alpha"] * (v["nc"] - v["nr"])).mean())
        assert first["train/loss"] == pytest.approx(expected, abs=2e-5) and expected < math.log(2) - 0.05
    if case.startswith("slic"):  # the hinge is active, so delta counts
        assert bool((cfg.delta - (v["lc"] - v["lr"]) > 0).all())


def test_the_step_one_gradients_of_dpo_relatives_scale_as_documented(tiny_model_dir, target_pairs, tmp_path):
    """Against DPO on the same batch, at policy == reference: d loss / dz is -1/2 for DPO, -(1-2e)/2 for cdpo,
    -1/(2 (1-2e)) for robust, -1 for hinge and -1/4 for apo_zero, so their gradient norms are those multiples
    (with the same beta) of DPO's."""
    def grad_norm(name: str, method: str, **settings: Any) -> float:
        cfg = config(tiny_model_dir, target_pairs, tmp_path / name, method=method, max_steps=1, **settings)
        return train(cfg, progress=False).metrics[0]["grad_norm"]

    base = grad_norm("dpo", "dpo", beta=0.3)
    e = 0.2
    assert grad_norm("cdpo", "cdpo", beta=0.3, label_smoothing=e) == pytest.approx((1 - 2 * e) * base, rel=1e-4)
    assert grad_norm("robust", "robust", beta=0.3, label_smoothing=e) == pytest.approx(base / (1 - 2 * e), rel=1e-4)
    assert grad_norm("hinge", "hinge", beta=0.3) == pytest.approx(2 * base, rel=1e-4)
    assert grad_norm("apo_zero", "apo_zero", beta=0.3) == pytest.approx(base / 2, rel=1e-4)


# --- 2. learning-rate schedules ----------------------------------------------------------------------------

def documented_lr(peak: float, step: int, total: int, warmup_ratio: float, schedule: str) -> float:
    """Warmup: lr (k+1)/(w+1) at the k-th step (k from 0) for w = floor(warmup_ratio x total) steps, then
    constant, or a linear / half-cosine decay from the peak over the remaining steps."""
    w, k = int(warmup_ratio * total), step - 1
    if k < w:
        return peak * (k + 1) / (w + 1)
    if schedule == "constant":
        return peak
    progress = (k - w) / (total - w)
    return peak * (1 - progress if schedule == "linear" else (1 + math.cos(math.pi * progress)) / 2)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_learning_rate_schedule_and_warmup(tiny_model_dir, tmp_path, schedule):
    """24 pairs in batches of 2 would make 12 steps; max_steps 10 ends the schedule at step 10."""
    pl.DataFrame(preference_rows(24)).write_parquet(tmp_path / "pairs.parquet")
    peak = 1e-3
    result = train(config(tiny_model_dir, tmp_path / "pairs.parquet", tmp_path / "run", method="sft", lr=peak,
                          batch_size=2, max_steps=10, warmup_ratio=0.2, schedule=schedule), progress=False)
    logged = [(m["step"], m["lr"]) for m in result.metrics if "lr" in m]
    assert [step for step, _ in logged] == list(range(1, 11))
    for step, lr in logged:
        assert lr == pytest.approx(documented_lr(peak, step, 10, 0.2, schedule), rel=1e-9, abs=1e-15), step
    assert logged[0][1] == pytest.approx(peak / 3) and logged[2][1] == pytest.approx(peak)  # 2 warmup steps


# --- 3. weight decay ----------------------------------------------------------------------------------------

def test_weight_decay_shrinks_the_weights(tiny_model_dir, tmp_path):
    """AdamW's decoupled decay multiplies every weight by (1 - lr x weight_decay) per step; with a tiny, constant
    lr the Adam update is small beside it, so two steps leave the weights ~(1 - 0.1)^2 of the undecayed run's."""
    from safetensors.torch import load_file

    pl.DataFrame(preference_rows(16)).write_parquet(tmp_path / "pairs.parquet")
    lr, decay, steps = 1e-4, 1000.0, 2

    def weights(name: str, weight_decay: float) -> dict[str, torch.Tensor]:
        train(config(tiny_model_dir, tmp_path / "pairs.parquet", tmp_path / name, method="sft", lr=lr,
                     max_steps=steps, schedule="constant", weight_decay=weight_decay), progress=False)
        return load_file(str(tmp_path / name / "model" / "model.safetensors"))

    decayed, plain = weights("decayed", decay), weights("plain", 0.0)
    initial = load_file(str(tiny_model_dir / "model.safetensors"))

    def norm(tensors: dict[str, torch.Tensor]) -> float:
        return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())))

    assert norm(plain) == pytest.approx(norm(initial), rel=0.01)
    assert norm(decayed) / norm(plain) == pytest.approx((1 - lr * decay) ** steps, rel=0.01)
    # an embedding row no answer or prompt used gets no gradient, so only the decay moved it, exactly
    embed = "model.embed_tokens.weight"
    unused = -1  # the last vocabulary entry, never in these short English pairs
    torch.testing.assert_close(plain[embed][unused], initial[embed][unused])
    torch.testing.assert_close(decayed[embed][unused], initial[embed][unused] * (1 - lr * decay) ** steps)


# --- 4. eval_steps and logging_steps ------------------------------------------------------------------------

def test_eval_steps_and_logging_steps(tiny_model_dir, tmp_path):
    """14 pairs in batches of 2: 7 steps. Train rows every 2nd step plus the last; eval rows every 3rd plus the
    end; a train row averages every pair since the previous one."""
    pl.DataFrame(preference_rows(14)).write_parquet(tmp_path / "pairs.parquet")
    pl.DataFrame(preference_rows(4, offset=100)).write_parquet(tmp_path / "pairs.eval.parquet")
    out = tmp_path / "run"
    train(config(tiny_model_dir, tmp_path / "pairs.parquet", out, method="sft", batch_size=2, lr=1e-3,
                 logging_steps=2, eval_steps=3), progress=False)
    rows = metrics(out)
    assert [m["step"] for m in rows if "train/loss" in m] == [2, 4, 6, 7]
    assert [m["step"] for m in rows if "eval/loss" in m] == [3, 6, 7]
    assert all(("train/loss" in m) != ("eval/loss" in m) for m in rows)


def test_eval_steps_that_divide_the_last_step_evaluate_it_once(tiny_model_dir, tmp_path):
    pl.DataFrame(preference_rows(12)).write_parquet(tmp_path / "pairs.parquet")
    pl.DataFrame(preference_rows(4, offset=100)).write_parquet(tmp_path / "pairs.eval.parquet")
    out = tmp_path / "run"
    train(config(tiny_model_dir, tmp_path / "pairs.parquet", out, method="sft", batch_size=2, lr=1e-3,
                 eval_steps=3), progress=False)
    assert [m["step"] for m in metrics(out) if "eval/loss" in m] == [3, 6]


# --- 5. report_to ------------------------------------------------------------------------------------------

def test_report_to_tensorboard_writes_event_files(tiny_model_dir, tmp_path):
    from accelerate.utils import is_tensorboard_available

    if not is_tensorboard_available():
        if os.environ.get("CI"):  # .ci/run installs tensorboardX (dev extra): CI must run this
            pytest.fail("tensorboardX is not installed: `make test` installs it with the dev extra")
        pytest.skip("tensorboard (or tensorboardX) is not installed, so report_to: [tensorboard] cannot run")
    pl.DataFrame(preference_rows(16)).write_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "run"
    train(config(tiny_model_dir, tmp_path / "pairs.parquet", out, method="sft", max_steps=2,
                 report_to=["tensorboard"]), progress=False)
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_report_to_a_tracker_that_is_not_installed_is_one_line(tiny_model_dir, tmp_path):
    missing = next((name for name in ("wandb", "tensorboard") if importlib.util.find_spec(name) is None), None)
    if missing is None:
        pytest.skip("both wandb and tensorboard are installed: no tracker is missing")
    pl.DataFrame(preference_rows(16)).write_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"train": {"model": str(tiny_model_dir), "pairs": str(tmp_path / "pairs.parquet"),
                                            "out": str(out), "max_length": 64, "report_to": [missing]}}))
    one_line_error(run_cli("train", "--config", recipe), f"report_to: {missing} is not installed",
                   f"pip install {missing}")
    assert not out.exists()


# --- 6. a target column other than chosen ---------------------------------------------------------------------

def test_sft_learns_the_target_column_not_the_chosen_answer(tiny_model_dir, target_pairs, tmp_path):
    """After a few steps of SFT on `target`, the model's log-prob of the target answers has risen far more than
    that of the chosen answers (which it never saw), and the reverse for SFT on chosen."""
    frame = pl.read_parquet(target_pairs)
    rows = list(range(frame.height))

    def gains(name: str, target: str) -> tuple[float, float]:
        cfg = config(tiny_model_dir, target_pairs, tmp_path / name, method="sft", lr=3e-3, max_steps=4,
                     target=target)
        train(cfg, progress=False)
        _, _, before = step_one(tiny_model_dir, frame, rows, "sft", cfg.model_copy(update={"target": TARGET}))
        _, _, after = step_one(tmp_path / name / "model", frame, rows, "sft", cfg.model_copy(update={"target": TARGET}))
        return float((after["lt"] - before["lt"]).mean()), float((after["lc"] - before["lc"]).mean())

    target_gain, chosen_gain = gains("on-target", TARGET)
    assert target_gain > 0 and target_gain > chosen_gain + 1.0, (target_gain, chosen_gain)
    target_gain, chosen_gain = gains("on-chosen", "chosen")
    assert chosen_gain > 0 and chosen_gain > target_gain + 1.0, (target_gain, chosen_gain)


# --- 7. the default order: length-grouped and seeded --------------------------------------------------------

def test_default_order_is_length_grouped_and_seeded(tiny_model_dir, tmp_path):
    """pairs.curriculum.length_grouped: per epoch a seeded shuffle, pairs of similar width grouped into batches
    (within windows of 16 batches: here one window holds every pair), the batches then shuffled."""
    from pairforge.models import load_tokenizer
    from pairforge.sequences.tokenize import tokenize_pairs

    rows = [{**row, "prompt": f"Question {i}:" + " why" * (i * 7 % 23) + " is it a number?"}
            for i, row in enumerate(preference_rows(32))]
    frame = pl.DataFrame(rows)
    frame.write_parquet(tmp_path / "pairs.parquet")
    tokenized, _ = tokenize_pairs(frame, load_tokenizer(str(tiny_model_dir)), max_length=64)
    width = {p.index: p.packed_length for p in tokenized}  # one row per pair: prompt, chosen, rejected answer

    def order(name: str, seed: int) -> list[list[int]]:
        train(config(tiny_model_dir, tmp_path / "pairs.parquet", tmp_path / name, method="sft", lr=1e-4,
                     batch_size=4, epochs=2, seed=seed), progress=False)
        return consumed(tmp_path / name)

    first, again, other = order("a", 0), order("b", 0), order("c", 1)
    assert first == again and first != other
    widths = sorted(width.values())
    grouped = sorted(tuple(widths[i : i + 4]) for i in range(0, 32, 4))
    for batches in (first, other):
        assert len(batches) == 16
        for epoch in (batches[:8], batches[8:]):
            assert sorted(i for batch in epoch for i in batch) == list(range(32))  # each pair once per epoch
            assert sorted(tuple(sorted(width[i] for i in batch)) for batch in epoch) == grouped
            sizes = [sum(width[i] for i in batch) for batch in epoch]
            assert sizes != sorted(sizes) and sizes != sorted(sizes, reverse=True)  # batches shuffled
        assert batches[:8] != batches[8:]  # each epoch its own order
    assert len(set(widths)) > 8  # the widths really differ, so grouping is visible


def test_a_reward_model_orders_its_pairs_by_the_rows_it_scores(tiny_model_dir, tmp_path):
    """A reward model scores each answer in a row of its own, whatever `share_prompt` says: its length-grouped order
    groups pairs by that row's width (the longer prompt + answer). The order was once planned as if the prompt were
    shared (prompt + both answers in one row) while the batches were laid out unshared."""
    from pairforge.models import load_tokenizer
    from pairforge.sequences.tokenize import tokenize_pairs

    rows = [{**row, "prompt": f"Question {i}:" + " why" * (i * 7 % 23) + " is it a number?",
             "rejected": row["rejected"] + " and so on" * (i * 5 % 7)} for i, row in enumerate(preference_rows(32))]
    pl.DataFrame(rows).write_parquet(tmp_path / "pairs.parquet")
    tokenized, _ = tokenize_pairs(pl.DataFrame(rows), load_tokenizer(str(tiny_model_dir)), max_length=64)

    def grouped(width: dict[int, int]) -> list[tuple[int, ...]]:
        widths = sorted(width.values())
        return sorted(tuple(widths[i : i + 4]) for i in range(0, 32, 4))

    own = {p.index: p.length for p in tokenized}  # a row per answer: its prompt + the longer answer
    packed = {p.index: p.packed_length for p in tokenized}
    assert grouped(own) != grouped(packed)  # the two rules order these pairs differently
    train(config(tiny_model_dir, tmp_path / "pairs.parquet", tmp_path / "rm", method="reward-model", batch_size=4,
                 max_steps=8), progress=False)
    assert TrainConfig(method="reward-model", share_prompt=True).shares_prompt is False
    assert sorted(tuple(sorted(own[i] for i in batch)) for batch in consumed(tmp_path / "rm")) == grouped(own)


# --- 8. no full optimiser step --------------------------------------------------------------------------------

def test_too_few_pairs_for_one_optimiser_step_is_one_line(tiny_model_dir, tmp_path):
    """6 pairs in batches of 4 are 2 micro-batches, fewer than grad_accum 3: not one optimiser step."""
    pl.DataFrame(preference_rows(6)).write_parquet(tmp_path / "pairs.parquet")
    out = tmp_path / "run"
    result = run_cli("train", "--model", tiny_model_dir, "--pairs", tmp_path / "pairs.parquet", "--out", out,
                     "--batch-size", "4", "--grad-accum", "3", "--max-length", "64", "--method", "sft",
                     "--prompt-format", "text")
    one_line_error(result, "6 pairs make no full optimiser step", "batch_size 4", "grad_accum 3", "1 processes")
    assert not (out / "model").exists() and not (out / "metrics.jsonl").exists()


# --- 9. train --config RECIPE --run NAME ------------------------------------------------------------------------

def test_train_run_of_a_recipe_trains_in_its_run_folder(tiny_model_dir, tmp_path):
    """As `pairforge run` would: the run's own settings (not the recipe's train section), its folder
    run_dir/train/NAME, the pipeline's pairs file, and `after:` starting from the earlier run's model."""
    run_dir = tmp_path / "runs" / "exp"
    run_dir.mkdir(parents=True)
    pl.DataFrame(preference_rows(16)).write_parquet(run_dir / "pairs.parquet")
    common = {"model": str(tiny_model_dir), "max_length": 64, "max_steps": 2, "batch_size": 4}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({
        "run_dir": "runs/exp",
        "train": {"method": "simpo", "lr": 9e-9, "out": str(tmp_path / "elsewhere")},
        "runs": [{"name": "warm", "method": "sft", "lr": 2e-3, **common},
                 {"name": "pref", "after": "warm", "method": "ipo", "lr": 1e-3, "beta": 0.25, **common}],
    }))
    for name in ("warm", "pref"):
        result = run_cli("train", "--config", recipe, "--run", name)
        assert result.exit_code == 0 and "trained 2 steps" in result.output, result.output
    assert not (tmp_path / "elsewhere").exists()
    warm = json.loads((run_dir / "train" / "warm" / "run.json").read_text())["config"]
    pref = json.loads((run_dir / "train" / "pref" / "run.json").read_text())["config"]
    assert (warm["method"], warm["lr"], warm["model"]) == ("sft", 2e-3, str(tiny_model_dir))
    assert (pref["method"], pref["lr"], pref["beta"]) == ("ipo", 1e-3, 0.25)
    assert Path(pref["model"]) == run_dir / "train" / "warm" / "model"
    assert Path(pref["pairs"]) == Path(warm["pairs"]) == run_dir / "pairs.parquet"
    assert (run_dir / "train" / "pref" / "model" / "model.safetensors").exists()
    first = metrics(run_dir / "train" / "pref")[0]
    assert first["train/loss"] == pytest.approx((1 / (2 * 0.25)) ** 2, abs=1e-4)  # ipo with the run's beta
    one_line_error(run_cli("train", "--config", recipe, "--run", "nope"), "no run 'nope'", "runs: warm, pref")


def test_lora_flags_keep_the_recipes_adapter_settings(tiny_model_dir, tmp_path):
    """`--lora --merge` over a recipe with `lora: {r: 8, alpha: 32}` trains that adapter (not the default r 16)
    and merges it; `--merge` without any LoRA is one line, before anything is loaded."""
    pl.DataFrame(preference_rows(8)).write_parquet(tmp_path / "pairs.parquet")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"train": {"model": str(tiny_model_dir), "pairs": str(tmp_path / "pairs.parquet"),
                                            "max_length": 64, "max_steps": 1, "batch_size": 4,
                                            "lora": {"r": 8, "alpha": 32}}}))
    result = run_cli("train", "--config", recipe, "--lora", "--merge", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    lora = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["lora"]
    assert (lora["r"], lora["alpha"], lora["merge"]) == (8, 32, True)
    one_line_error(run_cli("train", "--pairs", tmp_path / "pairs.parquet", "--model", tiny_model_dir, "--merge",
                           "--out", tmp_path / "plain"), "--merge", "expected --lora")
    assert not (tmp_path / "plain").exists()


def test_an_accumulation_count_accelerate_overrides_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """`accelerate launch` puts DeepSpeed's gradient_accumulation_steps in the environment, where accelerate
    prefers it to the run's grad_accum: a different count would step off the planned schedule, so it is one line."""
    pl.DataFrame(preference_rows(8)).write_parquet(tmp_path / "pairs.parquet")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    result = run_cli("train", "--pairs", tmp_path / "pairs.parquet", "--model", tiny_model_dir, "--grad-accum", "2",
                     "--batch-size", "2", "--max-length", "64", "--prompt-format", "text", "--out", tmp_path / "run")
    one_line_error(result, "expected accelerate to accumulate 2 micro-batches", "found 1")
    assert not (tmp_path / "run" / "model").exists()


def test_a_step_of_weight_0_pairs_only_is_refused(tiny_model_dir, tmp_path):
    """A staged curriculum whose first stage is a pair type of weight 0 has steps with nothing to average: one
    line before training, not a division by zero."""
    rows = [{**row, "weight": 0.0 if row["pair_type"] == "easy" else 1.0} for row in preference_rows(8)]
    pl.DataFrame(rows).with_row_index("margin").write_parquet(tmp_path / "pairs.parquet")
    recipe = tmp_path / "recipe.yaml"
    staged = {"schedule": "staged", "stages": [{"pair_types": ["easy"]}, {"pair_types": ["hard"]}]}
    recipe.write_text(json.dumps({"train": {"model": str(tiny_model_dir), "pairs": str(tmp_path / "pairs.parquet"),
                                            "max_length": 64, "batch_size": 2, "prompt_format": "text",
                                            "curriculum": staged}}))
    result = run_cli("train", "--config", recipe, "--out", tmp_path / "run")
    one_line_error(result, "pairs.parquet", "expected every optimiser step to have a pair of weight > 0",
                   "found 2 steps", "step 1")


def test_forward_tokens_is_refused_under_deepspeed_where_each_piece_would_step():
    """accelerate's DeepSpeed backward steps the optimiser at a step's last micro-batch: cut into pieces, that
    micro-batch would step on its first piece's gradient. DeepSpeed cannot run on this machine, so the guard is
    checked on its own (training calls it with the accelerator's distributed type before `prepare`)."""
    from accelerate.utils import DistributedType

    from pairforge.errors import InputError
    from pairforge.training.setup import _check_forward_tokens

    for kind in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.FSDP):
        _check_forward_tokens(kind, 512)
    _check_forward_tokens(DistributedType.DEEPSPEED, None)
    with pytest.raises(InputError, match="forward_tokens: expected null under DeepSpeed, found 512"):
        _check_forward_tokens(DistributedType.DEEPSPEED, 512)


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}])
def test_training_says_no_deprecation_warning(tmp_path: Path, tiny_model_dir: Path, lora: dict[str, Any] | None
                                              ) -> None:
    """transformers' `FutureWarning: is_gradient_checkpointing is deprecated` was printed on every LoRA run (peft
    reads the old name) and `gradient_checkpointing_enable is deprecated` with gradient_checkpointing: true (our
    call): no run says either."""
    import warnings

    from conftest import write_jsonl

    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config(tiny_model_dir, pairs, tmp_path / "out", max_steps=1, lora=lora, gradient_checkpointing=True,
                     batch_size=4), progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
            and "checkpointing" in str(w.message)]
    assert not said, said
