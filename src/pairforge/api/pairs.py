"""`build_pairs`: answers in memory or in files -> `Pairs`, the very pairs `pairforge pairs build` writes.

The answers go through the readers and checks of the files (`records`, `pairs.preference`), so a DataFrame is
validated as its Parquet file would be, and `Pairs.write` writes what the command writes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pairforge.config import PairsConfig
from pairforge.errors import InputError
from pairforge.files import Records, read_records
from pairforge.memory_records import is_in_memory, records_in_memory
from pairforge.options import validated
from pairforge.pairs.build_files import build
from pairforge.pairs.result import Pairs

__all__ = ["Pairs", "build_pairs"]


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
    if not given:
        raise InputError("answers", "expected answers: a path, a table, or a list of them, found an empty list")
    records = [records_of(a) for a in given]
    base = config or PairsConfig()
    cfg = validated(PairsConfig, base, {**_over_sections(base, settings), "inputs": [r.path for r in records]})
    return build(records, cfg)


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
