"""Strategies, filters, margins, difficulty and splits, on small inputs whose right answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from conftest import SAMPLE, write_jsonl
from pairforge.config import FilterConfig, PairsConfig
from pairforge.files import read_records
from pairforge.pairs.build import pair_answers
from pairforge.records import responses_from_files

PAPER_RANK = "gpt-4 > chatgpt > davinci"


def build(path: Path, **settings):
    """Pairs in TRL's standard (string) format, so tests compare answers as text; the default
    conversational format has its own tests."""
    filters = settings.pop("filters", {})
    settings.setdefault("prompt_format", "text")
    cfg = PairsConfig(filters=FilterConfig(**filters), **settings)
    return pair_answers(responses_from_files([read_records(path)]), cfg)


def scored_rows(scores: dict[str, list[float]], prompts: int = 1) -> list[dict]:
    return [{"prompt": f"Prompt {p}", "source": s, "sample": i, "response": f"{s} answer {i} to {p}", "score": v}
            for p in range(prompts) for s, values in scores.items() for i, v in enumerate(values)]


# --- ranked (the paper) ------------------------------------------------------------------------------

def test_ranked_paper_pair_types(jsonl, long_rows):
    result = build(jsonl("a.jsonl", long_rows), rank=PAPER_RANK, pair_types="gpt-4>davinci,gpt-4>chatgpt")
    pairs = result.train
    assert result.summary["pairs"]["train"] == {"gpt-4>chatgpt": 3, "gpt-4>davinci": 3}
    assert set(pairs["chosen_source"]) == {"gpt-4"}
    easy, hard = (pairs.filter(pl.col("pair_type") == t) for t in ("gpt-4>davinci", "gpt-4>chatgpt"))
    assert easy["margin"].unique().to_list() == [2.0] and easy["difficulty"].unique().to_list() == [0.0]
    assert hard["margin"].unique().to_list() == [1.0] and hard["difficulty"].unique().to_list() == [0.5]
    row = easy.row(0, named=True)
    original = {(r["prompt"], r["source"]): r["response"] for r in long_rows}
    assert row["chosen"] == original[(row["prompt"], "gpt-4")]
    assert row["rejected"] == original[(row["prompt"], "davinci")]


def test_ranked_presets_and_all_sample_combinations(jsonl, long_rows):
    extra = [{**r, "response": r["response"] + " Second try."} for r in long_rows if r["source"] == "davinci"]
    result = build(jsonl("a.jsonl", long_rows + extra), rank=PAPER_RANK, pair_types="extremes")
    assert result.summary["pairs"]["train"] == {"gpt-4>davinci": 6}  # 1 strong sample x 2 weak samples x 3 prompts
    assert build(jsonl("b.jsonl", long_rows), rank=PAPER_RANK).summary["pairs"]["train"] == {
        "chatgpt>davinci": 3, "gpt-4>chatgpt": 3, "gpt-4>davinci": 3}


def test_prompt_with_one_source_is_skipped_and_counted(jsonl, long_rows):
    rows = long_rows + [{"prompt": "Only one model saw this.", "source": "gpt-4", "response": "Alone."}]
    summary = build(jsonl("a.jsonl", rows), rank=PAPER_RANK).summary
    assert summary["dropped_prompts"]["only one source left"] == 1
    assert sum(summary["pairs"]["train"].values()) == 9


def test_chat_prompts_give_trl_conversational_pairs(jsonl):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    rows = [{"prompt": prompt, "source": "strong", "response": "Paris."},
            {"prompt": prompt, "source": "weak", "response": "Lyon, probably."}]
    pair = build(jsonl("a.jsonl", rows), rank="strong > weak", prompt_format="chat").train.row(0, named=True)
    assert pair["prompt"] == prompt
    assert pair["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Lyon, probably."}]


def test_plain_prompts_are_conversational_by_default_because_answers_were_asked_through_a_template(jsonl):
    rows = [{"instruction": "Capital of France?", "output": "Paris.", "generator": "strong"},
            {"instruction": "Capital of France?", "output": "Lyon.", "generator": "weak"}]
    answers = responses_from_files([read_records(jsonl("a.jsonl", rows))])
    pairs = pair_answers(answers, PairsConfig(rank="strong > weak"))
    pair = pairs.train.row(0, named=True)
    assert pair["prompt"] == [{"role": "user", "content": "Capital of France?"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "Paris."}]


def test_text_format_gives_chat_prompts_as_the_completions_endpoint_saw_them(jsonl):
    from pairforge.text import prompt_text

    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    rows = [{"prompt": prompt, "source": "strong", "response": "Paris."},
            {"prompt": prompt, "source": "weak", "response": "Lyon, probably."}]
    pair = build(jsonl("a.jsonl", rows), rank="strong > weak", prompt_format="text").train.row(0, named=True)
    assert pair["prompt"] == prompt_text(prompt) == "Be brief.\n\nCapital of France?"
    assert (pair["chosen"], pair["rejected"]) == ("Paris.", "Lyon, probably.")


# --- scored ------------------------------------------------------------------------------------------

def test_best_vs_worst_and_ties(jsonl):
    rows = scored_rows({"a": [9.0], "b": [5.0], "c": [1.0]}) + [
        {"prompt": "Tied", "source": s, "response": f"{s} says hi", "score": 3.0} for s in "abc"]
    result = build(jsonl("s.jsonl", rows), strategy="scored")
    pair = result.train.row(0, named=True)
    assert result.train.height == 1 and (pair["chosen_source"], pair["rejected_source"]) == ("a", "c")
    assert pair["margin"] == 8.0 and pair["difficulty"] == 0.0
    assert result.summary["dropped_prompts"]["prompts whose scores are all tied"] == 1


def test_best_vs_random_is_seeded_and_never_picks_a_tie(jsonl):
    rows = scored_rows({"a": [9.0, 9.0], "b": [5.0, 4.0], "c": [1.0, 2.0]}, prompts=30)
    path = jsonl("s.jsonl", rows)
    first, again = (build(path, strategy="scored", scored_mode="best-random", seed=1).train for _ in range(2))
    other = build(path, strategy="scored", scored_mode="best-random", seed=2).train
    assert first.equals(again) and not first.equals(other)
    assert (first["chosen_score"] == 9.0).all() and (first["rejected_score"] < 9.0).all()
    assert first["rejected_source"].n_unique() == 2


def test_all_pairs_above_margin_with_several_samples(jsonl):
    rows = scored_rows({"a": [9.0, 6.0], "b": [5.0]})
    result = build(jsonl("s.jsonl", rows), strategy="scored", scored_mode="all", min_margin=2.0)
    got = sorted(zip(result.train["chosen_score"], result.train["rejected_score"], strict=True))
    assert got == [(9.0, 5.0), (9.0, 6.0)]  # 6 vs 5 is below the margin
    assert result.summary["dropped_prompts"]["pairs with a score gap below 2.0"] == 1


# --- verified -----------------------------------------------------------------------------------------

def test_verified_drops_pairs_the_scores_contradict(jsonl, long_rows):
    scores = {"gpt-4": [9, 9, 2], "chatgpt": [5, 9, 5], "davinci": [1, 1, 1]}
    rows = [{**r, "score": float(scores[r["source"]][i % 3])} for i, r in enumerate(long_rows)]
    result = build(jsonl("a.jsonl", rows), rank=PAPER_RANK, strategy="verified", pair_types="gpt-4>chatgpt")
    report = result.summary["verification"]["gpt-4>chatgpt"]
    assert (report["agree"], report["tied"], report["contradicted"]) == (1, 1, 1)
    assert report["disagreement_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert result.train.height == 1 and result.train["chosen_score"][0] > result.train["rejected_score"][0]


def test_scored_strategy_without_scores_is_an_input_error(jsonl, long_rows):
    from pairforge.errors import InputError

    with pytest.raises(InputError, match="needs scores"):
        build(jsonl("a.jsonl", long_rows), strategy="scored")


# --- filters ------------------------------------------------------------------------------------------

def two_source_rows(answers: list[tuple[str, str]], **extra) -> list[dict]:
    rows = []
    for i, (strong, weak) in enumerate(answers):
        rows.append({"prompt": f"Question number {i}?", "source": "strong", "response": strong, **extra})
        rows.append({"prompt": f"Question number {i}?", "source": "weak", "response": weak})
    return rows


def test_answer_filters_are_counted(jsonl):
    rows = two_source_rows([
        ("A fine answer.", "   \n "),
        ("### Response: leaked template", "Plain answer."),
        ("Good.", "<|im_start|>assistant hello"),
        ("A normal, complete answer here.", "A shorter answer."),
    ])
    rows[6]["finish_reason"] = "length"
    result = build(jsonl("a.jsonl", rows), rank="strong > weak")
    assert result.summary["dropped_answers"] == {"empty answer": 1, "leaked role marker": 2,
                                                 "truncated (finish_reason=length)": 1}
    assert result.train.height == 0
    kept = build(jsonl("b.jsonl", rows), rank="strong > weak", filters={"drop_truncated": False, "role_markers": None})
    assert kept.train.height == 3  # only the empty answer still drops a pair


def test_identical_and_near_duplicate_pairs(jsonl):
    same = "The answer is forty two."
    rows = two_source_rows([
        (same, "  the answer IS   forty two. "),
        ("The quick brown fox jumps over the lazy dog in the park today",
         "The quick brown fox jumps over the lazy dog in the park"),  # Jaccard 10/11
        ("Completely different words here.", "Nothing alike at all."),
    ])
    result = build(jsonl("a.jsonl", rows), rank="strong > weak")
    assert result.summary["dropped_pairs"] == {"chosen == rejected": {"strong>weak": 1},
                                               "near-duplicate (Jaccard >= 0.9)": {"strong>weak": 1}}
    assert result.train.height == 1
    off = build(jsonl("b.jsonl", rows), rank="strong > weak", filters={"near_duplicate": None})
    assert off.train.height == 2  # identical pairs are dropped even with the near-duplicate filter off


def test_length_bounds_and_ratio(jsonl):
    rows = two_source_rows([
        ("one two three four five six", "one two three"),           # ratio 2
        ("one two three four five six seven eight nine ten", "a"),  # ratio 10, weak too short
        ("alpha beta gamma", "delta epsilon zeta"),                 # ratio 1
    ])
    by_words = build(jsonl("a.jsonl", rows), rank="strong > weak", filters={"min_length": 2, "length_ratio": (0.5, 3)})
    assert by_words.summary["dropped_answers"] == {"shorter than 2 words": 1}
    assert by_words.train.height == 2
    by_ratio = build(jsonl("b.jsonl", rows), rank="strong > weak", filters={"length_ratio": (0.5, 1.5)})
    assert by_ratio.summary["dropped_pairs"] == {"length ratio outside [0.5, 1.5]": {"strong>weak": 2}}


@pytest.mark.slow
def test_token_lengths_use_the_embedded_tokenizer(jsonl, embedded_tokenizer):
    text = "Tokenization splits words into pieces."
    rows = two_source_rows([(text, "Short.")])
    result = build(jsonl("a.jsonl", rows), rank="strong > weak", filters={"length_unit": "tokens"})
    expected = len(embedded_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert result.summary["lengths"]["unit"] == "tokens"
    assert result.summary["lengths"]["all"]["chosen"]["mean"] == expected
    too_long = build(jsonl("b.jsonl", rows), rank="strong > weak",
                     filters={"length_unit": "tokens", "max_length": expected - 1})
    assert too_long.summary["dropped_answers"] == {f"longer than {expected - 1} tokens": 1}


def test_decontamination_drops_prompts_sharing_an_ngram(tmp_path, jsonl):
    leaked = "Please explain in simple words how the heart pumps blood through the whole human body today"
    rows = two_source_rows([("A good answer.", "Bad.")]) + [
        {"prompt": leaked, "source": s, "response": f"{s} answer"} for s in ("strong", "weak")]
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "Explain in simple words how the heart pumps blood "
                                                                   "through the whole human body today, thanks"}])
    result = build(jsonl("a.jsonl", rows), rank="strong > weak", filters={"decontaminate": [evals], "ngram": 13})
    assert result.summary["dropped_prompts"]["shares a 13-gram with an eval prompt"] == 1
    assert leaked not in result.train["prompt"].to_list() and result.train.height == 1


def test_ultrafeedback_ties_are_never_paired_and_are_counted(jsonl):
    """8.5 and 8.50005 are a tie (scores within 1e-4): no pair under --scored-mode all, and the summary counts it
    (it said "dropped: nothing")."""
    row = {"instruction": "Say hi.", "completions": [
        {"model": "m1", "response": "Hi there, friend!", "overall_score": 8.5},
        {"model": "m2", "response": "Hello to you.", "overall_score": 8.50005},
        {"model": "m3", "response": "hi", "overall_score": 3.0}]}
    for mode in ("all", "best-random"):
        result = build(jsonl("uf.jsonl", [row, {**row, "instruction": "Say bye."}]), strategy="scored",
                       scored_mode=mode)
        kept = set(zip(result.train["chosen_source"], result.train["rejected_source"], strict=True))
        assert all(rejected == "m3" for _, rejected in kept), (mode, kept)
    assert kept and not any(result.summary["dropped_prompts"].values())  # best-random drew m3 for both prompts
    all_pairs = build(jsonl("all.jsonl", [row]), strategy="scored", scored_mode="all").summary
    assert all_pairs["dropped_prompts"]["pairs with tied scores (within 0.0001)"] == 1


def test_verified_counts_scores_within_the_tie_tolerance_as_tied(jsonl):
    rows = [{"prompt": "P", "source": "strong", "response": "Strong answer.", "score": 1.00005},
            {"prompt": "P", "source": "weak", "response": "Weak one.", "score": 1.0}]
    result = build(jsonl("v.jsonl", rows), rank="strong > weak", strategy="verified")
    assert result.train.is_empty() and result.summary["verification"]["strong>weak"]["tied"] == 1


def test_ultrafeedback_pair_prompt_is_what_the_chosen_model_was_asked(jsonl):
    row = {"instruction": "Say hi.", "completions": [
        {"model": "m1", "response": "Hi there!", "overall_score": 8.0, "custom_system_prompt": "Be warm."},
        {"model": "m2", "response": "hi", "overall_score": 3.0, "custom_system_prompt": "Be terse."}]}
    pair = build(jsonl("uf.jsonl", [row]), strategy="scored", prompt_format="chat").train.row(0, named=True)
    assert pair["prompt"] == [{"role": "system", "content": "Be warm."}, {"role": "user", "content": "Say hi."}]
    assert pair["chosen"] == [{"role": "assistant", "content": "Hi there!"}]


# --- splits and the shipped sample ---------------------------------------------------------------------

def test_eval_split_is_by_prompt_and_deterministic():
    records = [read_records(SAMPLE / f"{name}.json") for name in ("strong", "medium", "weak")]
    responses = responses_from_files(records)
    cfg = PairsConfig(rank="strong > medium > weak", eval_fraction=0.3)
    first, again = pair_answers(responses, cfg), pair_answers(responses, cfg)
    assert first.train.equals(again.train)
    train_prompts, eval_prompts = set(first.train["prompt_id"]), set(first.eval["prompt_id"])
    assert not train_prompts & eval_prompts
    assert 0.15 < len(eval_prompts) / 50 < 0.45
    assert first.eval.height == 3 * len(eval_prompts)  # every pair type of a held-out prompt is held out


def test_own_ids_that_are_not_hex_spread_over_the_split(jsonl):
    """Ids like q0..q11 are hashed into buckets, as ours are: not every prompt in the eval split."""
    rows = [{"prompt_id": f"q{p}", "prompt": f"Question {p}?", "source": s, "response": f"{s} answers {p}"}
            for p in range(12) for s in ("strong", "weak")]
    result = build(jsonl("a.jsonl", rows), rank="strong > weak", eval_fraction=0.25)
    held_out = set(result.eval["prompt_id"])
    assert 0 < len(held_out) < 12 and not held_out & set(result.train["prompt_id"])
    again = build(jsonl("b.jsonl", rows), rank="strong > weak", eval_fraction=0.25)
    assert set(again.eval["prompt_id"]) == held_out  # stable


def test_ids_led_by_hex_digits_keep_the_split_they_always_had(jsonl):
    """An md5 or UUID-hex id was split by its first 8 hex digits before non-hex ids were hashed: rebuilding pairs
    from the same data must keep every prompt on its side (0x1... is held out at 25%, 0xc... is not)."""
    low, high = "1" + "0" * 31, "c" + "0" * 31
    rows = [{"prompt_id": pid, "prompt": f"Question {pid[0]}?", "source": s, "response": f"{s} answers {pid[0]}"}
            for pid in (low, high) for s in ("strong", "weak")]
    result = build(jsonl("a.jsonl", rows), rank="strong > weak", eval_fraction=0.25)
    assert set(result.eval["prompt_id"]) == {low} and set(result.train["prompt_id"]) == {high}


def test_sample_set_gives_every_paper_pair():
    records = [read_records(SAMPLE / f"{name}.json") for name in ("strong", "medium", "weak")]
    result = pair_answers(responses_from_files(records), PairsConfig(rank="strong > medium > weak"))
    assert result.summary["pairs"]["train"] == {"medium>weak": 50, "strong>medium": 50, "strong>weak": 50}
    assert result.summary["dropped_answers"] == {} and result.summary["dropped_pairs"] == {}


def test_pairs_from_response_records_built_in_python():
    from pairforge.records import responses_frame
    from pairforge.schema import Response

    answers = [Response(prompt="Capital of France?", source="big", response="Paris.", score=9.0),
               Response(prompt="Capital of France?", source="small", response="Lyon.", score=2.0),
               Response(prompt="Capital of France?", source="small", response="Maybe Paris.", sample=1, score=5.0)]
    result = pair_answers(responses_frame(answers), PairsConfig(strategy="scored", scored_mode="all",
                                                               prompt_format="text"))
    assert sorted(zip(result.train["chosen"], result.train["rejected"], strict=True)) == [
        ("Maybe Paris.", "Lyon."), ("Paris.", "Lyon."), ("Paris.", "Maybe Paris.")]
    assert result.train["prompt_id"][0] == answers[0].prompt_id


def test_decontamination_reads_what_a_prompt_asks_not_its_earlier_assistant_turns(tmp_path) -> None:
    """A multi-turn prompt is contaminated by its questions, not by boilerplate in an earlier assistant turn."""
    from pairforge.pairs.filters import contaminated_prompts

    shared = "please list the three primary colours of light and explain how they mix on a screen"
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"prompt": shared}) + "\n")
    turns = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": shared},
             {"role": "user", "content": "Thanks, and what about paint?"}]
    asked = [{"role": "user", "content": shared}]
    frame = pl.DataFrame({"prompt_id": ["a", "b"], "prompt": [turns, asked]})
    assert contaminated_prompts(frame, [evals], n=13) == {"b"}


# --- pairs in: a TRL preference file re-filtered and split ----------------------------------------------

def ultrafeedback_binarized(n: int) -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized's shape: a text prompt, chat answers that repeat it, scores."""
    rows = []
    for i in range(n):
        user = {"role": "user", "content": f"Question {i}: how do plants make food?"}
        rows.append({"prompt": user["content"], "prompt_id": f"p{i}", "messages": [],
                     "chosen": [user, {"role": "assistant", "content": f"By photosynthesis, answer {i}: light, water "
                                                                        "and carbon dioxide become sugar."}],
                     "rejected": [user, {"role": "assistant", "content": f"They eat soil {i}."}],
                     "score_chosen": 9.0, "score_rejected": 9.0 - (i % 4 + 1)})
    return rows


def test_a_trl_preference_file_is_refiltered_and_split(jsonl, tmp_path):
    from typer.testing import CliRunner

    from pairforge.cli import app
    from pairforge.schema import PAIR_COLUMNS

    rows = ultrafeedback_binarized(16)
    rows[1]["rejected"][1]["content"] = "   "  # empty answer
    rows[2]["score_rejected"] = 9.00005  # tied with the chosen score
    rows[3]["rejected"][1]["content"] = "<|im_start|>assistant soil"  # a leaked role marker
    out = tmp_path / "pairs.parquet"
    result = CliRunner().invoke(app, ["pairs", "build", str(jsonl("uf_binarized.jsonl", rows)), "--out", str(out),
                                      "--eval-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    train, held_out = pl.read_parquet(out), pl.read_parquet(tmp_path / "pairs.eval.parquet")
    assert train.columns == list(PAIR_COLUMNS)
    assert train.height + held_out.height == 13 and held_out.height > 0
    assert not set(train["prompt_id"]) & set(held_out["prompt_id"])
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["dropped_pairs"] == {"empty answer": {"uf_binarized": 1}, "leaked role marker": {"uf_binarized": 1},
                                        "scores tied (within 0.0001)": {"uf_binarized": 1}}
    pair = train.row(0, named=True)
    assert pair["prompt"] == [rows[int(pair["prompt_id"][1:])]["chosen"][0]]  # TRL's rule: the shared turns
    assert pair["chosen"][0]["role"] == "assistant" and pair["pair_type"] == "uf_binarized"
    assert pair["margin"] == pair["chosen_score"] - pair["rejected_score"] > 0
    assert set(train["difficulty"]) <= {0.0, 0.25, 0.5, 0.75} and train["difficulty"].max() > 0


def test_a_standard_preference_file_keeps_its_format_and_names_pair_types_by_source(jsonl, tmp_path):
    from typer.testing import CliRunner

    from pairforge.cli import app

    rows = [{"prompt": f"Say {i}.", "chosen": f"{i}, as you asked.", "rejected": "No.", "chosen_source": "big",
             "rejected_source": "small"} for i in range(4)]
    path = jsonl("standard.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    assert CliRunner().invoke(app, ["pairs", "build", str(path), "--out", str(out)]).exit_code == 0
    pairs = pl.read_ndjson(out)
    assert pairs["prompt"].to_list() == [r["prompt"] for r in rows] and pairs["chosen"][0] == "0, as you asked."
    assert set(pairs["pair_type"]) == {"big>small"} and set(pairs["margin"]) == {1.0}  # one level: no scores
    refused = CliRunner().invoke(app, ["pairs", "build", str(path), "--rank", "big > small", "--out", str(out)])
    assert refused.exit_code == 2 and "--rank" in refused.stderr and "preference file" in refused.stderr


def standard_pairs(n: int) -> list[dict]:
    return [{"prompt": f"Say {i}.", "chosen": f"{i}, as you asked.", "rejected": "No."} for i in range(n)]


def test_the_same_preference_file_twice_and_empty_prompts_are_dropped_and_counted(jsonl, tmp_path):
    from typer.testing import CliRunner

    from pairforge.cli import app

    rows = [*standard_pairs(3), {"prompt": "  ", "chosen": "Yes.", "rejected": "No."}]
    path = jsonl("ok.jsonl", rows)
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["pairs", "build", str(path), str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(pl.read_ndjson(out)["prompt"]) == ["Say 0.", "Say 1.", "Say 2."]
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    assert summary["dropped_pairs"] == {"empty prompt": {"ok": 2}, "the same pair again (prompt, chosen, rejected)":
                                        {"ok": 3}}


@pytest.mark.parametrize("change, expected", [
    ({1: {"prompt_id": "p0"}, 0: {"prompt_id": "p0"}}, "line 2, field 'prompt_id': prompt_id 'p0' is given to two "
                                                        "different prompts ('Say 0.' at line 1, 'Say 1.' here)"),
    ({1: {"prompt_id": ""}}, "line 2, field 'prompt_id': expected a non-empty prompt_id"),
    ({2: {"prompt_id": " "}}, "line 3, field 'prompt_id': expected a non-empty prompt_id"),
])
def test_a_preference_file_prompt_id_names_one_prompt(jsonl, tmp_path, change, expected):
    from typer.testing import CliRunner

    from pairforge.cli import app

    rows = standard_pairs(3)
    for index, fields in change.items():
        rows[index].update(fields)
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["pairs", "build", str(jsonl("ids.jsonl", rows)), "--out", str(out)])
    assert result.exit_code == 2 and expected in result.stderr and "ids.jsonl" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and not out.exists()
