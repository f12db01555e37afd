"""The request engine shared by every stage that asks a model (generation, the LLM judge, evaluation).

`answer_all` skips requests whose key is already in the store (failures too, unless `retry_failed`),
sends the rest to the backend, and writes each outcome to the store the moment it arrives, with a live
progress line (done/total, tokens/s, errors, retries, ETA) — so a crash loses only what is in flight and
a rerun sends no request twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pairforge.config import Price, SourceConfig
from pairforge.requests.backends.base import Backend, Completion, Request
from pairforge.requests.store import Store
from pairforge.requests.usage import Usage, stored_usage


@dataclass
class Tally:
    """What happened to one source's (or judge's) requests in this run."""

    total: int = 0
    cached: int = 0  # done in an earlier run
    done: int = 0  # done now
    failed: int = 0  # failed now (kept in the store with the reason)
    failed_before: int = 0  # failed in an earlier run and not retried
    retries: int = 0
    tokens: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)  # every stored answer to these requests, cached ones included

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class _StoreReporter:
    """Commits each outcome to the store and advances the progress line."""

    def __init__(self, store: Store, kind: str, tally: Tally, progress: Progress, task: Any) -> None:
        self.store, self.kind, self.tally, self.progress, self.task = store, kind, tally, progress, task
        self.started = time.perf_counter()

    def completed(self, request: Request, completion: Completion) -> None:
        self.store.put(request.key, self.kind, {"text": completion.text, "finish_reason": completion.finish_reason,
                                                "tokens": completion.tokens,
                                                "first_token_logprobs": completion.first_token_logprobs,
                                                "prompt_tokens": completion.prompt_tokens})
        self.tally.done += 1
        self.tally.tokens += completion.tokens
        self._advance()

    def failed(self, request: Request, reason: str) -> None:
        self.store.put_failure(request.key, self.kind, reason)
        self.tally.failed += 1
        self.tally.reasons[reason.split(":")[0]] += 1
        self._advance()

    def retried(self, request: Request, reason: str) -> None:
        self.tally.retries += 1
        self._advance(0)

    def _advance(self, step: int = 1) -> None:
        t = self.tally
        t.seconds = time.perf_counter() - self.started
        self.progress.update(self.task, advance=step, stats=f"{t.tokens_per_s:6.1f} tok/s  errors {t.failed}  "
                                                            f"retries {t.retries}")


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not enabled)


def answer_all(requests: list[Request], backend: Callable[[], Backend], store: Store, kind: str, label: str,
               progress: Progress, retry_failed: bool = False, price: Price | None = None) -> Tally:
    """Answer the requests not yet in the store; the backend is only built when something is left to do. The tally's
    usage counts every stored answer to these requests at `price`."""
    known = store.get(r.key for r in requests)
    tally = Tally(total=len(requests))
    tally.cached = sum(1 for e in known.values() if e.ok)
    tally.failed_before = sum(1 for e in known.values() if not e.ok) if not retry_failed else 0
    todo = [r for r in requests if r.key not in known or (retry_failed and not known[r.key].ok)]
    task = progress.add_task(label, total=len(requests), completed=len(requests) - len(todo), stats="")
    if todo:
        backend().run(todo, _StoreReporter(store, kind, tally, progress, task))
    tally.usage = stored_usage(store.get(r.key for r in requests).values(), price)
    return tally


def cache_key(kind: str, settings: dict[str, Any], *parts: Any) -> str:
    """A readable, stable key: kind:part:...:hash-of-settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return ":".join([kind, *map(str, parts), digest])


def request_seed(seed: int, key: str) -> int:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)


def make_backend(cfg: SourceConfig) -> Backend:
    """The backend a source asks for (after `check_source`)."""
    if cfg.backend == "openai":
        from pairforge.requests.backends.openai_api import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.backend == "vllm":
        from pairforge.requests.backends.vllm_engine import VLLMBackend

        return VLLMBackend(cfg)
    from pairforge.requests.backends.local import TransformersBackend

    return TransformersBackend(cfg)
