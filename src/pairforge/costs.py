"""What a recipe will ask its models before it runs: requests, tokens and cost per stage and source (`pairforge run
--dry-run`, `pairforge generate --dry-run`, `pf.estimate`).

A prompt is counted with the model's own tokenizer where the model is here (transformers, vllm: the embedded model or a
model folder), rendered as it will be sent; a server's model (openai), or a hub id not in a folder here, is estimated at
characters / 4, the usual rule for English.
A completion counts max_new_tokens: the estimate is an upper bound of what is generated. An answer that does not
exist yet (what the reviser and an LLM judge read) counts as its source's max_new_tokens (a file source's: the mean
length of its answers, characters / 4). The run's store already holds some answers: they cost nothing again, and the
estimate does not subtract them. Cost = tokens x price / 1e6 (USD per million tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from pairforge import schema as S
from pairforge.config import SourceConfig
from pairforge.errors import InputError
from pairforge.evaluation.stage import policies
from pairforge.generation.answers import read_file_source, source_requests
from pairforge.judging.pairwise import judge_messages
from pairforge.judging.scoring import judge_llm
from pairforge.models import EMBEDDED
from pairforge.prompting import endpoint_of
from pairforge.recipe import Recipe
from pairforge.records import prompts_from_file
from pairforge.requests.shards import Shard
from pairforge.requests.usage import cost
from pairforge.revision import fill
from pairforge.rounds import base_model, round_recipe
from pairforge.schema import Message
from pairforge.text import CHARS_PER_TOKEN, prompt_text

Count = Callable[[list[Message]], int]


@dataclass(frozen=True)
class Line:
    """One source's requests in one stage."""

    stage: str  # generate | revise | judge | eval | eval judge
    source: str
    requests: int
    prompt_tokens: int
    completion_tokens: int  # the bound: requests x max_new_tokens
    counted: bool  # True: with the model's tokenizer; False: estimated as characters / 4
    cost: float | None  # USD at the source's price (a bound, as the completions are); None without a price


@dataclass(frozen=True)
class Estimate:
    """Every stage's requests of a recipe (round 1 of an iterative recipe: later rounds ask its '@round' sources
    and the stages after generate again)."""

    lines: list[Line]
    rounds: int = 1

    @property
    def cost(self) -> float | None:
        """The priced lines' cost together; None when no line has a price."""
        known = [line.cost for line in self.lines if line.cost is not None]
        return sum(known) if known else None


def estimate(recipe: Recipe, stages: tuple[str, ...] = ("generate", "revise", "judge", "eval"),
             shard: Shard | None = None) -> Estimate:
    """The requests, tokens and cost of the recipe's `stages` (a `shard`: of its prompts alone); reads its prompts
    (and file sources' answers), asks no model and writes nothing."""
    if recipe.prompts is None:
        raise InputError("recipe", "expected `prompts:` (a file of prompts to answer)")
    first = round_recipe(recipe, Path("."), 1)  # '@round' sources are the base model in round 1
    prompts = prompts_from_file(first.prompts)  # type: ignore[arg-type]
    prompts = shard.keep(prompts) if shard else prompts
    build = {"generate": _generate, "revise": _revise, "judge": _judge, "eval": _eval}
    return Estimate([line for stage in stages for line in build[stage](first, prompts)], recipe.rounds)


def _line(stage: str, source: SourceConfig, asked: list[list[Message]], answers_read: int = 0) -> Line:
    """`asked`: each request's messages (answers left empty); `answers_read`: the tokens of the answers they hold."""
    count, counted = _counter(source)
    prompt = sum(count(messages) for messages in asked) + answers_read
    completion = len(asked) * source.max_new_tokens
    return Line(stage, source.name, len(asked), prompt, completion, counted, cost(prompt, completion, source.price))


def _counter(source: SourceConfig) -> tuple[Count, bool]:
    """How a source's prompts are counted: its tokenizer when the model is here, else characters / 4."""
    if source.backend in ("transformers", "vllm") and _here(source.model):
        from pairforge.models import load_tokenizer
        from pairforge.requests.backends.local import prompt_ids

        tokenizer = load_tokenizer(source.model)
        return (lambda messages: len(prompt_ids(tokenizer, source.endpoint, messages))), True
    if source.endpoint == "completions":
        return (lambda messages: math.ceil(len(prompt_text(messages)) / CHARS_PER_TOKEN)), False
    return (lambda messages: math.ceil(sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN)), False


def _here(model: str) -> bool:
    """Whether a model's tokenizer is on this machine (the embedded model, a folder): a dry run downloads nothing, so
    a hub id is estimated like a server's model."""
    return model == EMBEDDED or Path(model).expanduser().is_dir()


def _answer_tokens(source: SourceConfig) -> int:
    """The tokens an answer of this source takes in a later request: max_new_tokens, or a file's mean length."""
    if source.backend != "file":
        return source.max_new_tokens
    lengths = read_file_source(source)[S.RESPONSE].str.len_chars()
    return math.ceil((lengths.mean() or 0) / CHARS_PER_TOKEN)  # type: ignore[operator]


def _generate(recipe: Recipe, prompts: pl.DataFrame) -> list[Line]:
    return [_line("generate", s, [r.messages for r in source_requests(s, prompts, recipe.samples_per_source)])
            for s in recipe.answering_sources if s.backend != "file"]


def _revise(recipe: Recipe, prompts: pl.DataFrame) -> list[Line]:
    cfg = recipe.pairs.revision
    if cfg is None:
        return []
    named = {s.name: s for s in recipe.sources}
    reviser = named[cfg.reviser]
    asked = [S.to_messages(fill(cfg.template, prompt_text(p), ""), reviser.system) for p in prompts[S.PROMPT]]
    asked *= recipe.samples_per_source
    return [_line("revise", reviser, asked, _answer_tokens(named[cfg.original]) * len(asked))]


def _judge(recipe: Recipe, prompts: pl.DataFrame) -> list[Line]:
    judge = recipe.judge
    if judge is None or judge.llm is None:
        return []
    sources = recipe.answering_sources
    others = [s for s in sources if s.name != judge.reference]
    pairs = ([(s, r) for s in others for r in sources if r.name == judge.reference] if judge.reference else
             [(a, b) for i, a in enumerate(sources) for b in sources[i + 1:]])
    per_prompt = 2 * sum(_answer_tokens(a) + _answer_tokens(b) for a, b in pairs)  # both orders read both answers
    sampled = prompts[S.PROMPT].head(judge.max_prompts or prompts.height)
    asked = [judge_messages(prompt_text(p, with_roles=True), "", "") for p in sampled for _ in range(2 * len(pairs))]
    return [_line("judge", judge_llm(judge), asked, per_prompt * len(sampled))]


def _eval(recipe: Recipe, prompts: pl.DataFrame) -> list[Line]:
    cfg = recipe.eval
    if cfg is None:
        return []
    held_out = prompts.filter(pl.lit(S.prompt_buckets(prompts[S.PROMPT_ID])) < recipe.pairs.eval_fraction)  # as pairs
    asked = held_out if cfg.prompts == "held-out" else prompts_from_file(cfg.prompts)  # type: ignore[arg-type]
    models = (["base"] if cfg.base else []) + [run.name for run in policies(recipe)]
    answering = SourceConfig(name="eval", model=cfg.base_model or base_model(recipe), max_new_tokens=cfg.max_new_tokens,
                             endpoint=endpoint_of(recipe.asked_format))
    requests = [r.messages for r in source_requests(answering, asked, 1)]
    one = _line("eval", answering, requests)  # the trained models read prompts as the base does
    lines = [replace(one, source=name) for name in models]
    if cfg.judge.llm is not None:
        judged = [judge_messages(prompt_text(p, with_roles=True), "", "") for p in asked[S.PROMPT]] * 2 * len(models)
        answers = len(judged) * 2 * cfg.max_new_tokens  # the model's answer and the reference, bounded alike
        lines.append(_line("eval judge", judge_llm(cfg.judge), judged, answers))
    return lines
