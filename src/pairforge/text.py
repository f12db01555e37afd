"""Chat messages and answers as plain text, and word counts: one rule for every stage that reads text
(filters, curriculum, judges, evaluation, report)."""

from __future__ import annotations

from typing import Any

import polars as pl

CHARS_PER_TOKEN = 4  # the usual rule for English text, where no tokenizer is at hand (a server's model)


def prompt_text(prompt: str | list[dict[str, str]], with_roles: bool = False) -> str:
    """A prompt's text: a string as it is; chat turns' contents, blank-line separated — each prefixed by its
    role when `with_roles` and there are several (what a judge reads of a multi-turn prompt)."""
    if isinstance(prompt, str):
        return prompt
    roles = with_roles and len(prompt) > 1
    return "\n\n".join(f"{m['role']}: {m['content']}" if roles else m["content"] for m in prompt)


def prompt_preview(prompt: str | list[dict[str, str]]) -> str:
    """A prompt's first 30 characters, quoted: enough to tell two prompts apart in a one-line error."""
    text = prompt_text(prompt)
    return repr(text[:30] + ("..." if len(text) > 30 else ""))


def answer_text(answer: Any) -> str:
    """An answer's text: a string as it is, or the assistant turns of a conversational answer."""
    if isinstance(answer, list):
        return "\n".join(m["content"] for m in answer if isinstance(m, dict) and m.get("role") == "assistant")
    return str(answer)


def word_count(text: pl.Expr) -> pl.Expr:
    """Whitespace-separated words of a text column: the N_WORDS count, for the stages that report lengths."""
    return text.str.count_matches(r"\S+").cast(pl.Int64)


def prompt_text_column(prompts: pl.Expr) -> pl.Expr:
    """`prompt_text` (without roles) over a column of chat prompts, vectorised."""
    return prompts.list.eval(pl.element().struct.field("content")).list.join("\n\n")


def answer_text_column(answers: pl.Expr) -> pl.Expr:
    """`answer_text` over a column of conversational answers (checked: every turn is the assistant's)."""
    return answers.list.eval(pl.element().struct.field("content")).list.join("\n")
