"""The docs/ pages: one per stage, listing every recipe field from the pydantic models themselves.

`python -m pairforge.recipe_docs docs/` rewrites them; a test fails when a page is out of date, so the
documented fields are always the validated ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pairforge import config as C
from pairforge import recipe as R
from pairforge import train_config as T

PAGES: dict[str, tuple[str, list[tuple[str, type[BaseModel]]]]] = {
    "generate": ("Generate: prompts answered by every source, cached in store.sqlite (`pairforge generate`). Each "
                 "answer's prompt and completion tokens are stored with it: the summary shows them per source with "
                 "their cost at `price` (generate.summary.json); `--dry-run` pings every API server once and prints "
                 "the estimated requests, tokens and cost, writing nothing.",
                 [("(top level)", R.Recipe), ("sources[]", C.SourceConfig), ("sources[].price", C.Price)]),
    "judge": ("Judge and rank: scores or pairwise verdicts, then Bradley-Terry strength (`pairforge judge`, "
              "`pairforge rank`).", [("judge", C.JudgeConfig), ("judge.llm", C.SourceConfig),
                                      ("ranking", C.RankingConfig)]),
    "pairs": ("Pairs: responses to preference pairs (`pairforge pairs build`).",
              [("pairs", C.PairsConfig), ("pairs.filters", C.FilterConfig),
               ("pairs.revision", C.RevisionConfig)]),
    "train": ("Train: SFT, DPO and relatives, SLiC-HF, reward models, with a curriculum (`pairforge train`; "
              "`runs[]` in a pipeline).", [("train / runs[]", T.RunConfig), ("lora", T.LoraSettings),
                                           ("curriculum", T.CurriculumConfig),
                                           ("curriculum.stages[]", T.CurriculumStage)]),
    "eval": ("Eval: every run judged against reference answers (`pairforge eval`; `eval` in a pipeline).",
             [("eval", C.EvalConfig)]),
    "run": ("Run: the whole recipe end to end (`pairforge run`), resumable; `--quick` shrinks it; `rounds` repeats "
            "it with the trained policy answering again. `--dry-run` prints the plan and the estimated requests, "
            "tokens and cost per stage and source (generate, revise, an LLM judge, eval; `pf.estimate` in Python); "
            "the report's Cost section shows what every source's stored answers cost.",
            [("(top level)", R.Recipe), ("quick", R.QuickConfig)]),
}
# the top-level keys each page lists (the others are sections with their own pages)
_TOP_LEVEL = {"generate": ("run_dir", "prompts", "sources", "samples_per_source"), "run": ("rounds", "round_run")}


def render(stage: str) -> str:
    intro, sections = PAGES[stage]
    lines = [f"# {stage}", "", intro, "", "Generated from the recipe models by `python -m pairforge.recipe_docs "
             "docs/`; do not edit by hand.", ""]
    for title, model in sections:
        lines += [f"## {title}", "", (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "), "",
                  "| field | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            if model is R.Recipe and name not in _TOP_LEVEL[stage]:
                continue
            lines.append(f"| `{name}` | {_type(info.annotation)} | {_default(info)} | "
                         f"{(info.description or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def _type(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("pairforge.config.", "")
    text = text.replace("pairforge.train_config.", "")
    return text.replace("<class '", "").replace("'>", "").replace("|", "or")


def _default(info: Any) -> str:
    if info.default is PydanticUndefined:
        return "required" if info.default_factory is None else "(see section)"
    return f"`{info.default!r}`" if info.default is not None else "none"


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for stage in PAGES:
        (out / f"{stage}.md").write_text(render(stage), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
