"""Everything a training run needs before its first step, built in named steps (torchtune's `_setup_*`):
the accelerator, the pairs tokenised in one prompt format, the model, the order of the batches (a curriculum
plan or length-grouped random) and the reference in their forwards, LoRA, the optimiser and the schedule."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from rich.console import Console

from pairforge.errors import InputError
from pairforge.fingerprints import model_fingerprint
from pairforge.layout import split_path
from pairforge.models import cache_dir, check_sentence_model, load_causal_lm
from pairforge.pair_files import read_pairs
from pairforge.prompting import PromptFormat, has_chat_template, prompt_format_of
from pairforge.sequences.logprobs import AnswerLogps, Forwards, SequenceScores, row_width
from pairforge.sequences.tokenize import TokenizedPair, TokenizeStats, tokenize_pairs
from pairforge.train_config import TrainConfig
from pairforge.training import losses as L
from pairforge.training.checkpoints import PlannedOrder, order_digest
from pairforge.training.curriculum import (
    CurriculumOrder,
    difficulty_of,
    length_grouped,
    needs_difficulty,
    order_batches,
    reference_margin,
)
from pairforge.training.lean import use_lean_blocks
from pairforge.training.metrics import held_out_batches
from pairforge.training.objective import PairObjective, ReferenceTable
from pairforge.training.reference import reference_logps, training_reference


@dataclass
class Data:
    """The pairs of a run, tokenised in the format they train in."""

    frame: pl.DataFrame  # the training pairs file as read
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    stats: TokenizeStats
    prompt_format: PromptFormat


@dataclass
class Setup:
    """The state the loop runs on."""

    accelerator: Accelerator
    data: Data
    model: torch.nn.Module  # the language model (LoRA-wrapped when training an adapter)
    tokenizer: Any
    objective: PairObjective
    forwards: Forwards  # how the loop cuts and lays out a micro-batch (the precomputed reference saw the same)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    trainable: list[torch.nn.Parameter]
    reference: ReferenceTable  # precomputed reference log-probs of every training forward (empty when live)
    eval_reference: ReferenceTable
    schedule: CurriculumOrder  # every global micro-batch in order, with its curriculum stage
    mine: list[tuple[list[int], int]]  # this process's (micro-batch, stage) share
    step_weights: list[float]  # each optimiser step's total pair weight over every process's micro-batches
    order: PlannedOrder  # the planned order, which a checkpoint's position counts in
    total_steps: int


def accelerator_for(cfg: TrainConfig) -> Accelerator:
    """accelerate keeps its settings in a process-wide singleton that refuses a second precision; a
    second `train()` in one process (a notebook, a pipeline of fp32 and bf16 runs) gets its own, while
    the process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # cpu=True on a machine without CUDA: accelerate then runs `torchrun` processes as MULTI_CPU (gloo)
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available(),
                       mixed_precision="bf16" if cfg.dtype == "bfloat16" else "no",
                       log_with=list(cfg.report_to) or None, project_dir=str(cfg.out))


def check_trackers(names: list[str]) -> None:
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    for name in names:
        if not available[name]:
            raise InputError("report_to", f"{name} is not installed (pip install {name})")


class Laps:
    """Wall seconds per phase of this process (load, reference, setup, train, eval, save), kept in run.json:
    where a run's time went, e.g. whether fixed costs eat a fast loop."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._last, 3)
        self._last = now


def setup(cfg: TrainConfig, accelerator: Accelerator, say: bool, laps: Laps) -> Setup:
    """Read the pairs, load the model, tokenise, plan the order, compute the reference in the planned forwards,
    build the optimiser — in that order, since each needs the one before."""
    weights = cfg.loss_weights
    reward_model, share = not cfg.trains_policy, cfg.shares_prompt
    _check_forward_tokens(accelerator.distributed_type, cfg.forward_tokens)
    files = _read(cfg)  # before loading the model: a bad pairs file fails fast
    if cfg.curriculum is not None and cfg.curriculum.difficulty == "embedding-similarity":
        check_sentence_model(cfg.curriculum.embedding_model, "curriculum.embedding_model")
    model, tokenizer = load_causal_lm(cfg.model, cfg.dtype, reward_head=reward_model)
    if cfg.lora is not None:  # before the reference pass, which can take minutes
        _check_lora_targets(model, cfg.lora.target_modules)
    data = _data(files, cfg, tokenizer, say)
    laps.lap("load")
    _prepare_model(model, cfg, accelerator)
    frozen = None
    if L.needs_reference(weights) and cfg.lora is None and not cfg.precompute_reference:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
    forwards = Forwards(cfg.forward_tokens, share, L.needs_target(weights), L.likelihood_only(weights))
    cache = cache_dir() / "reference" / f"{model_fingerprint(model)}.parquet" if cfg.precompute_reference else None

    def pair_reference() -> dict[int, tuple[float, float]]:  # for the reference-margin difficulty
        with accelerator.main_process_first(), accelerator.autocast():
            return reference_logps(model, data.train, tokenizer.pad_token_id, cache, cfg.chunk_tokens, share)

    schedule = _training_plan(data, cfg, accelerator.num_processes, pair_reference)
    kept = _kept_batches(schedule, cfg.batch_size, accelerator.num_processes)
    first = accelerator.process_index * cfg.batch_size
    mine = [(batch[first : first + cfg.batch_size], stage) for batch, stage in kept]
    step_weights = _step_weights([batch for batch, _ in kept], data.train, cfg.grad_accum)
    order = PlannedOrder(order_digest(schedule.batches, schedule.stages, cfg.grad_accum, accelerator.num_processes),
                         kept, cfg.grad_accum, accelerator.num_processes)
    total_steps = _total_steps(cfg, len(mine), len(data.train), accelerator.num_processes)
    reference, eval_reference = {}, {}
    if L.needs_reference(weights) and cfg.precompute_reference:
        trained = [[data.train[i] for i in batch] for batch, _ in mine[: total_steps * cfg.grad_accum]]
        held_out = held_out_batches(data.eval, cfg.batch_size)
        context = f"lean={cfg.lean_blocks}"
        with accelerator.main_process_first(), accelerator.autocast():  # every process evaluates the same batches
            eval_reference = training_reference(model, held_out, forwards.evaluation(), tokenizer.pad_token_id, cache,
                                                cfg.chunk_tokens, context)
        with accelerator.autocast():  # each process its own batches, at once, into a cache file of its own
            reference = training_reference(model, trained, forwards, tokenizer.pad_token_id,
                                           _process_cache(cache, accelerator), cfg.chunk_tokens, context)
    laps.lap("reference")
    if cfg.lora is not None:
        model = _with_lora(model, cfg, task="SEQ_CLS" if reward_model else "CAUSAL_LM")
    _check_step_weights(step_weights[:total_steps], str(cfg.pairs))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = _lr_schedule(optimizer, cfg, total_steps, [r // cfg.grad_accum for r in schedule.restarts])
    scorer = SequenceScores(model) if reward_model else AnswerLogps(model, cfg.chunk_tokens)
    policy, optimizer = accelerator.prepare(scorer, optimizer)
    _check_accumulation(accelerator, cfg.grad_accum)
    # not prepared: accelerate would step it once per process per step; our step count is already global
    accelerator.register_for_checkpointing(scheduler)
    objective = PairObjective(policy, model, frozen.to(accelerator.device) if frozen is not None else None, weights,
                              L.LossSettings.of(cfg), accelerator, cfg.chunk_tokens, reward_model)
    return Setup(accelerator, data, model, tokenizer, objective, forwards, optimizer, scheduler, trainable,
                 reference, eval_reference, schedule, mine, step_weights, order, total_steps)


def _process_cache(cache: Path | None, accelerator: Accelerator) -> Path | None:
    """One process's reference cache: processes writing one file at once would each drop the others' entries."""
    if cache is None or accelerator.num_processes == 1:
        return cache
    return cache.with_name(f"{cache.stem}.process-{accelerator.process_index}{cache.suffix}")


def _check_accumulation(accelerator: Accelerator, grad_accum: int) -> None:
    """accelerate takes its accumulation count from its environment or DeepSpeed's config over ours; a different
    count would step the optimiser off the planned schedule (a linear schedule then goes negative)."""
    if accelerator.gradient_accumulation_steps != grad_accum:
        raise InputError("grad_accum", f"expected accelerate to accumulate {grad_accum} micro-batches (the run's "
                         f"grad_accum), found {accelerator.gradient_accumulation_steps} (from "
                         "ACCELERATE_GRADIENT_ACCUMULATION_STEPS or the accelerate config's deepspeed_config."
                         "gradient_accumulation_steps): leave those unset or make them equal")


def _check_forward_tokens(distributed_type: DistributedType, forward_tokens: int | None) -> None:
    """Under DeepSpeed, accelerate's backward at the last micro-batch of a step also steps the optimiser: a
    micro-batch cut into `forward_tokens` pieces would step after its first piece, on part of the gradient."""
    if forward_tokens is not None and distributed_type == DistributedType.DEEPSPEED:
        raise InputError("forward_tokens", f"expected null under DeepSpeed, found {forward_tokens} (each piece's "
                         "backward would step the optimiser); for less memory per forward lower batch_size and "
                         "raise grad_accum (the same step), or use FSDP")


@dataclass
class _Files:
    train: pl.DataFrame
    eval: pl.DataFrame | None
    eval_path: Path
    target: str | None  # the likelihood target column, when a loss term needs one


def _read(cfg: TrainConfig) -> _Files:
    """The training and held-out pairs (`<pairs>.eval.*` unless `eval_pairs` names a file), checked."""
    target = cfg.target if L.needs_target(cfg.loss_weights) else None
    frame = _read_pairs(cfg.pairs, target, required=True)
    assert frame is not None and cfg.pairs is not None
    eval_path = cfg.eval_pairs or split_path(Path(cfg.pairs), "eval")
    return _Files(frame, _read_pairs(eval_path, target, required=cfg.eval_pairs is not None), eval_path, target)


def _data(files: _Files, cfg: TrainConfig, tokenizer: Any, say: bool) -> Data:
    prompt_format = _prompt_format(files.train, cfg, tokenizer, say)
    train, stats = _tokenize(files.train, tokenizer, cfg, files.target, str(cfg.pairs), prompt_format)
    _say_drops(stats, cfg, say)
    held_out, _ = _tokenize(files.eval, tokenizer, cfg, files.target, str(files.eval_path), prompt_format)
    return Data(files.train, train, held_out, stats, prompt_format)


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


def _prepare_model(model: torch.nn.Module, cfg: TrainConfig, accelerator: Accelerator) -> None:
    """Dropout off (policy == reference must give rewards 0), lean blocks, checkpointing, on the device: every
    reference pass runs where, and in the precision, the policy trains."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if cfg.lean_blocks:
        use_lean_blocks(model)
    if cfg.gradient_checkpointing and hasattr(model, "activation_checkpointing_enable"):  # transformers 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:  # its older name, deprecated since
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(accelerator.device)


def _with_lora(model: torch.nn.Module, cfg: TrainConfig, task: str) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    assert cfg.lora is not None
    config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                        target_modules=cfg.lora.target_modules, task_type=task)
    with warnings.catch_warnings():  # peft (<= 0.21) reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, config)


def _check_lora_targets(model: torch.nn.Module, targets: list[str] | str) -> None:
    """`lora.target_modules` must name at least one module of the model (matched as peft matches them: a name or a
    name's last parts, or a regex when given as a string); otherwise peft fails mid-setup with a
    NoMatchingPeftModuleError traceback."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    if targets == "all-linear":
        return
    config = LoraConfig(target_modules=targets)
    names = [name for name, _ in model.named_modules() if name]
    if any(check_target_module_exists(config, name) for name in names):
        return
    linear = [name.rsplit(".", 1)[-1] for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and not name.endswith(("lm_head", "score"))]
    have = list(dict.fromkeys(linear))[:6]
    found = (f"[{', '.join(targets)}]" if targets else "an empty list") if isinstance(targets, list) else repr(targets)
    raise InputError("lora.target_modules", f"expected names of modules in the model (it has {', '.join(have)}; or "
                     f"'all-linear'), found {found}, which matches none of its modules")


def _training_plan(data: Data, cfg: TrainConfig, world: int,
                   pair_reference: Callable[[], dict[int, tuple[float, float]]]) -> CurriculumOrder:
    """Global micro-batches (batch_size x processes pairs) in training order, with their stages."""
    size = cfg.batch_size * world
    pairs = data.train
    if cfg.curriculum is None:
        widths = [row_width(p, cfg.shares_prompt, L.likelihood_only(cfg.loss_weights)) for p in pairs]
        return length_grouped(widths, size, cfg.epochs, cfg.seed)
    method = cfg.curriculum.difficulty
    if not needs_difficulty(cfg.curriculum):  # a random order: the pairs need no margin column
        difficulty = np.zeros(len(pairs))
    elif method == "reference-margin":
        table = pair_reference()
        ref = np.array([table[p.index] for p in pairs])
        tokens = np.array([[p.chosen.answer_tokens, p.rejected.answer_tokens] for p in pairs], dtype=np.float64)
        difficulty = reference_margin(ref[:, 0], ref[:, 1], tokens[:, 0], tokens[:, 1])
    else:
        per_row = difficulty_of(data.frame, method, str(cfg.pairs), cfg.curriculum.embedding_model)
        difficulty = per_row[[p.index for p in pairs]]
    return order_batches(difficulty, [p.pair_type for p in pairs], cfg.curriculum, size, cfg.epochs, cfg.seed)


def _kept_batches(schedule: CurriculumOrder, batch_size: int, world: int) -> list[tuple[list[int], int]]:
    """The global (micro-batch, stage) list the processes train on: every global batch is cut into `world`
    equal slices, so N processes see exactly the pairs one process would with an N times larger batch.
    With several processes an incomplete global batch is left out."""
    return [(batch, stage) for batch, stage in zip(schedule.batches, schedule.stages, strict=True)
            if world == 1 or len(batch) == batch_size * world]


def _step_weights(batches: list[list[int]], pairs: list[TokenizedPair], grad_accum: int) -> list[float]:
    """The total weight of the pairs of each optimiser step (`grad_accum` global micro-batches): the loss
    divides by it, so that every pair of a step counts as in one big batch, however unevenly the pairs (or
    their weights) fall into micro-batches and processes."""
    totals = [sum(pairs[i].weight for i in batch) for batch in batches]
    return [sum(totals[start : start + grad_accum]) for start in range(0, len(totals), grad_accum)]


def _check_step_weights(step_weights: list[float], source: str) -> None:
    """A step whose pairs all weigh 0 has no loss to average (e.g. a curriculum stage of a weight-0 pair type)."""
    empty = [step + 1 for step, weight in enumerate(step_weights) if weight == 0]
    if empty:
        raise InputError(source, f"expected every optimiser step to have a pair of weight > 0, found {len(empty)} "
                         f"steps of weight-0 pairs only (the first: step {empty[0]}); drop those pairs or weigh them")


def _total_steps(cfg: TrainConfig, micro_batches: int, pairs: int, world: int) -> int:
    total = micro_batches // cfg.grad_accum
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if total == 0:
        raise InputError(str(cfg.pairs), f"{pairs} pairs make no full optimiser step with batch_size "
                         f"{cfg.batch_size} x grad_accum {cfg.grad_accum} x {world} processes")
    return total


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
