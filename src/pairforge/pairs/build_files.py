"""The `pairs build` stage end to end: files in (answers, or TRL preference files: pairs in), pairs files and a JSON
summary out (written by `result.Pairs.write`). Every input is read and validated before anything is written, so
bad input leaves earlier outputs untouched.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pairforge.config import PairsConfig
from pairforge.errors import InputError
from pairforge.files import Records, read_records
from pairforge.pairs.build import PairSet, pair_answers
from pairforge.pairs.preference import pairs_from_files, refilter
from pairforge.pairs.result import Pairs, Written, check_outputs
from pairforge.pairs.summary import InputFile, PairsSummary
from pairforge.records import detect_format, responses_from_files


def build_from_files(cfg: PairsConfig) -> Written:
    """`pairs build`: the inputs named in `cfg` read, checked, made into pairs and written to `cfg.out`."""
    check_outputs(cfg.out, cfg)
    return build([read_records(path) for path in cfg.inputs], cfg).write(cfg.out)


def build(records: list[Records], cfg: PairsConfig) -> Pairs:
    """Pairs from records already read (files, or rows in memory: the Python API), nothing written."""
    if cfg.rank_from is not None:
        cfg = cfg.model_copy(update={"rank": rank_from_file(cfg.rank_from)})
    columns = cfg.columns or None
    shapes = [cfg.format if cfg.format != "auto" else detect_format(r, columns) for r in records]
    result, built_from = _pairs_in(records, shapes, cfg) if "preference" in shapes else _pairs_of_answers(records, cfg)
    if result.train.is_empty():
        _refuse_nothing_to_train(result, cfg, built_from)
    inputs = [InputFile(file=str(r.path), records=len(r), format=shape) for r, shape in zip(records, shapes,
                                                                                              strict=True)]
    summary = PairsSummary(inputs=inputs, **result.summary, outputs={}, config=cfg.model_dump(mode="json"))
    return Pairs(result.train, result.eval if cfg.eval_fraction > 0 else None,
                 result.judge if cfg.judge_fraction > 0 else None, summary, cfg)


def _pairs_of_answers(records: list[Records], cfg: PairsConfig) -> tuple[PairSet, str]:
    responses = responses_from_files(records, cfg.format, cfg.columns or None)
    return pair_answers(responses, cfg), f"{responses.height} answers"


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
