"""The training runs as units of `pairforge run`: one stage per run of the recipe, placed in the run folder
(its pairs split, the model it starts from), resumable from its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pairforge.layout import RunDir, TrainDir
from pairforge.stage_unit import Round, StageUnit
from pairforge.train_config import RunConfig
from pairforge.work_rates import BF16_SPEED_UP, SECONDS_PER_PAIR_PASS, TARGET_ONLY_COST


def run_config(entry: RunConfig, run: RunDir) -> RunConfig:
    """A training run of the recipe placed in the run folder (its pairs split, the model it starts from)."""
    update: dict[str, Any] = {"out": run.train(entry.name).root}
    if entry.pairs is None:
        update["pairs"] = run.pairs("judge" if entry.split == "judge" else "train")
    if entry.after is not None:
        update["model"] = str(run.train(entry.after).model)
    return entry.model_copy(update=update)


def run_stage(entry: RunConfig, run: RunDir, fresh: bool = False) -> list[Path]:
    """One training run; `fresh` starts its folder over (see `train.trainer.train`), unless the work there is this
    run's (`checkpoints.continues`: an interrupted run of these settings, or a finished run they only extend)."""
    from pairforge.training.checkpoints import continues
    from pairforge.training.trainer import train as train_model

    cfg = run_config(entry, run)
    out = TrainDir(train_model(cfg, fresh=fresh and not continues(TrainDir(cfg.out), cfg)).out)
    return [out.model, out.metrics]


def units(r: Round) -> list[StageUnit]:
    return [_unit(r, entry) for entry in r.recipe.runs]


def _unit(r: Round, entry: RunConfig) -> StageUnit:
    folder, pairs = r.folder, r.recipe.pairs
    cfg = run_config(entry, folder)
    split = pairs.judge_fraction if cfg.split == "judge" else 1 - pairs.eval_fraction - pairs.judge_fraction
    types, per_prompt = r.pair_counts
    passes = round(r.n_prompts * split * per_prompt * passes_per_pair(cfg, types))
    steps = f"<= {cfg.max_steps} steps" if cfg.max_steps else f"~{passes} pair passes"
    what = _method(cfg.method) + (f" after {entry.after}" if entry.after else "") + \
        (f", curriculum {cfg.curriculum.schedule}" if cfg.curriculum else "")
    after = [folder.marker(f"train:{entry.after}")] if entry.after else []
    restarted = entry.after is None and entry.trains_policy  # it starts from the previous round's policy
    out = TrainDir(cfg.out)
    return StageUnit(f"train:{entry.name}", what, steps, train_estimate(cfg, passes),
                     lambda: run_stage(entry, folder), [cfg.pairs, *after, *(r.previous if restarted else [])],
                     cfg.resolved().model_dump(mode="json"), [out.model, out.metrics], work_dir=cfg.out,
                     produce_fresh=lambda: run_stage(entry, folder, fresh=True), models=[cfg.model])


def _method(method: Any) -> str:
    return method if isinstance(method, str) else "+".join(f"{w}*{n}" for n, w in method.items())


def passes_per_pair(cfg: RunConfig, types: int) -> float:
    """How often a run sees each pair of its split on average: its epochs, or a staged curriculum's stages (each
    its pair types' or difficulty range's share of the pairs, times its epochs), less the hardest it drops."""
    curriculum = cfg.curriculum
    if curriculum is None:
        return cfg.epochs
    if curriculum.schedule != "staged" or not curriculum.stages:
        return cfg.epochs * (1 - curriculum.drop_hardest)
    passes = 0.0
    for stage in curriculum.stages:
        if stage.pair_types is not None:
            share = min(1.0, len(stage.pair_types) / max(types, 1))
        else:
            low, high = stage.difficulty or (0.0, 1.0)
            share = max(0.0, min(high, 1.0) - max(low, 0.0))
        passes += share * stage.epochs
    return passes * (1 - curriculum.drop_hardest)


def train_estimate(cfg: RunConfig, passes: int) -> float | None:
    from pairforge.training.losses import likelihood_only

    if cfg.model != "embedded" and cfg.after is None:
        return None
    if cfg.max_steps:
        passes = min(passes, cfg.max_steps * cfg.batch_size * cfg.grad_accum)
    cost = TARGET_ONLY_COST if likelihood_only(cfg.loss_weights) else 1.0
    return passes * cost * SECONDS_PER_PAIR_PASS / (BF16_SPEED_UP if cfg.dtype == "bfloat16" else 1.0)
