"""How a prompt becomes the text a model sees: one rule shared by generation, training and evaluation.

Two prompt formats exist, and a pair is trained in the one its answers were asked in:
  chat  the model's chat template with the generation prompt (TRL's conversational records). A model
        without a chat template (a base model such as the paper's LLaMA-7B) gets `TEXT_TEMPLATE`, an
        Alpaca-style instruction template, everywhere instead.
  text  the prompt's text as it is, the answer continuing it (TRL's standard records; the
        `completions` endpoint of a source).
A source's `endpoint` (chat / completions) and a pairs file's `prompt_format` (chat / text) name this one fact;
`endpoint_of` and `prompt_format_of_endpoint` are the only converters between the two spellings.
"""

from __future__ import annotations

from typing import Any, Literal

from pairforge.schema import Message
from pairforge.text import prompt_text

PromptFormat = Literal["chat", "text"]
Endpoint = Literal["chat", "completions"]  # a source's spelling of the prompt format it asks in
_ENDPOINTS: dict[str, Endpoint] = {"chat": "chat", "text": "completions"}

TEXT_TEMPLATE = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def templated_prompt(messages: list[Message]) -> str:
    """The instruction template a model without a chat template is asked (and trained) with."""
    return TEXT_TEMPLATE.format(instruction=prompt_text(messages))


def prompt_format_of(prompts_are_messages: bool, requested: str) -> PromptFormat:
    """'auto' follows the records: conversational prompts train as chat, plain-text prompts as text."""
    if requested in ("chat", "text"):
        return requested  # type: ignore[return-value]
    return "chat" if prompts_are_messages else "text"


def endpoint_of(prompt_format: PromptFormat) -> Endpoint:
    """The generation endpoint that asks a prompt in this format."""
    return _ENDPOINTS[prompt_format]


def prompt_format_of_endpoint(endpoint: Endpoint) -> PromptFormat:
    """The prompt format answers asked through this endpoint are trained in."""
    return next(fmt for fmt, asked in _ENDPOINTS.items() if asked == endpoint)  # type: ignore[return-value]
