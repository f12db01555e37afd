"""The report: one self-contained HTML page (plots embedded) and a Markdown twin with PNG files.

`pairforge report PATH...` looks through the given folders for what the stages wrote and gives each a
section: pairs (`*.summary.json` of `pairs build`, and its pairs file), sources (`judge.summary.json`,
`ranking.json`), training (`run.json` + `metrics.jsonl` per run) and evaluation (`leaderboard.json` +
`eval.parquet`). The page ends with the exact settings found and the library versions, so a run can
be reproduced. Sections without artifacts are left out, and the page says which ones were found.

Each kind of file is read through its stage's typed result (`PairsSummary`, `TrainResult`, `Leaderboard`,
`Ranking`, `JudgeSummary`), whose `read` checks the whole file: a hand-edited file is one line naming the file and the
field expected, never a traceback.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pairforge import render  # noqa: E402
from pairforge.errors import InputError  # noqa: E402
from pairforge.evaluate.leaderboard import Leaderboard  # noqa: E402
from pairforge.evaluate.stats import Interval  # noqa: E402
from pairforge.files import check_output, write_atomically  # noqa: E402
from pairforge.judge.ranking import Ranking  # noqa: E402
from pairforge.judge.summary import JudgeSummary  # noqa: E402
from pairforge.layout import JUDGE_SUMMARY, LEADERBOARD, METRICS, RANKING, RUN_INFO  # noqa: E402
from pairforge.pairs.summary import PairsSummary, RevisionStats  # noqa: E402
from pairforge.render import Grid  # noqa: E402
from pairforge.text import answer_text  # noqa: E402
from pairforge.train.result import TrainResult, read_metrics  # noqa: E402

_COLORS = ("#1f6fb4", "#e6862a", "#2f9e44", "#c92a2a", "#7048e8", "#868e96")


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    code: str | None = None  # raw JSON: escaped inside <pre> on the page, as it is in a Markdown ```json block
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (name, PNG bytes)
    tables: list[Grid] = field(default_factory=list)


def build_report(paths: list[Path], out: Path, leave_out: frozenset[Path] = frozenset()) -> list[Section]:
    """Find the artifacts under `paths`, not `leave_out`, write `out` (HTML) and its Markdown twin: the sections."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise InputError(str(missing[0]), "no such file or folder")
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError("--out", f"{out}: expected a name ending in .html (the Markdown twin is written beside it)")
    for page in (out, out.with_suffix(".md")):
        check_output(page, "file", "--out", paths)
    found = {f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()}
    files = sorted(f for f in found if not leave_out.intersection(f.parents))
    sections = [s for s in (_rounds(files), _pairs(files), _sources(files), _training(files), _evaluation(files)) if s]
    if not sections:
        raise InputError(", ".join(map(str, paths)), "nothing to report: expected pairs summaries, training runs "
                         "(run.json + metrics.jsonl), judge/rank or eval outputs")
    sections.append(_reproduce(files))
    _write_html(sections, out)
    _write_markdown(sections, out.with_suffix(".md"))
    return sections


# --- sections ---------------------------------------------------------------------------------------

def _pairs(files: list[Path]) -> Section | None:
    summaries = [(f, _json(f)) for f in files if f.name.endswith(".summary.json")]
    summaries = [(f, PairsSummary.from_json(s, where=str(f))) for f, s in summaries
                 if isinstance(s, dict) and "pairs" in s and "dropped_answers" in s]
    if not summaries:
        return None
    section = Section("pairs", "Pairs")
    for path, summary in summaries:
        splits = summary.pairs  # train, eval and, when kept apart, judge
        train, held_out = splits["train"], splits["eval"]
        types = summary.pair_types
        section.tables.append(render.pair_counts(summary))
        section.paragraphs.append(f"{_label(path)}: " + ", ".join(f"{summary.total(split)} {split}" for split in
                                                              splits) + f" pairs ({summary.strategy}).")
        if summary.revision is not None:
            section.paragraphs.append(_revision_paragraph(summary.revision))
            section.tables.append(render.revisions(summary.revision))
            name = f"revisions-{_label(path.with_suffix(''))}"
            section.figures.append((name, _revision_histogram(summary.revision)))
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
        section.figures.append((f"pairs-counts-{_label(path.with_suffix(''))}", _png(fig)))
        pairs_file = Path(summary.outputs.get("train", ""))
        if pairs_file.is_file():
            name = f"pairs-distributions-{_label(path.with_suffix(''))}"
            section.figures.append((name, _pair_distributions(pairs_file)))
    return section


def _revision_paragraph(revision: RevisionStats) -> str:
    return (f"{revision.reviser} revised {revision.revisions} of {revision.original}'s answers: "
            f"{revision.kept} kept with a token-level edit distance in ({revision.min_edit}, "
            f"{revision.max_edit}], {revision.no_op} dropped as no-op, {revision.rewrite} as rewrites "
            f"(median edit distance {revision.median_edit:.3f}).")


def _revision_histogram(revision: RevisionStats) -> bytes:
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
    return _png(fig)


def _pair_distributions(path: Path) -> bytes:
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
    return _png(fig)


def _sources(files: list[Path]) -> Section | None:
    judged = [JudgeSummary.read(f) for f in files if f.name == JUDGE_SUMMARY]
    ranked = [Ranking.read(f) for f in files if f.name == RANKING]
    if not judged and not ranked:
        return None
    section = Section("sources", "Sources: judge and strength")
    for summary in judged:
        section.tables.append(render.judge_summary(summary))
        if summary.p_first_shown_wins is not None:
            section.paragraphs.append(render.position_bias(summary) + "; every comparison was asked in both orders.")
    for ranking in ranked:
        section.tables.append(render.ranking(ranking, "the judge's verdicts"))
        section.paragraphs.append(render.significant_order(ranking))
        if ranking.declared_check:
            section.paragraphs.append(render.declared_check(ranking.declared_check))
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(ranking.sources)))
        strengths = ranking.sources[::-1]
        ax.errorbar([s.strength for s in strengths], range(len(strengths)),
                    xerr=[[s.strength - s.low for s in strengths], [s.high - s.strength for s in strengths]],
                    fmt="o", color=_COLORS[4], capsize=3)
        ax.set_yticks(range(len(strengths)), [s.name for s in strengths])
        ax.set_title("source strength (Bradley-Terry log-strength, 95% interval)")
        section.figures.append(("source-strength", _png(fig)))
    return section


def _training(files: list[Path]) -> Section | None:
    runs = [TrainResult.read(f.parent) for f in files if f.name == RUN_INFO and (f.parent / METRICS).exists()]
    if not runs:
        return None
    section = Section("training", "Training")
    rows = []
    for run in runs:
        train, evals = run.train_rows, run.eval_rows
        final = evals[-1] if evals else {}
        first, last = (train[0]["train/loss"], train[-1]["train/loss"]) if train else (None, None)
        rows.append([_label(run.out), str(run.info.method), str(train[-1]["step"] if train else 0),
                     render.number(first), render.number(last), render.number(final.get("eval/rewards/accuracies"))])
        if train:
            section.figures.append((f"training-{_label(run.out)}", _training_plot(_label(run.out), train, evals)))
    section.tables.insert(0, Grid("training runs", ["run", "method", "steps", "first loss", "last loss",
                                                    "eval accuracy"], rows))
    section.paragraphs.append("Loss, reward margin and accuracy per pair type; dashed lines mark curriculum stages. "
                              "Plain SFT trains on its target alone: its margin and accuracy are the held-out "
                              "pairs' (eval points).")
    return section


def _training_plot(name: str, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> bytes:
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
    return _png(fig)


def _evaluation(files: list[Path]) -> Section | None:
    boards = [f for f in files if f.name == LEADERBOARD]
    if not boards:
        return None
    section = Section("evaluation", "Evaluation")
    for path in boards:
        board = Leaderboard.read(path)
        measure = board.measure
        measured = [(m, value) for m in board.models if (value := measure.of(m))]
        section.tables.append(render.leaderboard(board))
        section.paragraphs.append(f"{board.judge} judge against {Path(board.reference).name}, "
                                  f"{board.prompts} prompts; ties count half. " +
                                  "; ".join(render.leaderboard_notes(board)))
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
        section.figures.append((f"evaluation-{_label(path.parent)}", _png(fig)))
    return section


def round_entries(files: list[Path]) -> list[render.Round]:
    """The rounds of an iterative run (round-K/ folders with a leaderboard), in order."""
    boards = sorted((f for f in files if f.name == LEADERBOARD and f.parent.name == "eval"
                     and re.fullmatch(r"round-\d+", f.parent.parent.name)),
                    key=lambda f: int(f.parent.parent.name.split("-")[1]))
    entries = []
    for board in boards:
        folder = board.parent.parent
        summary = folder / "pairs.summary.json"
        margins = {}
        for metrics in sorted((folder / "train").glob(f"*/{METRICS}")):
            evals = [m for m in read_metrics(metrics) if "eval/rewards/margins" in m]
            if evals:
                margins[metrics.parent.name] = evals[-1]["eval/rewards/margins"]
        entries.append(render.Round(folder.name, _json(summary) if summary.exists() else None,
                                    Leaderboard.read(board), margins))
    return entries


def _rounds(files: list[Path]) -> Section | None:
    """An iterative run: every round's pairs, margins and scores side by side, and the scores by round."""
    entries = round_entries(files)
    if not entries:
        return None
    section = Section("rounds", "Rounds")
    section.tables.append(render.rounds(entries))
    section.paragraphs.append("Each round trains on pairs that include the previous round's model's own answers; "
                              "every round is evaluated on the same held-out prompts against the same base model.")
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
    section.figures.append(("rounds", _png(fig)))
    return section


def _reproduce(files: list[Path]) -> Section:
    section = Section("reproduce", "Settings and versions")
    found = {str(f): _json(f) for f in files if f.name in (RUN_INFO, LEADERBOARD) or f.name.endswith(".summary.json")}
    configs = {name: data.get("config") for name, data in found.items() if isinstance(data, dict)}
    section.code = json.dumps({k: v for k, v in configs.items() if v}, indent=1)
    versions = [[name, _version(name)] for name in ("pairforge", "torch", "transformers", "accelerate", "peft",
                                                     "polars", "openai")]
    section.tables.append(Grid("versions", ["package", "version"], [["python", platform.python_version()], *versions]))
    return section


# --- output -----------------------------------------------------------------------------------------

def _write_html(sections: list[Section], out: Path) -> None:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>pairforge report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}",
             "</style></head><body><h1>pairforge report</h1><nav>",
             " · ".join(f"<a href='#{s.id}'>{s.title}</a>" for s in sections), "</nav>"]
    for s in sections:
        parts.append(f"<section id='{s.id}'><h2>{s.title}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs] + ([f"<pre>{html.escape(s.code)}</pre>"]
                                                                        if s.code is not None else [])
        for grid in s.tables:
            parts.append(f"<table><caption>{html.escape(grid.title)}</caption><tr>" +
                         "".join(f"<th>{html.escape(h)}</th>" for h in grid.columns) + "</tr>" + "".join(
                             "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in grid.rows)
                         + "</table>")
        parts += [f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                  for name, png in s.figures]
        parts.append("</section>")
    parts.append("</body></html>")
    write_atomically(out, lambda tmp: tmp.write_text("".join(parts), encoding="utf-8"))


def _write_markdown(sections: list[Section], out: Path) -> None:
    images = out.with_name(f"{out.stem}_files")
    images.mkdir(parents=True, exist_ok=True)
    lines = ["# pairforge report", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [line for p in s.paragraphs for line in (p, "")]
        if s.code is not None:  # a fence longer than any run of backticks in the text (a template may hold ```)
            fence = "`" * max(3, 1 + max(map(len, re.findall("`+", s.code)), default=0))
            lines += [f"{fence}json", s.code, fence, ""]
        for grid in s.tables:
            lines += [f"**{grid.title}**", "", "| " + " | ".join(grid.columns) + " |", "|" + "---|" * len(grid.columns),
                      *("| " + " | ".join(row) + " |" for row in grid.rows), ""]
        for name, png in s.figures:
            (images / f"{name}.png").write_bytes(png)
            lines += [f"![{name}]({images.name}/{name}.png)", ""]
    write_atomically(out, lambda tmp: tmp.write_text("\n".join(lines), encoding="utf-8"))


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _label(path: Path) -> str:
    """A file's or run's name, with its round when it belongs to one (round-2-dpo): names stay unique in an
    iterative run, where every round has a pairs file, an sft run, an eval..."""
    round_ = next((p.name for p in path.parents if re.fullmatch(r"round-\d+", p.name)), None)
    return f"{round_}-{path.name}" if round_ else path.name


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(str(path), f"not readable JSON ({exc})") from None


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"
