"""The data stages from Python: `generate`, `revise`, `judge` and `rank` on a run folder, as their commands run
them (the recipe checked against the folder, the folder held while they write). Each returns its stage's result
with the paths it wrote; a request that failed is kept in the store and counted there (`.failed`), not raised.

`shard="K/N"` (generate, revise, an LLM judge) asks only the prompts of shard K of N into the folder's
`shards/K-of-N.sqlite` and writes no output: the result's path is that store and its counts are the shard's.
Shards of one folder run at once (on other machines too); the call without `shard` merges them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pairforge.api.folders import recipe_for, writing
from pairforge.layout import RunDir
from pairforge.recipe import Recipe
from pairforge.requests.shards import Shard, chosen

if TYPE_CHECKING:
    from pairforge.costs import Estimate
    from pairforge.generation.summary import GenerationSummary
    from pairforge.judging.scoring import JudgeResult
    from pairforge.rank_stage import Ranked
    from pairforge.revision import RevisionSummary


def generate(recipe: Recipe | str | Path, out: str | Path = ".", *, retry_failed: bool = False,
             sources: list[str] | None = None, dtype: str | None = None, shard: str | Shard | None = None
             ) -> GenerationSummary:
    """Answer the recipe's prompts with every source (or only `sources`) into `<out>/responses.parquet`; resumes
    where it stopped (answers cached in `<out>/store.sqlite`). `dtype` sets the weights of every local source."""
    from pairforge.generation.answers import generate as answer_prompts

    out, part = Path(out), chosen(shard)
    cfg = recipe_for(recipe, out, dtype)
    with writing(out, shard=part):
        return answer_prompts(cfg, out, retry_failed, sources, shard=part)


def generate_estimate(recipe: Recipe | str | Path, out: str | Path = ".", *, sources: list[str] | None = None,
                      dtype: str | None = None, shard: str | Shard | None = None) -> Estimate:
    """`generate --dry-run`: the sources checked as `generate` checks them, every API server they ask pinged once (one
    that does not answer is an InputError naming the source), and what generating will ask (`estimate`). Writes
    nothing."""
    from pairforge.api.recipes import estimate
    from pairforge.generation.answers import checked_sources
    from pairforge.pipeline import ping_servers

    part = chosen(shard)
    cfg = recipe_for(recipe, Path(out), dtype)
    names = checked_sources(cfg, sources)
    ping_servers([s for s in cfg.sources if s.name in names])
    return estimate(cfg, ("generate",), names, part)


def revise(recipe: Recipe | str | Path, out: str | Path = ".", *, responses: str | Path | None = None,
           retry_failed: bool = False, shard: str | Shard | None = None) -> RevisionSummary:
    """The reviser's minimal edits of the original source's answers (`pairs.revision`) into
    `<out>/revisions.parquet`."""
    from pairforge.revision import revise as revise_answers

    out, part = Path(out), chosen(shard)
    cfg = recipe_for(recipe, out)
    with writing(out, shard=part):
        return revise_answers(cfg, out, Path(responses) if responses else None, retry_failed, shard=part)


def judge(recipe: Recipe | str | Path, out: str | Path = ".", *, responses: str | Path | None = None,
          retry_failed: bool = False, shard: str | Shard | None = None) -> JudgeResult:
    """Score the answers (reward model, similarity) or compare them pairwise (an LLM judge, both orders) into
    `<out>/responses.scored.parquet` (and `judgments.parquet`)."""
    from pairforge.judging.scoring import judge as judge_answers

    out, part = Path(out), chosen(shard)
    cfg = recipe_for(recipe, out)
    with writing(out, shard=part):
        return judge_answers(cfg, out, Path(responses) if responses else None, retry_failed, shard=part)


def rank(recipe: Recipe | str | Path, out: str | Path = ".") -> Ranked:
    """Source strength (Bradley-Terry with bootstrap intervals) from the judge's verdicts in `out`, written to
    `<out>/ranking.json`; `.ranking` holds the fit."""
    from pairforge.rank_stage import rank as rank_sources

    out = Path(out)
    cfg = recipe_for(recipe, out)
    with writing(out):
        return rank_sources(cfg, RunDir(out))
