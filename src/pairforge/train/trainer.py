"""The training loop for every method (SFT, DPO and relatives, SLiC-HF), top to bottom in one place.

Supported: full fine-tuning (frozen reference copy, eval mode) or LoRA (reference = the same model
with the adapter disabled); reference log-probs precomputed once and cached on disk, or computed live;
gradient accumulation, clipping, warmup + linear/cosine schedule, gradient checkpointing; metrics
overall and per pair_type as JSONL; checkpoints (model, optimiser, scheduler, RNG and data position) every N
steps, on Ctrl-C and, when asked, at the end, where the trained model is always saved; resume from the latest
checkpoint, refused when it was made with other data or settings; a NaN/inf loss stops the run with the last
good state saved.
Devices: one loop; `accelerate launch` / `torchrun` decides how many processes. Each process takes
every world-size-th micro-batch of one global, seeded order.
Every pair is tokenised in one prompt format (`prompting`: the records' own unless `prompt_format` says
otherwise), written to run.json so that evaluation asks the trained model the same way.
Assumed: dropout is switched off in policy and reference (so policy == reference gives rewards 0).
Not supported yet: resuming in the middle of a gradient-accumulation window (checkpoints are only
written at optimiser-step boundaries, so this never arises from our own checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from rich.console import Console

from pairforge.config import TrainConfig, folder_stamp
from pairforge.errors import InputError
from pairforge.formats import read_pairs
from pairforge.io import check_output, file_digest, read_log, write_json
from pairforge.models import cache_dir, load_causal_lm
from pairforge.pairs.curriculum import Plan, difficulty_of, length_grouped, plan, reference_margin
from pairforge.prompting import PromptFormat, has_chat_template, prompt_format_of
from pairforge.train import losses as L
from pairforge.train.lean import use_lean_blocks
from pairforge.train.logprobs import AnswerLogps, Batch, SequenceScores, answer_logps, collate, forward_pieces
from pairforge.train.memory import return_freed_memory
from pairforge.train.reference import model_fingerprint, reference_logps
from pairforge.train.tokenize import TokenizedPair, TokenizeStats, tokenize_pairs


class TrainingStopped(Exception):
    """The run stopped early (NaN loss); the message says why and where the last good state is."""


@dataclass
class TrainResult:
    out: Path
    steps: int
    metrics: list[dict[str, Any]]
    already_trained: bool = False  # a finished run of the same settings, returned without training


def train(cfg: TrainConfig, progress: bool = True, fresh: bool = False) -> TrainResult:
    """Train, resuming this folder's checkpoint when it was made with the same data and settings (any other
    is refused unless `fresh`, which deletes the earlier run first); a finished run is returned as it is."""
    _check_trackers(cfg.report_to)
    accelerator = _accelerator(cfg)
    out = Path(cfg.out)
    check_output(out, "folder", "--out", [p for p in (cfg.pairs, cfg.eval_pairs) if p])
    identity = _identity(cfg)
    if fresh and accelerator.is_main_process:
        _clear_run(out)
    accelerator.wait_for_everyone()
    finished = _finished_run(out, identity)
    if finished is not None:
        return finished
    set_seed(cfg.seed)
    weights = cfg.loss_weights
    settings = L.LossSettings(beta=cfg.beta, label_smoothing=cfg.label_smoothing, gamma=cfg.gamma,
                              alpha=cfg.alpha, delta=cfg.delta, lam=cfg.lam, slic_nll=cfg.slic_nll)

    laps = _Laps()

    # --- data --------------------------------------------------------------------------------------
    target = cfg.target if weights.keys() & L.NEEDS_TARGET else None
    train_frame = _read_pairs(cfg.pairs, target, required=True)
    eval_path = cfg.eval_pairs or _default_eval_path(cfg.pairs)
    eval_frame = _read_pairs(eval_path, target, required=cfg.eval_pairs is not None)
    reward_model = L.REWARD_MODEL in weights
    share = cfg.share_prompt and not reward_model
    model, tokenizer = load_causal_lm(cfg.model, cfg.dtype, reward_head=reward_model)
    prompt_format = _prompt_format(train_frame, cfg, tokenizer, progress and accelerator.is_main_process)
    train_pairs, token_stats = _tokenize(train_frame, tokenizer, cfg, target, str(cfg.pairs), prompt_format)
    _say_drops(token_stats, cfg, progress and accelerator.is_main_process)
    eval_pairs, _ = _tokenize(eval_frame, tokenizer, cfg, target, str(eval_path), prompt_format)
    laps.lap("load")

    # --- models: policy, and the reference (LoRA: adapter off; full: frozen copy) -------------------
    _disable_dropout(model)
    if cfg.lean_blocks:
        use_lean_blocks(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(accelerator.device)  # every reference pass runs where, and in the precision, the policy trains
    reference = None
    if L.needs_reference(weights) and cfg.lora is None and not cfg.precompute_reference:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    cached_reference: dict[int, tuple[float, float]] = {}
    eval_reference: dict[int, tuple[float, float]] = {}
    if L.needs_reference(weights) and cfg.precompute_reference:
        cache = cache_dir() / "reference" / f"{model_fingerprint(model)}.parquet"
        with accelerator.main_process_first(), accelerator.autocast():
            cached_reference = reference_logps(model, train_pairs, tokenizer.pad_token_id, cache,
                                               chunk_tokens=cfg.chunk_tokens, share_prompt=share)
            eval_reference = reference_logps(model, eval_pairs, tokenizer.pad_token_id, cache,
                                             chunk_tokens=cfg.chunk_tokens, share_prompt=share)

    # --- order: a curriculum plan, or seeded random batches grouped by length -----------------------
    schedule = _training_plan(train_frame, train_pairs, cfg, accelerator.num_processes, cached_reference,
                              lambda: _under(accelerator.autocast(), reference_logps, model, train_pairs,
                                             tokenizer.pad_token_id, None, chunk_tokens=cfg.chunk_tokens,
                                             share_prompt=share))
    mine = _my_share(schedule, cfg.batch_size, accelerator.process_index, accelerator.num_processes)
    laps.lap("reference")
    if cfg.lora is not None:
        model = _with_lora(model, cfg, task="SEQ_CLS" if reward_model else "CAUSAL_LM")

    # --- optimisation ------------------------------------------------------------------------------
    total_steps = len(mine) // cfg.grad_accum
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    if total_steps == 0:
        raise InputError(str(cfg.pairs), f"{len(train_pairs)} pairs make no full optimiser step with batch_size "
                         f"{cfg.batch_size} x grad_accum {cfg.grad_accum} x {accelerator.num_processes} processes")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = _lr_schedule(optimizer, cfg, total_steps, [r // cfg.grad_accum for r in schedule.restarts])
    scorer = SequenceScores(model) if reward_model else AnswerLogps(model, cfg.chunk_tokens)
    policy, optimizer = accelerator.prepare(scorer, optimizer)
    # not prepared: accelerate would step it once per process per step; our step count is already global
    accelerator.register_for_checkpointing(scheduler)
    if reference is not None:
        reference = reference.to(accelerator.device)

    checkpoints = out / "checkpoints"
    step, consumed = 0, 0
    latest = _latest_checkpoint(checkpoints)
    if latest is not None:
        accelerator.load_state(str(latest))
        state = json.loads((latest / "position.json").read_text())
        step, consumed = state["step"], state["micro_batches"]
    metrics_file = out / "metrics.jsonl"
    consumed_file = out / f"consumed-{accelerator.process_index}.jsonl"  # the pairs file rows each step used
    out.mkdir(parents=True, exist_ok=True)
    _truncate_jsonl(consumed_file, lambda r: r["micro"] < consumed)
    if accelerator.is_main_process:
        write_json({"config": cfg.model_dump(mode="json"), "identity": identity, "prompt_format": prompt_format,
                    "tokenize": token_stats.__dict__,
                    "pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "total_steps": total_steps,
                    "stages": schedule.stage_names, "curriculum_dropped": schedule.dropped}, out / "run.json")
        _truncate_jsonl(metrics_file, lambda r: r["step"] <= step)
    if cfg.report_to:
        accelerator.init_trackers("pairforge", config=cfg.model_dump(mode="json"))

    def forward(batch: Batch, ref_table: dict[int, tuple[float, float]]) -> tuple[torch.Tensor, dict]:
        """Per-pair losses and the numbers the metrics need, for one micro-batch."""
        sums, counts = policy(batch)
        n = batch.pairs
        x = L.SequenceLogps(chosen=sums[:n], rejected=sums[n : 2 * n], chosen_tokens=counts[:n],
                            rejected_tokens=counts[n : 2 * n])
        if weights.keys() & L.NEEDS_TARGET:
            rows = slice(2 * n, 3 * n) if batch.has_targets else slice(0, n)
            x.target_nll = -sums[rows] / counts[rows].clamp(min=1)
            x.target_tokens = counts[rows]
        if L.needs_reference(weights):
            with accelerator.autocast():  # the policy's forward is autocast by `prepare`: the same numbers
                x.ref_chosen, x.ref_rejected = _reference(batch, ref_table, reference, model, cfg.chunk_tokens)
        per_pair = L.combined(weights, x, settings)
        reward_c, reward_r = L.rewards(x, settings, scores=reward_model)
        return per_pair, {"loss": per_pair.detach(), "rewards/chosen": reward_c, "rewards/rejected": reward_r,
                          "logps/chosen": x.chosen.detach(), "logps/rejected": x.rejected.detach()}

    laps.lap("setup")

    # --- the loop ----------------------------------------------------------------------------------
    window = _Window()
    history: list[dict[str, Any]] = []
    interrupted = _CatchInterrupt()
    bar = _progress(progress and accelerator.is_main_process, total_steps, step)
    policy.train()
    with interrupted, bar:
        for micro, stage in mine[consumed : total_steps * cfg.grad_accum]:
            pairs = [train_pairs[i] for i in micro]
            _append_jsonl(consumed_file, {"micro": consumed, "stage": stage, "rows": [p.index for p in pairs]})
            total_weight = sum(p.weight for p in pairs)
            with accelerator.accumulate(policy):
                pieces = forward_pieces(pairs, cfg.forward_tokens, share)
                for number, piece in enumerate(pieces):  # gradients of the pieces add up to the batch's
                    batch = collate(piece, tokenizer.pad_token_id, bool(weights.keys() & L.NEEDS_TARGET),
                                    share).to(accelerator.device)
                    per_pair, numbers = forward(batch, cached_reference)
                    piece_loss = (per_pair * batch.weights).sum() / total_weight
                    if not torch.isfinite(piece_loss):
                        path = _save_checkpoint(accelerator, checkpoints, step, consumed, cfg.keep_checkpoints)
                        raise TrainingStopped(f"loss is {piece_loss.item()} at step {step + 1} (pairs "
                                              f"{batch.indices}); the last good state is in {path}")
                    last = number == len(pieces) - 1
                    with contextlib.nullcontext() if last else accelerator.no_sync(policy):
                        accelerator.backward(piece_loss)
                    return_freed_memory()
                    if not last:
                        window.add(batch, numbers, None, stage)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                lr = scheduler.get_last_lr()[0]  # the rate this step uses
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            consumed += 1
            window.add(batch, numbers, grad_norm, stage)
            if not accelerator.sync_gradients:
                continue
            step += 1
            if step % cfg.logging_steps == 0 or step == total_steps:
                row = window.flush(accelerator, step, lr, schedule.stage_names)
                history.append(row)
                if accelerator.is_main_process:
                    _append_jsonl(metrics_file, row)
                    bar.update(step, row)
                if cfg.report_to:
                    accelerator.log(row, step=step)
            if cfg.eval_steps and step % cfg.eval_steps == 0 and eval_pairs:
                history.append(_evaluate(policy, eval_pairs, eval_reference, forward, cfg, tokenizer, accelerator,
                                         step, metrics_file, share))
            if (cfg.save_steps and step % cfg.save_steps == 0) or interrupted.requested:
                _save_checkpoint(accelerator, checkpoints, step, consumed, cfg.keep_checkpoints)
            if interrupted.requested:
                raise KeyboardInterrupt
    laps.lap("train")
    if eval_pairs and not (cfg.eval_steps and step % cfg.eval_steps == 0):  # the last step's eval, once
        history.append(_evaluate(policy, eval_pairs, eval_reference, forward, cfg, tokenizer, accelerator, step,
                                 metrics_file, share))
    laps.lap("eval")
    if cfg.save_final_state:
        _save_checkpoint(accelerator, checkpoints, step, consumed, cfg.keep_checkpoints)
    _save_model(accelerator, model, tokenizer, out, cfg)  # `model` is the LM inside the prepared wrapper
    laps.lap("save")
    if accelerator.is_main_process:
        write_json({**json.loads((out / "run.json").read_text()), "finished_step": step, "seconds": laps.seconds},
                   out / "run.json")
    accelerator.end_training()
    return TrainResult(out=out, steps=step, metrics=history)


# --- pieces of the loop, in the order they are used ---------------------------------------------------

def _accelerator(cfg: TrainConfig) -> Accelerator:
    """accelerate keeps its settings in a process-wide singleton that refuses a second precision; a
    second `train()` in one process (a notebook, a pipeline of fp32 and bf16 runs) gets its own, while
    the process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True on a machine without CUDA: accelerate then runs `torchrun` processes as MULTI_CPU (gloo)
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available(),
                       mixed_precision="bf16" if cfg.dtype == "bfloat16" else "no",
                       log_with=list(cfg.report_to) or None, project_dir=str(cfg.out))


# settings that change how a run is carried out, not what it trains: a resume may change them
_FREE_ON_RESUME = {"out", "logging_steps", "save_steps", "keep_checkpoints", "save_final_state", "eval_steps",
                   "eval_pairs", "report_to", "chunk_tokens", "forward_tokens", "lean_blocks", "gradient_checkpointing",
                   "share_prompt", "precompute_reference"}


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint was trained on and with: the settings that decide the trained model, and the
    pairs file's contents."""
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _FREE_ON_RESUME}
    model_files = folder_stamp(Path(cfg.model)) if Path(cfg.model).is_dir() else None  # a retrained start model
    return {**settings, "pairs": file_digest(Path(cfg.pairs)) if cfg.pairs else "-", "model_files": model_files}


def _finished_run(out: Path, identity: dict[str, Any]) -> TrainResult | None:
    """A finished run with the same identity (returned as it is), None when there is nothing to resume or
    a checkpoint of the same identity; an InputError naming what differs otherwise."""
    run_file = out / "run.json"
    if not run_file.exists():
        return None
    earlier = json.loads(run_file.read_text())
    finished = "finished_step" in earlier
    if not finished and _latest_checkpoint(out / "checkpoints") is None:
        return None
    before = earlier.get("identity", {})
    changed = [_change(key, before.get(key), identity.get(key)) for key in sorted(before.keys() | identity.keys())
               if before.get(key) != identity.get(key)]
    if changed:
        what = "a finished run" if finished else "a checkpoint"
        raise InputError(str(out), f"holds {what} trained with other settings ({'; '.join(changed)}); pass --fresh "
                         "to delete it and start over, or choose another --out")
    if not finished:
        return None
    return TrainResult(out=out, steps=earlier["finished_step"], metrics=read_log(out / "metrics.jsonl"),
                       already_trained=True)


def _change(key: str, before: Any, now: Any) -> str:
    if key in ("pairs", "model_files"):
        return "the pairs file's contents" if key == "pairs" else "the model folder's files"
    return f"{key} {json.dumps(before)} -> {json.dumps(now)}"


def _clear_run(out: Path) -> None:
    """--fresh: forget an earlier run in this folder (its checkpoints, model, metrics and position)."""
    for name in ("checkpoints", "model"):
        shutil.rmtree(out / name, ignore_errors=True)
    for file in [out / "run.json", out / "metrics.jsonl", *out.glob("consumed-*.jsonl")]:
        file.unlink(missing_ok=True)


def _under(context: contextlib.AbstractContextManager, function: Callable[..., Any], *args: Any,
           **kwargs: Any) -> Any:
    with context:
        return function(*args, **kwargs)


def _check_trackers(names: list[str]) -> None:
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    for name in names:
        if not available[name]:
            raise InputError("report_to", f"{name} is not installed (pip install {name})")


def _read_pairs(path: Path | None, target: str | None, required: bool) -> pl.DataFrame | None:
    if path is None or not Path(path).exists():
        if required:
            raise InputError(str(path or "--pairs"), "no such pairs file")
        return None
    return read_pairs(path, target)


def _prompt_format(frame: pl.DataFrame, cfg: TrainConfig, tokenizer: Any, say: bool) -> PromptFormat:
    """The format every pair is trained in (and the trained model is later asked in); said once when a
    chat model trains on plain-text prompts, since that is rarely what one wants by accident."""
    conversational = isinstance(frame.schema["prompt"], pl.List)
    prompt_format = prompt_format_of(conversational, cfg.prompt_format)
    if say and prompt_format == "text" and has_chat_template(tokenizer) and cfg.prompt_format == "auto":
        Console(stderr=True, soft_wrap=True).print(
            f"note: {cfg.pairs} has plain-text prompts, so they train as raw prompt + answer text without the "
            "model's chat template (TRL's rule); set train.prompt_format: chat to train through the template",
            highlight=False)
    return prompt_format


def _tokenize(frame: pl.DataFrame | None, tokenizer: Any, cfg: TrainConfig, target: str | None,
              source: str, prompt_format: PromptFormat) -> tuple[list[TokenizedPair], TokenizeStats]:
    if frame is None:
        return [], TokenizeStats()
    return tokenize_pairs(frame, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                          too_long=cfg.too_long, target_column=target, source=source, prompt_format=prompt_format)


def _say_drops(stats: TokenizeStats, cfg: TrainConfig, say: bool) -> None:
    """Pairs left out are said once (and kept in run.json); none left is an error before any training."""
    dropped = ", ".join(f"{n} {reason}" for reason, n in stats.dropped.items())
    if stats.pairs == 0:
        raise InputError(str(cfg.pairs), f"no pair left to train on ({dropped})")
    if say and dropped:
        Console(stderr=True, soft_wrap=True).print(f"note: left out of {cfg.pairs}: {dropped}", highlight=False)


def _default_eval_path(pairs: Path | None) -> Path | None:
    return pairs.with_name(f"{pairs.stem}.eval{pairs.suffix}") if pairs else None


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _with_lora(model: torch.nn.Module, cfg: TrainConfig, task: str) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    assert cfg.lora is not None
    config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=cfg.lora.target_modules, task_type=task)
    return get_peft_model(model, config)


def _training_plan(frame: pl.DataFrame, pairs: list[TokenizedPair], cfg: TrainConfig, world: int,
                   reference: dict[int, tuple[float, float]],
                   compute_reference: Callable[[], dict[int, tuple[float, float]]]) -> Plan:
    """Global micro-batches (batch_size x processes pairs) in training order, with their stages."""
    size = cfg.batch_size * world
    if cfg.curriculum is None:
        widths = [p.packed_length if cfg.share_prompt else p.length for p in pairs]
        return length_grouped(widths, size, cfg.epochs, cfg.seed)
    method = cfg.curriculum.difficulty
    if method == "reference-margin":
        table = reference or compute_reference()
        ref = np.array([table[p.index] for p in pairs])
        tokens = np.array([[p.chosen.answer_tokens, p.rejected.answer_tokens] for p in pairs], dtype=np.float64)
        difficulty = reference_margin(ref[:, 0], ref[:, 1], tokens[:, 0], tokens[:, 1])
    else:
        per_row = difficulty_of(frame, method, str(cfg.pairs), cfg.curriculum.embedding_model)
        difficulty = per_row[[p.index for p in pairs]]
    return plan(difficulty, [p.pair_type for p in pairs], cfg.curriculum, size, cfg.epochs, cfg.seed)


def _my_share(schedule: Plan, batch_size: int, rank: int, world: int) -> list[tuple[list[int], int]]:
    """This process's (micro-batch, stage) list: every global batch is cut into `world` equal slices, so N
    processes see exactly the pairs one process would with an N times larger batch. With several
    processes an incomplete global batch is left out."""
    share = []
    for batch, stage in zip(schedule.batches, schedule.stages, strict=True):
        if world > 1 and len(batch) < batch_size * world:
            continue
        share.append((batch[rank * batch_size : (rank + 1) * batch_size], stage))
    return share


def _lr_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int,
                 restarts: list[int]) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup then linear/cosine decay (or constant), restarted at each curriculum restart step."""
    bounds = [0, *sorted({r for r in restarts if 0 < r < total}), total]

    def factor(step: int) -> float:
        start = max(b for b in bounds[:-1] if b <= step)
        end = min(b for b in bounds[1:] if b > start)
        length, position = end - start, step - start
        warmup = int(cfg.warmup_ratio * length)
        if position < warmup:
            return (position + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (position - warmup) / max(length - warmup, 1)
        return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _reference(batch: Batch, table: dict[int, tuple[float, float]], reference: torch.nn.Module | None,
               model: torch.nn.Module, chunk_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    device = batch.input_ids.device
    if table:
        values = torch.tensor([table[i] for i in batch.indices], dtype=torch.float32, device=device)
        return values[:, 0], values[:, 1]
    with torch.no_grad():
        if reference is not None:
            sums, _ = answer_logps(reference, batch, chunk_tokens)
        else:  # LoRA: the base model is the reference
            with model.disable_adapter():
                sums, _ = answer_logps(model, batch, chunk_tokens)
    return sums[: batch.pairs], sums[batch.pairs : 2 * batch.pairs]


class _Laps:
    """Wall seconds per phase of this process (load, reference, setup, train, eval, save), kept in run.json:
    where a run's time went, e.g. whether fixed costs eat a fast loop."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


class _Window:
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
        row.update(_summarise(values, types, prefix="train"))
        if self.grad_norms:
            row["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)  # already global after clipping
        self.__init__()  # type: ignore[misc]
        return row


def _summarise(values: dict[str, torch.Tensor], types: list[str], prefix: str) -> dict[str, Any]:
    """loss, rewards/*, logps/* means, overall and per pair_type."""
    margins = values["rewards/chosen"] - values["rewards/rejected"]
    derived = {**values, "rewards/margins": margins, "rewards/accuracies": (margins > 0).float()}
    row: dict[str, Any] = {f"{prefix}/{k}": float(v.mean()) for k, v in derived.items()}
    for pair_type in sorted(set(types)):
        mask = torch.tensor([t == pair_type for t in types])
        for key in ("loss", "rewards/margins", "rewards/accuracies"):
            row[f"{prefix}/{key}/{pair_type}"] = float(derived[key][mask].mean())
    return row


@torch.no_grad()
def _evaluate(model, pairs, reference_table, forward, cfg, tokenizer, accelerator, step, metrics_file, share):
    model.eval()
    values: dict[str, list[torch.Tensor]] = defaultdict(list)
    types: list[str] = []
    for start in range(0, len(pairs), cfg.batch_size):
        chunk = pairs[start : start + cfg.batch_size]
        batch = collate(chunk, tokenizer.pad_token_id, bool(cfg.loss_weights.keys() & L.NEEDS_TARGET), share)
        _, numbers = forward(batch.to(accelerator.device), reference_table)
        for name, value in numbers.items():
            values[name].append(value.float().cpu())
        types += batch.pair_types
    model.train()
    row = {"step": step, **_summarise({k: torch.cat(v) for k, v in values.items()}, types, prefix="eval")}
    if accelerator.is_main_process:
        _append_jsonl(metrics_file, row)
    return row


def _save_checkpoint(accelerator: Accelerator, root: Path, step: int, micro_batches: int, keep: int) -> Path:
    """Model, optimiser, scheduler and RNG (accelerate), then our data position; older ones pruned."""
    path = root / f"step-{step:06d}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        write_json({"step": step, "micro_batches": micro_batches}, path / "position.json")
        for old in sorted(root.glob("step-*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step-*") if (p / "position.json").exists()) if root.exists() else []
    return done[-1] if done else None


def _save_model(accelerator: Accelerator, model, tokenizer, out: Path, cfg: TrainConfig) -> None:
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped = model
    if cfg.lora is not None and cfg.lora.merge:
        unwrapped = unwrapped.merge_and_unload()
    unwrapped.save_pretrained(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def _truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """On resume, forget lines written after the checkpoint we resume from (and a torn last line)."""
    if not path.exists():
        return
    path.write_text("".join(json.dumps(r) + "\n" for r in read_log(path) if keep(r)))


class _CatchInterrupt:
    """Turns the first Ctrl-C into a request to checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _CatchInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *_: Any) -> None:
        signal.signal(signal.SIGINT, self._previous)


def _progress(enabled: bool, total: int, start: int):
    from pairforge.train.progress import TrainProgress

    return TrainProgress(enabled, total, start)
