"""The `pairs build` stage end to end: files in (answers, or TRL preference files: pairs in), pairs files and a JSON
summary out.

Outputs: `<out>` (train pairs), `<stem>.eval<suffix>` / `<stem>.judge<suffix>` (held-out and judge prompts, only
with eval_fraction / judge_fraction > 0) and `<stem>.summary.json`. Every input is read and validated before
anything is written, so bad input leaves earlier outputs untouched. The files are written under pending names
first, then put in place in one commit (`_commit`) that also removes the split files of an earlier build beside
them that this build did not write (`stale_splits`): a crash at any point never leaves a pairs file beside
another build's split, so training never picks up held-out pairs from other data.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairforge.config import PairsConfig
from pairforge.errors import InputError
from pairforge.files import Records, check_output, read_records, write_table
from pairforge.layout import pending_path, split_path, summary_path
from pairforge.pairs.build import PairSet, build_pairs
from pairforge.pairs.preference import pairs_from_files, refilter
from pairforge.pairs.summary import InputFile, PairsSummary
from pairforge.records import detect_format, responses_from_files


@dataclass
class StageResult:
    summary: PairsSummary
    written: list[Path]
    removed: list[Path] = field(default_factory=list)  # stale split files of an earlier build


def output_paths(out: Path) -> dict[str, Path]:
    """Where the stage writes, derived from `out`."""
    return {**{split: split_path(out, split) for split in ("train", "eval", "judge")}, "summary": summary_path(out)}


def build_from_files(cfg: PairsConfig) -> StageResult:
    paths = output_paths(cfg.out)
    if paths["train"].suffix not in (".parquet", ".jsonl"):
        raise InputError("--out", f"{cfg.out}: expected a name ending in .parquet or .jsonl")
    for path in paths.values():
        check_output(path, "file", "--out", [*cfg.inputs, *([cfg.rank_from] if cfg.rank_from else [])])
    if cfg.rank_from is not None:
        cfg = cfg.model_copy(update={"rank": rank_from_file(cfg.rank_from)})
    records = [read_records(path) for path in cfg.inputs]
    columns = cfg.columns or None
    shapes = [cfg.format if cfg.format != "auto" else detect_format(r, columns) for r in records]
    result, built_from = _pairs_in(records, shapes, cfg) if "preference" in shapes else _pairs_of_answers(records, cfg)
    if result.train.is_empty():
        _refuse_nothing_to_train(result, cfg, built_from)
    splits = {"train": result.train, "eval": result.eval if cfg.eval_fraction > 0 else None,
              "judge": result.judge if cfg.judge_fraction > 0 else None}
    earlier = _outputs_of(paths["summary"])  # read before this build's summary replaces it
    staged = {name: write_table(frame, pending_path(paths[name]))
              for name, frame in splits.items() if frame is not None}
    summary = PairsSummary(
        inputs=[InputFile(file=str(r.path), records=len(r), format=shape) for r, shape in zip(records, shapes,
                                                                                               strict=True)],
        **result.summary,
        outputs={name: str(path) for name, path in paths.items() if splits.get(name, True) is not None},
        config=cfg.model_dump(mode="json"),
    )
    staged["summary"] = summary.write(pending_path(paths["summary"]))
    written = [paths[name] for name in staged]
    inputs = [*cfg.inputs, *([cfg.rank_from] if cfg.rank_from else []), *cfg.filters.decontaminate]
    removed = stale_splits(paths["train"], written, inputs, earlier)
    _commit(staged, paths, removed)
    return StageResult(summary, written, removed)


def _pairs_of_answers(records: list[Records], cfg: PairsConfig) -> tuple[PairSet, str]:
    responses = responses_from_files(records, cfg.format, cfg.columns or None)
    return build_pairs(responses, cfg), f"{responses.height} answers"


def _pairs_in(records: list[Records], shapes: list[str], cfg: PairsConfig) -> tuple[PairSet, str]:
    """Preference files (pairs already): re-filtered and split; settings that make pairs from answers are refused."""
    for r, shape in zip(records, shapes, strict=True):
        if shape != "preference":
            raise InputError(str(r.path), f"expected a preference file (prompt/chosen/rejected) like the other inputs, "
                             f"found {shape} answers: build pairs from answers and re-filter pairs in separate runs")
    for name, value in (("--rank", cfg.rank), ("--rank-from", cfg.rank_from), ("--strategy", cfg.strategy),
                        ("--columns", cfg.columns)):
        if value:
            raise InputError(name, "does not apply to a preference file: its pairs are made already (it is "
                             "re-filtered and split as it is)")
    pairs = pairs_from_files(records, cfg.prompt_format)
    return refilter(pairs, cfg), f"{pairs.height} pairs"


def _refuse_nothing_to_train(result: PairSet, cfg: PairsConfig, built_from: str) -> None:
    """Why no pair is left for training: every pair fell in a held-out split, or what the filters left out."""
    where = f"no pair for training could be built from {built_from}"
    held_out = [frame for frame in (result.eval, result.judge) if frame is not None and frame.height]
    if held_out:
        prompts = sum(frame["prompt_id"].n_unique() for frame in held_out)
        fractions = f"eval_fraction {cfg.eval_fraction}" + (f", judge_fraction {cfg.judge_fraction}"
                                                            if cfg.judge_fraction else "")
        raise InputError(", ".join(map(str, cfg.inputs)), f"{where}: the pairs of all {prompts} prompts were held out "
                         f"({fractions}; prompts are split by a hash of prompt_id): lower the fractions or add prompts")
    dropped = [result.summary.get(k, {}) for k in ("dropped_answers", "dropped_prompts", "dropped_pairs")]
    raise InputError(", ".join(map(str, cfg.inputs)), f"{where} (left out: {_said(dropped) or 'nothing'})")


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


def _said(counts: list[dict[str, Any]]) -> str:
    """Drop counts ({reason: n} or {reason: {pair_type: n}}) summed by reason, as 'reason n, ...'."""
    total: Counter[str] = Counter()
    for by_reason in counts:
        for reason, n in by_reason.items():
            total[reason] += sum(n.values()) if isinstance(n, dict) else n
    return ", ".join(f"{reason} {n}" for reason, n in total.items() if n)
