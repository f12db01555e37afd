"""Generation through any OpenAI-compatible server (OpenAI, vLLM's server, llama.cpp, TGI, ...).

Uses the official `openai` client (async), `concurrency` requests in flight. Retries are ours, not the
client's, so they can be counted: 429, 408/409, 5xx, timeouts, dropped connections and unreadable
responses are retried with exponential backoff and full jitter (a server's Retry-After is honoured);
other 4xx are final. `rpm` / `tpm` space the requests out (rate_limit.py). The API key is read from the
environment variable the recipe names and is scrubbed from every error message, so it never reaches the store,
the logs or an output.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from pairforge.config import SourceConfig
from pairforge.requests.backends.base import Completion, Reporter, Request, api_key
from pairforge.requests.rate_limit import estimated_tokens, limiter_for
from pairforge.text import prompt_text

_RETRYABLE_STATUS = {408, 409, 429}
_BACKOFF_BASE_S, _BACKOFF_CAP_S = 0.5, 30.0


class MalformedResponse(Exception):
    """The server answered, but not with a completion (garbage, an empty choice list, ...)."""


class OpenAIBackend:
    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.api_key = api_key(cfg)
        self.limiter = limiter_for(cfg)

    def run(self, requests: list[Request], report: Reporter) -> None:
        asyncio.run(self._run_all(requests, report))

    async def _run_all(self, requests: list[Request], report: Reporter) -> None:
        import openai

        client = openai.AsyncOpenAI(api_key=self.api_key, base_url=self.cfg.base_url, max_retries=0,
                                    timeout=self.cfg.timeout)
        queue: asyncio.Queue[Request] = asyncio.Queue()
        for request in requests:
            queue.put_nowait(request)

        async def worker() -> None:
            while not queue.empty():
                await self._answer(client, queue.get_nowait(), report)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.cfg.concurrency, len(requests)))))
        finally:
            await client.close()

    async def _answer(self, client: Any, request: Request, report: Reporter) -> None:
        estimate = estimated_tokens(self.cfg, request.messages) if self.limiter is not None else 0.0
        for attempt in range(self.cfg.max_retries + 1):
            if self.limiter is not None:  # every attempt is a request the API counts
                await self.limiter.take_turn(estimate)
            try:
                completion = await self._call(client, request)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded with its reason, never raised
                reason, retryable, wait = self._classify(exc)
                if self.limiter is not None and wait:
                    self.limiter.hold(wait)  # the server's wait holds the source's other requests too
                if not retryable or attempt == self.cfg.max_retries:
                    report.failed(request, reason)
                    return
                report.retried(request, reason)
                backoff = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** attempt)
                await asyncio.sleep(max(wait or 0.0, random.uniform(0, backoff)))
                continue
            if self.limiter is not None and completion.tokens:  # what the API counted (else the prompt estimate)
                prompt = completion.prompt_tokens if completion.prompt_tokens is not None else \
                    estimate - self.cfg.max_new_tokens
                self.limiter.settle(estimate, prompt + completion.tokens)
            report.completed(request, completion)
            return

    async def _call(self, client: Any, request: Request) -> Completion:
        cfg = self.cfg
        common: dict[str, Any] = {"model": cfg.model, "temperature": cfg.temperature, "top_p": cfg.top_p,
                                  "max_tokens": cfg.max_new_tokens, "seed": request.seed, "stop": cfg.stop or None}
        messages = request.messages
        if cfg.endpoint == "chat":
            if request.top_logprobs:
                common.update(logprobs=True, top_logprobs=request.top_logprobs)
            response = await client.chat.completions.create(messages=messages, **common)
            choice = _first_choice(response)
            text = choice.message.content if choice.message is not None else None
            logprobs = choice.logprobs.content[0].top_logprobs if choice.logprobs and choice.logprobs.content else []
            first = {item.token: item.logprob for item in logprobs}
        else:
            if request.top_logprobs:
                common["logprobs"] = request.top_logprobs
            response = await client.completions.create(prompt=prompt_text(messages), **common)
            choice = _first_choice(response)
            text = choice.text
            tops = choice.logprobs.top_logprobs if choice.logprobs and choice.logprobs.top_logprobs else [{}]
            first = dict(tops[0] or {})
        if text is None or choice.finish_reason is None:
            raise MalformedResponse("the server's choice has no text or no finish_reason")
        usage = getattr(response, "usage", None)
        tokens = usage.completion_tokens if usage is not None and usage.completion_tokens is not None else 0
        prompt_tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
        return Completion(text, "length" if choice.finish_reason == "length" else "stop", tokens, first, prompt_tokens)

    def _classify(self, exc: Exception) -> tuple[str, bool, float | None]:
        """(reason without the key, whether to retry, seconds the server asked us to wait)."""
        import openai

        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if self.api_key != "not-needed":
            reason = reason.replace(self.api_key, "***")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            wait = _retry_after(exc.response.headers.get("retry-after"))
            return reason, status in _RETRYABLE_STATUS or status >= 500, wait
        retryable = (openai.APIConnectionError, openai.APIResponseValidationError, MalformedResponse, ValueError,
                     TypeError, AttributeError)  # connection resets, timeouts (a subclass), garbage bodies
        return reason, isinstance(exc, retryable), None


_PING_TIMEOUT_S = 30.0


def unanswered_ping(cfg: SourceConfig) -> str | None:
    """Why the source's server does not answer a request for its model list (the cheapest request every
    OpenAI-compatible server serves), or None when it answers, whatever its answer says: `pairforge run` asks
    once per server before any stage, so a wrong port fails in one line instead of after the other stages."""
    import openai

    client = openai.OpenAI(api_key=api_key(cfg), base_url=cfg.base_url, max_retries=0,
                           timeout=min(cfg.timeout, _PING_TIMEOUT_S))
    try:
        client.models.list()
    except openai.APIConnectionError as exc:  # refused, unresolvable, timed out: nothing answered
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    except Exception:  # noqa: BLE001 - an error status or an odd body: a server is there
        return None
    finally:
        client.close()
    return None


def _first_choice(response: Any) -> Any:
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedResponse(f"expected a completion with choices, found {type(response).__name__}")
    return choices[0]


def _retry_after(header: str | None) -> float | None:
    try:
        return min(_BACKOFF_CAP_S, float(header)) if header else None
    except ValueError:
        return None
