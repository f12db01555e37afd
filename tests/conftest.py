"""Shared fixtures: answer files written the way users have them, and a CLI runner."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path: Path) -> Callable[[str, list[dict[str, Any]]], Path]:
    """Write rows as a JSONL file in the test's folder and return its path."""
    return lambda name, rows: write_jsonl(tmp_path / name, rows)


@pytest.fixture
def long_rows() -> list[dict[str, Any]]:
    """Three prompts answered by three sources of clearly different quality (long format)."""
    prompts = ["What is the capital of France?", "Name a primary color.", "How many legs does a spider have?"]
    answers = {
        "gpt-4": ["The capital of France is Paris.", "Red is a primary color.", "A spider has eight legs."],
        "chatgpt": ["Paris, I believe.", "Blue.", "Eight legs."],
        "davinci": ["France is in Europe.", "Colors are nice.", "Spiders are insects."],
    }
    return [{"prompt": p, "source": s, "response": a[i]} for s, a in answers.items() for i, p in enumerate(prompts)]


@pytest.fixture(scope="session")
def pairforge_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache for the embedded tokenizer conversion, shared by the whole session."""
    path = tmp_path_factory.mktemp("pairforge-cache")
    os.environ["PAIRFORGE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def embedded_tokenizer(pairforge_cache: Path):
    from pairforge.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_tokenizer) -> Path:
    """A tiny random Llama (2 layers, hidden 32) with SmolLM2's real tokenizer, saved as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(embedded_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=embedded_tokenizer.pad_token_id,
                         eos_token_id=embedded_tokenizer.eos_token_id, bos_token_id=embedded_tokenizer.bos_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(str(path))
    embedded_tokenizer.save_pretrained(str(path))
    return path


def sample_recipe(folder: Path, runs: list[dict[str, Any]], prompts: int = 8, **sections: Any) -> Path:
    """folder/recipe.yaml: a pipeline over the sample's strong and weak answers files (ranked pairs, short answers
    kept) on its first `prompts` prompts, with these runs and further sections (`pairs` adds to the default)."""
    rows = json.loads((SAMPLE / "strong.json").read_text())[:prompts]
    prompt_file = write_jsonl(folder / "prompts.jsonl", [{"instruction": r["instruction"]} for r in rows])
    pairs = {"rank": "strong > weak", "filters": {"drop_truncated": False}, **sections.pop("pairs", {})}
    sources = [{"name": n, "backend": "file", "path": str(SAMPLE / f"{n}.json")} for n in ("strong", "weak")]
    recipe = {"run_dir": str(folder / "run"), "prompts": str(prompt_file), "sources": sources, "pairs": pairs,
              "runs": runs, **sections}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def preference_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    """Pairs a model can learn: the chosen answer always agrees, the rejected one always refuses."""
    return [{"prompt": f"Question {i}: is {i} a number?", "chosen": " Yes, it is a number.",
             "rejected": " No idea, sorry.", "pair_type": "easy" if i % 2 else "hard"}
            for i in range(offset, offset + n)]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """A real llama.cpp server (llama-cpp-python[server]) serving the embedded SmolLM2 GGUF on 127.0.0.1."""
    from servers import LlamaServer

    from pairforge.models import embedded_gguf

    server = LlamaServer(embedded_gguf())
    server.start()
    yield server
    server.stop()


def rewind(out: Path, step: int) -> None:
    """Leave `out` as a kill -9 right after the checkpoint of `step` would: later checkpoints, the model and
    the finished mark gone; metrics and consumed rows of later steps still on disk (as a crash leaves them)."""
    for later in sorted((out / "checkpoints").glob("step-*")):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    shutil.rmtree(out / "model")
    run = json.loads((out / "run.json").read_text())
    del run["finished_step"]
    (out / "run.json").write_text(json.dumps(run))


def replace_weights(folder: Path, seed: int) -> None:
    """Another model saved over the folder's files (the same architecture, every weight moved a little), as a
    retraining into the same folder does; a reward model stays one."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    architecture = AutoConfig.from_pretrained(str(folder)).architectures[0]
    kind = AutoModelForSequenceClassification if architecture.endswith("SequenceClassification") else \
        AutoModelForCausalLM
    model = kind.from_pretrained(str(folder))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.save_pretrained(str(folder))


def answer_failed_judge_requests(store: Path, reply: Callable[[str, str, str], dict[str, Any]]) -> int:
    """Give each judge request that only failed so far in a run's store.sqlite the judge's reply, written through
    the real store as a finished request would be. `reply(prompt_id, shown_first, shown_second)` returns the reply's
    text (and first-token log-probs); the sources are read from the readable cache key
    judge:<prompt_id>:<source shown first>:<source shown second>:<hash of the texts>:<hash of the settings>."""
    import sqlite3

    from pairforge.requests.store import Store

    db = sqlite3.connect(store)
    keys = [key for (key,) in db.execute("SELECT key FROM results WHERE kind = 'judgment' AND value IS NULL")]
    db.close()
    writer = Store(store)
    for key in keys:
        _, prompt_id, first, second, *_ = key.split(":")
        writer.put(key, "judgment", {"finish_reason": "stop", "tokens": 1, "first_token_logprobs": {},
                                     **reply(prompt_id, first, second)})
    writer.close()
    return len(keys)


def one_line_error(result: Any, *fragments: str) -> str:
    """Exit code 2, one line on stderr holding every fragment, no traceback: the bad-input promise, for a
    CliRunner result or a finished subprocess."""
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    output = result.output if hasattr(result, "output") else result.stdout + result.stderr
    assert code == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
