"""A training run's state on disk: what it was trained on (its identity), its checkpoints, its logs and
the saved model — so that a rerun resumes exactly where it stopped, and never from another run's state."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from pairforge.errors import InputError
from pairforge.files import file_digest, read_json_object, read_log, write_json
from pairforge.fingerprints import model_content
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
    model_files = model_content(cfg.model)  # a start model replaced in its folder is another model
    return {**settings, "pairs": file_digest(Path(cfg.pairs)) if cfg.pairs else "-", "model_files": model_files}


_EXTENDS = ("max_steps", "epochs")  # more of these continue a finished run whose final state was saved


def finished_step(run: TrainDir, identity_now: dict[str, Any]) -> int | None:
    """The last step of a finished run with the same identity; None when there is nothing to resume, a
    checkpoint of the same identity, or a finished run to extend (more max_steps or epochs) from its saved final
    state; an InputError naming what differs otherwise."""
    if not run.run_info.exists():
        return None
    earlier = read_json_object(run.run_info, "a JSON object as `pairforge train` writes it (a damaged "
                               "record: train with --fresh to start this run over)")
    finished = "finished_step" in earlier
    if not finished and latest_checkpoint(run) is None:
        return None
    before = earlier.get("identity", {})
    keys = [key for key in sorted(before.keys() | identity_now.keys()) if before.get(key) != identity_now.get(key)]
    changed = "; ".join(_change(key, before.get(key), identity_now.get(key)) for key in keys)
    if keys and finished and _extends(keys, before, identity_now):
        latest = latest_checkpoint(run)
        final = json.loads((latest / "position.json").read_text())["step"] if latest is not None else None
        if final == earlier["finished_step"]:
            return None  # the loop resumes from the final state and trains only the added steps
        raise InputError(str(run.root), f"holds a finished run of {earlier['finished_step']} steps ({changed}) whose "
                         "final state was not saved, so it cannot be extended: pass --fresh to train again from the "
                         "start (with save_final_state, --save-final-state, a run can be extended later)")
    if keys:
        what = "a finished run" if finished else "a checkpoint"
        raise InputError(str(run.root), f"holds {what} trained with other settings ({changed}); pass "
                         "--fresh to delete it and start over, or choose another --out")
    return earlier["finished_step"] if finished else None


def continues(run: TrainDir, cfg: TrainConfig) -> bool:
    """Whether training `cfg` in this folder carries on the work already there, so that a pipeline that asks for a
    fresh start (its run settings changed, or its last start was fresh and never finished) keeps it: an unfinished
    run of this very identity with a checkpoint (an interrupted extension, or a fresh start that got that far),
    or a finished run that the new settings extend (more steps, final state saved)."""
    try:
        earlier = read_json_object(run.run_info, "a JSON object")
        identity_now = identity(cfg.resolved())
        if "finished_step" not in earlier:
            same = earlier.get("identity") == json.loads(json.dumps(identity_now))
            return same and latest_checkpoint(run) is not None
        return finished_step(run, identity_now) is None
    except (OSError, ValueError, InputError):  # no run, a damaged record, or other settings: start over
        return False


def _extends(keys: list[str], before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Only more steps or epochs, which keep the batches already trained as they were: a pacing curriculum grows
    its pool over the total epochs, so more epochs change the earlier batches too (that run is trained again)."""
    paced = (now.get("curriculum") or {}).get("schedule") == "pacing"
    return all(k in _EXTENDS and _more(before.get(k), now.get(k)) and not (k == "epochs" and paced) for k in keys)


def _more(before: Any, now: Any) -> bool:
    """`now` asks for more steps than `before` (None: no limit)."""
    return now is None if before is None else now is None or now > before


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


@dataclass(frozen=True)
class PlannedOrder:
    """The planned order a checkpoint's position counts micro-batches in: the digest of the whole plan, and the
    (global micro-batch, stage) list trained, whose first part a longer plan of the same run repeats."""

    digest: str
    kept: list[tuple[list[int], int]]
    grad_accum: int
    world: int

    def trained_digest(self, micro_batches: int) -> str:
        """The digest of the first `micro_batches` micro-batches: what a checkpoint has trained on."""
        part = self.kept[:micro_batches]
        return order_digest([b for b, _ in part], [s for _, s in part], self.grad_accum, self.world)


def save_checkpoint(accelerator: Accelerator, run: TrainDir, step: int, micro_batches: int, keep: int,
                    order: PlannedOrder) -> Path:
    """Model, optimiser, scheduler and RNG (accelerate), then our data position in the planned `order` (its
    digest, and the digest of the part trained); older ones pruned."""
    path = run.checkpoints / f"step-{step:06d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        write_json({"step": step, "micro_batches": micro_batches, "order": order.digest,
                    "trained_digest": order.trained_digest(micro_batches)}, path / "position.json")
        for old in sorted(run.checkpoints.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def latest_checkpoint(run: TrainDir) -> Path | None:
    root = run.checkpoints
    done = sorted(p for p in root.glob("step-*") if (p / "position.json").exists()) if root.exists() else []
    return done[-1] if done else None


def resume(accelerator: Accelerator, run: TrainDir, order: PlannedOrder) -> tuple[int, int]:
    """Load the latest checkpoint, if any: (optimiser steps, micro-batches) done. Its position counts
    micro-batches of the planned order, so a checkpoint made with another order (the same settings planned
    by another pairforge version) is refused rather than resumed at a position that means other pairs; a plan
    that starts with the micro-batches the checkpoint trained on (a finished run extended) continues it."""
    latest = latest_checkpoint(run)
    if latest is None:
        return 0, 0
    state = json.loads((latest / "position.json").read_text())
    same_start = state.get("trained_digest") == order.trained_digest(state["micro_batches"])
    if state.get("order", order.digest) != order.digest and not same_start:
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
