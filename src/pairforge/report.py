"""The report: one self-contained HTML page (plots embedded) and a Markdown twin with PNG files.

`pairforge report PATH...` looks through the given folders for what the stages wrote and gives each a
section: pairs (`*.summary.json` of `pairs build`, and its pairs file), sources (`judge.summary.json`,
`ranking.json`), training (`run.json` + `metrics.jsonl` per run) and evaluation (`leaderboard.json` +
`eval.parquet`). The page ends with the exact settings found and the library versions, so a run can
be reproduced. Sections without artifacts are left out, and the page says which ones were found.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from pairforge.errors import InputError  # noqa: E402
from pairforge.formatting import difference, interval, number, significance  # noqa: E402
from pairforge.io import check_output, read_log, write_atomically  # noqa: E402
from pairforge.pairs.edits import revision_table  # noqa: E402

_COLORS = ("#1f6fb4", "#e6862a", "#2f9e44", "#c92a2a", "#7048e8", "#868e96")


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (name, PNG bytes)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)


def build_report(paths: list[Path], out: Path) -> list[Section]:
    """Find the artifacts under `paths`, write `out` (HTML) and its Markdown twin; return the sections."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise InputError(str(missing[0]), "no such file or folder")
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError("--out", f"{out}: expected a name ending in .html (the Markdown twin is written beside it)")
    for page in (out, out.with_suffix(".md")):
        check_output(page, "file", "--out", paths)
    files = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()})
    sections = [s for s in (_pairs(files), _sources(files), _training(files), _evaluation(files)) if s]
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
    summaries = [(f, s) for f, s in summaries if isinstance(s, dict) and "pairs" in s and "dropped_answers" in s]
    if not summaries:
        return None
    section = Section("pairs", "Pairs")
    for path, summary in summaries:
        splits = summary["pairs"]  # train, eval and, when kept apart, judge
        train, held_out = splits["train"], splits["eval"]
        types = sorted(set().union(*splits.values()))
        section.tables.append((["pair type", *splits], [[t, *(str(c.get(t, 0)) for c in splits.values())]
                                                         for t in types]))
        section.paragraphs.append(f"{path.name}: " + ", ".join(f"{sum(c.values())} {split}" for split, c in
                                                              splits.items()) + f" pairs ({summary['strategy']}).")
        if "revision" in summary:
            section.paragraphs.append(_revision_paragraph(summary["revision"]))
            section.tables.append(revision_table(summary["revision"])[1:])
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        axes[0].bar(types, [train.get(t, 0) for t in types], color=_COLORS[0], label="train")
        axes[0].bar(types, [held_out.get(t, 0) for t in types], bottom=[train.get(t, 0) for t in types],
                    color=_COLORS[1], label="eval")
        axes[0].set_title("pairs per type")
        axes[0].legend()
        drops = {f"answers: {k}": v for k, v in summary["dropped_answers"].items()}
        drops |= {f"pairs: {k}": sum(v.values()) for k, v in summary["dropped_pairs"].items()}
        axes[1].barh(list(drops) or ["(nothing dropped)"], list(drops.values()) or [0], color=_COLORS[3])
        axes[1].set_title("dropped, by reason")
        section.figures.append((f"pairs-counts-{path.stem}", _png(fig)))
        pairs_file = Path(summary.get("outputs", {}).get("train", ""))
        if pairs_file.is_file():
            section.figures.append((f"pairs-distributions-{path.stem}", _pair_distributions(pairs_file)))
    return section


def _revision_paragraph(revision: dict[str, Any]) -> str:
    return (f"{revision['reviser']} revised {revision['revisions']} of {revision['original']}'s answers: "
            f"{revision['kept']} kept with a token-level edit distance in ({revision['min_edit']}, "
            f"{revision['max_edit']}], {revision['no_op']} dropped as no-op, {revision['rewrite']} as rewrites "
            f"(median edit distance {revision['edit_distance']['all'].get('median', 0):.3f}).")


def _pair_distributions(path: Path) -> bytes:
    from pairforge.pairs.filters import word_count

    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for column, color in (("chosen", _COLORS[2]), ("rejected", _COLORS[3])):
        text = pl.col(column) if frame.schema[column] == pl.String else pl.col(column).list.last().struct.field(
            "content")
        axes[0].hist(frame.select(word_count(text)).to_series().to_numpy(), bins=30, alpha=0.6, color=color,
                     label=column)
    axes[0].set_title("answer length (words)")
    axes[0].legend()
    for ax, column in zip(axes[1:], ("margin", "difficulty"), strict=True):
        if column in frame.columns:
            ax.hist(frame[column].drop_nulls().to_numpy(), bins=20, color=_COLORS[0])
        ax.set_title(column)
    return _png(fig)


def _sources(files: list[Path]) -> Section | None:
    judged = [_json(f) for f in files if f.name == "judge.summary.json"]
    ranked = [_json(f) for f in files if f.name == "ranking.json"]
    if not judged and not ranked:
        return None
    section = Section("sources", "Sources: judge and strength")
    for summary in judged:
        section.tables.append((["source", "answers", "scored", f"mean ({summary['judge']})"],
                               [[name, str(s["answers"]), str(s["scored"]), number(s["mean"])]
                                for name, s in summary["per_source"].items()]))
        if summary.get("p_first_shown_wins") is not None:
            section.paragraphs.append(f"The answer shown first won {summary['p_first_shown_wins']:.2f} of the time "
                                      "(0.5 = no position bias); every comparison was asked in both orders.")
    for ranking in ranked:
        section.tables.append((["source", "strength", "interval", "P(above next)", "significant"],
                               [[s["name"], f"{s['strength']:+.3f}", f"[{s['low']:+.3f}, {s['high']:+.3f}]",
                                 number(a["probability"]) if a else "", ("yes" if a["significant"] else "no") if a
                                 else ""] for s, a in zip(ranking["sources"], [*ranking["adjacent"], None],
                                                          strict=True)]))
        section.paragraphs.append(f"Significant order: {ranking['rank'] or 'none'} ({ranking['prompts']} prompts).")
        check = ranking.get("declared_check")
        if check:
            section.paragraphs.append(f"Declared order {check['declared']}: confirmed "
                                      f"{', '.join(check['confirmed']) or 'nothing'}; not confirmed: "
                                      f"{', '.join(check['not_confirmed']) or 'nothing'}.")
        fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(ranking["sources"])))
        strengths = ranking["sources"][::-1]
        ax.errorbar([s["strength"] for s in strengths], range(len(strengths)),
                    xerr=[[s["strength"] - s["low"] for s in strengths],
                          [s["high"] - s["strength"] for s in strengths]],
                    fmt="o", color=_COLORS[4], capsize=3)
        ax.set_yticks(range(len(strengths)), [s["name"] for s in strengths])
        ax.set_title("source strength (Bradley-Terry log-strength, 95% interval)")
        section.figures.append(("source-strength", _png(fig)))
    return section


def _training(files: list[Path]) -> Section | None:
    runs = [f.parent for f in files if f.name == "run.json" and (f.parent / "metrics.jsonl").exists()]
    if not runs:
        return None
    section = Section("training", "Training")
    rows = []
    for run in runs:
        info = _json(run / "run.json")
        metrics = read_log(run / "metrics.jsonl")
        train = [m for m in metrics if "train/loss" in m]
        evals = [m for m in metrics if "eval/loss" in m]
        method = info["config"]["method"]
        final = evals[-1] if evals else {}
        rows.append([run.name, str(method), str(train[-1]["step"] if train else 0), number(train[0]["train/loss"])
                     if train else "-", number(train[-1]["train/loss"]) if train else "-",
                     number(final.get("eval/rewards/accuracies"))])
        if train:
            section.figures.append((f"training-{run.name}", _training_plot(run.name, train, evals)))
    section.tables.insert(0, (["run", "method", "steps", "first loss", "last loss", "eval accuracy"], rows))
    section.paragraphs.append("Loss, reward margin and accuracy per pair type; dashed lines mark curriculum stages.")
    return section


def _training_plot(name: str, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> bytes:
    steps = [m["step"] for m in train]
    types = sorted({k.rsplit("/", 1)[1] for m in train for k in m if k.startswith("train/loss/")})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, key in zip(axes, ("loss", "rewards/margins", "rewards/accuracies"), strict=True):
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
    boards = [f for f in files if f.name == "leaderboard.json"]
    if not boards:
        return None
    section = Section("evaluation", "Evaluation")
    for path in boards:
        board = _json(path)
        models = board["models"]
        pairwise = board["judge"] != "similarity"
        key = "win_rate" if pairwise else "score"
        header = ["model", "win rate [95%]", "LC win rate [95%]"] if pairwise else ["model", "similarity [95%]"]
        rows = []
        for m in models:
            cells = [m["model"], interval(m.get(key))]
            if pairwise:
                cells.append(interval(m.get("length_controlled_win_rate")))
            nxt = m.get("vs_next")
            cells += [f"{m['mean_length']:.0f} ({m['reference_length']:.0f})", str(m["unjudged"]),
                      f"{nxt['difference']:+.3f}, p = {nxt['p_value']:.3f}" if nxt else "",
                      difference(m["vs_baseline"]) if "vs_baseline" in m else ""]
            rows.append(cells)
        section.tables.append(([*header, "words (reference)", "unjudged", "vs next row", "vs base [95%]"], rows))
        section.paragraphs.append(f"{board['judge']} judge against {Path(board['reference']).name}, "
                                  f"{board['prompts']} prompts; ties count half. " + _significance(models))
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
        names = [m["model"] for m in models if key in m]
        for offset, (metric, color) in enumerate(((key, _COLORS[0]), ("length_controlled_win_rate", _COLORS[1]))):
            values = [m[metric] for m in models if metric in m]
            if not values:
                continue
            y = [i + 0.2 * offset for i in range(len(values))]
            axes[0].errorbar([v["value"] for v in values], y, xerr=[[v["value"] - v["low"] for v in values],
                                                                     [v["high"] - v["value"] for v in values]],
                             fmt="o", color=color, capsize=3, label=metric.replace("_", " "))
        axes[0].set_yticks(range(len(names)), names)
        if pairwise:
            axes[0].axvline(0.5, linestyle=":", color="grey")
        axes[0].legend(fontsize=7)
        axes[0].set_title(f"{key.replace('_', ' ')} with 95% intervals")
        axes[1].scatter([m["mean_length"] for m in models if key in m], [m[key]["value"] for m in models if key in m],
                        color=_COLORS[2])
        for m in models:
            if key in m:
                axes[1].annotate(m["model"], (m["mean_length"], m[key]["value"]), fontsize=8)
        axes[1].set_xlabel("mean answer length (words)")
        axes[1].set_title(f"length vs {key.replace('_', ' ')}")
        section.figures.append((f"evaluation-{path.parent.name}", _png(fig)))
    return section


def _significance(models: list[dict[str, Any]]) -> str:
    notes = [significance(m["model"], m["vs_baseline"]) for m in models if "vs_baseline" in m]
    for m in models:
        if m.get("vs_next"):
            p = m["vs_next"]["p_value"]
            verdict = "significant" if p < 0.05 else "not significant at this size"
            notes.append(f"{m['model']} vs {m['vs_next']['model']}: {verdict} (p = {p:.3f})")
    return "; ".join(notes) + "." if notes else ""


def _reproduce(files: list[Path]) -> Section:
    section = Section("reproduce", "Settings and versions")
    configs = {str(f): _json(f).get("config") for f in files if f.name in ("run.json", "leaderboard.json") or
               f.name.endswith(".summary.json")}
    section.paragraphs.append("<pre>" + html.escape(json.dumps({k: v for k, v in configs.items() if v}, indent=1))
                              + "</pre>")
    versions = [[name, _version(name)] for name in ("pairforge", "torch", "transformers", "accelerate", "peft",
                                                     "polars", "openai")]
    section.tables.append((["package", "version"], [["python", platform.python_version()], *versions]))
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
        parts += [f"<p>{p if p.startswith('<pre>') else html.escape(p)}</p>" for p in s.paragraphs]
        for header, rows in s.tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")
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
        for p in s.paragraphs:
            lines += [p.removeprefix("<pre>").removesuffix("</pre>").join(["```json\n", "\n```"])
                      if p.startswith("<pre>") else p, ""]
        for header, rows in s.tables:
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in rows), ""]
        for name, png in s.figures:
            (images / f"{name}.png").write_bytes(png)
            lines += [f"![{name}]({images.name}/{name}.png)", ""]
    write_atomically(out, lambda tmp: tmp.write_text("\n".join(lines), encoding="utf-8"))


def _png(fig: Any) -> bytes:
    import io

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


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
