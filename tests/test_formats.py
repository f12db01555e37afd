"""Every input shape users have becomes the same responses frame."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pairforge.files import read_records
from pairforge.records import MESSAGES, responses_from_files
from pairforge.schema import prompt_id_of, to_messages


def load(*paths: Path, **kwargs) -> pl.DataFrame:
    return responses_from_files([read_records(p) for p in paths], **kwargs)


def test_long_jsonl(jsonl, long_rows):
    frame = load(jsonl("answers.jsonl", long_rows))
    assert frame.height == 9 and frame.schema["prompt"] == pl.String
    assert sorted(frame["source"].unique()) == ["chatgpt", "davinci", "gpt-4"]
    assert frame["prompt_id"][0] == prompt_id_of(to_messages(frame["prompt"][0]))
    assert frame["sample"].to_list() == [0] * 9


def test_one_alpaca_eval_file_per_model(tmp_path):
    for model, output in (("gpt4", "Paris is the capital."), ("davinci", "France.")):
        rows = [{"instruction": "What is the capital of France?", "output": output, "generator": model}]
        (tmp_path / f"{model}_outputs.json").write_text(json.dumps(rows))
    frame = load(tmp_path / "gpt4_outputs.json", tmp_path / "davinci_outputs.json")
    assert sorted(frame["source"]) == ["davinci", "gpt4"]
    assert frame["prompt_id"].n_unique() == 1


def test_source_defaults_to_file_name_and_alpaca_input_joins_the_instruction(jsonl):
    path = jsonl("my-model.jsonl", [{"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}])
    frame = load(path)
    assert frame["source"][0] == "my-model" and frame["prompt"][0] == "Translate.\n\nBonjour"


def test_wide_with_columns_skips_unanswered(jsonl):
    rows = [{"question": "Q1", "out_a": "A1", "out_b": "B1"}, {"question": "Q2", "out_a": "A2", "out_b": None}]
    frame = load(jsonl("wide.jsonl", rows), columns={"strong": "out_a", "weak": "out_b"})
    assert frame.height == 3
    assert frame.filter(pl.col("source") == "weak")["response"].to_list() == ["B1"]


def test_ultrafeedback_scores(jsonl):
    row = {"instruction": "Say hi.", "completions": [
        {"model": "m1", "response": "Hi there!", "overall_score": 8.5},
        {"model": "m2", "response": "hi", "ratings": {"helpfulness": 2, "honesty": 4}},
        {"model": "m3", "response": "Hello!",
         "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "N/A"}}},
    ]}
    frame = load(jsonl("uf.jsonl", [row])).sort("source")
    assert frame["score"].to_list() == [8.5, 3.0, 5.0]


def test_nectar_rank_becomes_score(jsonl):
    row = {"prompt": "Say hi.", "answers": [{"model": "a", "answer": "Hello!", "rank": 1},
                                             {"model": "b", "answer": "hey", "rank": 2}]}
    frame = load(jsonl("nectar.jsonl", [row])).sort("source")
    assert frame["score"].to_list() == [-1.0, -2.0]


def test_sharegpt_last_assistant_turn_is_the_response(jsonl):
    row = {"model": "vicuna", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
        {"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris."},
    ]}
    frame = load(jsonl("chat.jsonl", [row]))
    assert frame.schema["prompt"] == MESSAGES
    prompt = frame["prompt"].to_list()[0]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert frame["response"][0] == "Paris." and frame["source"][0] == "vicuna"


def test_system_prompt_makes_the_prompt_conversational(jsonl):
    rows = [{"prompt": "Hi", "source": "a", "response": "Hello", "system": "Be kind."},
            {"prompt": "Hi", "source": "b", "response": "Yo"}]
    frame = load(jsonl("sys.jsonl", rows)).sort("source")
    prompts = frame["prompt"].to_list()
    assert prompts[0][0] == {"role": "system", "content": "Be kind."} and len(prompts[1]) == 1
    assert frame["prompt_id"][0] != frame["prompt_id"][1]


def test_parquet_and_saved_hf_dataset(tmp_path, long_rows):
    import datasets

    pl.DataFrame(long_rows).write_parquet(tmp_path / "a.parquet")
    datasets.Dataset.from_list(long_rows).save_to_disk(str(tmp_path / "hf"))
    from_parquet, from_hf = load(tmp_path / "a.parquet"), load(tmp_path / "hf")
    assert from_parquet.sort("prompt_id", "source").equals(from_hf.sort("prompt_id", "source"))
    assert from_parquet.height == 9


def test_repeated_prompt_and_source_become_samples(jsonl):
    rows = [{"prompt": "P", "source": "a", "response": f"answer {i}"} for i in range(3)]
    assert load(jsonl("s.jsonl", rows))["sample"].to_list() == [0, 1, 2]


def test_chat_and_plain_files_mix(jsonl):
    plain = jsonl("plain.jsonl", [{"prompt": "Hi", "source": "a", "response": "Hello"}])
    chat = jsonl("chat.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}], "source": "b", "response": "Yo"}])
    frame = load(plain, chat)
    assert frame.schema["prompt"] == MESSAGES and frame["prompt_id"].n_unique() == 1


def test_ultrafeedback_keeps_each_completions_system_prompt(jsonl):
    """UltraFeedback asked each model under its own `custom_system_prompt`: it is the system turn of that answer's
    prompt; the prompt_id stays the instruction's, so answers asked under different system prompts still pair."""
    row = {"instruction": "Say hi.", "completions": [
        {"model": "m1", "response": "Hi there!", "overall_score": 8.0, "custom_system_prompt": "Be warm."},
        {"model": "m2", "response": "hi", "overall_score": 3.0, "custom_system_prompt": "Be terse."},
        {"model": "m3", "response": "Hey.", "overall_score": 5.0}]}
    frame = load(jsonl("uf.jsonl", [row])).sort("source")
    user = {"role": "user", "content": "Say hi."}
    assert frame["prompt"].to_list() == [[{"role": "system", "content": "Be warm."}, user],
                                         [{"role": "system", "content": "Be terse."}, user], [user]]
    assert frame["prompt_id"].unique().to_list() == [prompt_id_of(to_messages("Say hi."))]
