"""The prompt/answer boundary on token ids, EOS, BOS and truncation, with SmolLM2's real tokenizer."""

from __future__ import annotations

import polars as pl
import pytest

from pairforge.errors import InputError
from pairforge.sequences.tokenize import encode, tokenize_pairs

pytestmark = pytest.mark.slow  # the real tokenizer (converted from the embedded GGUF once per session)


def answer_text(tokenizer, seq) -> str:
    return tokenizer.decode(seq.ids[seq.answer_start :])


def test_merged_boundary_token_counts_as_answer(embedded_tokenizer):
    # "A:" + " 4": the space before 4 joins the answer's first token; slicing characters would split it
    seq = encode(embedded_tokenizer, "Q: 2+2?\nA:", " 4")
    assert seq.ids[: seq.answer_start] == embedded_tokenizer("Q: 2+2?\nA:")["input_ids"]
    assert answer_text(embedded_tokenizer, seq) == " 4" + embedded_tokenizer.eos_token


def test_prompt_ending_inside_a_word(embedded_tokenizer):
    seq = encode(embedded_tokenizer, "The capital of France is Par", "is.")
    full = embedded_tokenizer("The capital of France is Paris.")["input_ids"]
    assert seq.ids[:-1] == full  # the sequence is exactly what the model will see, plus EOS
    assert seq.answer_start < len(embedded_tokenizer("The capital of France is Par")["input_ids"])


def test_chat_template_answer_ends_with_one_eos(embedded_tokenizer):
    prompt = [{"role": "user", "content": "Say hi"}]
    seq = encode(embedded_tokenizer, prompt, [{"role": "assistant", "content": "Hello there!"}])
    expected_prompt = embedded_tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
    expected_prompt = list(expected_prompt["input_ids"] if hasattr(expected_prompt, "keys") else expected_prompt)
    assert seq.ids[: seq.answer_start] == expected_prompt
    assert answer_text(embedded_tokenizer, seq) == "Hello there!" + embedded_tokenizer.eos_token
    assert seq.ids.count(embedded_tokenizer.eos_token_id) == seq.ids[: seq.answer_start].count(
        embedded_tokenizer.eos_token_id) + 1


def test_eos_is_not_doubled_and_no_bos_is_invented(embedded_tokenizer):
    seq = encode(embedded_tokenizer, "Hi", " there" + embedded_tokenizer.eos_token)
    assert seq.ids[-1] == embedded_tokenizer.eos_token_id and seq.ids[-2] != embedded_tokenizer.eos_token_id
    assert seq.ids[0] != embedded_tokenizer.bos_token_id  # this tokenizer adds no BOS to plain text


def long_pair(words: int) -> pl.DataFrame:
    return pl.DataFrame({"prompt": ["context " * words + "question?"], "chosen": [" good " * words],
                         "rejected": [" bad"]})


def test_truncation_keeps_prompt_end_and_answer_start(embedded_tokenizer):
    pairs, stats = tokenize_pairs(long_pair(100), embedded_tokenizer, max_length=64, max_prompt_length=32)
    chosen = pairs[0].chosen
    assert len(chosen.ids) == 64 and chosen.answer_start == 32 and stats.truncated == 1
    assert embedded_tokenizer.decode(chosen.ids[:chosen.answer_start]).endswith("question?")
    assert embedded_tokenizer.decode(chosen.ids[chosen.answer_start:]).startswith(" good")


def test_too_long_drop_and_error(embedded_tokenizer):
    pairs, stats = tokenize_pairs(long_pair(100), embedded_tokenizer, max_length=64, too_long="drop")
    assert pairs == [] and stats.dropped == {"longer than max_length": 1}
    with pytest.raises(InputError, match="row 1: prompt \\+ chosen is .* tokens, more than max_length 64"):
        tokenize_pairs(long_pair(100), embedded_tokenizer, max_length=64, too_long="error", source="p.parquet")


def test_missing_columns_and_no_rows(embedded_tokenizer):
    """A missing column is an error here; an empty file is refused when it is read (`read_records`), and
    no pair to train on is the trainer's error (test_train.py) — here it is simply no pairs."""
    with pytest.raises(InputError, match="missing column\\(s\\) rejected"):
        tokenize_pairs(pl.DataFrame({"prompt": ["p"], "chosen": ["c"]}), embedded_tokenizer, max_length=64)
    pairs, stats = tokenize_pairs(pl.DataFrame({"prompt": [], "chosen": [], "rejected": []}, schema={
        "prompt": pl.String, "chosen": pl.String, "rejected": pl.String}), embedded_tokenizer, max_length=64)
    assert pairs == [] and stats.pairs == 0


def test_pre_templated_text_with_a_bos_adding_tokenizer_has_one_bos(embedded_tokenizer):
    import copy

    adds_bos = copy.deepcopy(embedded_tokenizer)
    adds_bos.add_bos_token = True  # like Llama tokenizers; the prompt text already starts with the BOS text
    bos = adds_bos.bos_token_id
    prompt = f"{adds_bos.bos_token}user\nhi{adds_bos.eos_token}\n{adds_bos.bos_token}assistant\n"
    assert adds_bos(prompt)["input_ids"][:2] == [bos, bos]  # the trap
    seq = encode(adds_bos, prompt, "Hello")
    assert seq.ids[0] == bos and seq.ids[1] != bos
    assert adds_bos.decode(seq.ids[seq.answer_start:]) == "Hello" + adds_bos.eos_token
