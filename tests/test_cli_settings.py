"""The command-line flags against the config models they are laid over: a flag that sets a recipe field must
offer every choice the field takes, keep the field's default (a flag's own default may only be "not given"),
and state no other default in its help. A flag added or a field changed without the other fails here."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from typer.models import ArgumentInfo, OptionInfo
from typer.testing import CliRunner

from pairforge.cli import app, data_commands, pipeline_commands, train_command
from pairforge.config import EvalConfig, FilterConfig, PairsConfig, RevisionConfig, SourceConfig
from pairforge.train_config import DIFFICULTIES, METHODS, CurriculumConfig, LoraSettings, TrainConfig

# each command, the sections its flags are laid over (first match wins), and the flags named unlike their field
COMMANDS: dict[str, tuple[Callable[..., Any], list[type[BaseModel]], dict[str, tuple[type[BaseModel], str]]]] = {
    "pairs build": (data_commands.pairs_build, [PairsConfig, FilterConfig, RevisionConfig],
                    {"keep_truncated": (FilterConfig, "drop_truncated"),
                     "no_role_marker_filter": (FilterConfig, "role_markers")}),
    "train": (train_command.train_command, [TrainConfig],
              {"lora_rank": (LoraSettings, "r"), "curriculum": (CurriculumConfig, "schedule"),
               "difficulty": (CurriculumConfig, "difficulty")}),
    "curriculum show": (data_commands.curriculum_show, [CurriculumConfig, TrainConfig], {}),
    "eval": (pipeline_commands.eval_command, [EvalConfig], {}),
    "generate": (data_commands.generate_command, [SourceConfig], {}),
}
# flags that share a field's name but not its meaning: eval's --prompts (a file, default the reference's
# instructions) and --reference (required) and --judge (a spec string) stand for the recipe's eval section without
# a recipe; curriculum show's --out is the folder of its plot, not a training run's
NOT_THE_FIELD = {("eval", "prompts"), ("eval", "reference"), ("eval", "judge"), ("curriculum show", "out")}
# choices a field checks in a validator instead of its type
CHOICES = {(TrainConfig, "method"): METHODS, (CurriculumConfig, "difficulty"): DIFFICULTIES}


def _flags() -> list[tuple[str, str, Any, type[BaseModel], str]]:
    """(command, parameter, typer option, model, field) for every flag that sets a config field."""
    found = []
    for command, (function, models, renamed) in COMMANDS.items():
        for name, parameter in inspect.signature(function).parameters.items():
            option = parameter.default
            if not isinstance(option, OptionInfo | ArgumentInfo) or (command, name) in NOT_THE_FIELD:
                continue
            model, field = renamed.get(name) or next(((m, name) for m in models if name in m.model_fields),
                                                      (None, ""))
            if model is not None:
                found.append((command, name, option, model, field))
    return found


FLAGS = _flags()


def _members(annotation: Any) -> set[Any]:
    if get_origin(annotation) in (Union, UnionType, list, tuple):
        return set().union(*(_members(a) for a in get_args(annotation)))
    return set(get_args(annotation)) if get_origin(annotation) is Literal else set()


def _choices(model: type[BaseModel], field: str) -> set[str]:
    return set(CHOICES.get((model, field), ())) | {c for c in _members(model.model_fields[field].annotation)
                                                   if isinstance(c, str)}


def _stated_defaults(help_text: str) -> list[str]:
    """The defaults a help text states: 'X (default)', '(default: X)', '(default X)', or a lone value '(X)' /
    '(X; ...)'."""
    stated = re.findall(r"([\w.\-]+)'? \(default\)", help_text)
    stated += re.findall(r"\(default:? ([\w.\-]+)[),;]", help_text)
    stated += re.findall(r"\(([\w.\-]+)[);]", help_text)
    return [s for s in stated if s != "default"]


def _same(stated: str, default: Any) -> bool:
    try:
        return float(stated) == float(default)
    except (TypeError, ValueError):
        return stated == str(default)


def test_the_walk_finds_the_flags_of_every_section() -> None:
    mapped = {(command, name) for command, name, *_ in FLAGS}
    assert {("pairs build", "near_duplicate"), ("pairs build", "max_edit"), ("train", "method"),
            ("train", "lora_rank"), ("eval", "max_new_tokens"), ("curriculum show", "difficulty"),
            ("generate", "dtype")} <= mapped
    assert len(FLAGS) >= 50


@pytest.mark.parametrize(("command", "name", "option", "model", "field"), FLAGS,
                         ids=[f"{c}--{n}" for c, n, *_ in FLAGS])
def test_a_flag_offers_every_choice_of_its_field(command: str, name: str, option: Any, model: type[BaseModel],
                                                 field: str) -> None:
    missing = sorted(c for c in _choices(model, field) if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])",
                                                                         option.help or ""))
    assert not missing, f"`{command} --{name}` help does not name {missing} ({model.__name__}.{field})"


@pytest.mark.parametrize(("command", "name", "option", "model", "field"), FLAGS,
                         ids=[f"{c}--{n}" for c, n, *_ in FLAGS])
def test_a_flag_keeps_its_fields_default(command: str, name: str, option: Any, model: type[BaseModel],
                                         field: str) -> None:
    """A flag's own default is None / False ("not given": the recipe's section or the model's default applies),
    and every default its help states is the field's."""
    default = model.model_fields[field].default
    assert option.default in (None, False, ...) or option.default == default, \
        f"`{command} --{name}` defaults to {option.default!r}, {model.__name__}.{field} to {default!r}"
    if default is PydanticUndefined or default is None or isinstance(default, bool):
        return
    wrong = [s for s in _stated_defaults(option.help or "") if not _same(s, default)]
    assert not wrong, f"`{command} --{name}` help states the default {wrong}, {model.__name__}.{field} has " \
                      f"{default!r}"


def test_train_help_lists_every_method_reward_model_included() -> None:
    shown = CliRunner().invoke(app, ["train", "--help"], terminal_width=400)
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0
    assert all(method in text for method in METHODS), [m for m in METHODS if m not in text]


def test_eval_flag_defaults_are_the_recipes() -> None:
    """Without --max-new-tokens the command line answers as long as a recipe's eval section does (128)."""
    option = inspect.signature(pipeline_commands.eval_command).parameters["max_new_tokens"].default
    assert option.default is None and f"({EvalConfig().max_new_tokens})" in option.help
