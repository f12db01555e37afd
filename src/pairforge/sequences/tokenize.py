"""Pairs -> token ids, with the prompt/answer boundary found on token ids, never by slicing characters.

For each answer we tokenize the prompt alone and prompt + answer in the pair's prompt format (see
`prompting`: the chat template, or plain text like TRL's standard records); the answer starts where the two token
sequences first differ, so a token that merges the prompt's last characters with the answer's first
ones counts as answer. The answer always ends with exactly one EOS: appended when missing, and
anything a chat template renders after the end-of-turn EOS (a newline) is cut. A doubled leading BOS
is collapsed to one.

Too long (prompt + answer > max_length): `truncate` keeps the prompt's end (at most max_prompt_length
tokens) and the answer's start; `drop` leaves the pair out; `error` stops with the pair named. Counts
of truncated and dropped pairs are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pairforge.errors import InputError
from pairforge.pair_files import check_pair_columns
from pairforge.prompting import PromptFormat, has_chat_template, templated_prompt
from pairforge.schema import to_messages
from pairforge.text import prompt_text


@dataclass
class Sequence:
    """One prompt + answer: the ids, and where the answer starts."""

    ids: list[int]
    answer_start: int

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.answer_start


@dataclass
class TokenizedPair:
    index: int  # row in the pairs file
    chosen: Sequence
    rejected: Sequence
    target: Sequence | None  # the likelihood target (sft/slic) when it is not the chosen answer
    pair_type: str
    weight: float

    @property
    def length(self) -> int:
        """The longest of its sequences (its width in a one-row-per-answer batch)."""
        return max(len(self.chosen.ids), len(self.rejected.ids), len(self.target.ids) if self.target else 0)

    @property
    def packed_length(self) -> int:
        """Its width in a shared-prompt batch: the prompt once, then every answer."""
        extra = self.target.answer_tokens if self.target else 0
        return len(self.chosen.ids) + self.rejected.answer_tokens + extra


@dataclass
class TokenizeStats:
    pairs: int = 0
    truncated: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def tokenize_pairs(
    frame: pl.DataFrame,
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    too_long: str = "truncate",
    target_column: str | None = None,
    source: str = "pairs",
    prompt_format: PromptFormat | None = None,
) -> tuple[list[TokenizedPair], TokenizeStats]:
    """Tokenize every pair; `source` names the file in errors; `prompt_format` None follows each record."""
    check_pair_columns(frame.columns, target_column, source)
    max_prompt = max_prompt_length or max_length // 2
    stats = TokenizeStats()
    out: list[TokenizedPair] = []
    has_type, has_weight = "pair_type" in frame.columns, "weight" in frame.columns
    for index, row in enumerate(frame.iter_rows(named=True)):
        answers = {"chosen": row["chosen"], "rejected": row["rejected"]}
        if target_column and target_column != "chosen":
            answers["target"] = row[target_column]
        sequences: dict[str, Sequence] = {}
        truncated = False
        for name, answer in answers.items():
            seq = encode(tokenizer, row["prompt"], answer, prompt_format)
            if len(seq.ids) > max_length:
                if too_long == "error":
                    raise InputError(source, f"prompt + {name} is {len(seq.ids)} tokens, more than max_length "
                                     f"{max_length} (use too_long: truncate or drop)", row=f"row {index + 1}")
                if too_long == "drop":
                    break
                seq, truncated = truncate(seq, max_length, max_prompt), True
            sequences[name] = seq
        if len(sequences) < len(answers):
            stats.dropped["longer than max_length"] = stats.dropped.get("longer than max_length", 0) + 1
            continue
        reason = ("no answer tokens left" if any(s.answer_tokens == 0 for s in sequences.values())
                  else "chosen == rejected (no signal)" if sequences["chosen"].ids == sequences["rejected"].ids
                  else None)
        if reason:
            stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
            continue
        stats.truncated += truncated
        out.append(TokenizedPair(
            index=index, chosen=sequences["chosen"], rejected=sequences["rejected"], target=sequences.get("target"),
            pair_type=str(row["pair_type"]) if has_type and row["pair_type"] is not None else "all",
            weight=float(row["weight"]) if has_weight and row["weight"] is not None else 1.0,
        ))
    stats.pairs = len(out)
    return out, stats


def encode(tokenizer: Any, prompt: Any, answer: Any, prompt_format: PromptFormat | None = None) -> Sequence:
    """Token ids of prompt + answer and the index where the answer begins (see the module docstring).
    The format defaults to the record's own: conversational prompts as chat, plain-text prompts as text."""
    prompt_format = prompt_format or ("chat" if isinstance(prompt, list) else "text")
    answer_turns = answer if isinstance(answer, list) else [{"role": "assistant", "content": answer}]
    if prompt_format == "chat" and has_chat_template(tokenizer):
        messages = to_messages(prompt)
        prompt_ids = _chat_ids(tokenizer, messages, add_generation_prompt=True)
        full = _chat_ids(tokenizer, [*messages, *answer_turns], add_generation_prompt=False)
    else:
        if prompt_format == "chat":  # a model without a chat template: the instruction template
            text = templated_prompt(to_messages(prompt))
        else:
            text = prompt if isinstance(prompt, str) else prompt_text(prompt)
        prompt_ids = tokenizer(text)["input_ids"]
        full = tokenizer(text + "".join(turn["content"] for turn in answer_turns))["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(full) > 1 and full[0] == full[1] == bos:  # template BOS + tokenizer BOS
        full, prompt_ids = full[1:], prompt_ids[1:] if prompt_ids[:2] == [bos, bos] else prompt_ids
    start = common_prefix([prompt_ids, full])
    answer_ids = full[start:]
    eos = tokenizer.eos_token_id
    if eos in answer_ids:
        answer_ids = answer_ids[: len(answer_ids) - answer_ids[::-1].index(eos)]  # cut after the last EOS
    else:
        answer_ids = [*answer_ids, eos]
    return Sequence(ids=[*full[:start], *answer_ids], answer_start=start)


def truncate(seq: Sequence, max_length: int, max_prompt: int) -> Sequence:
    """Keep the prompt's last `max_prompt` tokens (fewer if the answer is short) and the answer's start."""
    prompt, answer = seq.ids[: seq.answer_start], seq.ids[seq.answer_start :]
    keep_prompt = min(len(prompt), max(max_prompt, max_length - len(answer)))
    prompt = prompt[len(prompt) - keep_prompt :]
    answer = answer[: max_length - len(prompt)]
    return Sequence(ids=[*prompt, *answer], answer_start=len(prompt))


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def common_prefix(sequences: list[list[int]]) -> int:
    """How many leading tokens all the sequences share."""
    n = 0
    for column in zip(*sequences, strict=False):
        if any(token != column[0] for token in column):
            break
        n += 1
    return n
