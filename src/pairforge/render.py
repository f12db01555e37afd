"""Every table pairforge shows, built once from the stages' JSON outputs, and shown in the terminal (rich)
and in the report (HTML/Markdown) from the same rows — so the two never disagree.

A `Grid` is a title, column names and rows of strings; `terminal()` turns one into a rich table. Numbers
look the same everywhere: three decimals, intervals as '0.612 [0.540, 0.690]', differences signed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from pairforge.generation.summary import GenerationSummary
from pairforge.pairs.summary import PairsSummary, RevisionStats
from pairforge.requests.usage import Usage
from pairforge.revision import RevisionSummary

if TYPE_CHECKING:  # the stages' results: read here by attribute, imported by their stages
    from pairforge.costs import Estimate
    from pairforge.evaluation.leaderboard import Leaderboard, Versus
    from pairforge.evaluation.stats import Interval
    from pairforge.judging.ranking import DeclaredCheck, Ranking
    from pairforge.judging.summary import JudgeSummary
    from pairforge.stage_unit import StageRun


@dataclass
class Grid:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    left: int = 1  # how many leading columns are text (left-aligned); the rest are numbers


def terminal(grid: Grid) -> Table:
    table = Table(title=grid.title, title_justify="left")
    for i, column in enumerate(grid.columns):
        table.add_column(column, justify="left" if i < grid.left else "right", no_wrap=i == 0)
    for row in grid.rows:
        table.add_row(*row)
    return table


# --- numbers ------------------------------------------------------------------------------------------

def number(value: float | None) -> str:
    """Three decimals, '-' for a missing value."""
    return "-" if value is None else f"{value:.3f}"


def interval(value: Interval | None) -> str:
    """A value with its interval as '0.612 [0.540, 0.690]', '-' when absent."""
    return "-" if not value else f"{value.value:.3f} [{value.low:.3f}, {value.high:.3f}]"


def difference(versus: Versus) -> str:
    """A paired difference with its interval as '+0.034 [+0.012, +0.055]'."""
    return f"{versus.difference:+.3f} [{versus.low:+.3f}, {versus.high:+.3f}]"


def p_value(p: float) -> str:
    """'p = 0.042', or 'p < 0.001' (a test on a finite number of resamples or sign flips never shows 0)."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def significance(model: str, versus: Versus) -> str:
    """One sentence on a paired difference: better or worse when its test says significant, in its direction."""
    verdict = ("not significantly different from" if not versus.significant else
               "significantly better than" if versus.difference > 0 else "significantly worse than")
    return (f"{model} is {verdict} {versus.model}: {difference(versus)} (95% interval, "
            f"{p_value(versus.p_value)}, {versus.prompts} prompts)")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def sparkline(values: Any) -> str:
    """A 10-bin histogram of values in [0, 1] as block characters."""
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=10, range=(0, 1))
    return bars(counts.tolist())


def bars(counts: list[int], width: int = 10) -> str:
    """A histogram's counts as one line of block characters, neighbouring bins summed to at most `width`."""
    group = max(1, -(-len(counts) // width))
    counts = [sum(counts[i : i + group]) for i in range(0, len(counts), group)]
    blocks = " ▁▂▃▄▅▆▇█"
    top = max(counts, default=0)
    return "".join(blocks[round(8 * c / top)] if top else " " for c in counts)


# --- pairs --------------------------------------------------------------------------------------------

def pair_counts(summary: PairsSummary) -> Grid:
    """Pairs per type in each split (train, eval and, when kept apart, judge)."""
    splits = summary.pairs
    grid = Grid(f"pairs ({summary.strategy})", ["pair type", *splits])
    for pair_type in summary.pair_types:
        grid.rows.append([pair_type, *(str(counts.get(pair_type, 0)) for counts in splits.values())])
    grid.rows.append(["total", *(str(summary.total(split)) for split in splits)])
    return grid


def pair_drops(summary: PairsSummary) -> Grid:
    grid = Grid("dropped", ["what", "reason", "count"], left=2)
    grid.rows += [["answers", reason, str(n)] for reason, n in summary.dropped_answers.items()]
    grid.rows += [["pairs" if reason.startswith("pairs") else "prompts", reason, str(n)]
                  for reason, n in summary.dropped_prompts.items() if n]
    grid.rows += [["pairs", reason, ", ".join(f"{t}: {n}" for t, n in per_type.items())]
                  for reason, per_type in summary.dropped_pairs.items()]
    return grid


def pair_verification(summary: PairsSummary) -> Grid | None:
    if summary.verification is None:
        return None
    keys = ("candidates", "agree", "contradicted", "tied", "unscored")
    grid = Grid("verification (scores vs declared order)", ["pair type", *keys, "disagreement"])
    grid.rows += [[pair_type, *(str(getattr(s, k)) for k in keys), f"{s.disagreement_rate:.1%}"]
                  for pair_type, s in summary.verification.items()]
    return grid


def revisions(revision: RevisionStats) -> Grid:
    """The revised strategy's edit distances (all revisions, and those kept) and what was dropped."""
    title = (f"revisions by {revision.reviser} of {revision.original}'s answers: edit distance (tokens); "
             f"kept in ({revision.min_edit}, {revision.max_edit}]: {revision.kept}, dropped as no-op: "
             f"{revision.no_op}, as rewrites: {revision.rewrite}")
    grid = Grid(title, ["revisions", "n", "min", "q1", "median", "q3", "max", "histogram 0..1"])
    for name in ("all", "kept"):
        d = revision.edit_distance[name]
        cells = [number(getattr(d, k)) for k in ("min", "q1", "median", "q3", "max")]
        grid.rows.append([name, str(d.n), *cells, bars(d.histogram)])
    return grid


def pair_lengths(summary: PairsSummary) -> Grid:
    lengths = summary.lengths
    grid = Grid(f"length ({lengths.unit}): chosen vs rejected",
                ["pair type", "pairs", "chosen mean / p90", "rejected mean / p90", "chosen longer"])
    for name, s in [*lengths.per_pair_type.items(), ("all", lengths.all)]:
        chosen, rejected = s.chosen, s.rejected
        grid.rows.append([name, str(s.pairs), f"{chosen.mean:.1f} / {chosen.p90:.0f}",
                          f"{rejected.mean:.1f} / {rejected.p90:.0f}", f"{s.chosen_longer_rate:.0%}"])
    return grid


def pairs_summary(summary: PairsSummary) -> list[Grid]:
    """The summary of `pairs build`: counts, drops (when any), verification (when verified), lengths."""
    drops = pair_drops(summary)
    revised = revisions(summary.revision) if summary.revision is not None else None
    return [g for g in (pair_counts(summary), drops if drops.rows else None, revised, pair_verification(summary),
                        pair_lengths(summary)) if g is not None]


# --- evaluation -----------------------------------------------------------------------------------------

def leaderboard(board: Leaderboard) -> Grid:
    """Score or win rate with interval (as the board's measure shows them), lengths, the paired test against the
    next row and against the baseline (the untrained base) when there is one."""
    shown, against = board.measure.shown, board.baseline
    grid = Grid(f"{board.judge} vs reference, {board.prompts} prompts",
                ["model", *(header for _, header in shown), "words (ref)", "unjudged", "vs next (p)",
                 *([f"vs {against} [95%]"] if against else [])])
    for entry in board.models:
        nxt = entry.vs_next
        cells = [entry.label, *(interval(getattr(entry, key)) for key, _ in shown),
                 f"{entry.mean_length:.0f} ({entry.reference_length:.0f})", str(entry.unjudged),
                 f"{nxt.difference:+.3f} ({p_value(nxt.p_value)})" if nxt else ""]
        if against:
            cells.append(difference(entry.vs_baseline) if entry.vs_baseline else "")
        grid.rows.append(cells)
    return grid


def comparisons(board: Leaderboard) -> Grid | None:
    """With seeded runs: every two ranked rows (runs as the mean over their seeds), the upper one minus the lower,
    each a paired test pooled over prompts and seeds; None without seeds."""
    if not board.comparisons:
        return None
    grid = Grid(f"{board.measure.label} differences, pooled over prompts and seeds",
                ["model", "vs", "difference [95%]", "p", "prompts"], left=2)
    grid.rows += [[c.model, c.versus.model, difference(c.versus), p_value(c.versus.p_value).removeprefix("p = "),
                   str(c.versus.prompts)] for c in board.comparisons]
    return grid


_LC_GAP = 0.1  # AlpacaEval 2 warns likewise when its length-controlled win rate strays far from the raw one


def leaderboard_notes(board: Leaderboard) -> list[str]:
    """What the leaderboard's numbers mean, one sentence each: prompts left unjudged, each model against the
    baseline, and whether each gap to the next row is significant."""
    notes = []
    for entry in board.models:
        if entry.unjudged:
            notes.append(f"{entry.model}: {entry.unjudged} of {entry.prompts} prompts got no usable verdict "
                         "and are left out of its numbers")
    for entry in board.models:
        raw, controlled = entry.win_rate, entry.length_controlled_win_rate
        if raw and controlled and abs(controlled.value - raw.value) > _LC_GAP:
            notes.append(f"{entry.model}: the length-controlled win rate ({controlled.value:.3f}) is "
                         f"{controlled.value - raw.value:+.3f} from the raw one ({raw.value:.3f}): length "
                         "explains much of its verdicts, or its lengths barely overlap the reference's (then the "
                         "length-controlled value is an extrapolation): read both")
    notes += [significance(e.model, e.vs_baseline) for e in board.models if e.vs_baseline]
    for entry in board.models:
        if nxt := entry.vs_next:
            verdict = (("better" if nxt.difference > 0 else "worse") + f" on the {nxt.prompts} prompts both "
                       "were judged on" if nxt.significant else "not significantly different at this size")
            notes.append(f"{entry.model} vs {nxt.model}: {verdict} ({p_value(nxt.p_value)})")
    return notes


# --- sources ----------------------------------------------------------------------------------------------

def judge_summary(summary: JudgeSummary) -> Grid:
    grid = Grid(f"judge: {summary.judge}", ["source", "answers", "scored",
                                            "win rate" if summary.pairwise else "mean score", "std"])
    grid.rows += [[name, str(s.answers), str(s.scored), number(s.mean), number(s.std)]
                  for name, s in summary.per_source.items()]
    return grid


def position_bias(summary: JudgeSummary) -> str:
    return (f"{summary.comparisons} comparisons, {summary.unreadable} unreadable (left out), "
            f"{summary.verdicts_from_logprobs} verdicts from log-probs; the answer shown first wins "
            f"{number(summary.p_first_shown_wins)} of the time (0.5 = no position bias)")


def ranking(result: Ranking, evidence: str) -> Grid:
    """Source strength from ranking.json: rank, strength with interval, P(above next), P(beats next)."""
    grid = Grid(f"source strength (Bradley-Terry, {result.prompts} prompts, {result.comparisons} comparisons "
                f"from {evidence})", ["rank", "source", "strength", f"{result.confidence:.0%} interval",
                                      "P(above next)", "P(beats next)"], left=2)
    below = [*result.adjacent, None]
    for i, (s, nxt) in enumerate(zip(result.sources, below, strict=True)):
        grid.rows.append([str(i + 1), s.name, f"{s.strength:+.3f}", f"[{s.low:+.3f}, {s.high:+.3f}]",
                          f"{nxt.probability:.3f}" + (" *" if nxt.significant else "") if nxt else "",
                          f"{nxt.win_probability:.3f}" if nxt else ""])
    return grid


def significant_order(result: Ranking) -> str:
    return (f"significant order (* : two-sided at {1 - result.confidence:.2g} over all pairs (Holm) and P(beats) "
            f">= {result.min_win_probability}): {result.rank or '(none)'}")


def declared_check(check: DeclaredCheck) -> str:
    """Which of the recipe's declared strength orders the judge's ranking confirms."""
    confirmed = ", ".join(check.confirmed) or "nothing"
    line = f"declared order {check.declared}: the judge's ranking confirms {confirmed}"
    if check.not_confirmed:
        line += f"; not confirmed: {', '.join(check.not_confirmed)}"
    if check.not_judged:
        line += f"; not judged (the judge's reference): {', '.join(check.not_judged)}"
    return line


def generation(summary: GenerationSummary) -> Grid:
    """What happened to each source's requests."""
    grid = Grid("generate", ["source", "answers", "cached", "new", "failed", "retries", "tok/s"])
    grid.rows += [[name, str(t.total), str(t.cached), str(t.done), str(t.failed + t.failed_before), str(t.retries),
                   f"{t.tokens_per_s:.1f}" if t.done else "-"] for name, t in summary.tallies.items()]
    return grid


def revising(summary: RevisionSummary) -> Grid:
    """What the reviser did and the edit distances of the revisions that came back."""
    tally, distances = summary.tally, summary.edit_distance
    grid = Grid("revise", ["answers", "cached", "new", "failed", "retries", "edit distance q1 / median / q3",
                           "histogram 0..1"], left=0)
    quartiles = " / ".join(number(getattr(distances, k)) for k in ("q1", "median", "q3")) if distances.n else "-"
    grid.rows.append([str(tally.total), str(tally.cached), str(tally.done), str(summary.failed),
                      str(tally.retries), quartiles, bars(distances.histogram)])
    return grid


# --- tokens and cost ---------------------------------------------------------------------------------

USAGE_NOTE = "every stored answer of these requests, cached ones included: what the data cost"


def dollars(value: float | None) -> str:
    """USD with cents, hundredths of a cent below a dollar; '-' without a price."""
    return "-" if value is None else f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def usage(title: str, sources: dict[str, Usage], total: bool = False) -> Grid | None:
    """Each source's tokens and cost (and their total); prompt tokens of answers stored before they were counted
    are unknown."""
    if not sources:
        return None
    grid = Grid(f"{title} ({USAGE_NOTE})", ["source", "answers", "prompt tokens", "completion tokens", "cost (USD)"])
    rows = dict(sources)
    if total:
        rows["total"] = Usage.total(list(sources.values()))
    for name, u in rows.items():
        unknown = f" + {u.unknown} answers unknown" if u.unknown else ""  # stored before prompts were counted
        grid.rows.append([name, str(u.answers), f"{u.prompt_tokens}{unknown}", str(u.completion_tokens),
                          ("≥" if u.unknown and u.cost is not None else "") + dollars(u.cost)])
    return grid


def estimate(result: Estimate) -> tuple[Grid, str]:
    """The dry run's estimate per stage and source, and the line that says how it was made."""
    rounds = f" of round 1 of {result.rounds} (later rounds: the '@round' sources and what follows)" \
        if result.rounds > 1 else ""
    grid = Grid(f"estimate{rounds}: requests, tokens, cost", ["stage", "source", "requests", "prompt tokens",
                                                                "completion tokens (at most)", "cost (USD, at most)"],
                left=2)
    for line in result.lines:
        grid.rows.append([line.stage, line.source, str(line.requests), ("" if line.counted else "≈") +
                          str(line.prompt_tokens), str(line.completion_tokens), dollars(line.cost)])
    grid.rows.append(["total", "", str(sum(x.requests for x in result.lines)),
                      ("" if all(x.counted for x in result.lines) else "≈") +
                      str(sum(x.prompt_tokens for x in result.lines)),
                      str(sum(x.completion_tokens for x in result.lines)), dollars(result.cost)])
    return grid, ("prompt tokens counted with each local model's tokenizer; ≈: a server's model, estimated as "
                  "characters / 4; completions at max_new_tokens (an upper bound); answers not written yet (what "
                  "a reviser or judge reads) at their source's max_new_tokens; cost = tokens x price / 1e6, - "
                  "without a `price`; answers already in the store are not asked again and are not subtracted")


# --- the pipeline and the curriculum ------------------------------------------------------------------

def plan(title: str, stages: list[Any]) -> Grid:
    """The stages of `pairforge run` (`stage_unit.StageUnit`) with their sizes and rough estimates."""
    grid = Grid(title, ["stage", "what", "size", "estimate"], left=3)
    grid.rows += [[s.name, s.what, s.size, duration(s.estimate_s)] for s in stages]
    known = [s.estimate_s for s in stages if s.estimate_s is not None]
    grid.rows.append(["total", "", "", ("~" if len(known) < len(stages) else "") + duration(sum(known)) +
                      " (rough, 2-core CPU)"])
    return grid


def finished(done: list[StageRun], seconds: float) -> Grid:
    grid = Grid(f"done in {duration(seconds)}", ["stage", "status", "time"], left=3)
    grid.rows += [[entry.stage, entry.status, duration(entry.seconds)] for entry in done]
    return grid


def curriculum(title: str, stage_names: list[str], batches: list[list[int]], stages: list[int],
               difficulty: np.ndarray) -> Grid:
    """Each curriculum stage (or bucket): its batches, pairs and difficulty spread."""
    grid = Grid(title, ["stage", "batches", "pairs", "difficulty mean", "min", "max", "histogram (0..1)"])
    for stage, name in enumerate(stage_names):
        rows = [i for batch, s in zip(batches, stages, strict=True) if s == stage for i in batch]
        if rows:
            d = difficulty[rows]
            known = not np.isnan(d).all()  # NaN: a random order of pairs with no difficulty column
            spread = [number(float(f(d))) if known else "-" for f in (np.mean, np.min, np.max)]
            grid.rows.append([name, str(stages.count(stage)), str(len(rows)), *spread, sparkline(d) if known else ""])
    return grid


@dataclass
class RoundRow:
    """One round of an iterative run, as its files say: its pairs summary, leaderboard, and each trained run's
    held-out reward margin at the end of training."""

    name: str
    summary: PairsSummary | None
    board: Leaderboard
    margins: dict[str, float]


def rounds(entries: list[RoundRow]) -> Grid:
    """An iterative run's rounds side by side: the training pairs of each round, every run's held-out reward
    margin, and every model's held-out score with its difference to the base."""
    grid = Grid("rounds", ["round", "pairs", "model", "reward margin", "score [95%]", "vs base [95%]", "p"], left=3)
    for i, r in enumerate(entries):
        pairs = str(r.summary.total("train")) if r.summary else "-"
        for entry in r.board.models:
            if entry.model == "base" and i > 0:
                continue  # the same base every round
            versus = entry.vs_baseline
            grid.rows.append([r.name, pairs, entry.model, number(r.margins.get(entry.model)),
                              interval(r.board.measure.of(entry)), difference(versus) if versus else "",
                              p_value(versus.p_value).removeprefix("p = ") if versus else ""])
    return grid
