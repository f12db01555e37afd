"""Curriculum: how hard each pair is, and the order (stages, buckets, pacing) pairs are trained in.

Difficulty scores, higher = harder, one number per pair:
  strength-gap          1 - margin / max margin: the smaller the strength gap between the two sources,
                        the harder ("gpt-4>chatgpt" is harder than "gpt-4>text-davinci-003").
  score-margin          1 - (chosen_score - rejected_score) / largest score gap in the file.
  reference-margin      -(ref log p(y+)/|y+| - ref log p(y-)/|y-|): the reference model's own
                        preference, length-normalised; pairs it already gets right are easy (computed by
                        the trainer from its cached reference log-probs, see `training/`).
  embedding-similarity  cosine similarity of chosen and rejected sentence embeddings: alike = harder.
  column:NAME           any numeric column.

Schedules produce a `CurriculumOrder`: global micro-batches in order, each tagged with its stage; without a
curriculum the trainer uses `length_grouped` (seeded random order, similar lengths batched together).
  random   seeded shuffle per epoch (the baseline).          sorted   easy -> hard, every epoch.
  anti     hard -> easy (ablations).                          buckets  k difficulty buckets in order.
  staged   the paper: explicit stages (pair types or difficulty ranges), each with its own epochs and
           optionally a learning-rate restart; batches never straddle two stages.
  pacing   competence-based: at step t the pool is the easiest c(t) share of pairs, c growing from
           `start_fraction` to 1 at `full_at` of training, as a square root or linearly; each batch is
           drawn (seeded) from the pool.
Inside a stage, bucket or run of equal difficulty the order is shuffled by seed (`shuffle_within`).
`drop_hardest` leaves the hardest share out before any schedule (Selective DPO).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pairforge.errors import InputError
from pairforge.text import answer_text
from pairforge.train_config import CurriculumConfig


@dataclass
class CurriculumOrder:
    """Global micro-batches (lists of pair positions) in training order, with their stage."""

    batches: list[list[int]]
    stages: list[int]  # stage of each batch
    stage_names: list[str]
    restarts: list[int] = field(default_factory=list)  # batch positions where the learning rate restarts
    pool_sizes: list[int] = field(default_factory=list)  # pacing: allowed pairs at each batch
    dropped: int = 0


def difficulty_of(frame: pl.DataFrame, method: str, source: str = "pairs", embedding_model: str = "embedded"
                  ) -> np.ndarray:
    """Difficulty per row of a pairs frame, for every method that needs no training model."""
    if method == "strength-gap":
        margin = _numeric(frame, "margin", source, "written by `pairforge pairs build`")
        return 1.0 - margin / max(float(margin.max()), 1e-12)
    if method == "score-margin":
        gap = _numeric(frame, "chosen_score", source) - _numeric(frame, "rejected_score", source)
        return 1.0 - gap / max(float(gap.max()), 1e-12)
    if method == "embedding-similarity":
        return embedding_similarity(frame, embedding_model)
    if method.startswith("column:"):
        return _numeric(frame, method.removeprefix("column:"), source)
    raise InputError("curriculum.difficulty", f"'{method}' needs the training model (use it inside `train`)")


def needs_difficulty(cfg: CurriculumConfig) -> bool:
    """A random order that drops nothing never looks at difficulty: it needs no margin or score column (a TRL
    pairs file has none)."""
    return cfg.schedule != "random" or cfg.drop_hardest > 0


def shown_difficulty(frame: pl.DataFrame, cfg: CurriculumConfig, source: str) -> np.ndarray:
    """Difficulty to show beside an order (`curriculum show`): NaN where the file cannot give it and the order
    needs none."""
    try:
        return difficulty_of(frame, cfg.difficulty, source, cfg.embedding_model)
    except InputError:
        if needs_difficulty(cfg):
            raise
        return np.full(frame.height, np.nan)


def reference_margin(ref_chosen: np.ndarray, ref_rejected: np.ndarray, chosen_tokens: np.ndarray,
                     rejected_tokens: np.ndarray) -> np.ndarray:
    """-(ref log p(y+)/|y+| - ref log p(y-)/|y-|): high when the reference prefers the rejected answer."""
    return -(ref_chosen / np.maximum(chosen_tokens, 1) - ref_rejected / np.maximum(rejected_tokens, 1))


def embedding_similarity(frame: pl.DataFrame, model_name: str) -> np.ndarray:
    """Cosine similarity of chosen and rejected answers under a sentence-transformers model."""
    from pairforge.models import cosine_similarities

    chosen, rejected = ([answer_text(v) for v in frame[c].to_list()] for c in ("chosen", "rejected"))
    return cosine_similarities(model_name, "curriculum.embedding_model", chosen, rejected)


def order_batches(difficulty: np.ndarray, pair_types: list[str], cfg: CurriculumConfig, batch_size: int, epochs: int,
         seed: int) -> CurriculumOrder:
    """The order of training: global micro-batches of `batch_size` pairs (positions into `difficulty`)."""
    kept = _drop_hardest(difficulty, cfg.drop_hardest)
    dropped = len(difficulty) - len(kept)
    if cfg.schedule == "pacing":
        result = _pacing(difficulty, kept, cfg, batch_size, epochs, seed)
    elif cfg.schedule == "staged":
        result = _staged(difficulty, pair_types, kept, cfg, batch_size, epochs, seed)
    else:
        result = _ordered(difficulty, kept, cfg, batch_size, epochs, seed)
    result.dropped = dropped
    return result


def length_grouped(widths: list[int], batch_size: int, epochs: int, seed: int) -> CurriculumOrder:
    """The order without a curriculum: seeded shuffle per epoch, pairs of similar width grouped into
    batches (less padding) within windows of 16 batches, then the batches shuffled so that lengths do
    not trend within an epoch."""
    batches: list[list[int]] = []
    for epoch in range(epochs):
        rng = random.Random(seed * 1_000_003 + epoch)
        order = _shuffled(list(range(len(widths))), rng, True)
        window = batch_size * 16
        grouped = [batch for start in range(0, len(order), window)
                   for batch in _chunks(sorted(order[start : start + window], key=widths.__getitem__), batch_size)]
        rng.shuffle(grouped)
        batches += grouped
    return CurriculumOrder(batches, [0] * len(batches), ["all"])


def _ordered(difficulty: np.ndarray, kept: list[int], cfg: CurriculumConfig, batch_size: int, epochs: int,
             seed: int) -> CurriculumOrder:
    """random, sorted, anti and buckets: one ordering per epoch, chunked into batches."""
    batches: list[list[int]] = []
    stages: list[int] = []
    names = [f"bucket {k + 1}" for k in range(cfg.buckets)] if cfg.schedule == "buckets" else ["all"]
    for epoch in range(epochs):
        rng = random.Random(seed * 1_000_003 + epoch)
        if cfg.schedule == "random":
            groups = [_shuffled(kept, rng, True)]
        else:
            order = _by_difficulty(difficulty, kept, rng, cfg.shuffle_within, descending=cfg.schedule == "anti")
            groups = [_shuffled(g, rng, cfg.shuffle_within) for g in np.array_split(order, cfg.buckets)] \
                if cfg.schedule == "buckets" else [order]
        for stage, group in enumerate(groups):
            for batch in _chunks(list(group), batch_size):
                batches.append(batch)
                stages.append(stage)
    return CurriculumOrder(batches, stages, names)


def _staged(difficulty: np.ndarray, pair_types: list[str], kept: list[int], cfg: CurriculumConfig,
            batch_size: int, epochs: int, seed: int) -> CurriculumOrder:
    present = set(pair_types)
    members: list[list[int]] = []
    names: list[str] = []
    for number, stage in enumerate(cfg.stages, start=1):
        if stage.pair_types is not None:
            absent = [t for t in stage.pair_types if t not in present]
            if absent:
                raise InputError(f"curriculum.stages[{number - 1}]", f"pair type '{absent[0]}' is not in the data "
                                 f"(found {', '.join(sorted(present))})")
            chosen = [i for i in kept if pair_types[i] in stage.pair_types]
            names.append(f"stage {number}: {', '.join(stage.pair_types)}")
        else:
            assert stage.difficulty is not None
            low, high = stage.difficulty
            chosen = [i for i in kept if low <= difficulty[i] < high]
            names.append(f"stage {number}: difficulty [{low}, {high})")
        if not chosen:
            raise InputError(f"curriculum.stages[{number - 1}]", "the stage selects no pairs")
        members.append(chosen)
    batches: list[list[int]] = []
    stages: list[int] = []
    restarts: list[int] = []
    for epoch in range(epochs):
        for number, (stage, chosen) in enumerate(zip(cfg.stages, members, strict=True)):
            if stage.restart_lr and batches:
                restarts.append(len(batches))
            for stage_epoch in range(stage.epochs):
                rng = random.Random((seed * 1_000_003 + epoch) * 1_009 + number * 101 + stage_epoch)
                for batch in _chunks(_shuffled(chosen, rng, cfg.shuffle_within), batch_size):
                    batches.append(batch)
                    stages.append(number)
    return CurriculumOrder(batches, stages, names, restarts=restarts)


def _pacing(difficulty: np.ndarray, kept: list[int], cfg: CurriculumConfig, batch_size: int, epochs: int,
            seed: int) -> CurriculumOrder:
    order = _by_difficulty(difficulty, kept, random.Random(seed), cfg.shuffle_within)
    total = epochs * math.ceil(len(order) / batch_size)
    batches, pools = [], []
    for step in range(total):
        size = pacing_pool(step, total, len(order), batch_size, cfg)
        rng = random.Random(seed * 1_000_003 + step)
        batches.append(rng.sample(order[:size], min(batch_size, size)))
        pools.append(size)
    return CurriculumOrder(batches, [0] * total, ["paced"], pool_sizes=pools)


def pacing_pool(step: int, total_steps: int, pairs: int, batch_size: int, cfg: CurriculumConfig) -> int:
    """How many of the easiest pairs are allowed at `step`: c(t) = c0 + (1 - c0) * (t / T)^p, p = 1/2 (root)
    or 1 (linear), T = full_at * total steps, capped at 1; never fewer than one batch."""
    progress = min(1.0, step / max(cfg.full_at * total_steps, 1e-9))
    power = 0.5 if cfg.pacing == "root" else 1.0
    competence = min(1.0, cfg.start_fraction + (1 - cfg.start_fraction) * progress**power)
    # rounded first: 0.2 + 0.8 * 0.5 is 0.6000000000000001, and 0.6 of 60 pairs must be 36, not 37
    return min(pairs, max(batch_size, math.ceil(round(competence * pairs, 9))))


def _drop_hardest(difficulty: np.ndarray, share: float) -> list[int]:
    order = sorted(range(len(difficulty)), key=lambda i: (difficulty[i], i))
    return sorted(order[: len(order) - int(share * len(order))])


def _by_difficulty(difficulty: np.ndarray, kept: list[int], rng: random.Random, shuffle_ties: bool,
                   descending: bool = False) -> list[int]:
    tiebreak = {i: rng.random() if shuffle_ties else i for i in kept}
    sign = -1.0 if descending else 1.0
    return sorted(kept, key=lambda i: (sign * difficulty[i], tiebreak[i]))


def _shuffled(items: list[int] | np.ndarray, rng: random.Random, shuffle: bool) -> list[int]:
    out = [int(i) for i in items]
    if shuffle:
        rng.shuffle(out)
    return out


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _numeric(frame: pl.DataFrame, column: str, source: str, hint: str = "") -> np.ndarray:
    if column not in frame.columns:
        raise InputError(source, f"no column '{column}' for the curriculum's difficulty{f' ({hint})' if hint else ''}")
    values = frame[column]
    if not values.dtype.is_numeric():
        raise InputError(source, f"expected a numeric column, found type {values.dtype}", field=column)
    array = values.cast(pl.Float64).to_numpy()
    bad = np.flatnonzero(~np.isfinite(array))
    if len(bad):
        raise InputError(source, f"expected finite numbers, found {array[bad[0]]}", row=f"row {bad[0] + 1}",
                         field=column)
    return array


def write_plot(plan_: CurriculumOrder, difficulty: np.ndarray, path: Path) -> Path:
    """A PNG of mean difficulty per training batch, one colour per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.2), dpi=120)
    means = [float(np.mean(difficulty[b])) for b in plan_.batches]
    for stage, name in enumerate(plan_.stage_names):
        steps = [i for i, s in enumerate(plan_.stages) if s == stage]
        axis.scatter(steps, [means[i] for i in steps], s=8, label=name)
    axis.set_xlabel("batch (training order)")
    axis.set_ylabel("mean difficulty")
    axis.set_title("curriculum: difficulty by step")
    if len(plan_.stage_names) > 1:
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
