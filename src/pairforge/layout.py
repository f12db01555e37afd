"""Where every stage's files live: one place for every artifact name, so stages, the pipeline, the CLI
and the report agree on them.

A run folder (`pairforge run`, or the `--out` of a stage command) holds:

    store.sqlite                every request and its answer or failure (generation, judge, eval)
    shards/K-of-N.sqlite        a prompt shard's own store (`--shard K/N`), merged by the unsharded command
    responses.parquet           the answers (generate); revisions.parquet: a reviser's edits of them (revise)
    generate.summary.json       each source's tokens and cost (revise.summary.json: the reviser's)
    responses.scored.parquet    the answers with the judge's scores (judge); judgments.parquet: pairwise
                                verdicts; judge.summary.json
    ranking.json                source strength (rank)
    pairs.parquet               the training pairs; pairs.eval.parquet / pairs.judge.parquet: the held-out
                                and judge splits (`split_path`); pairs.summary.json
    train/<run>/                one training run (`TrainDir`)
    eval/                       leaderboard.json, eval.parquet, <model>.model_outputs.json
    stages/<stage>.json         the pipeline's record of a finished stage
    report.html                 the report (and report.md)
    pairforge.lock              held by the command writing the folder (`folder_lock`)
"""

from __future__ import annotations

import re
from pathlib import Path

STORE = "store.sqlite"
RESPONSES = "responses.parquet"
REVISIONS = "revisions.parquet"
SCORED = "responses.scored.parquet"
JUDGMENTS = "judgments.parquet"
JUDGE_SUMMARY = "judge.summary.json"
GENERATE_SUMMARY, REVISE_SUMMARY = "generate.summary.json", "revise.summary.json"  # tokens and cost per source
RANKING = "ranking.json"
LEADERBOARD = "leaderboard.json"
VERDICTS = "eval.parquet"
RUN_INFO = "run.json"
METRICS = "metrics.jsonl"
MODEL = "model"
REPORT = "report.html"
LOCK = "pairforge.lock"
SHARDS = "shards"  # <store's folder>/shards/K-of-N.sqlite: one store per prompt shard
EVAL_PROMPTS, EVAL_REFERENCE = "prompts.parquet", "reference.parquet"  # eval/: held-out prompts, a source's answers
MODEL_OUTPUTS = ".model_outputs.json"  # eval/<model>.model_outputs.json
# the evaluation's own model names: the untrained starting model and the reference answers (no run may take them)
BASE_NAME, REFERENCE_NAME = "base", "reference"
RESERVED_MODEL_NAMES = (BASE_NAME, REFERENCE_NAME)


_FILE_NAME = re.compile(r"\w[\w.+-]*")
_SEEDED = re.compile(r"(?P<arm>\w[\w.+-]*)@(?P<seed>[0-9]+)")  # NAME@SEED: one seed of a run with `seeds`


def name_problem(name: str) -> str | None:
    """Why a run's or model's name cannot name its files inside a run folder (None: it can). A name with '/'
    or '..' wrote a run outside the run folder, and a rerun with other settings deleted that folder. NAME@SEED
    is a name too: one seed of a seeded run (`seeded_name`), and `eval --models` pools such models by NAME."""
    if _FILE_NAME.fullmatch(name) or _SEEDED.fullmatch(name):
        return None
    return (f"expected a name for files and folders (letters, digits, '_', '.', '+', '-', starting with a letter "
            f"or digit; NAME@SEED for one seed of a run), found {name!r}")


def run_name_problem(name: str) -> str | None:
    """Why a recipe's run cannot take this name (None: it can): not a file name, one the evaluation keeps, or a
    NAME@SEED, which only `seeds:` makes (a hand-written sft@0 could collide with a seeded sft's first seed)."""
    if name in RESERVED_MODEL_NAMES:
        return (f"run name '{name}' is reserved: the evaluation names the starting model '{BASE_NAME}' and the "
                f"reference answers '{REFERENCE_NAME}' (expected another name)")
    if _SEEDED.fullmatch(name):
        return f"run name '{name}': '@SEED' names are made by `seeds: [...]` (expected a name without '@')"
    return name_problem(name)


def seeded_name(name: str, seed: int) -> str:
    """The name of one seed of a run with `seeds`: its folder train/NAME@SEED and its model in the evaluation."""
    return f"{name}@{seed}"


def arm_of(name: str) -> tuple[str, int | None]:
    """(NAME, SEED) of a seeded name NAME@SEED; (name, None) for any other name."""
    match = _SEEDED.fullmatch(name)
    return (match["arm"], int(match["seed"])) if match else (name, None)


def eval_folder_problem(name: str) -> str | None:
    """Why a reward-model run cannot score into eval/<name>/ (None: it can): the name is one of eval's own files."""
    if name in (LEADERBOARD, VERDICTS, EVAL_PROMPTS, EVAL_REFERENCE) or name.startswith(STORE) or \
            name.endswith(MODEL_OUTPUTS):
        return (f"'{name}' is the name of a file in eval/ (leaderboard.json, eval.parquet, store.sqlite, "
                f"prompts.parquet, reference.parquet, <model>{MODEL_OUTPUTS}), where this run's scores get a folder: "
                "expected another run name")
    return None


def split_path(pairs: Path, split: str) -> Path:
    """A pairs file's split beside it: 'train' is the file itself, any other is `<stem>.<split><suffix>`
    (pairs.eval.parquet, pairs.judge.parquet, pairs.summary.json with split 'summary' and suffix .json)."""
    return pairs if split == "train" else pairs.with_name(f"{pairs.stem}.{split}{pairs.suffix}")


def summary_path(pairs: Path) -> Path:
    return pairs.with_name(f"{pairs.stem}.summary.json")


def pending_path(path: Path) -> Path:
    """Where a build writes `path` before it puts all its files in place at once (`.pairs.pending.parquet`:
    hidden, and no reader takes it for an output)."""
    return path.with_name(f".{path.stem}.pending{path.suffix}")


class TrainDir:
    """One training run's folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.model = self.root / MODEL
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / METRICS
        self.run_info = self.root / RUN_INFO

    def consumed(self, process: int) -> Path:
        """The pairs file rows each micro-batch of this process used, one line per micro-batch."""
        return self.root / f"consumed-{process}.jsonl"


PAIRS = "pairs.parquet"
QUICK_PROMPTS = "quick-prompts.parquet"
# every name a run folder's stages write directly in it (a round's folder alike), and the folders they own
_OWN_FILES = {STORE, f"{STORE}-wal", f"{STORE}-shm", f"{STORE}-journal", RESPONSES, REVISIONS, SCORED, JUDGMENTS,
              JUDGE_SUMMARY, RANKING, REPORT, Path(REPORT).with_suffix(".md").name, QUICK_PROMPTS, LOCK,
              *(split_path(Path(PAIRS), split).name for split in ("train", "eval", "judge")),
              summary_path(Path(PAIRS)).name, GENERATE_SUMMARY, REVISE_SUMMARY}
_OWN_FOLDERS = {"eval", "train", "stages", SHARDS, f"{Path(REPORT).stem}_files"}  # report_files: the Markdown's images
_ROUND = re.compile(r"round-\d+")


def run_folder_of(train_out: Path) -> Path | None:
    """The run folder a training run's folder lies in (`<run>/train/NAME`, `<run>/round-K/train/NAME`): the one whose
    lock `pairforge run` holds while it works there; None for a training folder anywhere else."""
    out = Path(train_out).resolve()
    if out.parent.name != "train":
        return None
    root = out.parent.parent
    return root.parent if _ROUND.fullmatch(root.name) else root


class RunDir:
    """A pipeline run folder (or one round's folder of an iterative run, with the run's shared `store`)."""

    def __init__(self, root: Path, store: Path | None = None) -> None:
        self.root = Path(root)
        self.store = store or self.root / STORE
        self.responses, self.scored = self.root / RESPONSES, self.root / SCORED
        self.revisions = self.root / REVISIONS
        self.generate_summary, self.revise_summary = self.root / GENERATE_SUMMARY, self.root / REVISE_SUMMARY
        self.judgments, self.ranking, self.report = self.root / JUDGMENTS, self.root / RANKING, self.root / REPORT
        self.eval = self.root / "eval"
        self.stages = self.root / "stages"
        self.eval_store = store or self.eval / STORE  # an iterative run's rounds share one store
        self.leaderboard = self.eval / LEADERBOARD
        self.quick_prompts = self.root / QUICK_PROMPTS
        self.lock = self.root / LOCK

    def folders(self) -> list[Path]:
        """The folders this run writes in: a file in the way of one is found before any stage runs."""
        return [self.root, self.stages, self.eval, self.root / "train"]

    def pairs(self, split: str = "train") -> Path:
        return split_path(self.root / PAIRS, split)

    def train(self, run: str) -> TrainDir:
        return TrainDir(self.root / "train" / run)

    def marker(self, stage: str) -> Path:
        """The file that records a finished stage; later stages take it as an input, so redoing a stage
        (a new marker) makes the stages that use its outputs run again."""
        return self.stages / f"{stage.replace(':', '-')}.json"

    def own_output(self, path: Path) -> str | None:
        """Which of this run folder's outputs `path` is ('responses.parquet', 'round-2/train/dpo/model'), or None
        when no stage writes there: a file the recipe reads must not be one, or a stage would overwrite it."""
        try:
            inside = Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        parts = inside.parts
        while parts and _ROUND.fullmatch(parts[0]):
            parts = parts[1:]
        if not parts or (parts[0] not in _OWN_FOLDERS and (len(parts) > 1 or parts[0] not in _OWN_FILES)):
            return None
        return inside.as_posix()
