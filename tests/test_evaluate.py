"""The eval stage: outputs files and model folders against reference answers, leaderboard, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from servers import FaultProxy, free_port

from conftest import SAMPLE, answer_failed_judge_requests
from pairforge.config import JudgeConfig, SourceConfig
from pairforge.errors import InputError
from pairforge.evaluation.compare import EvalSettings, evaluate
from pairforge.schema import prompt_id_of, to_messages


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True, timeout=600)


def outputs_file(path: Path, answers: list[tuple[str, str]], generator: str) -> Path:
    path.write_text(json.dumps([{"instruction": i, "output": o, "generator": generator, "dataset": "toy"}
                                for i, o in answers]), encoding="utf-8")
    return path


@pytest.mark.slow
def test_outputs_files_ranked_by_similarity_with_intervals(tmp_path: Path) -> None:
    result = run_cli("eval", "--outputs", f"close={SAMPLE / 'medium.json'}", "--outputs", str(SAMPLE / "weak.json"),
                     "--reference", str(SAMPLE / "strong.json"), "--judge", "similarity", "--out", str(tmp_path),
                     "--bootstrap", "200")
    assert result.returncode == 0, result.stderr
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert [m["model"] for m in board["models"]] == ["close", "weak"] and board["prompts"] == 50
    close = board["models"][0]
    assert close["score"]["low"] <= close["score"]["value"] <= close["score"]["high"]
    assert close["vs_next"]["model"] == "weak" and 0 <= close["vs_next"]["p_value"] <= 1


def linked_model(model: Path, folder: Path) -> Path:
    """The model's files, linked into a folder of this test's own (no copy of the weights)."""
    folder.mkdir()
    for file in model.iterdir():
        (folder / file.name).symlink_to(file)
    return folder


def spoil_weights(folder: Path) -> None:
    """Zeros instead of the weights, with the same name, size and time (a half-copied file): another model by its
    content, which a load refuses."""
    weights = folder / "model.safetensors"
    stat = weights.stat()
    weights.unlink()
    with weights.open("wb") as f:
        f.truncate(stat.st_size)  # sparse: takes no disk
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
def test_models_answer_in_alpaca_eval_shape_and_known_verdicts_give_the_win_rate(tmp_path: Path,
                                                                                 tiny_model_dir: Path) -> None:
    """A model folder answers the prompts (AlpacaEval's model_outputs.json); an LLM judge compares it with the
    reference in both orders. A judge that gives no verdict gives no win rate; the verdicts it did give, written
    to the run's store, make the win rate exactly, in the right direction; a rerun asks neither the model nor
    the judge again."""
    questions = [f"Name a fruit number {i}." for i in range(4)]
    reference = outputs_file(tmp_path / "ref.json", [(q, "An apple.") for q in questions], "ref-model")
    model = linked_model(tiny_model_dir, tmp_path / "tiny")
    failing = FaultProxy(free_port(), every=1)  # a judge server that fails every request (counted)
    judge = JudgeConfig(kind="llm-pairwise", llm=SourceConfig(backend="openai", model="judge",
                                                              base_url=failing.base_url, max_retries=0))
    settings = EvalSettings(max_new_tokens=6, bootstrap=100)
    try:
        result = evaluate([f"tiny={model}"], [], reference, judge, tmp_path / "eval", settings=settings,
                          show_progress=False)
        outputs = pd.read_json(tmp_path / "eval" / "tiny.model_outputs.json")  # what alpaca_eval's loader does
        assert {"instruction", "output", "generator", "dataset"} <= set(outputs.columns)
        assert outputs["instruction"].tolist() == questions and set(outputs["generator"]) == {"tiny"}
        assert outputs["output"].map(lambda o: isinstance(o, str)).all()
        entry = result.models[0]
        assert failing.requests == 8 and result.judge_summary.failed_requests == 8  # 4 prompts, both orders
        assert entry.unjudged == 4 and entry.win_rate is None  # no verdict: no number invented
        ids = {q: prompt_id_of(to_messages(q)) for q in questions}
        better = {ids[questions[0]]: "tiny", ids[questions[1]]: "tiny", ids[questions[2]]: "reference"}

        def reply(prompt_id: str, first: str, second: str) -> dict[str, Any]:
            if prompt_id not in better:  # the last prompt: one order gives no usable verdict
                return {"text": "A" if first == "tiny" else "Both are fine."}
            return {"text": "A" if better[prompt_id] == first else "B"}

        assert answer_failed_judge_requests(tmp_path / "eval" / "store.sqlite", reply) == 8
        again = evaluate([f"tiny={model}"], [], reference, judge, tmp_path / "eval", settings=settings,
                         show_progress=False)
        assert failing.requests == 8  # the verdicts come from the store, and the answers (the same model)
        spoil_weights(model)  # another model in the same folder: its answers are not the store's
        with pytest.raises(InputError, match="cannot load a causal language model from it"):
            evaluate([f"tiny={model}"], [], reference, judge, tmp_path / "spoiled", settings=settings,
                     show_progress=False)
    finally:
        failing.close()
    entry = again.models[0]
    assert entry.win_rate.value == pytest.approx(2 / 3)  # better on 2 of the 3 prompts with a verdict
    assert entry.per_dataset == pytest.approx({"toy": 2 / 3}) and entry.unjudged == 1
    verdicts = pl.read_parquet(tmp_path / "eval" / "eval.parquet")
    assert dict(zip(verdicts["prompt_id"], verdicts["verdict"], strict=True)) == {
        ids[questions[0]]: 1.0, ids[questions[1]]: 1.0, ids[questions[2]]: 0.0, ids[questions[3]]: None}
    assert again.judge_summary.unreadable == 1 and again.judge_summary.failed_requests == 0
    assert pd.read_json(tmp_path / "eval" / "tiny.model_outputs.json")["output"].tolist() == outputs["output"].tolist()


def p_shown_first_from_reply(reply: dict[str, Any]) -> float:
    """P(the answer shown first is better) from a stored judge reply, as judging/pairwise.py documents it: when the
    judge's first token is the letter A or B, the first token's log-probs of 'A' and 'B' renormalised over the
    two; otherwise the letter its text names ("The answer is A")."""
    logprobs = reply["first_token_logprobs"]
    assert logprobs, reply  # llama.cpp returns the first token's top log-probs
    if max(logprobs, key=logprobs.__getitem__).strip() in ("A", "B"):
        a, b = (math.exp(max((lp for t, lp in logprobs.items() if t.strip() == letter), default=-math.inf))
                for letter in "AB")
        return a / (a + b)
    named = re.search(r"\b([AB])\b", reply["text"])
    assert named, reply
    return 1.0 if named.group(1) == "A" else 0.0


@pytest.mark.slow
def test_a_real_llm_judge_gives_win_rates_from_its_stored_verdicts(tmp_path: Path, llama_server: Any) -> None:
    """The embedded SmolLM2, served by llama.cpp, judges a model's answers against the reference: every prompt
    in both orders; the win rate, its length-controlled twin and the per-dataset rates follow from the judge's
    own stored replies; a rerun asks the judge nothing."""
    rows = [("geo", "What is the capital of France?", "The capital of France is Paris.", "Bananas."),
            ("geo", "Which ocean lies between Europe and America?", "The Atlantic Ocean.", "The moon, maybe."),
            ("math", "What is 2 + 2?", "2 + 2 = 4.", "It is 5, I think, or maybe 22."),
            ("math", "How many legs does a spider have?", "A spider has eight legs.", "Legs.")]

    def answers_file(name: str, column: int) -> Path:
        records = [{"instruction": r[1], "output": r[column], "generator": name, "dataset": r[0]} for r in rows]
        (tmp_path / f"{name}.json").write_text(json.dumps(records), encoding="utf-8")
        return tmp_path / f"{name}.json"

    reference, model = answers_file("ref", 2), answers_file("model", 3)
    counter = FaultProxy(llama_server.port, every=10**9)  # faults off: forwards to llama.cpp and counts
    judge = JudgeConfig(kind="llm-pairwise", llm=SourceConfig(backend="openai", model="smollm2", max_new_tokens=4,
                                                              base_url=counter.base_url, max_retries=0))
    settings = EvalSettings(bootstrap=200)
    try:
        result = evaluate([], [model], reference, judge, tmp_path / "eval", settings=settings, show_progress=False)
        assert counter.requests == 2 * len(rows)  # every prompt, model shown first and reference shown first
        again = evaluate([], [model], reference, judge, tmp_path / "eval", settings=settings, show_progress=False)
        assert counter.requests == 2 * len(rows)  # the rerun reads every verdict from the store
    finally:
        counter.close()
    assert again.models == result.models
    assert result.judge_summary.failed_requests == 0

    # the verdicts again, from the judge's raw replies in the store (key judge:<prompt>:<first>:<second>:...)
    store = sqlite3.connect(tmp_path / "eval" / "store.sqlite")
    replies = {tuple(key.split(":")[1:4]): json.loads(value)
               for key, value in store.execute("SELECT key, value FROM results WHERE kind = 'judgment'")}
    store.close()
    ids = {prompt_id_of(to_messages(r[1])): r[0] for r in rows}
    assert set(replies) == {(p, a, b) for p in ids for a, b in (("model", "reference"), ("reference", "model"))}
    verdict = {p: (p_shown_first_from_reply(replies[p, "model", "reference"])
                   + 1 - p_shown_first_from_reply(replies[p, "reference", "model"])) / 2 for p in ids}

    table = pl.read_parquet(tmp_path / "eval" / "eval.parquet")  # one row per prompt: P(model beats reference)
    assert dict(zip(table["prompt_id"], table["verdict"], strict=True)) == pytest.approx(verdict)
    entry = result.models[0]
    assert entry.model == "model" and entry.unjudged == 0
    win = entry.win_rate
    assert 0 <= win.low <= win.value <= win.high <= 1
    assert win.value == pytest.approx(sum(verdict.values()) / len(verdict))
    controlled = entry.length_controlled_win_rate
    assert 0 <= controlled.low <= controlled.value <= controlled.high <= 1
    assert entry.per_dataset == pytest.approx(
        {d: sum(v for p, v in verdict.items() if ids[p] == d) / 2 for d in ("geo", "math")})


def test_reward_model_judge_gives_win_rates_and_length_control(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pairforge.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_model_dir), reward_head=True)
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    questions = [f"Question {i}?" for i in range(12)]
    reference = outputs_file(tmp_path / "ref.json", [(q, "Yes.") for q in questions], "ref")
    longer = outputs_file(tmp_path / "long.json", [(q, "Yes, and here is why " * (i + 1)) for i, q in
                                                   enumerate(questions)], "long")
    same = outputs_file(tmp_path / "same.json", [(q, "Yes.") for q in questions], "same")
    result = run_cli("eval", "--outputs", str(longer), "--outputs", str(same), "--reference", str(reference),
                     "--judge", f"reward-model:{tmp_path / 'rm'}", "--out", str(tmp_path / "eval"),
                     "--bootstrap", "100")
    assert result.returncode == 0, result.stderr
    board = {m["model"]: m for m in json.loads((tmp_path / "eval" / "leaderboard.json").read_text())["models"]}
    assert board["same"]["win_rate"]["value"] == 0.5  # identical answers: every verdict a tie
    assert set(board["long"]) >= {"win_rate", "length_controlled_win_rate", "per_dataset", "score"}
    assert board["long"]["mean_length"] > board["long"]["reference_length"]
    assert "reward-model vs reference, 12 prompts" in result.stderr


def test_a_reward_model_judge_retrained_in_its_folder_scores_again(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`eval.judge_run` retrained (the same folder, new weights): the evaluation run again gives the new judge's
    scores, not the old ones from the eval store."""
    from conftest import replace_weights
    from pairforge.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_model_dir), reward_head=True)
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    questions = [f"Question {i}?" for i in range(6)]
    reference = outputs_file(tmp_path / "ref.json", [(q, "Yes.") for q in questions], "ref")
    answers = outputs_file(tmp_path / "model.json", [(q, f"No, {i} times no.") for i, q in enumerate(questions)], "m")
    judge = JudgeConfig(kind="reward-model", model=str(tmp_path / "rm"))

    def mean_reward() -> float:
        board = evaluate([], [answers], reference, judge, tmp_path / "eval", settings=EvalSettings(bootstrap=20),
                         show_progress=False, store_path=tmp_path / "store.sqlite")
        return board.models[0].score.value

    before = mean_reward()
    assert mean_reward() == before  # the same judge: its scores come from the store
    replace_weights(tmp_path / "rm", seed=3)
    assert mean_reward() != before


def test_outputs_missing_instructions_are_named(tmp_path: Path) -> None:
    reference = outputs_file(tmp_path / "ref.json", [("a?", "x"), ("b?", "y"), ("c?", "z")], "ref")
    partial = outputs_file(tmp_path / "m.json", [("a?", "x"), ("b?", "y")], "m")
    result = run_cli("eval", "--outputs", str(partial), "--reference", str(reference), "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "answers 2 of the 3 eval instructions; 1 are missing, e.g. 'c?'" in result.stderr
    assert not (tmp_path / "e" / "leaderboard.json").exists()


def test_an_empty_eval_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ref.json").write_text("[]")
    result = run_cli("eval", "--outputs", str(tmp_path / "ref.json"), "--reference", str(tmp_path / "ref.json"),
                     "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "ref.json: file is empty: expected at least one record" in result.stderr


@pytest.mark.slow
def test_every_model_is_tested_against_the_baseline_with_an_interval(tmp_path: Path) -> None:
    """`copy` answers exactly as the reference does, so it must be significantly better than the weak
    answers; for every model the difference is the gap of the scores, lies inside its interval, and the
    sentence the CLI prints follows from the interval."""
    result = run_cli("eval", "--outputs", f"copy={SAMPLE / 'strong.json'}", "--outputs",
                     f"medium={SAMPLE / 'medium.json'}", "--outputs", f"weak={SAMPLE / 'weak.json'}", "--reference",
                     str(SAMPLE / "strong.json"), "--baseline", "weak", "--out", str(tmp_path), "--bootstrap", "500")
    assert result.returncode == 0, result.stderr
    board = {m["model"]: m for m in json.loads((tmp_path / "leaderboard.json").read_text())["models"]}
    assert "vs_baseline" not in board["weak"]
    for name in ("copy", "medium"):
        versus = board[name]["vs_baseline"]
        gap = board[name]["score"]["value"] - board["weak"]["score"]["value"]
        assert versus["model"] == "weak" and abs(versus["difference"] - gap) < 1e-9
        assert versus["low"] <= versus["difference"] <= versus["high"]
        words = ("significantly better than" if versus["low"] > 0 else "significantly worse than"
                 if versus["high"] < 0 else "not significantly different from")
        assert f"{name} is {words} weak" in result.stderr
    assert board["copy"]["vs_baseline"]["low"] > 0 and board["copy"]["vs_baseline"]["significant"]


def test_an_unknown_baseline_is_refused_before_any_work(tmp_path: Path) -> None:
    result = run_cli("eval", "--outputs", str(SAMPLE / "weak.json"), "--reference", str(SAMPLE / "strong.json"),
                     "--baseline", "base", "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "--baseline: no model named 'base' (models: weak)" in result.stderr
    assert not (tmp_path / "e").exists()


def test_seeds_of_a_run_are_one_row_and_runs_are_compared_over_prompts_and_seeds(tmp_path: Path) -> None:
    """Models NAME@SEED are one run's seeds: each keeps its row, and the run gets one more, the mean over its seeds,
    ranked with the unseeded models; runs with the same seeds are compared seed by seed, per prompt averaged."""
    files = {"sft@0": "medium", "sft@1": "weak", "dpo@0": "strong", "dpo@1": "medium", "base": "weak"}
    result = run_cli("eval", *(a for name, f in files.items() for a in ("--outputs", f"{name}={SAMPLE / f}.json")),
                     "--reference", str(SAMPLE / "strong.json"), "--judge", "similarity", "--baseline", "base",
                     "--out", str(tmp_path), "--bootstrap", "200")
    assert result.returncode == 0, result.stderr
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    rows = {m["model"]: m for m in board["models"]}
    assert [m["model"] for m in board["models"]] == ["dpo", "sft", "base", "sft@0", "sft@1", "dpo@0", "dpo@1"]
    score = {name: row["score"]["value"] for name, row in rows.items()}
    assert score["sft"] == pytest.approx((score["sft@0"] + score["sft@1"]) / 2) and rows["sft"]["seeds"] == [0, 1]
    assert rows["dpo"]["vs_next"]["model"] == "sft" and rows["sft@1"]["vs_baseline"]["model"] == "base"
    pooled = {(c["model"], c["versus"]["model"]): c["versus"] for c in board["comparisons"]}
    assert set(pooled) == {("dpo", "sft"), ("dpo", "base"), ("sft", "base")}
    assert pooled[("dpo", "sft")]["difference"] == pytest.approx(score["dpo"] - score["sft"])
    assert pooled[("dpo", "sft")]["prompts"] == 50 and pooled[("dpo", "sft")]["p_value"] < 0.05
    assert "dpo (2 seeds)" in result.stderr and "pooled over prompts and seeds" in result.stderr


def test_a_model_named_like_a_seeded_run_is_refused_before_any_work(tmp_path: Path) -> None:
    result = run_cli("eval", "--outputs", f"sft={SAMPLE / 'weak.json'}", "--outputs", f"sft@0={SAMPLE / 'weak.json'}",
                     "--reference", str(SAMPLE / "strong.json"), "--judge", "similarity", "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "'sft' names a model and also the seeds sft@0" in result.stderr
    assert not (tmp_path / "e").exists()
