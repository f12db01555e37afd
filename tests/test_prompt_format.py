"""One format end to end: what the generator produced is exactly what the trainer scores, and a trained
model is evaluated in the prompt format it was trained in."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from conftest import preference_rows
from pairforge.config import JudgeConfig, SourceConfig
from pairforge.evaluation.compare import EvalSettings, evaluate
from pairforge.generation.answers import source_requests
from pairforge.prompting import TEXT_TEMPLATE
from pairforge.requests.backends.base import Request
from pairforge.requests.backends.local import TransformersBackend
from pairforge.requests.store import Store
from pairforge.sequences.tokenize import encode
from pairforge.train_config import TrainConfig
from pairforge.training.trainer import train

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France? Answer in one word.", "Name one primary colour. One word only."]


class Answers:
    def __init__(self) -> None:
        self.text: dict[str, str] = {}

    def completed(self, request: Request, completion) -> None:
        assert completion.finish_reason == "stop", completion  # ended by end of turn, not cut off
        self.text[request.key] = completion.text

    def failed(self, request: Request, reason: str) -> None:
        raise AssertionError(reason)

    def retried(self, request: Request, reason: str) -> None:
        pass


@pytest.mark.parametrize("endpoint, prompt_format", [("chat", "chat"), ("completions", "text")])
def test_trainer_scores_exactly_the_tokens_the_generator_produced(pairforge_cache, endpoint, prompt_format):
    """The embedded SmolLM2 answers greedily; re-tokenised by the trainer, prompt + answer must be the ids the
    model was fed and generated (prompt rendered with the generation prompt, the answer, end of turn)."""
    source = SourceConfig(name="s", temperature=0.0, max_new_tokens=40, batch_size=1, endpoint=endpoint,
                          stop=["\n\n"] if endpoint == "completions" else [])
    backend = TransformersBackend(source)
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    answers = Answers()
    backend.run([Request(f"k{i}", m) for i, m in enumerate(messages)], answers)
    eos = backend.tokenizer.eos_token_id
    for i, prompt in enumerate(messages):
        prompt_ids = backend._encode(prompt)
        with torch.inference_mode():
            out = backend.model.generate(torch.tensor([prompt_ids]), max_new_tokens=40, do_sample=False,
                                         pad_token_id=backend.tokenizer.pad_token_id)
        generated = out[0, len(prompt_ids):].tolist()
        answer = answers.text[f"k{i}"]
        record_prompt = prompt if prompt_format == "chat" else prompt[0]["content"]
        trained = encode(backend.tokenizer, record_prompt, answer, prompt_format)
        assert trained.ids[: trained.answer_start] == prompt_ids
        if endpoint == "chat":  # the model itself ended its turn: its ids up to and including EOS
            assert eos in generated
            assert trained.ids[trained.answer_start:] == generated[: generated.index(eos) + 1]
        else:  # cut at the stop string: the answer's ids, then the EOS training appends
            expected = backend.tokenizer(answer, add_special_tokens=False)["input_ids"]
            assert trained.ids[trained.answer_start:] == [*expected, eos]
            assert backend.tokenizer.decode(generated).startswith(answer)


def test_a_model_without_chat_template_is_asked_and_trained_with_the_instruction_template(tiny_model_dir, tmp_path):
    """A base model (no chat template, like the paper's LLaMA-7B) sees the Alpaca-style template in
    generation and in training alike."""
    from transformers import AutoTokenizer

    folder = tmp_path / "base-model"
    folder.mkdir()
    for file in tiny_model_dir.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert not tokenizer.chat_template

    backend = TransformersBackend(SourceConfig(name="b", model=str(folder), temperature=0.0, max_new_tokens=4))
    prompt = [{"role": "user", "content": "Say hi."}]
    expected = tokenizer(TEXT_TEMPLATE.format(instruction="Say hi."))["input_ids"]
    assert backend._encode(prompt) == expected
    trained = encode(tokenizer, prompt, "Hi!", "chat")
    assert trained.ids[: trained.answer_start] == expected


def test_eval_asks_a_trained_model_in_the_format_it_was_trained_in(tiny_model_dir, tmp_path):
    """A run trained on plain-text pairs is asked through the completions endpoint (no chat template);
    a run trained on conversational pairs through the chat template."""
    text_pairs = tmp_path / "text.parquet"
    pl.DataFrame(preference_rows(8)).write_parquet(text_pairs)
    chat_pairs = tmp_path / "chat.parquet"
    pl.DataFrame([{**r, "prompt": [{"role": "user", "content": r["prompt"]}],
                   "chosen": [{"role": "assistant", "content": r["chosen"]}],
                   "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                  for r in preference_rows(8)]).write_parquet(chat_pairs)
    runs = {}
    for name, pairs in (("text-run", text_pairs), ("chat-run", chat_pairs)):
        runs[name] = tmp_path / name
        train(TrainConfig(model=str(tiny_model_dir), pairs=pairs, out=runs[name], batch_size=8, max_steps=1,
                          lr=1e-3, max_length=64), progress=False)
    assert json.loads((runs["text-run"] / "run.json").read_text())["prompt_format"] == "text"
    assert json.loads((runs["chat-run"] / "run.json").read_text())["prompt_format"] == "chat"

    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{"instruction": "Question 1: is 1 a number?", "output": "Yes, it is."},
                                     {"instruction": "Question 2: is 2 a number?", "output": "Yes, it is."}]))
    settings = EvalSettings(max_new_tokens=4, bootstrap=20)
    evaluate([f"{n}={p}" for n, p in runs.items()], [], reference, JudgeConfig(kind="similarity", reference="r"),
             tmp_path / "eval", None, settings, show_progress=False)

    from pairforge.records import prompts_from_file

    prompts = prompts_from_file(reference)
    store = Store(tmp_path / "eval" / "store.sqlite")
    try:
        for name, trained_as, other in (("text-run", "completions", "chat"), ("chat-run", "chat", "completions")):
            def keys(how: str, name: str = name) -> list[str]:
                source = SourceConfig(name=name, model=str(runs[name] / "model"), temperature=0.0, max_new_tokens=4,
                                      batch_size=settings.batch_size, endpoint=how)
                return [r.key for r in source_requests(source, prompts, 1)]
            assert set(store.get(keys(trained_as))) == set(keys(trained_as))  # asked in the trained format
            assert not store.get(keys(other))  # and never in the other one
    finally:
        store.close()
