"""Training and evaluation from Python: `train` on pairs in a file or in memory, `evaluate` answers you already
have (or models that answer) against reference answers, and `report` over the outputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from pairforge.api.folders import shard_held, training_folder_held
from pairforge.api.pairs import Pairs, records_of
from pairforge.config import EvalConfig, JudgeConfig
from pairforge.errors import InputError
from pairforge.files import check_output
from pairforge.memory_records import is_in_memory, save_records
from pairforge.options import judge_config, validated
from pairforge.pair_files import checked_pairs
from pairforge.requests.shards import Shard, chosen
from pairforge.train_config import TrainConfig

if TYPE_CHECKING:
    from pairforge.evaluation.leaderboard import Leaderboard
    from pairforge.reporting.sections import PageSection
    from pairforge.training.result import TrainResult


def train(pairs: Any, *, method: str | dict[str, float] | None = None, model: str | None = None,
          out: str | Path | None = None, fresh: bool = False, progress: bool = True,
          config: TrainConfig | None = None, **settings: Any) -> TrainResult:
    """Post-train `model` (default 'embedded') on `pairs` with `method` (default dpo; slic, sft, ... or a weighted
    sum {"dpo": 1, "sft": 0.2}) into `out` (default runs/train: model/, checkpoints/, metrics.jsonl); resumes an
    interrupted run of the same settings, and `fresh` starts over. `settings` are the `train:` section's fields
    (beta, lr, batch_size, max_steps, ...), laid over `config` (a recipe's `Recipe.load(path).train`, say).

    `pairs` is a pairs file (ours or any TRL prompt/chosen/rejected file), a `Pairs`, a polars or pandas DataFrame
    or a `datasets.Dataset`: pairs in memory are checked as a file is, then written under `out` as the run's pairs
    file (`<out>/pairs-<content>.parquet`, named by its content, with its eval split when a `Pairs` has one), which
    run.json records. Returns
    the steps, the metrics and the output folder."""
    flags = {**settings, "method": method, "model": model, "out": out}
    cfg = validated(TrainConfig, config or TrainConfig(), flags)  # bad settings are said before pairs are written
    if isinstance(pairs, Pairs):
        path: Path = pairs.write(cfg.out / f"pairs-{_content(pairs.train)}.parquet").written[0]
    elif is_in_memory(pairs):
        records = records_of(pairs)
        checked_pairs(records, cfg.target)
        check_output(cfg.out, "folder", "--out")
        content = _content(records.frame if records.frame is not None else records.as_rows())
        path = save_records(records, cfg.out / f"pairs-{content}")
    else:
        path = Path(pairs)
    return trained(cfg.model_copy(update={"pairs": path}), fresh=fresh, progress=progress)


def trained(cfg: TrainConfig, *, fresh: bool = False, progress: bool = True, option: str = "--out") -> TrainResult:
    """`cfg` trained as `train` and `pairforge train` do: a run inside a run folder holds that folder while it trains
    (`option` names the setting that chose it in the one-line error when another command holds it)."""
    from pairforge.training.trainer import train as train_model

    with training_folder_held(cfg.out, option):
        return train_model(cfg, progress=progress, fresh=fresh)


def evaluate(outputs: Mapping[str, Any] | list[Any] | None = None, reference: Any = None, *,
             models: Mapping[str, str] | list[str] | None = None, judge: str | JudgeConfig = "similarity",
             out: str | Path = "eval", prompts: str | Path | None = None, baseline: str | None = None,
             retry_failed: bool = False, progress: bool = True, shard: str | Shard | None = None,
             **settings: Any) -> Leaderboard:
    """Judge models against `reference` answers: win rate (or score) with its interval, length-controlled win
    rate, and with `baseline` each model's difference to it; writes `<out>/leaderboard.json` and
    `<out>/eval.parquet` and returns the `Leaderboard` (`.to_polars()`: model, value, low, high, difference, ...).

    `outputs` maps a name to answers you already have (AlpacaEval's model_outputs shape: instruction, output),
    each a file or a DataFrame / `datasets.Dataset`; `models` maps a name to a model folder or training run that
    answers the prompts here. `reference` is a file or a table alike; tables are saved under `out` first
    (`<name>.outputs.parquet`, `reference.parquet`, or .jsonl for pandas rows) and read from there. `judge` is
    'similarity', 'reward-model:PATH', a recipe path (its judge: section) or a `JudgeConfig`; `settings` are
    the eval section's max_new_tokens, temperature, bootstrap, batch_size, dtype, backend and vllm (its engine).
    `shard="K/N"` answers and judges only shard K of N's prompts into `<out>/shards/K-of-N.sqlite` and writes no
    file; the leaderboard it returns is of those prompts (the call without `shard` merges the shards)."""
    from pairforge.evaluation.compare import EvalSettings
    from pairforge.evaluation.compare import evaluate as judge_models

    out, part = Path(out), chosen(shard)
    cfg = validated(EvalConfig, EvalConfig(), settings)
    judge_cfg = judge if isinstance(judge, JudgeConfig) else judge_config(judge)
    check_output(out, "folder", "--out")
    answers = [_file(data, out, f"{name}.outputs", name) for name, data in _items([] if outputs is None else outputs)]
    reference_file = _file(reference, out, "reference", None)
    run_settings = EvalSettings.of(cfg, baseline=baseline)
    named_models = [str(m) for _, m in _items([] if models is None else models)]
    with shard_held(out, part):
        return judge_models(named_models, answers, reference_file, judge_cfg, out,
                            Path(prompts) if prompts else None, run_settings, show_progress=progress,
                            retry_failed=retry_failed, shard=part)


def _content(data: pl.DataFrame | list[dict[str, Any]]) -> str:
    """12 hex digits of the pairs' content: in-memory pairs are saved as `<out>/pairs-<content>.*`, so training other
    pairs into the folder of a finished run never overwrites the file that run trained on (and records)."""
    if isinstance(data, pl.DataFrame):
        digest = hashlib.sha256(data.hash_rows(seed=0).to_numpy().tobytes())
        digest.update(str(data.schema).encode())
    else:
        digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def _items(given: Mapping[str, Any] | list[Any]) -> list[tuple[str | None, Any]]:
    """{name: x} as (name, 'name=x'-ready pairs); a list as given (paths, or NAME=PATH strings)."""
    if isinstance(given, Mapping):
        return [(name, value if is_in_memory(value) else f"{name}={value}") for name, value in given.items()]
    if not isinstance(given, list):
        raise InputError("outputs", f"expected {{name: answers}} or a list of paths, found {type(given).__name__}")
    for value in given:
        if is_in_memory(value):
            raise InputError("outputs", f"a {type(value).__name__} in a list has no name: expected {{name: table}}")
    return [(None, value) for value in given]


def _file(data: Any, out: Path, stem: str, name: str | None) -> Any:
    """A table saved under `out` (named NAME=PATH when it has a name), or the path given."""
    if data is None:
        raise InputError("--reference", "expected reference answers (a file or a table)")
    if not is_in_memory(data):
        return Path(data) if name is None else data
    saved = save_records(records_of(data), out / stem)
    return saved if name is None else f"{name}={saved}"


def report(paths: list[str | Path] | str | Path, out: str | Path = "report.html") -> list[PageSection]:
    """One self-contained HTML report (and a Markdown twin, PNGs beside it) of the run folders or files in
    `paths`: pairs summaries, training runs, judge and eval outputs. Returns its sections."""
    from pairforge.reporting.page import build_report

    given = paths if isinstance(paths, list) else [paths]
    return build_report([Path(p) for p in given], Path(out))
