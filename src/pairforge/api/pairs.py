"""`build_pairs`: answers in memory or in files -> `Pairs`, the very pairs `pairforge pairs build` writes.

The answers go through the readers and checks of the files (`records`, `pairs.preference`), so a DataFrame is
validated as its Parquet file would be, and `Pairs.write` writes what the command writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from pairforge.config import PairsConfig
from pairforge.errors import InputError
from pairforge.files import Records, check_output, read_records, write_json, write_table
from pairforge.layout import pending_path
from pairforge.memory_records import is_in_memory, records_in_memory
from pairforge.options import validated

# the stage's own steps; pairs/run.py's build_from_files runs them on files (the integrator makes them public)
from pairforge.pairs.run import (
    _commit,
    _outputs_of,
    _pairs_in,
    _pairs_of_answers,
    _refuse_nothing_to_train,
    output_paths,
    rank_from_file,
    stale_splits,
)
from pairforge.records import detect_format


@dataclass
class Pairs:
    """Preference pairs: `train` and `eval` (None without an eval split) are polars frames in TRL's columns
    (prompt, chosen, rejected, plus ours); `to_dataset()` hands them to TRL as they are, `write(path)` saves them
    as `pairforge pairs build --out path` does."""

    train: pl.DataFrame
    eval: pl.DataFrame | None
    summary: dict[str, Any]  # typed: PairsSummary
    judge: pl.DataFrame | None = None  # pairs kept apart for a reward-model judge (judge_fraction > 0)
    config: PairsConfig = field(default_factory=PairsConfig)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # file (or DataFrame name), records, format

    def to_dataset(self) -> Any:
        """A `datasets.DatasetDict` with "train" (and "eval" when there is an eval split), which TRL's
        `DPOTrainer` takes as it is (conversational records where the pairs are chat messages)."""
        from datasets import Dataset, DatasetDict

        splits = {"train": self.train, "eval": self.eval}
        return DatasetDict({name: Dataset(frame.to_arrow()) for name, frame in splits.items() if frame is not None})

    def write(self, path: str | Path) -> list[Path]:
        """Write the pairs file, its splits and `<stem>.summary.json` as `pairs build --out path` does (split files
        of an earlier build there are removed, so training never takes them for these pairs' splits); returns the
        files written."""
        out = Path(path)
        paths = output_paths(out)
        if paths["train"].suffix not in (".parquet", ".jsonl"):
            raise InputError("--out", f"{out}: expected a name ending in .parquet or .jsonl")
        sources = [*self.config.inputs, *([self.config.rank_from] if self.config.rank_from else [])]
        for target in paths.values():
            check_output(target, "file", "--out", sources)
        splits = {"train": self.train, "eval": self.eval, "judge": self.judge}
        earlier = _outputs_of(paths["summary"])
        staged = {name: write_table(frame, pending_path(paths[name]))
                  for name, frame in splits.items() if frame is not None}
        config = self.config.model_copy(update={"out": out})
        summary = {"inputs": self.inputs, **self.summary,
                   "outputs": {name: str(p) for name, p in paths.items() if splits.get(name, True) is not None},
                   "config": config.model_dump(mode="json")}
        staged["summary"] = write_json(summary, pending_path(paths["summary"]))
        written = [paths[name] for name in staged]
        removed = stale_splits(paths["train"], written, [*sources, *self.config.filters.decontaminate], earlier)
        _commit(staged, paths, removed)
        return written


def build_pairs(answers: Any, *, config: PairsConfig | None = None, **settings: Any) -> Pairs:
    """Preference pairs from `answers`: a path (JSONL, JSON, Parquet, a saved HF dataset folder), a polars or
    pandas DataFrame, a `datasets.Dataset`, or a list of these, in any shape `pairs build` reads (long, wide with
    `columns=`, ultrafeedback, nectar, sharegpt, or TRL preference pairs to re-filter and split).

    `settings` are the `pairs:` section's fields (rank, rank_from, strategy, pair_types, scored_mode,
    min_margin, eval_fraction, judge_fraction, prompt_format, seed, format, columns, filters={...},
    revision={...}), laid over `config` (default: the section's defaults) and checked as the command checks its
    flags: bad settings or bad rows raise one `InputError` naming the setting, or the DataFrame, row and field.
    Nothing is written: see `Pairs.write`."""
    given = answers if isinstance(answers, list) and not _is_rows(answers) else [answers]
    records = [records_of(a) for a in given]
    base = config or PairsConfig()
    cfg = validated(PairsConfig, base, {**_over_sections(base, settings), "inputs": [r.path for r in records]})
    if cfg.rank_from is not None:
        cfg = cfg.model_copy(update={"rank": rank_from_file(cfg.rank_from)})
    columns = cfg.columns or None
    shapes = [cfg.format if cfg.format != "auto" else detect_format(r, columns) for r in records]
    built, built_from = _pairs_in(records, shapes, cfg) if "preference" in shapes else _pairs_of_answers(records, cfg)
    if built.train.is_empty():
        _refuse_nothing_to_train(built, cfg, built_from)
    inputs = [{"file": str(r.path), "records": len(r), "format": s} for r, s in zip(records, shapes, strict=True)]
    return Pairs(built.train, built.eval if cfg.eval_fraction > 0 else None, built.summary,
                 built.judge if cfg.judge_fraction > 0 else None, cfg, inputs)


def _over_sections(base: PairsConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """`filters={"min_length": 3}` sets that filter and keeps the others (`filters.min_length`, as a flag does)."""
    def nested(key: str, value: Any) -> bool:
        return isinstance(value, dict) and isinstance(getattr(base, key, None), BaseModel)

    flat = {key: value for key, value in settings.items() if not nested(key, value)}
    return flat | {f"{key}.{k}": v for key, value in settings.items() if nested(key, value) for k, v in value.items()}


def _is_rows(answers: list[Any]) -> bool:
    """A list of dicts is one table of rows, not several inputs."""
    return bool(answers) and all(isinstance(a, dict) for a in answers)


def records_of(data: Any) -> Records:
    """A path read as a file, anything else as rows in memory."""
    return records_in_memory(data) if is_in_memory(data) else read_records(data)
