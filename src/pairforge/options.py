"""Command-line flags -> validated config sections: a flag given on the command line is laid over the
recipe's section, and an error names the flag (`--near-duplicate`), not the internal field path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pairforge.config import JudgeConfig, VLLMSettings, error_message
from pairforge.errors import InputError
from pairforge.recipe import load_recipe
from pairforge.train_config import TrainConfig

S = TypeVar("S", bound=BaseModel)


def validated(model: type[S], base: S, flags: dict[str, Any]) -> S:
    """A recipe section with the flags given on the command line laid over it; errors name the flag. A dotted
    key (`revision.min_edit`) sets one field of a nested section and keeps the section's other fields."""
    merged = base.model_dump()
    for key, value in flags.items():
        if value is not None:
            *path, name = key.split(".")
            _section(merged, path, name)[name] = value
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error_message(error)
        raise InputError(_flag(_flag_of(error["loc"], message, flags)), message) from None


def _section(merged: dict[str, Any], path: list[str], name: str) -> dict[str, Any]:
    """The nested section a dotted flag sets a field of; one the recipe does not have is bad input, since the
    flag alone cannot give its other (required) fields."""
    for part in path:
        if not isinstance(merged.get(part), dict):
            raise InputError(_flag(name), f"expected a `{part}:` section in the recipe (--config) to lay the flag "
                             "over")
        merged = merged[part]
    return merged


def _flag(field: str) -> str:
    return "--" + field.rpartition(".")[2].replace("_", "-")


def _flag_of(location: tuple[Any, ...], message: str, flags: dict[str, Any]) -> str:
    """The flag an error is about: the innermost field named in its location (filters.near_duplicate ->
    near_duplicate), or, for a check across fields, the first flag given that the message names: inside a
    nested section by the field's name (revision: `min_edit < max_edit`), at the top in backticks (`rank` is
    not `rank_from`); else the first flag given (a flag named `--options`, which no command has)."""
    given = [k for k, v in flags.items() if v is not None]
    names = [part for part in location if isinstance(part, str)]
    if names:
        inside = [k for k in given if k.startswith(".".join(names) + ".")]
        named = sorted((m.start(), k) for k in inside if (m := re.search(rf"\b{k.rpartition('.')[2]}\b", message)))
        return named[0][1] if named else names[-1]
    named = sorted((message.find(f"`{k}`"), k) for k in given if f"`{k}`" in message)
    return named[0][1] if named else (given or ["config"])[0]  # the recipe's section alone was valid: a flag broke it


def defaults(model: type[BaseModel]) -> dict[str, Any]:
    """A section's defaults by field name, for the help of the flags laid over it: one default per setting, the
    model's, on the command line as in a recipe (tests/test_cli_settings.py checks every flag against it)."""
    return {name: info.default for name, info in model.model_fields.items()}


def choices(model: type[BaseModel], field: str) -> str:
    """The values a field's Literal allows, as a flag's help lists them ('a | b | c')."""
    annotation = model.model_fields[field].annotation
    while get_origin(annotation) is not Literal:  # through `X | None` and `list[X]` to the Literal
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    return " | ".join(get_args(annotation))


def judge_config(text: str) -> JudgeConfig:
    if text.endswith((".yaml", ".yml")):
        cfg = load_recipe(Path(text)).judge
        if cfg is None:
            raise InputError(text, "expected a `judge:` section")
        return cfg
    kind, _, model = text.partition(":")
    if kind == "similarity":
        return JudgeConfig(kind="similarity", reference="reference", model=model or "embedded")
    if kind == "reward-model" and model:
        return JudgeConfig(kind="reward-model", model=model)
    raise InputError("--judge", f"expected a recipe .yaml, 'similarity' or 'reward-model:PATH', found '{text}'")


def train_section(config: Path | None, run_name: str | None) -> TrainConfig:
    """The recipe's `train:` section, or with --run one of its `runs:` placed in the pipeline's run folder."""
    if config is None:
        if run_name:
            raise InputError("--run", "needs --config (the recipe that lists the run)")
        return TrainConfig()
    if run_name is None:
        return load_recipe(config).train
    from pairforge import pipeline, rounds
    from pairforge.training.stage import run_config

    recipe, run_dir = pipeline.load(config)
    round_, _, name = run_name.rpartition(":") if recipe.rounds > 1 else ("round-1", "", run_name)
    if recipe.rounds > 1 and round_ not in [f"round-{k}" for k in range(1, recipe.rounds + 1)]:
        raise InputError("--run", f"an iterative recipe names a run with its round: round-K:NAME (K in 1.."
                         f"{recipe.rounds}), found '{run_name}'")
    k = int(round_.removeprefix("round-"))
    runs = {r.name: r for r in rounds.round_recipe(recipe, run_dir, k).runs}
    if name not in runs:
        raise InputError("--run", f"no run '{name}' in {config} (runs: {', '.join(runs) or 'none'})")
    run = run_config(runs[name], rounds.round_dir(run_dir, recipe, k))
    return TrainConfig.model_validate(run.model_dump(exclude={"name", "after", "split"}))


def parse_method(text: str) -> str | dict[str, float]:
    if "=" not in text:
        return text.strip()
    pairs = [_split_once(part, "=", "--method", "name=weight") for part in text.split(",") if part.strip()]
    try:
        return {name: float(weight) for name, weight in pairs}
    except ValueError:
        raise InputError("--method", f"expected 'name=weight,...' with numeric weights, found '{text}'") from None


def parse_columns(text: str) -> dict[str, str]:
    pairs = [_split_once(part, "=", "--columns", "source=column") for part in text.split(",") if part.strip()]
    return dict(pairs)


def parse_pair(text: str, option: str) -> tuple[float, float]:
    low, high = _split_once(text, ",", option, "low,high")
    try:
        return float(low), float(high)
    except ValueError:
        raise InputError(option, f"expected two numbers 'low,high', found '{text}'") from None


def parse_threshold(text: str | None) -> float | str | None:
    if text is None or text == "off":
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError("--near-duplicate", f"expected a number in [0, 1] or 'off', found '{text}'") from None


def _split_once(text: str, sep: str, option: str, shape: str) -> tuple[str, str]:
    left, found, right = text.partition(sep)
    if not found or not left.strip() or not right.strip():
        raise InputError(option, f"expected '{shape}', found '{text.strip()}'")
    return left.strip(), right.strip()


def parse_engine(text: str | None) -> dict[str, Any] | None:
    """--vllm: the `vllm:` engine section as a YAML mapping ('{tensor_parallel_size: 2}'), checked as a recipe's."""
    if text is None:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise InputError("--vllm", f"expected a YAML mapping like '{{tensor_parallel_size: 2}}', found {text!r}")
    try:
        VLLMSettings.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InputError("--vllm", f"{'.'.join(map(str, error['loc']))}: {error_message(error)}") from None
    return value
