"""Client-side rate limits of an API source: requests per minute (`rpm`) and tokens per minute (`tpm`).

API quotas are stated per minute; `concurrency` alone overruns them as soon as answers come back fast. One limiter
per source (its name and base_url) is shared by every request of it in this process: by generation, judging and
evaluation alike, and across the event loops `asyncio.run` makes per call, so its state is plain monotonic times,
never a loop-bound primitive. Both limits are spaced evenly (GCRA with no burst allowance): a request takes the next
free send time and pushes it on by 60/rpm seconds, and by its tokens x 60/tpm seconds; a minute's quota is never
spent in a burst at the start. A request's tokens are estimated before it is sent (prompt characters / 4 +
max_tokens) and corrected by what it used once it is answered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from pairforge.config import SourceConfig
from pairforge.schema import Message
from pairforge.text import CHARS_PER_TOKEN, prompt_text


@dataclass
class RateLimiter:
    """The next send time each limit allows (time.monotonic() seconds), behind a lock: threads may share it too."""

    rpm: float | None = None
    tpm: float | None = None
    next_request: float = 0.0
    next_tokens: float = 0.0
    held_until: float = 0.0  # the server's last Retry-After
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    async def take_turn(self, tokens: float) -> None:
        """Wait for this request's send slot. A slot that a Retry-After arriving meanwhile covers is given up for a
        new one after the hold (`hold` moved the schedule there), so the waiting requests go out spaced again, not
        all at once when the hold ends."""
        await asyncio.sleep(self.reserve(tokens))
        while self.held_until > time.monotonic():
            await asyncio.sleep(self.reserve(tokens))

    def reserve(self, tokens: float) -> float:
        """Book the next send slot for a request of about `tokens` tokens: the seconds to wait before sending."""
        with self.lock:
            now = time.monotonic()
            send = max(now, self.next_request, self.next_tokens)
            if self.rpm:
                self.next_request = send + 60.0 / self.rpm
            if self.tpm:
                self.next_tokens = send + tokens * 60.0 / self.tpm
            return send - now

    def settle(self, reserved: float, used: float) -> None:
        """A request used `used` tokens where it reserved `reserved`: the difference moves the token schedule."""
        if self.tpm:
            with self.lock:
                self.next_tokens += (used - reserved) * 60.0 / self.tpm

    def hold(self, seconds: float) -> None:
        """The server asked to wait (a 429's Retry-After): no request of the source is sent before then."""
        with self.lock:
            until = time.monotonic() + seconds
            self.held_until = max(self.held_until, until)
            self.next_request, self.next_tokens = max(self.next_request, until), max(self.next_tokens, until)


_LIMITERS: dict[tuple[str, str | None], RateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def limiter_for(cfg: SourceConfig) -> RateLimiter | None:
    """The process's limiter of a source with `rpm` or `tpm` (None without limits), its limits as `cfg` sets them."""
    if cfg.rpm is None and cfg.tpm is None:
        return None
    with _REGISTRY_LOCK:
        limiter = _LIMITERS.setdefault((cfg.name, cfg.base_url), RateLimiter())
        limiter.rpm, limiter.tpm = cfg.rpm, cfg.tpm
    return limiter


def estimated_tokens(cfg: SourceConfig, messages: list[Message]) -> float:
    """What a request may use before it is answered: its prompt at ~4 characters a token, plus the longest answer."""
    return len(prompt_text(messages)) / CHARS_PER_TOKEN + cfg.max_new_tokens
