"""The LLM pairwise judge: which of two answers follows the instruction better, asked in both orders.

LLM judges prefer the answer shown first; each comparison is asked as (x, y) and as (y, x) and the two
probabilities that x is better are averaged, which cancels a constant position bias. A verdict comes
from the log-probs of the first answer token ('A' vs 'B', renormalised over the two) when the server
returns them, else from the text (one letter, 'Answer A', 'Output (B)', ...). A verdict that cannot be
read is recorded as unparseable and the comparison is left out, never guessed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pairforge.schema import Message

TEMPLATE_VERSION = "pairforge-pairwise-1"
SYSTEM = "You are a careful, impartial judge of answers written by AI assistants."
QUESTION = """Which answer follows the instruction better? Judge helpfulness, correctness and completeness. \
Do not favour an answer for being longer or for being shown first.

## Instruction
{instruction}

## Answer A
{a}

## Answer B
{b}

Reply with one letter: A or B."""

# a leading letter is the verdict in capitals only, and not the article of "A tie ..." ("a better one is B")
_LEADING_LETTER = re.compile(r"^\W*(?:(?i:answer|output|response)\s*)?\(?([AB])\)?(?![A-Za-z])(?!\s+(?i:tie)\b)")
_NAMED_LETTER = re.compile(r"\b(?:answer|output|response)\s*(?:is\s+|:\s*)?\(?([AB])\)?(?![A-Za-z])", re.IGNORECASE)


def judge_messages(instruction: str, a: str, b: str) -> list[Message]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION.format(instruction=instruction, a=a, b=b)}]


@dataclass(frozen=True)
class Verdict:
    p_first: float | None  # probability that the answer shown first (A) is better; None: unparseable
    method: str  # "logprobs" | "text" | "unparseable"


def read_verdict(text: str, first_token_logprobs: dict[str, float]) -> Verdict:
    """P(A better) from the first token's log-probs when the judge's first token is a letter (the other letter's
    log-prob, when among the alternatives, weighs against it), else from the text: a reply that opens with '**'
    has a low-ranked 'A' among its first token's alternatives, which said nothing about its verdict, B."""
    letters: dict[str, float] = {}
    first = max(first_token_logprobs, key=first_token_logprobs.__getitem__, default="")
    says_a_letter = _letter(first) in ("A", "B") and (not text or _LEADING_LETTER.match(text) is not None)
    for token, logprob in first_token_logprobs.items() if says_a_letter else ():
        letter = _letter(token)
        if letter in ("A", "B"):
            letters[letter] = max(letters.get(letter, -math.inf), logprob)
    if letters:
        a, b = letters.get("A", -math.inf), letters.get("B", -math.inf)
        return Verdict(1 / (1 + math.exp(b - a)) if a > -math.inf else 0.0, "logprobs")
    match = _LEADING_LETTER.match(text) or _NAMED_LETTER.search(text)
    if match is None:
        return Verdict(None, "unparseable")
    return Verdict(1.0 if match.group(1).upper() == "A" else 0.0, "text")


def _letter(token: str) -> str:
    return token.strip().strip("(")  # capitals only: a lowercase 'a' is an article


def both_orders(x_first: Verdict, y_first: Verdict) -> float | None:
    """P(x better) from the two orders: x shown first, then y shown first; None if either is unreadable."""
    if x_first.p_first is None or y_first.p_first is None:
        return None
    return (x_first.p_first + 1 - y_first.p_first) / 2
