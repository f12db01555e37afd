"""The records that pass between stages, and their column names.

Columns are the contract: a responses table written by `generate` is read by `pairs`, a pairs table
written by `pairs` is read by `train` (ours, or TRL / OpenRLHF / LLaMA-Factory unchanged). The frames
are polars DataFrames; the dataclasses below document one row each and are handy in tests and code
that builds a few rows by hand.

Prompts are either plain text or chat messages (``[{"role": ..., "content": ...}]``), optionally
with a system prompt. In a responses frame the `prompt` column is a string column when every prompt
is plain text without a system prompt (TRL's standard format) and a list-of-{role, content} column
otherwise (TRL's conversational format); the same prompt gets the same `prompt_id` in both forms.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from typing import Any, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]

# --- responses: one row per (prompt, source, sample) -------------------------------------------
PROMPT_ID = "prompt_id"
PROMPT = "prompt"
SOURCE = "source"
SAMPLE = "sample"
RESPONSE = "response"
FINISH_REASON = "finish_reason"
SCORE = "score"

RESPONSE_COLUMNS = (PROMPT_ID, PROMPT, SOURCE, SAMPLE, RESPONSE, FINISH_REASON, SCORE)

# --- pairs: TRL's columns first, then provenance ------------------------------------------------
PAIR_COLUMNS = (
    "pair_id",
    "prompt_id",
    "prompt",
    "chosen",
    "rejected",
    "chosen_source",
    "rejected_source",
    "chosen_sample",
    "rejected_sample",
    "chosen_score",
    "rejected_score",
    "pair_type",
    "margin",
    "difficulty",
    "stage",
)


@dataclass(frozen=True)
class Response:
    """One answer of one source to one prompt."""

    prompt: Prompt
    source: str
    response: str
    sample: int = 0
    finish_reason: str | None = None
    score: float | None = None
    system: str | None = None
    prompt_id: str = ""

    def __post_init__(self) -> None:
        if not self.prompt_id:
            object.__setattr__(self, "prompt_id", prompt_id_of(to_messages(self.prompt, self.system)))


@dataclass(frozen=True)
class Pair:
    """One preference pair: `chosen` is preferred to `rejected` on `prompt`, with its evidence.

    `margin` is the evidence's size (strength-rank gap or score gap, always > 0); `difficulty`
    is ``1 - margin / span`` in [0, 1), where span is the largest gap possible in the input
    (number of ranks - 1, or max score - min score): small gap = hard pair, close to 1.
    """

    pair_id: str
    prompt_id: str
    prompt: Prompt
    chosen: Any
    rejected: Any
    chosen_source: str
    rejected_source: str
    pair_type: str
    margin: float
    difficulty: float
    chosen_sample: int = 0
    rejected_sample: int = 0
    chosen_score: float | None = None
    rejected_score: float | None = None
    stage: int | None = None


def to_messages(prompt: Prompt, system: str | None = None) -> list[Message]:
    """Canonical chat form of a prompt: a plain string becomes one user turn; system goes first."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def normalise_text(text: str) -> str:
    """What counts as 'the same prompt': Unicode NFC, LF line ends, no trailing spaces, stripped."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def prompt_id_of(messages: list[Message]) -> str:
    """Stable id of a prompt: 16 hex digits of SHA-256 over its normalised messages.

    Stable across runs, machines and library versions (unlike polars' or Python's own hashes), so
    responses generated on different days join on it.
    """
    canonical = json.dumps(
        [[m["role"], normalise_text(m["content"])] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

