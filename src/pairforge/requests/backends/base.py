"""What every generation backend takes and gives: requests in, completions (or errors) out.

A backend answers a list of requests and reports each one the moment it is done, so the runner can
commit it to the store at once (a crash loses only what is in flight). Backends never raise for one
bad request: they report it as failed with a reason, and the runner records it for a later retry.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pairforge.config import SourceConfig
from pairforge.errors import InputError
from pairforge.models import model_path
from pairforge.schema import Message


@dataclass(frozen=True)
class Request:
    """One answer to produce. `messages` already carry the source's system prompt; `key` is the cache key;
    `seed` is derived from the source's seed and the key."""

    key: str
    messages: list[Message]
    seed: int = 0
    top_logprobs: int = 0  # > 0: also return the top log-probs of the first generated token (judges)


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length"
    tokens: int = 0  # generated tokens
    first_token_logprobs: dict[str, float] = field(default_factory=dict)  # token text -> log-prob
    prompt_tokens: int | None = None  # the prompt's tokens as the model read them; None: the server did not say


class Reporter(Protocol):
    """Receives each outcome as soon as it is known."""

    def completed(self, request: Request, completion: Completion) -> None: ...

    def failed(self, request: Request, reason: str) -> None: ...

    def retried(self, request: Request, reason: str) -> None: ...


class Backend(Protocol):
    def run(self, requests: list[Request], report: Reporter) -> None: ...


def check_source(cfg: SourceConfig) -> None:
    """Fail before any work when a source cannot run here: a missing package or API key is one clear line."""
    needs = {"openai": ("openai", "pip install openai"),
             "vllm": ("vllm", "pip install 'pairforge[vllm]' on a GPU machine (or use backend transformers / openai)")}
    if cfg.backend == "file" and not (cfg.path and cfg.path.exists()):
        raise InputError(f"source '{cfg.name}'", f"backend file: no such answers file {cfg.path}")
    if cfg.backend in ("transformers", "vllm") and cfg.model:
        model_path(cfg.model)  # a model folder that does not exist, before the first request
    if cfg.backend == "vllm" and (Path(cfg.model) / "adapter_config.json").exists() and \
            not (Path(cfg.model) / "config.json").exists():
        raise InputError(f"source '{cfg.name}'", f"{cfg.model} is a LoRA adapter, which vLLM does not load as a "
                         "model: train with lora.merge: true (or use backend transformers)")
    if cfg.tpm is not None and cfg.tpm < cfg.max_new_tokens:  # here: a judge's max_new_tokens is only known now
        raise InputError(f"source '{cfg.name}'", f"tpm {cfg.tpm:g} is below one request's max_new_tokens "
                         f"{cfg.max_new_tokens}: each request would wait over a minute (expected the quota in tokens, "
                         "e.g. tpm: 200000)")
    if cfg.backend in needs:
        package, hint = needs[cfg.backend]
        if importlib.util.find_spec(package) is None:
            raise InputError(f"source '{cfg.name}'", f"backend {cfg.backend} needs the {package} package: {hint}")
    api_key(cfg)


def api_key(cfg: SourceConfig) -> str:
    """The key from the environment variable the recipe names ('not-needed' for servers that want none)."""
    if not cfg.api_key_env:
        return "not-needed"
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise InputError(f"source '{cfg.name}'", f"the environment variable {cfg.api_key_env} (api_key_env) is not "
                         "set; it should hold the API key")
    return key
