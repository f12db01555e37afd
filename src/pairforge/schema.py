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
from dataclasses import dataclass

import polars as pl

Message = dict[str, str]
Prompt = str | list[Message]

# --- responses: one row per (prompt, source, sample) -------------------------------------------
PROMPT_ID = "prompt_id"
PROMPT = "prompt"
MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))  # TRL conversational
SOURCE = "source"
SAMPLE = "sample"
RESPONSE = "response"
FINISH_REASON = "finish_reason"
SCORE = "score"

RESPONSE_COLUMNS = (PROMPT_ID, PROMPT, SOURCE, SAMPLE, RESPONSE, FINISH_REASON, SCORE)
SCORE_TIE = 1e-4  # scores closer than this are a tie everywhere: a reward model scores one text ~1e-7 apart in two
#                   batches, and a mean of ratings is 8.5 only up to float rounding

# --- pairs: TRL's columns first, then provenance ------------------------------------------------
PAIR_COLUMNS = (
    "pair_id",  # prompt_id:chosen_source.sample>rejected_source.sample
    "prompt_id",
    "prompt",  # str (TRL standard) or [{role, content}] (TRL conversational)
    "chosen",  # str, or [{"role": "assistant", "content": ...}] when the prompt is conversational
    "rejected",
    "chosen_source",
    "rejected_source",
    "chosen_sample",
    "rejected_sample",
    "chosen_score",  # null unless the answers had scores
    "rejected_score",
    "pair_type",  # "gpt-4>chatgpt"
    "margin",  # the evidence's size, > 0: strength-level gap (ranked, verified) or score gap (scored)
    "difficulty",  # 1 - margin / span in [0, 1); span = largest gap possible in the input; 1 = hardest
    "stage",  # curriculum stage, null until one is assigned
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


def to_messages(prompt: Prompt, system: str | None = None) -> list[Message]:
    """Canonical chat form of a prompt: a plain string becomes one user turn; system goes first."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def prompt_id_of(messages: list[Message]) -> str:
    """Stable id of one prompt (see `prompt_ids`)."""
    return prompt_ids(pl.Series([messages], dtype=MESSAGES))[0]


def prompt_ids(prompts: pl.Series) -> pl.Series:
    """Stable ids of a column of prompts: 16 hex digits of SHA-256 over the normalised messages.

    Stable across runs, machines and library versions (unlike polars' or Python's own hashes), so
    responses generated on different days join on it. "The same prompt" means: the same roles and,
    per message, the same text after Unicode NFC, LF line ends, trailing spaces of each line removed
    and outer whitespace stripped. A plain string is one user message. Normalisation runs column-wise
    and each distinct prompt is hashed once, so a million rows cost one pass over their distinct prompts.
    """
    unique = prompts.unique(maintain_order=True).to_frame("prompt")
    if prompts.dtype == pl.String:  # NFC is slow and ASCII is already NFC: normalise only the rest
        text = unique["prompt"]
        rest = text.str.contains(r"[^\x00-\x7F]").arg_true()
        nfc = text.scatter(rest, text.gather(rest).str.normalize("NFC")) if len(rest) else text
        canonical = pl.select(pl.lit("user\x1f") + _normalised(pl.lit(nfc), nfc=False)).to_series()
    else:
        canonical = unique.select(_canonical(pl.col("prompt"))).to_series()
    digests = [hashlib.sha256(text.encode("utf-8")).hexdigest()[:16] for text in canonical]
    ids = unique.with_columns(pl.Series("prompt_id", digests, dtype=pl.String))
    return prompts.to_frame("prompt").join(ids, on="prompt", how="left", maintain_order="left", nulls_equal=True)[
        "prompt_id"
    ]


def _canonical(messages: pl.Expr) -> pl.Expr:
    """role US content RS role US content ... with every content normalised."""
    turn = pl.concat_str(pl.element().struct.field("role"), pl.lit("\x1f"),
                         _normalised(pl.element().struct.field("content")))
    return messages.list.eval(turn).list.join("\x1e")


def _normalised(text: pl.Expr, nfc: bool = True) -> pl.Expr:
    text = text.str.normalize("NFC") if nfc else text
    return text.str.replace_all(r"\r\n?", "\n").str.replace_all(r"[^\S\n]+\n", "\n").str.strip_chars()


# ours (`prompt_ids`: 16 hex digits) and any id that starts with 8 hex digits (an md5, a UUID): split by them, as
# every earlier version did, so rebuilding pairs from the same data keeps each prompt on its side of the split
_HEX_LED_ID = r"^[0-9a-fA-F]{8}"


def prompt_buckets(ids: pl.Series) -> pl.Series:
    """Each prompt id as a stable number in [0, 1), uniform over prompts, for splits by prompt.

    Our ids are SHA-256 digits already: their first 8 hex digits are the number (so are those of any id that
    starts with 8 hex digits). Any other id (a user's own q0..q11, a dataset's row key) is hashed with SHA-256
    first, so it spreads over [0, 1) as ours do instead of landing in one bucket. Hashing runs once per distinct
    such id.
    """
    frame = ids.to_frame("id")
    theirs = frame.filter(~pl.col("id").str.contains(_HEX_LED_ID)).unique()
    hashed = [hashlib.sha256(i.encode("utf-8")).hexdigest()[:8] for i in theirs["id"]]
    digits = frame.join(theirs.with_columns(pl.Series("hex", hashed, pl.String)), on="id", how="left",
                        maintain_order="left")
    hex8 = pl.coalesce("hex", pl.col("id").str.slice(0, 8))
    return digits.select(hex8.str.to_integer(base=16) / 2**32).to_series().alias("bucket")
