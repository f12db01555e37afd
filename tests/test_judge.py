"""Judges: verdict reading, the similarity and reward-model judges, the LLM pairwise judge on a real
llama.cpp server, and judge -> rank -> pairs end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from servers import FaultProxy, free_port

from conftest import answer_failed_judge_requests, preference_rows
from pairforge.config import JudgeConfig, SourceConfig
from pairforge.judging.pairwise import Verdict, both_orders, read_verdict
from pairforge.judging.scoring import judge
from pairforge.recipe import load_recipe


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True, timeout=600)


def recipe_file(folder: Path, **sections: Any) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


def responses_file(folder: Path, answers: dict[str, list[str]], prompts: list[str]) -> Path:
    rows = [{"prompt": p, "source": s, "response": a[i]} for s, a in answers.items() for i, p in enumerate(prompts)]
    path = folder / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("text, logprobs, expected", [
    ("A", {"A": math.log(0.6), "B": math.log(0.2), "The": math.log(0.1)}, 0.75),  # renormalised over A, B
    ("B", {" B": -0.1, "C": -3.0}, 0.0),  # only B among the top tokens
    ("", {"(A": -0.5}, 1.0),
    ("B", {}, 0.0),  # no log-probs: read the text
    ("Answer (A) is better.", {}, 1.0),
    ("I think Output (b) follows it best", {}, 0.0),
    ("Both are fine.", {}, None),  # unreadable: recorded, never guessed
    ("Absolutely", {}, None),
    ("**B**", {"**": -0.05, "A": -4.0}, 0.0),  # the first token is no letter: its alternatives say nothing
    ("A tie.", {}, None),
    ("A tie: both are fine.", {"A": -0.05, "B": -3.5}, None),  # the letter opens the article, not a verdict
    ("a tie", {"a": -0.05, "B": -3.5}, None),
    ("a tie between the two", {}, None),
    ("A is better.", {}, 1.0),
    ("The answer is B", {"The": -1.5, "A": -2.1, "B": -3.1}, 0.0),  # a 135M judge's way: the text names it
])
def test_reading_a_verdict(text: str, logprobs: dict[str, float], expected: float | None) -> None:
    verdict = read_verdict(text, logprobs)
    assert (verdict.p_first is None) == (expected is None)
    if expected is not None:
        assert verdict.p_first == pytest.approx(expected)


def test_both_orders_cancel_a_judge_that_always_picks_the_first_answer() -> None:
    always_first = Verdict(0.9, "logprobs")
    assert both_orders(always_first, always_first) == pytest.approx(0.5)
    assert both_orders(Verdict(1.0, "text"), Verdict(0.0, "text")) == 1.0
    assert both_orders(Verdict(1.0, "text"), Verdict(None, "unparseable")) is None


PROMPTS = ["What is the capital of France?", "How many legs does a spider have?", "What color is the sky?"]


@pytest.mark.slow
def test_similarity_judge_scores_closeness_to_the_reference(tmp_path: Path) -> None:
    answers = {"reference": ["The capital of France is Paris.", "A spider has eight legs.", "The sky is blue."],
               "close": ["Paris is the capital of France.", "Spiders have eight legs.", "It is blue."],
               "off": ["I like turtles.", "Bananas are yellow.", "Taxes are due in April."]}
    path = responses_file(tmp_path, answers, PROMPTS)
    recipe = load_recipe(recipe_file(tmp_path, judge={"kind": "similarity", "reference": "reference"}))
    result = judge(recipe, tmp_path, responses=path, show_progress=False)
    scored = pl.read_parquet(result.scored)
    by_source = {s: scored.filter(pl.col("source") == s)["score"] for s in answers}
    assert by_source["reference"].is_null().all()  # the reference is not judged against itself
    assert (by_source["close"].to_numpy() > by_source["off"].to_numpy() + 0.3).all()
    again = judge(recipe, tmp_path, responses=path, show_progress=False)
    assert again.summary.cached == 6  # cached in the store: nothing recomputed


def test_a_pointwise_judge_leaves_no_earlier_pairwise_verdicts_for_rank(tmp_path: Path) -> None:
    """A folder judged pairwise before, judged again by a pointwise judge: rank ranks by the new scores, never by
    the old judge's verdicts (rank reads judgments.parquet first when there is one)."""
    answers = {"reference": ["The capital of France is Paris.", "A spider has eight legs.", "The sky is blue."],
               "close": ["Paris is the capital of France.", "Spiders have eight legs.", "It is blue."],
               "off": ["I like turtles.", "Bananas are yellow.", "Taxes are due in April."]}
    stale = pl.DataFrame({"prompt_id": ["x"] * 3, "source_a": ["off"] * 3, "source_b": ["close"] * 3,
                          "p_a": [1.0] * 3})  # an earlier LLM judge that preferred 'off'
    stale.write_parquet(tmp_path / "judgments.parquet")
    recipe = recipe_file(tmp_path, judge={"kind": "similarity", "reference": "reference"})
    path = responses_file(tmp_path, answers, PROMPTS)
    judge(load_recipe(recipe), tmp_path, responses=path, show_progress=False)
    ranked = run_cli("rank", str(recipe), "--out", str(tmp_path))
    assert ranked.returncode == 0, ranked.stderr
    assert not (tmp_path / "judgments.parquet").exists()
    assert json.loads((tmp_path / "ranking.json").read_text())["sources"][0]["name"] == "close"


@pytest.mark.slow
def test_reward_model_judge_then_rank_then_pairs(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A reward model trained by the engine scores held-out answers the way it was trained; its scores
    give a significant ranking, and the pairs stage builds pairs from that ranking."""
    from pairforge.train_config import TrainConfig
    from pairforge.training.trainer import train

    pl.DataFrame(preference_rows(48)).write_parquet(tmp_path / "pairs.parquet")
    train(TrainConfig(model=str(tiny_model_dir), pairs=tmp_path / "pairs.parquet", out=tmp_path / "rm",
                      method="reward-model", epochs=3, lr=1e-2, batch_size=8, max_length=64, warmup_ratio=0.0),
          progress=False)
    held_out = preference_rows(24, offset=1000)
    answers = {"good": [r["chosen"] for r in held_out], "bad": [r["rejected"] for r in held_out]}
    path = responses_file(tmp_path, answers, [r["prompt"] for r in held_out])
    recipe = recipe_file(tmp_path, judge={"kind": "reward-model", "model": str(tmp_path / "rm" / "model"),
                                          "batch_size": 5}, ranking={"bootstrap": 200})
    result = run_cli("judge", str(recipe), "--out", str(tmp_path), "--responses", str(path))
    assert result.returncode == 0, result.stderr
    scored = pl.read_parquet(tmp_path / "responses.scored.parquet")
    good, bad = (scored.filter(pl.col("source") == s).sort("prompt_id")["score"].to_numpy() for s in ("good", "bad"))
    assert (good > bad).mean() > 0.9
    ranked = run_cli("rank", str(recipe), "--out", str(tmp_path))
    assert ranked.returncode == 0, ranked.stderr
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert ranking["rank"] == "good > bad" and ranking["adjacent"][0]["significant"]
    built = run_cli("pairs", "build", str(tmp_path / "responses.scored.parquet"), "--rank-from",
                    str(tmp_path / "ranking.json"), "--out", str(tmp_path / "ranked.parquet"))
    assert built.returncode == 0, built.stderr
    pairs = pl.read_parquet(tmp_path / "ranked.parquet")
    assert pairs.height == 24 and set(pairs["pair_type"]) == {"good>bad"}


def test_a_causal_lm_is_refused_as_a_reward_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = responses_file(tmp_path, {"a": ["x"] * 3, "b": ["y"] * 3}, PROMPTS)
    recipe = recipe_file(tmp_path, judge={"kind": "reward-model", "model": str(tiny_model_dir)})
    result = run_cli("judge", str(recipe), "--out", str(tmp_path), "--responses", str(path))
    assert result.returncode == 2 and "not a reward model (its config names LlamaForCausalLM)" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "responses.scored.parquet").exists()


@pytest.mark.parametrize("section, expected", [
    ({"kind": "llm-pairwise"}, "llm-pairwise needs `llm`"),
    ({"kind": "similarity"}, "similarity needs `reference`"),
    ({"kind": "similarity", "reference": "nobody"}, "no answers from source 'nobody'"),
    ({"kind": "vibes"}, "judge.kind"),
])
def test_bad_judge_sections_are_one_line(tmp_path: Path, section: dict[str, Any], expected: str) -> None:
    path = responses_file(tmp_path, {"a": ["x"] * 3, "b": ["y"] * 3}, PROMPTS)
    result = run_cli("judge", str(recipe_file(tmp_path, judge=section)), "--out", str(tmp_path), "--responses",
                     str(path))
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


def test_rank_from_a_ranking_without_significant_orders_is_refused(tmp_path: Path) -> None:
    path = responses_file(tmp_path, {"a": ["x"] * 3, "b": ["y"] * 3}, PROMPTS)
    (tmp_path / "ranking.json").write_text(json.dumps({"rank": "", "confidence": 0.95}))
    result = run_cli("pairs", "build", str(path), "--rank-from", str(tmp_path / "ranking.json"), "--out",
                     str(tmp_path / "p.parquet"))
    assert result.returncode == 2 and "no source order is significant at 95%" in result.stderr


@pytest.mark.slow
def test_llm_pairwise_judge_on_a_real_llama_cpp_server(tmp_path: Path, llama_server: Any) -> None:
    answers = {"strong": ["The capital of France is Paris.", "A spider has eight legs.", "The sky is blue."],
               "weak": ["", "legs", "Bananas."], "mid": ["Paris.", "Eight.", "Blue."]}
    path = responses_file(tmp_path, answers, PROMPTS)
    counter = FaultProxy(llama_server.port, every=10**9)  # faults off: forwards every request and counts it
    try:
        llm = SourceConfig(backend="openai", model="smollm2", base_url=counter.base_url)
        recipe = load_recipe(recipe_file(tmp_path, judge=JudgeConfig(kind="llm-pairwise", llm=llm).model_dump(
            mode="json", exclude_unset=True)))
        result = judge(recipe, tmp_path, responses=path, show_progress=False)
        judgments = pl.read_parquet(result.judgments)
        assert judgments.height == 9  # 3 prompts x 3 source pairs, each asked in both orders
        assert counter.requests == 18 and result.summary.failed_requests == 0
        assert set(judgments["method_ab"]) | set(judgments["method_ba"]) <= {"logprobs", "text", "unparseable"}
        assert (judgments["method_ab"] == "logprobs").sum() > 0  # llama.cpp returns log-probs: used first
        assert judgments["p_a"].drop_nulls().is_between(0, 1).all()
        assert 0 <= result.summary.p_first_shown_wins <= 1
        scored = pl.read_parquet(result.scored)
        assert scored["score"].drop_nulls().is_between(0, 1).all()
        again = judge(recipe, tmp_path, responses=path, show_progress=False)
        assert counter.requests == 18  # all verdicts come from the store: no request reached the server
        assert pl.read_parquet(again.judgments).equals(judgments)
    finally:
        counter.close()


STRENGTH = {"strong": 0, "mid": 1, "weak": 2}


def known_reply(prompt_ids: dict[str, str]) -> Callable[[str, str, str], dict[str, Any]]:
    """A judge whose verdicts are known: on the first prompt it answers the letter of the stronger answer; on the
    second it gives log-probs, 0.8 for the stronger answer's letter, except when weak is shown before mid, where
    it gives no usable verdict."""
    def reply(prompt_id: str, first: str, second: str) -> dict[str, Any]:
        stronger_first = STRENGTH[first] < STRENGTH[second]
        if prompt_id == prompt_ids[PROMPTS[0]]:
            return {"text": "A" if stronger_first else "B"}
        if (first, second) == ("weak", "mid"):
            return {"text": "Both are fine."}
        p_a = 0.8 if stronger_first else 0.2
        return {"text": "A" if stronger_first else "B",
                "first_token_logprobs": {"A": math.log(p_a), "B": math.log(1 - p_a), "The": math.log(0.01)}}
    return reply


def test_known_verdicts_give_exact_probabilities_scores_and_direction(tmp_path: Path) -> None:
    """Verdicts the judge gave (written to the run's store) come out as P(source_a better), averaged over both
    orders; each answer's score is its mean P(beating) the answers it was compared with, unreadable ones left out.
    The judge's server fails every request and counts it, so a second run that asked it again would be seen."""
    answers = {"strong": ["The capital of France is Paris.", "A spider has eight legs."],
               "mid": ["Paris.", "Eight."], "weak": ["Bananas.", "Legs."]}
    path = responses_file(tmp_path, answers, PROMPTS[:2])
    failing = FaultProxy(free_port(), every=1)  # answers every request itself, with an error, and counts it
    try:
        llm = SourceConfig(backend="openai", model="judge", base_url=failing.base_url, max_retries=0)
        recipe = load_recipe(recipe_file(tmp_path, judge=JudgeConfig(kind="llm-pairwise", llm=llm).model_dump(
            mode="json", exclude_unset=True)))
        failed = judge(recipe, tmp_path, responses=path, show_progress=False)
        scored = pl.read_parquet(failed.scored)
        assert failing.requests == 12 and failed.summary.failed_requests == 12  # 2 prompts x 3 pairs x 2 orders
        assert failed.summary.unreadable == 6 and scored["score"].is_null().all()  # no verdict, no score
        prompt_ids = dict(zip(scored["prompt"], scored["prompt_id"], strict=True))
        assert answer_failed_judge_requests(tmp_path / "store.sqlite", known_reply(prompt_ids)) == 12
        result = judge(recipe, tmp_path, responses=path, show_progress=False)
        assert failing.requests == 12  # answered from the store
    finally:
        failing.close()
    first, second = (prompt_ids[p] for p in PROMPTS[:2])
    judgments = pl.read_parquet(result.judgments)
    got = {(r["prompt_id"], r["source_a"], r["source_b"]): r["p_a"] for r in judgments.iter_rows(named=True)}
    # first prompt: the stronger answer's letter in both orders; second: (0.8 + 1 - 0.2) / 2 or (0.2 + 1 - 0.8) / 2
    assert got == pytest.approx({(first, "mid", "strong"): 0.0, (first, "mid", "weak"): 1.0,
                                 (first, "strong", "weak"): 1.0, (second, "mid", "strong"): 0.2,
                                 (second, "mid", "weak"): None, (second, "strong", "weak"): 0.8})
    scores = pl.read_parquet(result.scored)
    by_answer = {(r["prompt_id"], r["source"]): r["score"] for r in scores.iter_rows(named=True)}
    assert by_answer == pytest.approx({(first, "strong"): 1.0, (first, "mid"): 0.5, (first, "weak"): 0.0,
                                       (second, "strong"): 0.8, (second, "mid"): 0.2, (second, "weak"): 0.2})
    summary = result.summary
    assert {s: v.mean for s, v in summary.per_source.items()} == pytest.approx(
        {"strong": 0.9, "mid": 0.35, "weak": 0.1})
    assert list(summary.per_source) == ["strong", "mid", "weak"]  # best first: the judge's direction
    assert (summary.comparisons, summary.unreadable, summary.failed_requests) == (6, 1, 0)
    assert summary.verdicts_from_logprobs == 5
    # shown first and won: 3 x 1 and 3 x 0 on the first prompt, 3 x 0.8 and 2 x 0.2 on the second (11 readable)
    assert summary.p_first_shown_wins == pytest.approx(5.8 / 11)
