"""A live progress line for training: step, loss, reward margin, accuracy, tokens/s and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """A rich progress bar when enabled (main process); does nothing otherwise."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, stats="")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, row: dict[str, Any]) -> None:
        preference = (f"  margin {row['train/rewards/margins']:+.3f}  acc {row['train/rewards/accuracies']:.2f}"
                      if "train/rewards/margins" in row else "")  # plain SFT scores the target alone
        stats = f"loss {row['train/loss']:.4f}{preference}  {row['tokens_per_s']:.0f} tok/s"
        self.progress.update(self.task, completed=step, stats=stats)
