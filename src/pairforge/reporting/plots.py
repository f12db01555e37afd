"""The report's figures (matplotlib, rendered to PNG bytes): what each section plots from the typed results."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pairforge import render  # noqa: E402
from pairforge.evaluation.leaderboard import Leaderboard  # noqa: E402
from pairforge.evaluation.stats import Interval  # noqa: E402
from pairforge.judging.ranking import Ranking  # noqa: E402
from pairforge.pairs.summary import PairsSummary, RevisionStats  # noqa: E402
from pairforge.text import answer_text  # noqa: E402

_COLORS = ("#1f6fb4", "#e6862a", "#2f9e44", "#c92a2a", "#7048e8", "#868e96")


def pair_counts(summary: PairsSummary) -> bytes:
    """Pairs per type (train stacked under eval) and what was dropped, by reason."""
    splits = summary.pairs
    train, held_out = splits["train"], splits["eval"]
    types = summary.pair_types
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].bar(types, [train.get(t, 0) for t in types], color=_COLORS[0], label="train")
    axes[0].bar(types, [held_out.get(t, 0) for t in types], bottom=[train.get(t, 0) for t in types],
                color=_COLORS[1], label="eval")
    axes[0].set_title("pairs per type")
    axes[0].legend()
    drops = {f"answers: {k}": v for k, v in summary.dropped_answers.items()}
    drops |= {f"pairs: {k}": sum(v.values()) for k, v in summary.dropped_pairs.items()}
    axes[1].barh(list(drops) or ["(nothing dropped)"], list(drops.values()) or [0], color=_COLORS[3])
    axes[1].set_title("dropped, by reason")
    return png(fig)


def revision_histogram(revision: RevisionStats) -> bytes:
    """The edit distances of all revisions (the summary's histogram over [0, 1]), the kept ones on top and the
    kept interval shaded: where the bounds cut shows whether they fit this reviser."""
    low, high = revision.min_edit, revision.max_edit
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for which, color in (("all", _COLORS[5]), ("kept", _COLORS[2])):
        counts = revision.edit_distance[which].histogram
        ax.bar([i / len(counts) for i in range(len(counts))], counts, width=1 / len(counts), align="edge",
               color=color, edgecolor="white", label=f"{which} ({sum(counts)})")
    ax.axvspan(low, high, color=_COLORS[2], alpha=0.12, zorder=0, label=f"kept interval ({low}, {high}]")
    ax.set_xlim(0, 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("token edit distance (0 = unchanged, 1 = nothing in common)")
    ax.set_title(f"revisions: no-op {revision.no_op}, kept {revision.kept}, rewrite {revision.rewrite}")
    ax.legend(fontsize=7)
    return png(fig)


def pair_distributions(path: Path) -> bytes:
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for column, color in (("chosen", _COLORS[2]), ("rejected", _COLORS[3])):
        words = [len(answer_text(answer).split()) for answer in frame[column].to_list()]
        axes[0].hist(words, bins=30, alpha=0.6, color=color,
                     label=column)
    axes[0].set_title("answer length (words)")
    axes[0].legend()
    for ax, column in zip(axes[1:], ("margin", "difficulty"), strict=True):
        if column in frame.columns:
            ax.hist(frame[column].drop_nulls().to_numpy(), bins=20, color=_COLORS[0])
        ax.set_title(column)
    return png(fig)


def source_strength(ranking: Ranking) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(ranking.sources)))
    strengths = ranking.sources[::-1]
    ax.errorbar([s.strength for s in strengths], range(len(strengths)),
                xerr=[[s.strength - s.low for s in strengths], [s.high - s.strength for s in strengths]],
                fmt="o", color=_COLORS[4], capsize=3)
    ax.set_yticks(range(len(strengths)), [s.name for s in strengths])
    ax.set_title("source strength (Bradley-Terry log-strength, 95% interval)")
    return png(fig)


def training(name: str, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> bytes:
    steps = [m["step"] for m in train]
    types = sorted({k.rsplit("/", 1)[1] for m in train for k in m if k.startswith("train/loss/")})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, key in zip(axes, ("loss", "rewards/margins", "rewards/accuracies"), strict=True):
        if f"train/{key}" in train[0]:  # plain SFT trains on the target alone: its rewards are held-out only
            ax.plot(steps, [m[f"train/{key}"] for m in train], color="black", label="all")
            for color, pair_type in zip(_COLORS, types, strict=False):
                ax.plot(steps, [m.get(f"train/{key}/{pair_type}") for m in train], color=color, alpha=0.7,
                        label=pair_type)
        if evals:
            ax.plot([m["step"] for m in evals], [m[f"eval/{key}"] for m in evals], "o--", color="grey",
                    label="eval")
        for before, after in zip(train, train[1:], strict=False):
            if after.get("stage") != before.get("stage"):
                ax.axvline(after["step"] - 0.5, linestyle=":", color="grey")
        ax.set_title(f"{name}: {key}")
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    return png(fig)


def evaluation(board: Leaderboard) -> bytes:
    """Each model's value with its interval (and the length-controlled win rate), and length against value."""
    measure = board.measure
    measured = [(m, value) for m in board.models if (value := measure.of(m))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for offset, (metric, color) in enumerate(((measure.key, _COLORS[0]),
                                              ("length_controlled_win_rate", _COLORS[1]))):
        values = [value for m in board.models if (value := getattr(m, metric))]
        if not values:
            continue
        y = [i + 0.2 * offset for i in range(len(values))]
        axes[0].errorbar([v.value for v in values], y, xerr=[[v.value - v.low for v in values],
                                                             [v.high - v.value for v in values]],
                         fmt="o", color=color, capsize=3, label=metric.replace("_", " "))
    axes[0].set_yticks(range(len(measured)), [m.model for m, _ in measured])
    if measure.chance is not None:
        axes[0].axvline(measure.chance, linestyle=":", color="grey")
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"{measure.label} with 95% intervals")
    axes[1].scatter([m.mean_length for m, _ in measured], [v.value for _, v in measured], color=_COLORS[2])
    for m, v in measured:
        axes[1].annotate(m.model, (m.mean_length, v.value), fontsize=8)
    axes[1].set_xlabel("mean answer length (words)")
    axes[1].set_title(f"length vs {measure.label}")
    return png(fig)


def rounds(entries: list[render.RoundRow]) -> bytes:
    """Every model's value by round, with its interval."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    measure = entries[0].board.measure
    by_model: dict[str, list[tuple[int, Interval]]] = {}
    for i, r in enumerate(entries):
        for m in r.board.models:
            if value := measure.of(m):
                by_model.setdefault(m.model, []).append((i + 1, value))
    for color, name in zip(_COLORS * 4, sorted(by_model), strict=False):
        points = by_model[name]
        ax.errorbar([x for x, _ in points], [v.value for _, v in points], yerr=[
            [v.value - v.low for _, v in points], [v.high - v.value for _, v in points]],
            fmt="o-", capsize=3, color=color, label=name)
    ax.set_xticks(range(1, len(entries) + 1))
    ax.set_xlabel("round")
    ax.set_title(f"{measure.label} by round (95% intervals)")
    ax.legend(fontsize=7)
    return png(fig)


def png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
