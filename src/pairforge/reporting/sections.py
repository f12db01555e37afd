"""The report's sections: what the stages wrote, found under the given folders, as titled text, tables and
figures (page.py writes them; plots.py draws the figures).

`pairforge report PATH...` looks through the given folders for what the stages wrote and gives each a
section: pairs (`*.summary.json` of `pairs build`, and its pairs file), sources (`judge.summary.json`,
`ranking.json`), cost (`generate.summary.json`, `revise.summary.json`, an LLM judge's usage), training (`run.json` +
`metrics.jsonl` per run) and evaluation (`leaderboard.json` + `eval.parquet`). The page ends with the exact settings
found and the library versions, so a run can be reproduced. Sections without artifacts are left out, and the page
says which ones were found.

Each kind of file is read through its stage's typed result (`PairsSummary`, `TrainResult`, `Leaderboard`,
`Ranking`, `JudgeSummary`), whose `read` checks the whole file: a hand-edited file is one line naming the file and the
field expected, never a traceback.
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pairforge import render
from pairforge.errors import InputError
from pairforge.evaluation.leaderboard import Leaderboard
from pairforge.judging.ranking import Ranking
from pairforge.judging.summary import JudgeSummary
from pairforge.layout import GENERATE_SUMMARY, JUDGE_SUMMARY, LEADERBOARD, METRICS, RANKING, REVISE_SUMMARY, RUN_INFO
from pairforge.pairs.summary import PairsSummary, RevisionStats
from pairforge.render import Grid
from pairforge.reporting import plots
from pairforge.requests.usage import Usage, UsageSummary
from pairforge.training.result import TrainResult, read_metrics


@dataclass
class PageSection:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    code: str | None = None  # raw JSON: escaped inside <pre> on the page, as it is in a Markdown ```json block
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (name, PNG bytes)
    tables: list[Grid] = field(default_factory=list)


def report_sections(paths: list[Path], files: list[Path]) -> list[PageSection]:
    """A section per kind of artifact among `files` (found under `paths`), and the settings and versions last."""
    sections = [s for s in (_rounds(files), _pairs(files), _sources(files), _costs(files), _training(files),
                            _evaluation(files)) if s]
    if not sections:
        raise InputError(", ".join(map(str, paths)), "nothing to report: expected pairs summaries, training runs "
                         "(run.json + metrics.jsonl), judge/rank or eval outputs")
    sections.append(_reproduce(files))
    return sections


def _pairs(files: list[Path]) -> PageSection | None:
    summaries = [(f, _json(f)) for f in files if f.name.endswith(".summary.json")]
    summaries = [(f, PairsSummary.from_json(s, where=str(f))) for f, s in summaries
                 if isinstance(s, dict) and "pairs" in s and "dropped_answers" in s]
    if not summaries:
        return None
    section = PageSection("pairs", "Pairs")
    for path, summary in summaries:
        splits = summary.pairs  # train, eval and, when kept apart, judge
        section.tables.append(render.pair_counts(summary))
        section.paragraphs.append(f"{_label(path)}: " + ", ".join(f"{summary.total(split)} {split}" for split in
                                                              splits) + f" pairs ({summary.strategy}).")
        if summary.revision is not None:
            section.paragraphs.append(_revision_paragraph(summary.revision))
            section.tables.append(render.revisions(summary.revision))
            name = f"revisions-{_label(path.with_suffix(''))}"
            section.figures.append((name, plots.revision_histogram(summary.revision)))
        section.figures.append((f"pairs-counts-{_label(path.with_suffix(''))}", plots.pair_counts(summary)))
        pairs_file = Path(summary.outputs.get("train", ""))
        if pairs_file.is_file():
            name = f"pairs-distributions-{_label(path.with_suffix(''))}"
            section.figures.append((name, plots.pair_distributions(pairs_file)))
    return section


def _revision_paragraph(revision: RevisionStats) -> str:
    return (f"{revision.reviser} revised {revision.revisions} of {revision.original}'s answers: "
            f"{revision.kept} kept with a token-level edit distance in ({revision.min_edit}, "
            f"{revision.max_edit}], {revision.no_op} dropped as no-op, {revision.rewrite} as rewrites "
            f"(median edit distance {revision.median_edit:.3f}).")


def _sources(files: list[Path]) -> PageSection | None:
    judged = [JudgeSummary.read(f) for f in files if f.name == JUDGE_SUMMARY]
    ranked = [Ranking.read(f) for f in files if f.name == RANKING]
    if not judged and not ranked:
        return None
    section = PageSection("sources", "Sources: judge and strength")
    for summary in judged:
        section.tables.append(render.judge_summary(summary))
        if summary.p_first_shown_wins is not None:
            section.paragraphs.append(render.position_bias(summary) + "; every comparison was asked in both orders.")
    for ranking in ranked:
        section.tables.append(render.ranking(ranking, "the judge's verdicts"))
        section.paragraphs.append(render.significant_order(ranking))
        if ranking.declared_check:
            section.paragraphs.append(render.declared_check(ranking.declared_check))
        section.figures.append(("source-strength", plots.source_strength(ranking)))
    return section


def _costs(files: list[Path]) -> PageSection | None:
    """Every model the run asked: its tokens and cost (generate.summary.json, revise.summary.json, an LLM judge's
    judge.summary.json and leaderboard.json)."""
    spent: dict[str, Usage] = {}
    for f in files:
        where = f"{_round(f)}-" if _round(f) else ""
        if f.name in (GENERATE_SUMMARY, REVISE_SUMMARY):
            stage = f.name.split(".")[0]
            spent.update({f"{where}{stage}: {name}": u for name, u in UsageSummary.read(f).sources.items()})
        elif f.name == JUDGE_SUMMARY and (judged := JudgeSummary.read(f).usage) is not None:
            spent[f"{where}judge"] = judged
        elif f.name == LEADERBOARD and (judged := Leaderboard.read(f).judge_summary.usage) is not None:
            spent[f"{where}eval judge" + (f" ({f.parent.name})" if f.parent.name != "eval" else "")] = judged
    grid = render.usage("tokens and cost", spent, total=True)
    if grid is None:
        return None
    section = PageSection("cost", "Cost")
    section.tables.append(grid)
    section.paragraphs.append("Prompt and completion tokens of every answer in the store for this run's requests, "
                              "cached ones included (what the data cost, not only this run's requests); cost at each "
                              "source's `price` (USD per million tokens), - without one. Answers stored before "
                              "pairforge counted prompt tokens are counted as unknown.")
    return section


def _training(files: list[Path]) -> PageSection | None:
    runs = [TrainResult.read(f.parent) for f in files if f.name == RUN_INFO and (f.parent / METRICS).exists()]
    if not runs:
        return None
    section = PageSection("training", "Training")
    rows = []
    for run in runs:
        train, evals = run.train_rows, run.eval_rows
        final = evals[-1] if evals else {}
        first, last = (train[0]["train/loss"], train[-1]["train/loss"]) if train else (None, None)
        rows.append([_label(run.out), str(run.info.method), str(train[-1]["step"] if train else 0),
                     render.number(first), render.number(last), render.number(final.get("eval/rewards/accuracies"))])
        if train:
            section.figures.append((f"training-{_label(run.out)}", plots.training(_label(run.out), train, evals)))
    section.tables.insert(0, Grid("training runs", ["run", "method", "steps", "first loss", "last loss",
                                                    "eval accuracy"], rows))
    section.paragraphs.append("Loss, reward margin and accuracy per pair type; dashed lines mark curriculum stages. "
                              "Plain SFT trains on its target alone: its margin and accuracy are the held-out "
                              "pairs' (eval points).")
    return section


def _evaluation(files: list[Path]) -> PageSection | None:
    boards = [f for f in files if f.name == LEADERBOARD]
    if not boards:
        return None
    section = PageSection("evaluation", "Evaluation")
    for path in boards:
        board = Leaderboard.read(path)
        section.tables += [t for t in (render.leaderboard(board), render.comparisons(board)) if t is not None]
        section.paragraphs.append(f"{board.judge} judge against {Path(board.reference).name}, "
                                  f"{board.prompts} prompts; ties count half. " +
                                  "; ".join(render.leaderboard_notes(board)))
        section.figures.append((f"evaluation-{_label(path.parent)}", plots.evaluation(board)))
    return section


def round_entries(files: list[Path]) -> list[render.RoundRow]:
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
        entries.append(render.RoundRow(folder.name, PairsSummary.read(summary) if summary.exists() else None,
                                    Leaderboard.read(board), margins))
    return entries


def _rounds(files: list[Path]) -> PageSection | None:
    """An iterative run: every round's pairs, margins and scores side by side, and the scores by round."""
    entries = round_entries(files)
    if not entries:
        return None
    section = PageSection("rounds", "Rounds")
    section.tables.append(render.rounds(entries))
    section.paragraphs.append("Each round trains on pairs that include the previous round's model's own answers; "
                              "every round is evaluated on the same held-out prompts against the same base model.")
    section.figures.append(("rounds", plots.rounds(entries)))
    return section


def _reproduce(files: list[Path]) -> PageSection:
    section = PageSection("reproduce", "Settings and versions")
    found = {str(f): _json(f) for f in files if f.name in (RUN_INFO, LEADERBOARD) or f.name.endswith(".summary.json")}
    configs = {name: data.get("config") for name, data in found.items() if isinstance(data, dict)}
    section.code = json.dumps({k: v for k, v in configs.items() if v}, indent=1)
    versions = [[name, _version(name)] for name in ("pairforge", "torch", "transformers", "accelerate", "peft",
                                                     "polars", "openai")]
    section.tables.append(Grid("versions", ["package", "version"], [["python", platform.python_version()], *versions]))
    return section


def _label(path: Path) -> str:
    """A file's or run's name, with its round when it belongs to one (round-2-dpo): names stay unique in an
    iterative run, where every round has a pairs file, an sft run, an eval..."""
    round_ = _round(path)
    return f"{round_}-{path.name}" if round_ else path.name


def _round(path: Path) -> str | None:
    """The round a file or run belongs to (round-2), None outside an iterative run's rounds."""
    return next((p.name for p in path.parents if re.fullmatch(r"round-\d+", p.name)), None)


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
