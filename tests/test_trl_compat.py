"""A pairs file we write trains in TRL's DPOTrainer unchanged (standard and conversational formats).

Uses a tiny random Llama (2 layers, hidden 32) with SmolLM2's real tokenizer and chat template, and
takes one real optimisation step, so the columns, types and nesting are what TRL actually consumes.
"""

from __future__ import annotations

import copy
import math

import pytest
from typer.testing import CliRunner

from pairforge.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_llama(embedded_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         pad_token_id=embedded_tokenizer.pad_token_id, eos_token_id=embedded_tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


def conversational_rows(long_rows):
    return [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in long_rows]


@pytest.mark.parametrize("shape", ["standard", "conversational"])
def test_pairs_file_trains_in_trl_dpo(tmp_path, jsonl, long_rows, embedded_tokenizer, tiny_llama, shape):
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational

    rows = long_rows if shape == "standard" else conversational_rows(long_rows)
    out = tmp_path / "pairs.parquet"
    prompt_format = "text" if shape == "standard" else "chat"
    result = CliRunner().invoke(app, ["pairs", "build", str(jsonl("a.jsonl", rows)), "--rank",
                                      "gpt-4 > chatgpt > davinci", "--out", str(out), "--prompt-format", prompt_format])
    assert result.exit_code == 0, result.output

    dataset = load_dataset("parquet", data_files=str(out), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(dataset.column_names)
    assert is_conversational(dataset[0]) == (shape == "conversational")

    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=3, report_to=[],
                     save_strategy="no", logging_steps=1, use_cpu=True, max_length=128, dataset_num_proc=None)
    trainer = DPOTrainer(model=tiny_llama, ref_model=copy.deepcopy(tiny_llama), args=args, train_dataset=dataset,
                         processing_class=embedded_tokenizer)
    example = trainer.train_dataset[0]
    chosen_text = dataset[0]["chosen"] if shape == "standard" else dataset[0]["chosen"][0]["content"]
    assert chosen_text in embedded_tokenizer.decode(example["chosen_ids"])
    history = trainer.train().metrics
    assert math.isfinite(history["train_loss"])
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and math.isclose(losses[0], math.log(2), rel_tol=1e-3)  # policy == reference at step 1


@pytest.mark.parametrize("shape", ["standard", "conversational"])
def test_a_refiltered_trl_preference_file_trains_in_trl_dpo(tmp_path, jsonl, embedded_tokenizer, tiny_llama, shape):
    """Pairs in, pairs out: a TRL preference file through `pairs build` has the pairs contract's columns
    (schema.PAIR_COLUMNS, DESIGN.md "Records") in its own format, and TRL trains on the result unchanged."""
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational

    from pairforge.schema import PAIR_COLUMNS

    def turn(role, text):
        return [{"role": role, "content": text}] if shape == "conversational" else text

    rows = [{"prompt": turn("user", f"Name a colour, number {i}."), "chosen": turn("assistant", f"Blue, {i}."),
             "rejected": turn("assistant", f"A cat {i}?"), "score_chosen": 8.0, "score_rejected": 2.0 + i % 3}
            for i in range(6)]
    out = tmp_path / "pairs.parquet"
    result = CliRunner().invoke(app, ["pairs", "build", str(jsonl("prefs.jsonl", rows)), "--out", str(out)])
    assert result.exit_code == 0, result.output

    dataset = load_dataset("parquet", data_files=str(out), split="train")
    assert dataset.column_names == list(PAIR_COLUMNS)
    assert is_conversational(dataset[0]) == (shape == "conversational")
    args = DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=3, report_to=[],
                     save_strategy="no", logging_steps=1, use_cpu=True, max_length=128, dataset_num_proc=None,
                     bf16=False)
    trainer = DPOTrainer(model=tiny_llama, ref_model=copy.deepcopy(tiny_llama), args=args, train_dataset=dataset,
                         processing_class=embedded_tokenizer)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and math.isclose(losses[0], math.log(2), rel_tol=1e-3)  # policy == reference at step 1
