"""Tokens and what they cost: of the answers a store holds (after a run), and the price arithmetic the dry run's
estimate shares.

Every stored answer carries its completion tokens ("tokens") and, since prices exist, its prompt tokens
("prompt_tokens"); an answer stored before that has no prompt count and is counted as `unknown`, never as 0
tokens silently.
"""

from __future__ import annotations

from collections.abc import Iterable

from pairforge.config import Price
from pairforge.requests.store import Entry
from pairforge.results import Part, Result

PER = 1e6  # prices are USD per million tokens


def cost(prompt_tokens: int, completion_tokens: int, price: Price | None) -> float | None:
    """USD for these tokens at this price; None without a price."""
    if price is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / PER


class Usage(Part):
    """The tokens of one source's (or judge's) stored answers to a stage's requests, cached ones included: what
    the data cost, not only what this run asked."""

    answers: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unknown: int = 0  # answers stored without their prompt tokens (by an earlier pairforge): not in prompt_tokens
    cost: float | None = None  # USD at the source's price; None without one

    @staticmethod
    def total(parts: list[Usage]) -> Usage:
        """All together; the cost of the priced parts (None when none has a price)."""
        costs = [u.cost for u in parts if u.cost is not None]
        return Usage(answers=sum(u.answers for u in parts), prompt_tokens=sum(u.prompt_tokens for u in parts),
                     completion_tokens=sum(u.completion_tokens for u in parts), unknown=sum(u.unknown for u in parts),
                     cost=sum(costs) if costs else None)


def stored_usage(entries: Iterable[Entry], price: Price | None) -> Usage:
    """The usage of the successful entries (failures cost nothing we can count)."""
    answers = prompt = completion = unknown = 0
    for entry in entries:
        if entry.value is None:
            continue
        answers += 1
        completion += int(entry.value.get("tokens") or 0)
        if entry.value.get("prompt_tokens") is None:
            unknown += 1
        else:
            prompt += int(entry.value["prompt_tokens"])
    return Usage(answers=answers, prompt_tokens=prompt, completion_tokens=completion, unknown=unknown,
                 cost=cost(prompt, completion, price))


class UsageSummary(Result):
    """generate.summary.json (revise.summary.json): each source's tokens and cost over every stored answer of the
    stage's requests, the report's cost table."""

    WHAT = "a JSON object with 'sources' (each source's answers, tokens and cost) as `pairforge generate` writes it"
    sources: dict[str, Usage]
