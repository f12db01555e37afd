"""The numbers a run logs: per-pair losses, rewards and log-probs averaged over a logging window (and over
every process), overall and per pair_type; the held-out evaluation in the same terms."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from pairforge.sequences.logprobs import Batch, Forwards
from pairforge.sequences.tokenize import TokenizedPair
from pairforge.training.checkpoints import append_jsonl
from pairforge.training.objective import PairObjective, ReferenceTable


class Window:
    """Per-pair numbers since the last log line, kept per pair_type."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.types: list[str] = []
        self.grad_norms: list[float] = []
        self.tokens = 0
        self.stage = 0
        self.started = time.perf_counter()

    def add(self, batch: Batch, numbers: dict[str, torch.Tensor], grad_norm: Any, stage: int) -> None:
        self.stage = stage
        for name, value in numbers.items():
            self.values[name].append(value.float().cpu())
        self.types += batch.pair_types
        self.tokens += batch.tokens
        if grad_norm is not None:
            self.grad_norms.append(float(grad_norm))

    def flush(self, accelerator: Accelerator, step: int, lr: float, stage_names: list[str]) -> dict[str, Any]:
        """One metrics row over every process's pairs, then start a new window."""
        local = {k: torch.cat(v).tolist() for k, v in self.values.items()}
        shares = gather_object([(local, self.types, self.tokens, self.grad_norms)])
        values = {k: torch.tensor([x for share in shares for x in share[0][k]]) for k in local}
        types = [t for share in shares for t in share[1]]
        tokens = sum(share[2] for share in shares)
        row: dict[str, Any] = {"step": step, "stage": self.stage, "stage_name": stage_names[self.stage], "lr": lr,
                               "tokens_per_s": round(tokens / max(time.perf_counter() - self.started, 1e-9), 1)}
        row.update(summarise(values, types, prefix="train"))
        if self.grad_norms:
            row["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)  # already global after clipping
        self.__init__()  # type: ignore[misc]
        return row


def summarise(values: dict[str, torch.Tensor], types: list[str], prefix: str) -> dict[str, Any]:
    """loss, rewards/*, logps/* means, overall and per pair_type (rewards only where both answers were scored:
    plain SFT trains on the target alone)."""
    derived = dict(values)
    if "rewards/chosen" in values:
        margins = values["rewards/chosen"] - values["rewards/rejected"]
        derived |= {"rewards/margins": margins, "rewards/accuracies": (margins > 0).float()}
    row: dict[str, Any] = {f"{prefix}/{k}": float(v.mean()) for k, v in derived.items()}
    for pair_type in sorted(set(types)):
        mask = torch.tensor([t == pair_type for t in types])
        for key in ("loss", "rewards/margins", "rewards/accuracies"):
            if key in derived:
                row[f"{prefix}/{key}/{pair_type}"] = float(derived[key][mask].mean())
    return row


def held_out_batches(pairs: list[TokenizedPair], batch_size: int) -> list[list[TokenizedPair]]:
    """The held-out pairs in evaluation batches, each one forward (the precomputed reference sees the same)."""
    return [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]


@torch.no_grad()
def evaluate_pairs(objective: PairObjective, pairs: list[TokenizedPair], table: ReferenceTable, batch_size: int,
                   pad_id: int, forwards: Forwards, accelerator: Accelerator, step: int,
                   metrics_file: Path) -> dict[str, Any]:
    """The held-out pairs' loss, rewards and accuracy at this step, logged as one eval/* row."""
    objective.policy.eval()
    values: dict[str, list[torch.Tensor]] = defaultdict(list)
    types: list[str] = []
    for piece in held_out_batches(pairs, batch_size):
        batch = forwards.batch(piece, pad_id)
        _, numbers = objective(batch.to(accelerator.device), table)
        for name, value in numbers.items():
            values[name].append(value.float().cpu())
        types += batch.pair_types
    objective.policy.train()
    row = {"step": step, **summarise({k: torch.cat(v) for k, v in values.items()}, types, prefix="eval")}
    if accelerator.is_main_process:
        append_jsonl(metrics_file, row)
    return row
