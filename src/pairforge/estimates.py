"""How long a recipe's stages will take, for the plan `pairforge run` prints: rough figures from work rates
measured on the embedded model, so a user sees before starting where the minutes will go; models other than
the embedded one get no estimate."""

from __future__ import annotations

from typing import Any

from pairforge.config import ROUND_MODEL
from pairforge.models import resolved_dtype
from pairforge.pairs.order import parse_rank
from pairforge.recipe import Recipe
from pairforge.train.losses import likelihood_only
from pairforge.train_config import RunConfig

# Work rates of the embedded model on the project's 2-core CPU (AVX512-BF16), measured on the quickstart
# in 2026-11; a rough guide, printed as such; other models get no estimate.
_TOKENS_PER_S_AT_10_ROWS = 80.0  # float32 generation, 10 prompts per generate() call
_SECONDS_PER_PAIR_PASS = 1.0  # float32 training, LoRA, ~150-token rows
_BF16_SPEED_UP = 2.2
_TARGET_ONLY_COST = 0.66  # plain SFT pushes prompt + target only: its train phase took 0.66x (2026-11-28)


def local_tokens_per_s(batch_size: int, dtype: str) -> float:
    """More rows per step use the cores better, up to ~2.4x at 64 rows."""
    return _TOKENS_PER_S_AT_10_ROWS * min(2.4, (batch_size / 10) ** 0.5) * (_BF16_SPEED_UP if dtype == "bfloat16"
                                                                           else 1.0)


def generation_estimate(recipe: Recipe, answers: int) -> float | None:
    local = [s for s in recipe.sources if s.backend == "transformers" and s.model == "embedded"]
    if len(local) + sum(s.backend == "file" for s in recipe.sources) < len(recipe.sources):
        return None
    return answering_seconds(local, answers)


def answering_seconds(sources: list[Any], answers: int) -> float:
    """Seconds for local embedded-size sources to write `answers` answers each, at the measured token rates."""
    return sum(answers * s.max_new_tokens / local_tokens_per_s(s.batch_size, s.resolved_dtype) for s in sources)


def pair_types(recipe: Recipe) -> tuple[int, int]:
    """(pair types, most pairs per prompt) the pairs stage makes. An order `rank_from` a ranking is only known
    at run time: taken as one chain of all the sources; the scored strategy's types follow the scores."""
    cfg, samples, sources = recipe.pairs, recipe.samples_per_source, len(recipe.sources)
    if cfg.resolved_strategy == "revised":
        return 1, samples  # each revision against the answer it revised
    every = sources * (sources - 1) // 2
    if cfg.resolved_strategy == "scored":
        answers = sources * samples
        return every, answers * (answers - 1) // 2 if cfg.scored_mode == "all" else 1
    if cfg.rank:
        types = len(parse_rank(cfg.rank).pair_types(cfg.pair_types))
    else:
        types = {"all": every, "adjacent": sources - 1, "extremes": 1}.get(cfg.pair_types,
                                                                          cfg.pair_types.count(">"))
    return types, types * samples * samples


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
    if cfg.model != "embedded" and cfg.after is None:
        return None
    if cfg.max_steps:
        passes = min(passes, cfg.max_steps * cfg.batch_size * cfg.grad_accum)
    cost = _TARGET_ONLY_COST if likelihood_only(cfg.loss_weights) else 1.0
    return passes * cost * _SECONDS_PER_PAIR_PASS / (_BF16_SPEED_UP if cfg.dtype == "bfloat16" else 1.0)


def later_round_estimate(recipe: Recipe, stage: str, first_round: dict[str, float | None],
                          answers: int) -> float | None:
    """Round k > 1 does round 1's work on models of round 1's shape, so round 1's estimate holds — except
    generation, where only the "@round" sources answer again (the others' answers are in the store)."""
    estimate = first_round.get(stage)
    if estimate is None or stage != "generate":
        return estimate
    return answering_seconds([s for s in recipe.answering_sources if s.model == ROUND_MODEL], answers)


def eval_estimate(recipe: Recipe, models: int, n_prompts: int) -> float | None:
    from pairforge.records import prompts_from_file

    assert recipe.eval is not None
    held_out = recipe.eval.prompts == "held-out"
    prompts = n_prompts * recipe.pairs.eval_fraction if held_out else prompts_from_file(recipe.eval.prompts).height
    rate = local_tokens_per_s(recipe.eval.batch_size, resolved_dtype(recipe.eval.dtype))
    return models * prompts * recipe.eval.max_new_tokens / rate
