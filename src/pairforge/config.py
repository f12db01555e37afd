"""Recipe settings as pydantic models: YAML in, validated, every field documented.

A recipe is one YAML file with a section per stage. This module holds the sections that exist so far
(`pairs`); later stages add theirs beside it, so recipes written today keep working. Unknown keys are
errors (a typo must not silently fall back to a default), reported with the key's path and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pairforge.errors import InputError

ROLE_MARKERS = (
    r"(?m)^\s*(?:###\s*(?:Instruction|Response|Input)\s*:|Human:|Assistant:|USER:|ASSISTANT:)"
    r"|<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|start_header_id\|>|\[/?INST\]"
    r"|<\|user\|>|<\|assistant\|>|<\|system\|>"
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FilterConfig(Section):
    """What makes an answer or a pair unusable. Every drop is counted, by reason, in the summary."""

    drop_truncated: bool = Field(True, description="drop answers whose finish_reason is 'length' (cut off)")
    role_markers: str | None = Field(ROLE_MARKERS, description="regex of leaked chat-template markers; null disables")
    near_duplicate: float | None = Field(0.9, ge=0, le=1, description="drop pairs whose chosen and rejected word "
                                         "sets have Jaccard similarity >= this; null disables")
    min_length: int | None = Field(None, ge=0, description="drop answers shorter than this (length_unit)")
    max_length: int | None = Field(None, ge=1, description="drop answers longer than this (length_unit)")
    length_unit: Literal["words", "tokens"] = Field("words", description="unit of lengths, filters and stats")
    tokenizer: str = Field("embedded", description="tokenizer for length_unit=tokens: 'embedded', a folder or hub id")
    length_ratio: tuple[float, float] | None = Field(None, description="keep pairs with len(chosen)/len(rejected) "
                                                     "inside [low, high]")
    decontaminate: list[Path] = Field(default_factory=list, description="eval prompt files: drop training prompts "
                                      "sharing an n-gram with any of them")
    ngram: int = Field(13, ge=1, description="n-gram size (words) for decontamination")

    @field_validator("length_ratio")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"expected 0 < low <= high, found {value}")
        return value


class PairsConfig(Section):
    """How responses become preference pairs (the `pairs` section of a recipe)."""

    inputs: list[Path] = Field(default_factory=list, description="response files (JSONL, JSON, Parquet, HF folder)")
    format: Literal["auto", "long", "wide", "ultrafeedback", "nectar", "sharegpt"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict, description="wide format: source name -> column")
    strategy: Literal["ranked", "scored", "verified"] | None = Field(
        None, description="ranked: declared strength order; scored: by scores; verified: order kept where scores "
        "agree. Default: ranked when `rank` is set, else scored")
    rank: str | None = Field(None, description="strength order, strongest first: 'gpt-4 > chatgpt > davinci'")
    pair_types: str = Field("all", description="'all', 'adjacent', 'extremes' or 'a>b,c>d' (ranked, verified)")
    scored_mode: Literal["best-worst", "best-random", "all"] = Field("best-worst", description="scored strategy")
    min_margin: float = Field(0.0, ge=0, description="scored: smallest score gap that makes a pair (ties never do)")
    seed: int = 0
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="share of prompts (by prompt_id hash) held out")
    out: Path = Field(Path("pairs.parquet"), description=".parquet or .jsonl; eval split and summary go beside it")
    filters: FilterConfig = Field(default_factory=FilterConfig)

    @model_validator(mode="after")
    def _strategy_needs_rank(self) -> PairsConfig:
        if self.strategy in ("ranked", "verified") and not self.rank:
            raise ValueError(f"strategy '{self.strategy}' needs 'rank' (a strength order)")
        return self

    @property
    def resolved_strategy(self) -> str:
        return self.strategy or ("ranked" if self.rank else "scored")


class Recipe(Section):
    """A whole recipe; stages not configured yet are simply absent."""

    pairs: PairsConfig = Field(default_factory=PairsConfig)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; errors name the file, the key path and its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"cannot read the recipe ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(str(path), f"not valid YAML: {getattr(exc, 'problem', exc)}",
                         row=f"line {mark.line + 1}" if mark else None) from None
    if not isinstance(data, dict):
        raise InputError(str(path), "expected a mapping of sections (pairs:, ...) at the top level")
    try:
        return Recipe.model_validate(_relative_paths(data, path.parent))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        line = _line_of(text, error["loc"])
        raise InputError(str(path), error["msg"].replace("Extra inputs are not permitted", "unknown key"),
                         row=f"line {line}" if line else None, field=key or None) from None


def _relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths inside a recipe are relative to the recipe's folder, so a recipe runs from anywhere."""
    pairs = data.get("pairs")
    if isinstance(pairs, dict):
        if isinstance(pairs.get("inputs"), list):
            pairs["inputs"] = [str(base / p) if isinstance(p, str) else p for p in pairs["inputs"]]
        filters = pairs.get("filters")
        if isinstance(filters, dict) and isinstance(filters.get("decontaminate"), list):
            filters["decontaminate"] = [str(base / p) if isinstance(p, str) else p for p in filters["decontaminate"]]
    return data


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of a key path in the YAML text (the deepest key that exists)."""
    node = yaml.compose(text)
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
