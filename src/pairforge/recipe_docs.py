"""The docs/ pages: one per stage, listing every recipe field from the pydantic models themselves.

`python -m pairforge.recipe_docs docs/` rewrites them; a test fails when a page is out of date, so the
documented fields are always the validated ones.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pairforge import config as C
from pairforge import recipe as R
from pairforge import train_config as T

PAGES: dict[str, tuple[str, list[tuple[str, type[BaseModel]]]]] = {
    "generate": ("Generate: prompts answered by every source, cached in store.sqlite (`pairforge generate`). "
                 "`--shard K/N` answers only shard K of N's prompts, into shards/K-of-N.sqlite, so many machines "
                 "share the work; the command without --shard merges the shards (README, \"Scaling out\"). Each "
                 "answer's prompt and completion tokens are stored with it: the summary shows them per source with "
                 "their cost at `price` (generate.summary.json); `--dry-run` pings every API server once and prints "
                 "the estimated requests, tokens and cost, writing nothing.",
                 [("(top level)", R.Recipe), ("sources[]", C.SourceConfig), ("sources[].price", C.Price),
                  ("sources[].vllm", C.VLLMSettings)]),
    "judge": ("Judge and rank: scores or pairwise verdicts, then Bradley-Terry strength (`pairforge judge`, "
              "`pairforge rank`). An LLM judge takes `--shard K/N` as generate does (one prompt shard per "
              "machine, merged by the judge without --shard); the reward-model and similarity judges do not.",
              [("judge", C.JudgeConfig), ("judge.llm", C.SourceConfig), ("ranking", C.RankingConfig)]),
    "pairs": ("Pairs: responses to preference pairs (`pairforge pairs build`).",
              [("pairs", C.PairsConfig), ("pairs.filters", C.FilterConfig),
               ("pairs.revision", C.RevisionConfig)]),
    "train": ("Train: SFT, DPO and relatives, SLiC-HF, reward models, with a curriculum (`pairforge train`; "
              "`runs[]` in a pipeline).", [("train / runs[]", T.RunConfig), ("lora", T.LoraSettings),
                                           ("curriculum", T.CurriculumConfig),
                                           ("curriculum.stages[]", T.CurriculumStage)]),
    "eval": ("Eval: every run judged against reference answers (`pairforge eval`; `eval` in a pipeline). "
             "`pairforge eval --shard K/N` answers and judges one prompt shard as generate does; eval without "
             "--shard merges the shards and writes the leaderboard. A run "
             "trained with `seeds` (models NAME@SEED) keeps a row per seed and gets one more, NAME (its seeds' "
             "mean), ranked with the other models; its tests (vs next, vs the baseline, and `comparisons`: every two "
             "ranked rows) are paired differences pooled over prompts and seeds: per prompt, the difference averaged "
             "over the seeds (seed s against seed s when both runs have the same seeds, against an unseeded model's "
             "one answer otherwise); the sign-flip test flips the signs of these per-prompt differences and the "
             "bootstrap resamples them, because prompts are independent draws and the seeds of one prompt are not "
             "(prompt x seed rows taken as independent give p-values too small).",
             [("eval", C.EvalConfig), ("eval.vllm", C.VLLMSettings)]),
    "run": ("Run: the whole recipe end to end (`pairforge run`), resumable; `--quick` shrinks it; `rounds` repeats "
            "it with the trained policy answering again. `--dry-run` prints the plan and the estimated requests, "
            "tokens and cost per stage and source (generate, revise, an LLM judge, eval; `pf.estimate` in Python); "
            "the report's Cost section shows what every source's stored answers cost. A run with `seeds: [0, 1, 2]` "
            "(runs[], docs/train.md) is "
            "one run per seed, NAME@SEED: its folder train/NAME@SEED/, its stage train:NAME@SEED (for --from / "
            "--to), its model in the evaluation; `after` a run with the same seeds pairs them seed by seed, after "
            "an unseeded run all seeds start from it, and `after: NAME@SEED` names one seed; with `rounds`, "
            "`round_run: NAME@SEED` says which seed answers the next round.",
            [("(top level)", R.Recipe), ("quick", R.QuickConfig)]),
}
# a recipe snippet closing a page: the settings a GPU or API user sets together
EXAMPLES = {
    "generate": ("API quotas and a GPU", """\
sources:
  - {name: strong, backend: openai, model: gpt-4o, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY,
     concurrency: 16, rpm: 500, tpm: 200000}     # the account's limits: requests and tokens per minute
  - name: medium
    backend: vllm                                 # pip install 'pairforge[vllm]' on the GPU machine
    model: meta-llama/Llama-3.1-70B-Instruct
    dtype: bfloat16
    vllm: {tensor_parallel_size: 4, gpu_memory_utilization: 0.85, max_model_len: 4096,
           enable_prefix_caching: true, engine_args: {enforce_eager: true}}"""),
    "eval": ("Answering with vLLM on a GPU", """\
eval:
  backend: vllm          # the base and every trained run answer through vLLM's engine (pip install 'pairforge[vllm]')
  dtype: bfloat16
  max_new_tokens: 512
  vllm: {tensor_parallel_size: 2, gpu_memory_utilization: 0.8, max_model_len: 4096}"""),
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
    if stage in EXAMPLES:
        title, snippet = EXAMPLES[stage]
        lines += [f"## Example: {title}", "", "```yaml", snippet, "```", ""]
    return "\n".join(lines)


def _type(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("pairforge.config.", "")
    text = text.replace("pairforge.train_config.", "")
    text = re.sub(r"Annotated\[(\w+), FieldInfo\([^\]]*\]\)\]", r"\1", text)  # its bounds: in the words
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
