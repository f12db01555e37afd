"""pairforge: automatic preference pairs from models of different strength, contrastive post-training
(DPO, SLiC-HF and relatives) on an easy-to-hard curriculum, and pairwise evaluation (arXiv 2310.02263).

From Python (docs/python.md):

    import pairforge as pf
    pairs = pf.build_pairs(answers_df, rank="gpt-4 > chatgpt > davinci", eval_fraction=0.1)
    pairs.to_dataset()      # a datasets.DatasetDict for TRL's DPOTrainer
    pf.train(pairs, method="dpo", out="runs/dpo", max_steps=100)
    pf.evaluate(outputs={"mine": outputs_df}, reference="reference.json", out="eval")
    pf.run("recipe.yaml", quick=True)

The names load on first use (PEP 562), so `import pairforge` and the command start without torch or polars.
"""

import importlib as _importlib
from typing import Any as _Any

__version__ = "0.1.0"

_WHERE = {"build_pairs": "api.pairs", "Pairs": "api.pairs", "train": "api.post_training",
          "evaluate": "api.post_training", "report": "api.post_training", "generate": "api.data", "revise": "api.data",
          "judge": "api.data", "rank": "api.data", "run": "api.recipes", "RunResult": "api.recipes",
          "estimate": "api.recipes", "Estimate": "costs", "Recipe": "recipe",
          "Leaderboard": "evaluation.leaderboard", "TrainResult": "training.result", "PairsSummary": "pairs.summary",
          "InputError": "errors"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> _Any:
    if name in _WHERE:
        globals()[name] = value = getattr(_importlib.import_module(f"pairforge.{_WHERE[name]}"), name)
        return value
    raise AttributeError(f"module 'pairforge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])

