"""A pairs build, in memory and on disk: `Pairs` (train / eval / judge splits, the typed summary) and how a build's
files are written — under pending names first, then put in place in one commit (`_commit`) that also removes the
split files of an earlier build beside them that this build did not write (`stale_splits`): a crash at any point
never leaves a pairs file beside another build's split, so training never picks up held-out pairs of other data.

Files: `<out>` (train pairs), `<stem>.eval<suffix>` / `<stem>.judge<suffix>` (only with eval_fraction /
judge_fraction > 0) and `<stem>.summary.json`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pairforge.config import PairsConfig
from pairforge.errors import InputError
from pairforge.files import check_output, write_table
from pairforge.layout import pending_path, split_path, summary_path
from pairforge.pairs.summary import PairsSummary


@dataclass
class Written:
    """What `Pairs.write` did: the typed summary it wrote, the files, and stale splits of an earlier build removed."""

    summary: PairsSummary
    written: list[Path]
    removed: list[Path] = field(default_factory=list)


@dataclass
class Pairs:
    """Preference pairs: `train`, `eval` and `judge` (None for a split not kept) are polars frames in TRL's columns
    (prompt, chosen, rejected, plus ours); `to_dataset()` hands them to TRL as they are; `write(path)` saves them as
    `pairforge pairs build --out path` does. `summary.outputs` is empty until they are written."""

    train: pl.DataFrame
    eval: pl.DataFrame | None
    judge: pl.DataFrame | None
    summary: PairsSummary
    config: PairsConfig

    def __repr__(self) -> str:
        splits = {"train": self.train, "eval": self.eval, "judge": self.judge}
        shown = ", ".join(f"{name}={frame.height} pairs" for name, frame in splits.items() if frame is not None)
        return f"Pairs({shown}, types={self.summary.pair_types})"

    def to_dataset(self) -> Any:
        """A `datasets.DatasetDict` with "train" (and "eval" when there is an eval split), which TRL's
        `DPOTrainer` takes as it is (conversational records where the pairs are chat messages)."""
        from datasets import Dataset, DatasetDict

        splits = {"train": self.train, "eval": self.eval}
        return DatasetDict({name: Dataset(frame.to_arrow()) for name, frame in splits.items() if frame is not None})

    def write(self, out: str | Path) -> Written:
        """Write the pairs file, its splits and `<stem>.summary.json` (the summary's config names `out`)."""
        out = Path(out)
        paths = output_paths(out)
        check_outputs(out, self.config)
        splits = {"train": self.train, "eval": self.eval, "judge": self.judge}
        earlier = _outputs_of(paths["summary"])  # read before this build's summary replaces it
        staged = {name: write_table(frame, pending_path(paths[name])) for name, frame in splits.items()
                  if frame is not None}
        self.summary = self.summary.model_copy(update={
            "outputs": {name: str(path) for name, path in paths.items() if splits.get(name, True) is not None},
            "config": self.config.model_copy(update={"out": out}).model_dump(mode="json")})
        staged["summary"] = self.summary.write(pending_path(paths["summary"]))
        written = [paths[name] for name in staged]
        removed = stale_splits(paths["train"], written, self.config.read_files, earlier)
        _commit(staged, paths, removed)
        return Written(self.summary, written, removed)


def output_paths(out: Path) -> dict[str, Path]:
    """Where a build writes, derived from `out`."""
    return {**{split: split_path(out, split) for split in ("train", "eval", "judge")}, "summary": summary_path(out)}


def check_outputs(out: Path, cfg: PairsConfig) -> None:
    """`out` names a pairs file, and none of a build's files would overwrite one of its inputs: checked before
    anything is read, so a wrong --out costs nothing."""
    if out.suffix not in (".parquet", ".jsonl"):
        raise InputError("--out", f"{out}: expected a name ending in .parquet or .jsonl")
    for path in output_paths(out).values():
        check_output(path, "file", "--out", [*cfg.inputs, *([cfg.rank_from] if cfg.rank_from else [])])


def _commit(staged: dict[str, Path], paths: dict[str, Path], stale: list[Path]) -> None:
    """Put a build's pending files in place in an order where a crash at any point leaves no pairs file beside a
    split of another build: the earlier pairs file goes first, then the stale splits; the new splits and the
    summary move in, the new pairs file last (the build is there once it is)."""
    paths["train"].unlink(missing_ok=True)
    for path in stale:
        path.unlink(missing_ok=True)  # removed by hand meanwhile: gone all the same
    for name, pending in staged.items():
        if name != "train":
            os.replace(pending, paths[name])
    os.replace(staged["train"], paths["train"])


def stale_splits(out: Path, written: list[Path], inputs: list[Path], earlier: set[str]) -> list[Path]:
    """Split files beside `out` (`<stem>.eval|judge.jsonl|parquet`) that an earlier build wrote (its summary lists
    them) and this one did not: `train --pairs <out>` would take its eval split as held-out pairs of other data.
    Only those exact names; never an input of this build, nor a file no build of ours wrote (a hand-made split)."""
    keep = {p.resolve() for p in [*written, *inputs] if p.exists()}
    candidates = [split_path(out.with_suffix(suffix), split) for split in ("eval", "judge")
                  for suffix in (".jsonl", ".parquet")]
    return [p for p in candidates if p.is_file() and p.resolve() not in keep and p.name in earlier]


def _outputs_of(summary: Path) -> set[str]:
    """The names of the files an earlier build's summary (beside them) says it wrote; none without a summary, or
    with one this version cannot read (then no split beside it is known to be ours, and none is removed)."""
    try:
        outputs = PairsSummary.read(summary).outputs
    except InputError:
        return set()
    return {Path(p).name for p in outputs.values()}
