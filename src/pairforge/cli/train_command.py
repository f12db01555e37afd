"""`pairforge train`: flags laid over the recipe's `train:` section (or one of its `runs:`), then the loop;
a stopped or interrupted run says how to resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pairforge import options
from pairforge.cli.common import console, fail_cleanly
from pairforge.errors import EXIT_INTERRUPTED, InputError
from pairforge.train_config import DIFFICULTIES_HELP, METHODS_HELP, LoraSettings, TrainConfig

_TRAIN = options.defaults(TrainConfig)  # the flags' defaults: the recipe's


def train_command(
    method: str | None = typer.Option(None, help=METHODS_HELP),
    model: str | None = typer.Option(None, help=f"'{_TRAIN['model']}' (default), a model folder or a hub id"),
    pairs: Path | None = typer.Option(None, help="pairs file (ours or TRL prompt/chosen/rejected)"),
    eval_pairs: Path | None = typer.Option(None, help="held-out pairs (default: <pairs>.eval.*)"),
    out: Path | None = typer.Option(None, help="output folder (model/, checkpoints/, metrics.jsonl)"),
    beta: float | None = typer.Option(None, help=f"DPO-family beta ({_TRAIN['beta']})"),
    lr: float | None = typer.Option(None, help="learning rate (5e-7; with LoRA 1e-4)"),
    batch_size: int | None = typer.Option(None, help=f"pairs per device per micro-batch ({_TRAIN['batch_size']})"),
    grad_accum: int | None = typer.Option(None, help=f"micro-batches per optimiser step ({_TRAIN['grad_accum']})"),
    epochs: int | None = typer.Option(None, help=f"epochs ({_TRAIN['epochs']})"),
    max_steps: int | None = typer.Option(None, help="stop after this many optimiser steps"),
    max_length: int | None = typer.Option(None, help=f"max tokens of prompt + answer ({_TRAIN['max_length']})"),
    target: str | None = typer.Option(None, help=f"sft/slic likelihood target column ({_TRAIN['target']})"),
    lora: bool = typer.Option(False, "--lora", help="train a LoRA adapter; reference = adapter disabled"),
    lora_rank: int | None = typer.Option(None, help=f"LoRA rank ({LoraSettings.model_fields['r'].default}; implies "
                                         "--lora)"),
    merge: bool = typer.Option(False, "--merge",
                               help="save the merged model (with --lora or a recipe's lora: section)"),
    prompt_format: str | None = typer.Option(None, help="auto (follow the records) | chat | text"),
    dtype: str | None = typer.Option(None, help=f"{_TRAIN['dtype']} (default) | bfloat16: weights and autocast (~2.3x "
                                     "faster on CPUs with AVX512-BF16 / AMX and on GPUs)"),
    report_to: list[str] | None = typer.Option(None, help=f"{options.choices(TrainConfig, 'report_to')}: a tracker "
                                               "besides metrics.jsonl (repeatable; needs its package)"),
    save_steps: int | None = typer.Option(None, help="checkpoint every N steps"),
    save_final_state: bool = typer.Option(False, "--save-final-state", help="also save the training state at the "
                                          "end, so that a rerun with more --max-steps / --epochs extends the run"),
    fresh: bool = typer.Option(False, "--fresh", help="delete an earlier run in --out (checkpoints, model, "
                               "metrics) and start over; without it a run resumes, and only with the same settings"),
    seed: int | None = typer.Option(None, help=f"seed ({_TRAIN['seed']})"),
    curriculum: str | None = typer.Option(None, help="order by difficulty: sorted | anti | buckets | pacing | "
                                          "random (staged needs stages: use a recipe)"),
    difficulty: str | None = typer.Option(None, help=f"with --curriculum: {DIFFICULTIES_HELP}"),
    config: Path | None = typer.Option(None, help="recipe YAML; its `train:` section gives the defaults"),
    run_name: str | None = typer.Option(None, "--run", help="with --config: train this entry of the recipe's "
                                        "`runs:` (in its run folder, as `pairforge run` would; for accelerate launch)"),
) -> None:
    """Post-train a model on preference pairs (SFT, DPO and relatives, SLiC-HF); resumes from its checkpoints."""
    def command() -> None:
        from pairforge.api.post_training import trained
        from pairforge.training.trainer import TrainingStopped

        base = options.train_section(config, run_name)
        flags = {"method": options.parse_method(method) if method else None, "model": model, "pairs": pairs,
                 "eval_pairs": eval_pairs, "out": out, "beta": beta, "lr": lr, "batch_size": batch_size,
                 "grad_accum": grad_accum, "epochs": epochs, "max_steps": max_steps, "max_length": max_length,
                 "target": target, "save_steps": save_steps, "seed": seed, "prompt_format": prompt_format,
                 "dtype": dtype, "report_to": report_to,
                 "save_final_state": save_final_state or None, "lora": _lora(base, lora, merge, lora_rank)}
        if curriculum or difficulty:
            order = base.curriculum.model_dump() if base.curriculum else {}
            order.update({k: v for k, v in {"schedule": curriculum, "difficulty": difficulty}.items() if v})
            flags["curriculum"] = order
        cfg = options.validated(TrainConfig, base, flags)
        if cfg.pairs is None:
            raise InputError("--pairs", "expected a pairs file (or `pairs:` in the recipe's train section)")
        try:
            result = trained(cfg, fresh=fresh, option="--run" if run_name else "--out")
        except TrainingStopped as exc:
            console.print(f"[bold red]stopped:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted: checkpoint saved; run the same command again to resume", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        done = "already trained (same data and settings; --fresh trains again)" if result.already_trained else "trained"
        console.print(f"{done} {result.steps} steps; model in {result.model}, metrics in {result.metrics_file}",
                      highlight=False)

    fail_cleanly(command)


def _lora(base: TrainConfig, lora: bool, merge: bool, rank: int | None) -> dict[str, Any] | None:
    """--lora / --lora-rank / --merge laid over the recipe's `lora:` section (its other settings kept), or None to
    keep the recipe's choice; --merge alone needs a LoRA run to merge."""
    lora = lora or rank is not None
    if not (lora or merge):
        return None
    section = base.lora.model_dump() if base.lora is not None else {} if lora else None
    if section is None:
        raise InputError("--merge", "expected --lora (or a `lora:` section in the recipe): only an adapter is merged")
    if rank is not None:
        if rank < 1:  # checked here: the section's own error would name its field, `r`, not this flag
            raise InputError("--lora-rank", f"expected a LoRA rank greater than or equal to 1, found {rank}")
        section = {**section, "r": rank}
    return {**section, "merge": True} if merge else section
