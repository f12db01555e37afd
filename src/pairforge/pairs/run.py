"""The `pairs build` stage end to end: files in, pairs files and a JSON summary out.

Outputs, all written atomically (temporary name, then rename): `<out>` (train pairs),
`<stem>.eval<suffix>` (held-out prompts, only with eval_fraction > 0) and `<stem>.summary.json`.
Every input is read and validated before anything is written, so bad input leaves earlier outputs
untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairforge.config import PairsConfig
from pairforge.errors import InputError
from pairforge.formats import detect_format, responses_from_files
from pairforge.io import read_records, write_json, write_table
from pairforge.pairs.build import build_pairs


@dataclass
class StageResult:
    summary: dict[str, Any]
    written: list[Path]


def output_paths(out: Path) -> dict[str, Path]:
    """Where the stage writes, derived from `out`."""
    return {"train": out, "eval": out.with_name(f"{out.stem}.eval{out.suffix}"),
            "summary": out.with_name(f"{out.stem}.summary.json")}


def build_from_files(cfg: PairsConfig) -> StageResult:
    if cfg.rank_from is not None:
        cfg = cfg.model_copy(update={"rank": rank_from_file(cfg.rank_from)})
    records = [read_records(path) for path in cfg.inputs]
    columns = cfg.columns or None
    responses = responses_from_files(records, cfg.format, columns)
    result = build_pairs(responses, cfg)
    paths = output_paths(cfg.out)
    if paths["train"].suffix not in (".parquet", ".jsonl"):  # fail before writing anything
        write_table(result.train.head(0), paths["train"])
    written = [write_table(result.train, paths["train"])]
    if cfg.eval_fraction > 0:
        written.append(write_table(result.eval, paths["eval"]))
    summary = {
        "inputs": [{"file": str(r.path), "records": len(r),
                    "format": cfg.format if cfg.format != "auto" else detect_format(r, columns)} for r in records],
        **result.summary,
        "outputs": {name: str(path) for name, path in paths.items() if name != "eval" or cfg.eval_fraction > 0},
        "config": cfg.model_dump(mode="json"),
    }
    written.append(write_json(summary, paths["summary"]))
    return StageResult(summary, written)


def rank_from_file(path: Path) -> str:
    """The significant orders of a `pairforge rank` ranking.json, in --rank syntax."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(str(path), f"cannot read the ranking ({exc})") from None
    rank = data.get("rank") if isinstance(data, dict) else None
    if not isinstance(rank, str):
        raise InputError(str(path), "expected a ranking.json from `pairforge rank` (with a 'rank' string)")
    if not rank:
        raise InputError(str(path), f"no source order is significant at {data.get('confidence', 0.95):.0%}: judge "
                         "more prompts, or declare the order with --rank")
    return rank
