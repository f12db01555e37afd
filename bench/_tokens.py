"""A generation reporter for the benchmarks: counts the tokens generated, stops at the first failure."""

from __future__ import annotations

from typing import Any


class TokenCount:
    def __init__(self) -> None:
        self.tokens = 0

    def completed(self, request: Any, completion: Any) -> None:
        self.tokens += completion.tokens

    def failed(self, request: Any, reason: str) -> None:
        raise SystemExit(f"request failed: {reason}")

    def retried(self, request: Any, reason: str) -> None:
        pass
