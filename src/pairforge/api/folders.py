"""What every API call that writes a run folder shares with the CLI: the recipe taken as a path or a `Recipe`,
checked against the folder it writes, and the folder held by one writer at a time (`folder_lock`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from pairforge.config import SourceConfig
from pairforge.errors import InputError
from pairforge.files import check_output
from pairforge.folder_lock import held, holder
from pairforge.layout import STORE, RunDir, run_folder_of
from pairforge.options import validated
from pairforge.recipe import Recipe, check_reads_apart, load_recipe
from pairforge.requests.shards import Shard


def recipe_for(recipe: Recipe | str | Path, out: Path, dtype: str | None = None) -> Recipe:
    """A recipe read (when given as a path), with `dtype` over every source that loads weights here (a `Recipe`
    given stays as it was), and checked not to read what `out` is written with."""
    cfg = recipe.model_copy(deep=True) if isinstance(recipe, Recipe) else load_recipe(recipe)
    if dtype is not None:
        for entry in cfg.sources:
            if entry.backend in ("transformers", "vllm"):
                entry.dtype = validated(SourceConfig, entry, {"dtype": dtype}).dtype
    check_reads_apart(cfg, out, "recipe" if isinstance(recipe, Recipe) else str(recipe))
    return cfg


@contextmanager
def writing(folder: Path, option: str = "--out", shard: Shard | None = None) -> Iterator[Callable[[], None]]:
    """Work on a run folder: the folder checked, then held by this call alone (`folder_lock`), so a second command
    on it stops with one line instead of mixing its outputs with this one's; yields a check that it is still
    held. A `shard` holds only its own shard's lock: the shards of one folder run at once, each shard once, and
    never beside an unsharded command in the folder (it would ask the shard's prompts too)."""
    check_output(folder, "folder", option)
    if shard and (running := holder(RunDir(folder).lock)) is not None:
        raise InputError("--shard", f"{folder} is in use by an unsharded command ({running}), which asks every "
                         "prompt itself: expected shards to run before it (or after it ends), never beside it")
    lock = shard.lock(folder / STORE) if shard else RunDir(folder).lock
    with held(lock, "--shard" if shard else option) as still_held:
        yield still_held


def shard_held(folder: Path, shard: Shard | None) -> AbstractContextManager[Any]:
    """An eval into `folder` holds no lock (a pipeline's eval runs inside the run's); a shard of it holds its shard's,
    so two copies of one shard never write one store."""
    return held(shard.lock(folder / STORE), "--shard") if shard else nullcontext()


def training_folder_held(out: Path, option: str) -> AbstractContextManager[Any]:
    """Training into a run folder (`<run>/train/NAME`) holds the run folder's lock like any command writing it, so a
    `pairforge run` there and this training never write it at once. Under `accelerate launch` several processes
    train into one --out: only the main one (RANK 0) takes the lock, for all of them (the launcher ends the others
    when it stops)."""
    root = run_folder_of(out)
    if root is None or os.environ.get("RANK", "0") != "0":
        return nullcontext()
    return held(RunDir(root).lock, option)
