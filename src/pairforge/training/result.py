"""A finished training run, typed: its folder, its record (run.json: the settings trained with, the data's
size, the prompt format, where the time went) and its metrics (metrics.jsonl), as `train` returns it and as the
report reads it back from the folder.

run.json is written by `RunInfo.write` (the trainer writes it when training starts, and again with
`finished_step` and `seconds` when it ends); its fields are declared in the order the file has always had.
Reading checks the fields: a hand-edited record is one line naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import field_validator

from pairforge.fields import check_shape
from pairforge.files import numbered_log
from pairforge.layout import TrainDir
from pairforge.results import Result


class RunInfo(Result):
    """run.json of a training run. Only `config` (with its method) is required: a record written by hand, or by
    an earlier version, holds what it holds."""

    WHAT = "a JSON object as `pairforge train` writes it"

    config: dict[str, Any]  # the training settings, resolved (as trained)
    identity: dict[str, Any] | None = None  # what a resume must match (`checkpoints.identity`)
    prompt_format: str | None = None  # chat or text: how the pairs were tokenised, so evaluation asks alike
    tokenize: dict[str, Any] | None = None  # truncated and dropped pairs
    pairs: int | None = None
    eval_pairs: int | None = None
    total_steps: int | None = None
    stages: list[str] | None = None  # the curriculum's stage names
    curriculum_dropped: int | None = None
    finished_step: int | None = None  # written when training ends
    seconds: dict[str, float] | None = None  # wall seconds per phase (`setup.Laps`), written when training ends

    @field_validator("config")
    @classmethod
    def _has_a_method(cls, config: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(config.get("method"), (str, dict)):
            raise ValueError("expected 'method' in it: a method name, or a mix of methods with weights")
        return config

    @property
    def method(self) -> str | dict[str, float]:
        """The method trained, or a mix of methods with weights."""
        return self.config["method"]


@dataclass
class TrainResult:
    """A training run `train` finished (or found finished): its folder, record and metric rows."""

    out: Path  # the run folder
    info: RunInfo
    metrics: list[dict[str, Any]]  # metrics.jsonl rows (train/... and held-out eval/...); from `train`, those it logged
    already_trained: bool = False  # a finished run of the same settings, returned without training

    @classmethod
    def read(cls, folder: Path) -> TrainResult:
        """The run in `folder` (run.json and metrics.jsonl), each checked."""
        run = TrainDir(folder)
        return cls(run.root, RunInfo.read(run.run_info), read_metrics(run.metrics))

    @property
    def model(self) -> Path:
        """The trained model's folder."""
        return TrainDir(self.out).model

    @property
    def metrics_file(self) -> Path:
        return TrainDir(self.out).metrics

    @property
    def steps(self) -> int:
        """Optimiser steps trained: the record's, or the last train row's for a run that never finished."""
        if self.info.finished_step is not None:
            return self.info.finished_step
        return self.train_rows[-1]["step"] if self.train_rows else 0

    @property
    def seconds(self) -> float | None:
        """Wall seconds of the whole run (None before it finished)."""
        return sum(self.info.seconds.values()) if self.info.seconds is not None else None

    @property
    def train_rows(self) -> list[dict[str, Any]]:
        return [m for m in self.metrics if "train/loss" in m]

    @property
    def eval_rows(self) -> list[dict[str, Any]]:
        return [m for m in self.metrics if "eval/loss" in m]


_NUMBER = (int, float, type(None))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl of a training run: each row an object with an integer step and numbers (or null) for every
    train/ and eval/ value, since the report plots them."""
    numbered = numbered_log(path)
    for line, row in numbered:
        spec = {"step": int, "*": _NUMBER} if isinstance(row, dict) else {}
        check_shape(path, row if not isinstance(row, dict) else
                    {k: v for k, v in row.items() if k == "step" or k.startswith(("train/", "eval/"))}, spec,
                    row=f"line {line}")
    return [row for _, row in numbered]
