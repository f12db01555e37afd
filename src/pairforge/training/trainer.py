"""The training loop for every method (SFT, DPO and relatives, SLiC-HF), top to bottom in one place.

`train()` builds its state with `setup.setup` (pairs, model, reference, order, optimiser) and then only
loops: micro-batches in the planned order, gradient accumulation and clipping, metrics overall and per
pair_type as JSONL, checkpoints (model, optimiser, scheduler, RNG and data position) every N steps, on
Ctrl-C and, when asked, at the end, where the trained model is always saved; a rerun resumes from the
latest checkpoint, refused when it was made with other data or settings (`checkpoints.identity`); a
NaN/inf loss stops the run with the last good state saved.
Devices: one loop; `accelerate launch` / `torchrun` decides how many processes. Each process takes its
slice of every global micro-batch of one seeded order, and every step's loss is the weighted mean over all
its pairs (micro-batches and processes together).
Every pair is tokenised in one prompt format (`prompting`: the records' own unless `prompt_format` says
otherwise), written to run.json so that evaluation asks the trained model the same way.
Not supported yet: resuming in the middle of a gradient-accumulation window (checkpoints are only
written at optimiser-step boundaries, so this never arises from our own checkpoints).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from pairforge.files import check_output
from pairforge.layout import TrainDir
from pairforge.train_config import TrainConfig
from pairforge.training import checkpoints
from pairforge.training.memory import return_freed_memory
from pairforge.training.metrics import Window, evaluate_pairs
from pairforge.training.result import RunInfo, TrainResult
from pairforge.training.setup import Laps, Setup, accelerator_for, check_trackers, setup


class TrainingStopped(Exception):
    """The run stopped early (NaN loss); the message says why and where the last good state is."""


def train(cfg: TrainConfig, progress: bool = True, fresh: bool = False) -> TrainResult:
    """Train, resuming this folder's checkpoint when it was made with the same data and settings (any other
    is refused unless `fresh`, which deletes the earlier run once this one's inputs have loaded); a finished run
    is returned as it is."""
    cfg = cfg.resolved()  # defaults that depend on other settings (lr), recorded as trained
    check_trackers(cfg.report_to)
    accelerator = accelerator_for(cfg)
    run = TrainDir(Path(cfg.out))
    check_output(run.root, "folder", "--out", [p for p in (cfg.pairs, cfg.eval_pairs) if p])
    identity = checkpoints.identity(cfg)
    done = None if fresh else checkpoints.finished_step(run, identity)
    if done is not None:
        return replace(TrainResult.read(run.root), already_trained=True)
    set_seed(cfg.seed)
    laps = Laps()
    state = setup(cfg, accelerator, progress and accelerator.is_main_process, laps)
    if fresh and accelerator.is_main_process:  # only now: pairs, model and settings are known to be good
        checkpoints.clear(run)
    accelerator.wait_for_everyone()
    step, consumed = checkpoints.resume(accelerator, run, state.order)
    if step:  # the checkpoint restored the rates it stopped at: an extended run's schedule differs from there on
        state.scheduler.last_epoch -= 1
        state.scheduler.step()  # the rate of the resumed step, from this run's schedule
    run.root.mkdir(parents=True, exist_ok=True)  # every process: each appends its own consumed-rows file
    checkpoints.truncate_jsonl(run.consumed(accelerator.process_index), lambda r: r["micro"] < consumed)
    info = RunInfo(config=cfg.model_dump(mode="json"), identity=identity, prompt_format=state.data.prompt_format,
                   tokenize=state.data.stats.__dict__, pairs=len(state.data.train), eval_pairs=len(state.data.eval),
                   total_steps=state.total_steps, stages=state.schedule.stage_names,
                   curriculum_dropped=state.schedule.dropped)
    if accelerator.is_main_process:
        info.write(run.run_info)
        checkpoints.truncate_jsonl(run.metrics, lambda r: r["step"] <= step)
    if cfg.report_to:
        accelerator.init_trackers("pairforge", config=cfg.model_dump(mode="json"))
    laps.lap("setup")
    history, step, consumed = _loop(cfg, state, run, step, consumed, progress and accelerator.is_main_process)
    laps.lap("train")
    if state.data.eval and not (cfg.eval_steps and step % cfg.eval_steps == 0):  # the last step's eval, once
        history.append(_evaluate(cfg, state, run, step))
    laps.lap("eval")
    if cfg.save_final_state:
        checkpoints.save_checkpoint(accelerator, run, step, consumed, cfg.keep_checkpoints, state.order)
    checkpoints.save_model(accelerator, state.model, state.tokenizer, run, cfg.lora is not None and cfg.lora.merge)
    laps.lap("save")
    info = info.model_copy(update={"finished_step": step, "seconds": laps.seconds})
    if accelerator.is_main_process:
        info.write(run.run_info)
    accelerator.end_training()
    return TrainResult(run.root, info, history)


def _loop(cfg: TrainConfig, state: Setup, run: TrainDir, step: int, consumed: int,
          show: bool) -> tuple[list[dict[str, Any]], int, int]:
    """Micro-batches from `consumed` on, until `total_steps` optimiser steps: returns the metric rows
    logged, the steps and the micro-batches done."""
    accelerator, objective, data = state.accelerator, state.objective, state.data
    window, history, interrupted = Window(), [], _CatchInterrupt()
    bar = _progress(show, state.total_steps, step)
    objective.policy.train()
    with interrupted, bar:
        for micro, stage in state.mine[consumed : state.total_steps * cfg.grad_accum]:
            pairs = [data.train[i] for i in micro]
            checkpoints.append_jsonl(run.consumed(accelerator.process_index),
                                     {"micro": consumed, "stage": stage, "rows": [p.index for p in pairs]})
            with accelerator.accumulate(objective.policy):
                batch, numbers = _forward_backward(cfg, state, pairs, run, step, consumed, window, stage)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(state.trainable, cfg.max_grad_norm)
                lr = state.scheduler.get_last_lr()[0]  # the rate this step uses
                state.optimizer.step()
                if accelerator.sync_gradients:
                    state.scheduler.step()
                state.optimizer.zero_grad()
            consumed += 1
            window.add(batch, numbers, grad_norm, stage)
            if not accelerator.sync_gradients:
                continue
            step += 1
            if step % cfg.logging_steps == 0 or step == state.total_steps:
                row = window.flush(accelerator, step, lr, state.schedule.stage_names)
                history.append(row)
                if accelerator.is_main_process:
                    checkpoints.append_jsonl(run.metrics, row)
                    bar.update(step, row)
                if cfg.report_to:
                    accelerator.log(row, step=step)
            if cfg.eval_steps and step % cfg.eval_steps == 0 and data.eval:
                history.append(_evaluate(cfg, state, run, step))
            if (cfg.save_steps and step % cfg.save_steps == 0) or interrupted.requested:
                checkpoints.save_checkpoint(accelerator, run, step, consumed, cfg.keep_checkpoints, state.order)
            if interrupted.requested:
                raise KeyboardInterrupt
    return history, step, consumed


def _forward_backward(cfg: TrainConfig, state: Setup, pairs: list[Any], run: TrainDir, step: int, consumed: int,
                      window: Window, stage: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """One micro-batch's loss and gradients, in pieces of at most `forward_tokens` tokens whose gradients add
    up to the batch's; a non-finite loss saves the last good state and stops the run."""
    accelerator, objective = state.accelerator, state.objective
    # accelerate divides by grad_accum and DDP averages over processes: what is left is the step's weighted mean
    scale = cfg.grad_accum * accelerator.num_processes / state.step_weights[consumed // cfg.grad_accum]
    pieces = state.forwards.pieces(pairs)
    for number, piece in enumerate(pieces):
        batch = state.forwards.batch(piece, state.tokenizer.pad_token_id).to(accelerator.device)
        per_pair, numbers = objective(batch, state.reference)
        piece_loss = (per_pair * batch.weights).sum() * scale
        if not torch.isfinite(piece_loss):  # the state is that of the step's start: resume from its first micro-batch
            path = checkpoints.save_checkpoint(accelerator, run, step, consumed - consumed % cfg.grad_accum,
                                               cfg.keep_checkpoints, state.order)
            raise TrainingStopped(f"loss is {piece_loss.item()} at step {step + 1} (pairs {batch.indices}); the "
                                  f"last good state is in {path}")
        last = number == len(pieces) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(objective.policy):
            accelerator.backward(piece_loss)
        return_freed_memory()
        if not last:
            window.add(batch, numbers, None, stage)
    return batch, numbers


def _evaluate(cfg: TrainConfig, state: Setup, run: TrainDir, step: int) -> dict[str, Any]:
    return evaluate_pairs(state.objective, state.data.eval, state.eval_reference, cfg.batch_size,
                          state.tokenizer.pad_token_id, state.forwards.evaluation(), state.accelerator, step,
                          run.metrics)


class _CatchInterrupt:
    """Turns the first Ctrl-C into a request to checkpoint at the next step boundary. Only the main thread can
    catch a signal: trained from another thread (a notebook's worker, `pf.train` in a thread pool), Ctrl-C
    interrupts as Python does by default."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _CatchInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *_: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _progress(enabled: bool, total: int, start: int):
    from pairforge.training.progress import TrainProgress

    return TrainProgress(enabled, total, start)
