"""What every generation backend takes and gives: requests in, completions (or errors) out.

A backend answers a list of requests and reports each one the moment it is done, so the runner can
commit it to the store at once (a crash loses only what is in flight). Backends never raise for one
bad request: they report it as failed with a reason, and the runner records it for a later retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pairforge.config import SourceConfig
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


class Reporter(Protocol):
    """Receives each outcome as soon as it is known."""

    def completed(self, request: Request, completion: Completion) -> None: ...

    def failed(self, request: Request, reason: str) -> None: ...

    def retried(self, request: Request, reason: str) -> None: ...


class Backend(Protocol):
    def run(self, requests: list[Request], report: Reporter) -> None: ...


def plain_text(messages: list[Message]) -> str:
    """A prompt without any chat template: its turns' text, blank-line separated (completions endpoint)."""
    return "\n\n".join(m["content"] for m in messages)


def make_backend(cfg: SourceConfig) -> Backend:
    """The backend a source asks for; a missing optional package is one clear line."""
    if cfg.backend == "openai":
        from pairforge.generate.openai_api import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.backend == "vllm":
        from pairforge.generate.vllm_engine import VLLMBackend

        return VLLMBackend(cfg)
    from pairforge.generate.local import TransformersBackend

    return TransformersBackend(cfg)
