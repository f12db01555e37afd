"""A training run's state on disk: what it was trained on (its identity), its checkpoints, its logs and
the saved model — so that a rerun resumes exactly where it stopped, and never from another run's state."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from pairforge.errors import InputError
from pairforge.files import file_digest, folder_stamp, read_log, write_json
from pairforge.layout import TrainDir
from pairforge.train_config import TrainConfig

# settings that change how a run is carried out, not what it trains: a resume may change them
_FREE_ON_RESUME = {"out", "logging_steps", "save_steps", "keep_checkpoints", "save_final_state", "eval_steps",
                   "eval_pairs", "report_to", "chunk_tokens", "forward_tokens", "lean_blocks", "gradient_checkpointing",
                   "share_prompt", "precompute_reference"}


def identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint was trained on and with: the settings that decide the trained model, and the
    pairs file's contents."""
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _FREE_ON_RESUME}
    model_files = folder_stamp(Path(cfg.model)) if Path(cfg.model).is_dir() else None  # a retrained start model
    return {**settings, "pairs": file_digest(Path(cfg.pairs)) if cfg.pairs else "-", "model_files": model_files}


def finished_step(run: TrainDir, identity_now: dict[str, Any]) -> int | None:
    """The last step of a finished run with the same identity; None when there is nothing to resume or a
    checkpoint of the same identity; an InputError naming what differs otherwise."""
    if not run.run_info.exists():
        return None
    earlier = json.loads(run.run_info.read_text())
    finished = "finished_step" in earlier
    if not finished and latest_checkpoint(run) is None:
        return None
    before = earlier.get("identity", {})
    changed = [_change(key, before.get(key), identity_now.get(key))
               for key in sorted(before.keys() | identity_now.keys()) if before.get(key) != identity_now.get(key)]
    if changed:
        what = "a finished run" if finished else "a checkpoint"
        raise InputError(str(run.root), f"holds {what} trained with other settings ({'; '.join(changed)}); pass "
                         "--fresh to delete it and start over, or choose another --out")
    return earlier["finished_step"] if finished else None


def _change(key: str, before: Any, now: Any) -> str:
    if key in ("pairs", "model_files"):
        return "the pairs file's contents" if key == "pairs" else "the model folder's files"
    return f"{key} {json.dumps(before)} -> {json.dumps(now)}"


def clear(run: TrainDir) -> None:
    """--fresh: forget an earlier run in this folder (its checkpoints, model, metrics and position)."""
    for folder in (run.checkpoints, run.model):
        shutil.rmtree(folder, ignore_errors=True)
    for file in [run.run_info, run.metrics, *run.root.glob("consumed-*.jsonl")]:
        file.unlink(missing_ok=True)


def save_checkpoint(accelerator: Accelerator, run: TrainDir, step: int, micro_batches: int, keep: int,
                    order: str) -> Path:
    """Model, optimiser, scheduler and RNG (accelerate), then our data position in the planned `order` (its
    digest); older ones pruned."""
    path = run.checkpoints / f"step-{step:06d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        write_json({"step": step, "micro_batches": micro_batches, "order": order}, path / "position.json")
        for old in sorted(run.checkpoints.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def latest_checkpoint(run: TrainDir) -> Path | None:
    root = run.checkpoints
    done = sorted(p for p in root.glob("step-*") if (p / "position.json").exists()) if root.exists() else []
    return done[-1] if done else None


def resume(accelerator: Accelerator, run: TrainDir, order: str) -> tuple[int, int]:
    """Load the latest checkpoint, if any: (optimiser steps, micro-batches) done. Its position counts
    micro-batches of the planned order, so a checkpoint made with another order (the same settings planned
    by another pairforge version) is refused rather than resumed at a position that means other pairs."""
    latest = latest_checkpoint(run)
    if latest is None:
        return 0, 0
    state = json.loads((latest / "position.json").read_text())
    if state.get("order", order) != order:
        raise InputError(str(run.root), f"expected {latest.name} to continue this run's batch order, found "
                         "another (planned by another pairforge version, or with another share_prompt: rows of other "
                         "widths group otherwise); train with --fresh to start over")
    accelerator.load_state(str(latest))
    return state["step"], state["micro_batches"]


def order_digest(batches: list[list[int]], stages: list[int], grad_accum: int, world: int) -> str:
    """What a checkpoint's micro-batch count refers to: the planned batches, their stages and how they are
    cut into steps and processes."""
    plan = json.dumps([batches, stages, grad_accum, world])
    return hashlib.sha256(plan.encode()).hexdigest()[:16]


def save_model(accelerator: Accelerator, model: Any, tokenizer: Any, run: TrainDir, merge: bool) -> None:
    """The trained model (LoRA: the adapter, or merged into the model) and its tokenizer."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    if merge:
        model = model.merge_and_unload()
    model.save_pretrained(str(run.model))
    tokenizer.save_pretrained(str(run.model))


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """On resume, forget lines written after the checkpoint we resume from (and a torn last line)."""
    if not path.exists():
        return
    path.write_text("".join(json.dumps(r) + "\n" for r in read_log(path) if keep(r)))
