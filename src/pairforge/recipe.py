"""A recipe: one YAML file with a section per stage (config.py), read and validated in one go.

Paths inside a recipe are relative to the recipe's folder, so a recipe runs from anywhere. Errors name the
file, the key path and its line; unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pairforge.config import (
    ROUND_MODEL,
    EvalConfig,
    JudgeConfig,
    PairsConfig,
    RankingConfig,
    Section,
    SourceConfig,
    error_message,
)
from pairforge.errors import InputError, describe
from pairforge.layout import RunDir, arm_of, eval_folder_problem
from pairforge.prompting import PromptFormat, prompt_format_of_endpoint
from pairforge.train_config import RunConfig, TrainConfig, expand_seeds

MAX_ROUNDS = 50  # each round trains and evaluates again: published iterative DPO runs 3-5; 100000 is a typo


class QuickConfig(Section):
    """What `pairforge run --quick` shrinks, for a smoke test of a whole recipe in about a minute."""

    prompts: int = Field(12, ge=2, description="use only the first N prompts")
    max_new_tokens: int = Field(16, ge=1, description="cap on every source's and the evaluation's answers")
    max_steps: int = Field(2, ge=1, description="cap on every run's optimiser steps")
    bootstrap: int = Field(100, ge=10, description="bootstrap resamples (ranking, eval)")


class Recipe(Section):
    """A whole recipe; stages not configured yet are simply absent."""

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read and validate a recipe YAML (see `load_recipe`): relative paths are the recipe's folder's, and without
        `run_dir` it runs where `pairforge run` would run it (runs/<recipe name> beside the recipe)."""
        recipe = load_recipe(path)
        if recipe.run_dir is None:
            recipe.run_dir = Path(path).parent / "runs" / Path(path).stem
        return recipe

    run_dir: Path | None = Field(None, description="where `pairforge run` writes every stage (default: "
                                 "runs/<recipe name> beside the recipe)")
    prompts: Path | None = Field(None, description="prompts to answer: JSONL/JSON/Parquet rows with prompt (or "
                                 "instruction [+ input], or chat messages)")
    sources: list[SourceConfig] = Field(default_factory=list, description="the models that answer, any order")
    samples_per_source: int = Field(1, ge=1, description="answers per prompt and source")
    judge: JudgeConfig | None = None
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runs: list[RunConfig] = Field(default_factory=list, description="`pairforge run`: training runs in order "
                                  "(sft, then dpo / slic after it, ...)")
    eval: EvalConfig | None = None
    quick: QuickConfig = Field(default_factory=QuickConfig)
    rounds: int = Field(1, ge=1, le=MAX_ROUNDS, description="iterative rounds of generate -> judge -> pairs -> "
                        f"train, at most {MAX_ROUNDS}; a source with model '@round' is the policy: the base model in "
                        "round 1, round k's trained model in round k+1 (rounds.py)")
    round_run: str | None = Field(None, description="the run whose trained model is '@round' in the next round "
                                  "(default: the last run that trains a policy)")

    @field_validator("runs")
    @classmethod
    def _one_run_per_seed(cls, runs: list[RunConfig]) -> list[RunConfig]:
        """Seeded runs expanded here, once, so every stage, the plan, --from/--to and the rounds see NAME@SEED."""
        return expand_seeds(runs)

    @model_validator(mode="after")
    def _named_runs(self) -> Recipe:
        seen: list[str] = []
        for run in self.runs:
            if run.name in seen:
                raise ValueError(f"run name '{run.name}' is used twice")
            if run.after is not None and run.after not in seen:
                raise ValueError(f"run '{run.name}' starts after '{run.after}', which is not an earlier run")
            seen.append(run.name)
        judge_run = self.eval.judge_run if self.eval else None
        if judge_run is not None and (problem := eval_folder_problem(judge_run)):
            raise ValueError(f"eval.judge_run: {problem}")
        if judge_run is not None and any(arm_of(r.name) == (judge_run, r.seed) for r in self.runs):
            raise ValueError(f"eval.judge_run '{judge_run}' has seeds: which seed's reward model scores the answers? "
                             f"expected eval.judge_run: {judge_run}@SEED")
        if judge_run is not None:
            run = next((r for r in self.runs if r.name == judge_run), None)
            if run is None or run.trains_policy or run.split != "judge":
                raise ValueError(f"eval.judge_run '{judge_run}' must name a run with method: reward-model and split: "
                                 "judge (a judge trained on pairs kept apart from the policies' training pairs)")
            if self.pairs.judge_fraction <= 0:
                raise ValueError("eval.judge_run needs pairs.judge_fraction > 0 (the pairs its judge trains on)")
        for run in self.runs:
            if run.split == "judge" and self.pairs.judge_fraction <= 0:
                raise ValueError(f"run '{run.name}' trains on the judge split: set pairs.judge_fraction > 0")
        return self

    @model_validator(mode="after")
    def _rounds(self) -> Recipe:
        policies = [r.name for r in self.runs if r.trains_policy]
        arms = {arm_of(name)[0] for name in policies if arm_of(name)[1] is not None}
        answering = self.round_run or (policies[-1] if policies and self.rounds > 1 else None)
        if answering in arms or (self.round_run is None and answering and arm_of(answering)[1] is not None):
            arm = arm_of(answering)[0]
            raise ValueError(f"run '{arm}' has seeds: which seed's model answers the next round? expected round_run: "
                             f"{arm}@SEED")
        if self.round_run is not None and self.round_run not in policies:
            raise ValueError(f"round_run '{self.round_run}' is not a run that trains a policy (runs: "
                             f"{', '.join(policies) or 'none'})")
        if self.rounds > 1 and not policies:
            raise ValueError(f"rounds: {self.rounds} needs a run that trains a policy (runs:) to answer the next round")
        for source in self.sources:
            if source.model == ROUND_MODEL and source.backend not in ("transformers", "vllm"):
                raise ValueError(f"source '{source.name}': model '@round' needs a local backend (transformers or "
                                 f"vllm), not {source.backend}")
        return self

    @model_validator(mode="after")
    def _named_sources(self) -> Recipe:
        names = [s.name for s in self.sources]
        if any(not n for n in names):
            raise ValueError(f"every source needs a `name` (source {names.index('') + 1} has none)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"source name '{twice[0]}' is used twice")
        revision = self.pairs.revision
        for key in ("reviser", "original") if revision else ():
            name = getattr(revision, key)
            if name not in names:
                raise ValueError(f"pairs.revision.{key}: '{name}' is not a source of this recipe (expected one of: "
                                 f"{', '.join(names) or 'no sources given'})")
        if revision and next(s for s in self.sources if s.name == revision.reviser).backend == "file":
            raise ValueError(f"pairs.revision.reviser: '{revision.reviser}' is a file source; expected a model that "
                             "can be asked (backend transformers, openai or vllm)")
        if revision and revision.revision_source in names:
            raise ValueError(f"source name '{revision.revision_source}' is taken by the revisions of "
                             f"pairs.revision; rename that source")
        return self

    @property
    def answering_sources(self) -> list[SourceConfig]:
        """The sources that answer the prompts: all but a reviser that only revises (strategy revised)."""
        revision = self.pairs.revision
        only_revises = revision.reviser if revision and revision.reviser != revision.original else None
        return [s for s in self.sources if s.name != only_revises]

    @property
    def asked_format(self) -> PromptFormat:
        """The prompt format the recipe's answers were asked in, which its pairs are trained in (`pairs.
        prompt_format: auto`): text when every generating source used the completions endpoint, else chat."""
        asked = {prompt_format_of_endpoint(s.endpoint) for s in self.answering_sources if s.backend != "file"}
        return "text" if asked == {"text"} else "chat"


def read_files(recipe: Recipe) -> list[tuple[str, Path]]:
    """(recipe key, path) of every file a run of the recipe reads as given: the prompts, file sources' answers,
    the pairs' decontamination files and ranking, the evaluation's reference and prompts."""
    files = [("prompts", recipe.prompts), *((f"sources.{i}.path", s.path) for i, s in enumerate(recipe.sources)),
             *((f"pairs.filters.decontaminate.{i}", p) for i, p in enumerate(recipe.pairs.filters.decontaminate))]
    if recipe.pairs.rank_from is not None and str(recipe.pairs.rank_from) != "ranking":  # 'ranking': the run's own
        files.append(("pairs.rank_from", recipe.pairs.rank_from))
    if recipe.eval is not None:
        files += [("eval.reference", recipe.eval.reference),
                  ("eval.prompts", recipe.eval.prompts if isinstance(recipe.eval.prompts, Path) else None)]
    return [(key, path) for key, path in files if path is not None]


def check_reads_apart(recipe: Recipe, run_dir: Path, where: str) -> None:
    """Before any work (a dry run too): no file the recipe reads is one the run writes in `run_dir` — a file
    source at <run_dir>/responses.parquet was replaced by the run's own export of the answers."""
    for key, path in read_files(recipe):
        output = RunDir(run_dir).own_output(path)
        if output is not None:
            raise InputError(where, f"{path} is read as input but is also this run's output {output} in {run_dir}, "
                             "which a stage would overwrite: move the file out of the run folder (or choose another "
                             "run folder)", field=key)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; errors name the file, the key path and its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"cannot read the recipe ({exc})") from None
    except _DuplicateKey as exc:
        raise InputError(str(path), f"the key appears twice in one mapping (first at line {exc.first_line}): "
                         "expected each key once (YAML would silently keep the last)", row=f"line {exc.line}",
                         field=exc.key) from None
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
        raise InputError(str(path), _problem(error), row=f"line {line}" if line else None, field=key or None) from None


def _problem(error: Any) -> str:
    """pydantic's complaint in the project's words where it has them (expected ..., found ...)."""
    if error["type"] == "list_type":
        return f"expected a list, found {describe(error['input'])}"
    return error_message(error)


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key written twice in one mapping: plain YAML loading keeps the last one
    silently, so a recipe with two `pairs:` sections would run with half of what its author wrote. Keys merged in
    with `<<:` may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(str(key), line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own check says so
                break
        return super().construct_mapping(node, deep=deep)


_WRITTEN_HERE = frozenset({"out"})  # a stage command's output (--out): relative to where the command runs, as the flag
_OWN_FILES = {"rank_from": "ranking"}  # a value that names the run's own file, not a path: 'ranking': its ranking.json


def _relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Paths inside a recipe are relative to the recipe's folder, so a recipe runs from anywhere: every field typed
    `Path` (alone, optional or in a list) of every section, found from the models, is rebased; a Literal the field
    also allows ('held-out') and a name of the run's own file (_OWN_FILES) are words, not paths."""
    _rebase(data, Recipe, base)
    return data


def _rebase(section: dict[str, Any], model: type[BaseModel], base: Path) -> None:
    for name, info in model.model_fields.items():
        value = section.get(name)
        kinds = _members(info.annotation)
        if Path in kinds and name not in _WRITTEN_HERE and name in section:
            words = {k for k in kinds if isinstance(k, str)} | ({_OWN_FILES[name]} if name in _OWN_FILES else set())
            section[name] = _rebased(value, base, words)
        for inner in (k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)):
            # anything not a mapping (`sources: 5`) is left as it is for validation, which names the key
            for entry in value if isinstance(value, list) else [value]:
                if isinstance(entry, dict):
                    _rebase(entry, inner, base)


def _rebased(value: Any, base: Path, words: set[str]) -> Any:
    if isinstance(value, list):
        return [_rebased(v, base, words) for v in value]
    return os.path.normpath(base / value) if isinstance(value, str) and value not in words else value


def _members(annotation: Any) -> set[Any]:
    """The types a field's annotation admits, through unions, lists and Literals (a Literal gives its values)."""
    if get_origin(annotation) in (Union, UnionType, list):
        return set().union(*(_members(a) for a in get_args(annotation)))
    if get_origin(annotation) is Literal:
        return set(get_args(annotation))
    return {annotation}


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
