"""The training sections of a recipe as pydantic models: `train` (with LoRA and the curriculum) and the pipeline's
`runs`, every field documented; the other stages' sections are in config.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator, model_validator

from pairforge.config import SEED_MAX, Section
from pairforge.layout import run_name_problem, seeded_name
from pairforge.prompting import PromptFormat

FULL_LR, LORA_LR = 5e-7, 1e-4  # an unset `lr`: full fine-tuning's, a LoRA adapter's


class LoraSettings(Section):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (0 keeps step-0 rewards exactly 0)")
    target_modules: list[str] | str = Field("all-linear", description="modules to adapt")
    merge: bool = Field(False, description="save the merged model instead of the adapter")


class CurriculumStage(Section):
    """One stage of a staged curriculum: which pairs, and how many passes over them."""

    pair_types: list[str] | None = Field(None, description="pair types in this stage")
    difficulty: tuple[float, float] | None = Field(None, description="or: difficulty range [low, high)")
    epochs: int = Field(1, ge=1, description="passes over this stage's pairs")
    restart_lr: bool = Field(False, description="restart warmup + decay at this stage's start")

    @model_validator(mode="after")
    def _one_selector(self) -> CurriculumStage:
        if (self.pair_types is None) == (self.difficulty is None):
            raise ValueError("a stage names either pair_types or a difficulty range [low, high)")
        return self


DIFFICULTIES = ("strength-gap", "score-margin", "reference-margin", "embedding-similarity")  # or column:NAME
DIFFICULTIES_HELP = f"{' | '.join(DIFFICULTIES)} | column:NAME"


class CurriculumConfig(Section):
    """The order pairs are trained in (the `curriculum` part of a train section)."""

    difficulty: str = Field("strength-gap", description=f"{DIFFICULTIES_HELP} (higher = harder)")
    schedule: Literal["random", "staged", "sorted", "anti", "buckets", "pacing"] = Field(
        "sorted", description="random; staged (stages in order); sorted easy->hard; anti hard->easy; buckets; "
        "pacing (a growing pool of the easiest pairs)")
    stages: list[CurriculumStage] = Field(default_factory=list, description="staged: the stages, in order")
    buckets: int = Field(3, ge=1, description="buckets: how many difficulty buckets")
    pacing: Literal["root", "linear"] = Field("root", description="pacing: growth of the pool of allowed pairs")
    start_fraction: float = Field(0.2, gt=0, le=1, description="pacing: share of easiest pairs allowed at step 0")
    full_at: float = Field(0.5, gt=0, le=1, description="pacing: share of training after which all pairs are allowed")
    drop_hardest: float = Field(0.0, ge=0, lt=1, description="share of the hardest pairs left out (Selective DPO)")
    shuffle_within: bool = Field(True, description="shuffle inside a stage / bucket / equal difficulty (seeded)")
    embedding_model: str = Field("embedded", description="sentence-transformers model for embedding-similarity")

    @field_validator("difficulty")
    @classmethod
    def _known_difficulty(cls, value: str) -> str:
        if value not in DIFFICULTIES and not (value.startswith("column:") and len(value) > 7):
            raise ValueError(f"unknown difficulty '{value}': expected one of {', '.join(DIFFICULTIES)} or column:NAME")
        return value

    @model_validator(mode="after")
    def _stages_for_staged(self) -> CurriculumConfig:
        if self.schedule == "staged" and not self.stages:
            raise ValueError("the staged schedule needs `stages`")
        return self


Method = Literal["dpo", "sigmoid", "cdpo", "robust", "hinge", "ipo", "apo_zero", "apo_down", "simpo", "r-dpo",
                 "slic", "sft", "reward-model"]
METHODS: tuple[str, ...] = get_args(Method)  # the one list of method names: training/losses.py has a loss for each
REWARD_MODEL = "reward-model"  # the method that trains a score head (a judge), not a policy
METHODS_HELP = f"{' | '.join(METHODS)}, or a weighted sum 'dpo=1,sft=0.2'"
# the fields of a train section that the losses read (training/losses.py's LossSettings): flat in the recipe, one group
LOSS_KNOBS = ("beta", "label_smoothing", "gamma", "alpha", "delta", "lam", "slic_nll")


LossWeight = Annotated[float, Field(allow_inf_nan=True)]  # a bad weight is `_known_methods`' one line, not a union's


class TrainConfig(Section):
    """Contrastive post-training (the `train` section of a recipe)."""

    method: str | dict[str, LossWeight] = Field("dpo", description=f"a loss name ({', '.join(METHODS)}) or a "
                                                "weighted sum {dpo: 1, sft: 0.2}")
    model: str = Field("embedded", description="'embedded', a model folder, or a hub id")
    pairs: Path | None = Field(None, description="pairs file (ours or any TRL prompt/chosen/rejected file)")
    eval_pairs: Path | None = Field(None, description="held-out pairs for eval metrics (default: <pairs>.eval.*)")
    out: Path = Field(Path("runs/train"), description="output folder: model, checkpoints, metrics.jsonl")
    beta: float = Field(0.1, gt=0, description="strength of the reference (DPO family) / reward scale")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cdpo / robust: assumed share of flipped "
                                   "labels")
    gamma: float = Field(0.5, description="simpo: target margin")
    alpha: float = Field(0.0, description="r-dpo: length regulariser per token of |y+| - |y-| (Park et al. 2024)")
    delta: float = Field(1.0, description="slic: hinge margin on log p(y+) - log p(y-)")
    lam: float = Field(0.1, ge=0, description="slic: weight of NLL(y_ref), summed over its tokens (see slic_nll)")
    slic_nll: Literal["sum", "mean"] = Field("sum", description="slic: NLL(y_ref) as the paper's sum over tokens, "
                                             "or their mean (lam / |y_ref|)")
    target: str = Field("chosen", description="sft/slic likelihood target column (e.g. the SFT reference answer)")
    lr: float | None = Field(None, gt=0, description="peak learning rate (AdamW); unset: 5e-7 for full "
                             "fine-tuning (the DPO paper's), 1e-4 with `lora` (an adapter's few new weights need "
                             "larger steps); run.json records the rate used")
    epochs: int = Field(1, ge=1, description="passes over the pairs (a staged curriculum sets its own per stage)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    batch_size: int = Field(8, ge=1, description="pairs per device per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step (each pair weighs as in one "
                            "batch of batch_size x grad_accum x processes, short micro-batches included)")
    max_length: int = Field(1024, ge=8, description="tokens of prompt + answer")
    max_prompt_length: int | None = Field(None, ge=1, description="truncate: prompt tokens kept (its end) at most")
    prompt_format: Literal["auto", PromptFormat] = Field(
        "auto", description="how prompts are shown to the model: chat (its chat template; an instruction template "
        "for a model without one), text (prompt + answer as plain text, TRL's rule for string prompts); auto "
        "follows the records: conversational pairs as chat, string prompts as text")
    too_long: Literal["truncate", "drop", "error"] = Field("truncate", description="what happens to a pair longer "
                                                          "than max_length (counted in run.json)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps with a linear warmup")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="decay after warmup")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of order, dropout and initialisation")
    lora: LoraSettings | None = Field(None, description="train a LoRA adapter (reference = adapter disabled)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights' dtype (bfloat16 on GPUs)")
    precompute_reference: bool = Field(True, description="compute reference log-probs once, cached on disk")
    logging_steps: int = Field(1, ge=1, description="a metrics.jsonl row every N steps")
    save_steps: int | None = Field(None, ge=1, description="checkpoint every N optimiser steps")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")
    save_final_state: bool = Field(False, description="also save the full training state (optimiser: ~3x the "
                                   "model) at the end; the trained model itself is always saved")
    eval_steps: int | None = Field(None, ge=1, description="evaluate on the eval pairs every N steps (and at the "
                                   "end)")
    chunk_tokens: int = Field(512, ge=16, description="answer tokens per fp32 log-softmax chunk")
    forward_tokens: int | None = Field(None, ge=16, description="most tokens (rows x width) in one forward pass: a "
                                       "larger batch is cut into pieces whose gradients add up to the batch's "
                                       "(same loss and step, less activation memory, less padding); null: one "
                                       "forward per batch (the only choice under DeepSpeed)")
    lean_blocks: bool = Field(True, description="Llama-style RMSNorm and SwiGLU MLP keep fewer tensors for "
                              "backward (same forward, gradients equal to rounding; ~1/3 less activation memory)")
    share_prompt: bool = Field(True, description="push each prompt through the model once for both answers "
                               "(one row per pair with a block mask); off: one row per answer")
    curriculum: CurriculumConfig | None = Field(None, description="train in a difficulty order (default: "
                                                "seeded random order, grouped by length)")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, description="trackers, "
                                                              "besides metrics.jsonl (need their package)")

    @field_validator("method")
    @classmethod
    def _known_methods(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        names = [value] if isinstance(value, str) else list(value)
        unknown = [n for n in names if n not in METHODS]
        if unknown or not names:
            raise ValueError(f"unknown method {', '.join(unknown) or '(none)'}: expected one of {', '.join(METHODS)}")
        if REWARD_MODEL in names and len(names) > 1:
            raise ValueError("reward-model trains a score head and cannot be mixed with other losses")
        if isinstance(value, dict):
            bad = {n: w for n, w in value.items() if not (math.isfinite(w) and w >= 0)}
            if bad or not any(value.values()):
                raise ValueError(f"expected finite loss weights >= 0, not all zero, found {bad or value}")
        return value

    @property
    def loss_weights(self) -> dict[str, float]:
        return {self.method: 1.0} if isinstance(self.method, str) else dict(self.method)

    @property
    def trains_policy(self) -> bool:
        """A run trains a policy (a model that answers) unless its method is reward-model, which trains a judge."""
        return REWARD_MODEL not in self.loss_weights

    @property
    def shares_prompt(self) -> bool:
        """Whether batches put each prompt once in a row for both answers: `share_prompt`, except for a reward
        model, which scores each answer in a row of its own (its last token). Every layout decision (the
        length-grouped order, the forwards, the reference pass) asks this one property."""
        return self.share_prompt and self.trains_policy

    def loss_knobs(self) -> dict[str, object]:
        """The settings the losses read (LOSS_KNOBS), by name: training/losses.py's LossSettings is built from them."""
        return {name: getattr(self, name) for name in LOSS_KNOBS}

    def resolved(self) -> TrainConfig:
        """The settings a run trains with: an unset `lr` becomes the default of its kind of run."""
        if self.lr is not None:
            return self
        return self.model_copy(update={"lr": LORA_LR if self.lora is not None else FULL_LR})


class RunConfig(TrainConfig):
    """One training run of a pipeline (an entry of `runs`): a train section with a name."""

    name: str = Field(..., description="the run's name: its folder, and its name in the evaluation (not 'base' or "
                      "'reference', the evaluation's names of the starting model and the reference answers)")
    after: str | None = Field(None, description="start from this earlier run's model (e.g. sft) instead of `model`")
    split: Literal["train", "judge"] = Field("train", description="which pairs it trains on: the training split, "
                                             "or the judge split kept apart from it (pairs.judge_fraction; for a "
                                             "reward-model judge)")
    seeds: list[Annotated[int, Field(strict=True, ge=0, le=SEED_MAX)]] | None = Field(
        None, exclude=True, description="train once per seed, as runs NAME@SEED (train/NAME@SEED/, `seed` set to "
        "it); a seeded run `after` a run with the same seeds starts seed by seed (dpo@1 from sft@1), after an "
        "unseeded run all from it; the evaluation adds one row per run, the mean over its seeds, and tests "
        "runs against each other over prompts and seeds")

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, value: str) -> str:
        problem = run_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and not value:
            raise ValueError("expected at least one seed (or no `seeds` at all)")
        if value is not None and len(set(value)) < len(value):
            raise ValueError(f"expected distinct seeds, found {sorted({s for s in value if value.count(s) > 1})[0]} "
                             "twice")
        return value

    @model_validator(mode="after")
    def _one_seed_setting(self) -> RunConfig:
        if self.seeds is not None and "seed" in self.model_fields_set and self.seeds != [self.seed]:
            raise ValueError(f"run '{self.name}': `seed: {self.seed}` disagrees with `seeds: {self.seeds}` (each "
                             "seed of `seeds` is its run's seed): expected one of the two")
        return self


def expand_seeds(runs: list[RunConfig]) -> list[RunConfig]:
    """A recipe's runs with every seeded run replaced by one run per seed, NAME@SEED, in place; `after` a seeded run
    becomes seed by seed (same seeds), or is refused when it cannot say which seed (an unseeded run, other seeds)."""
    seeds_of: dict[str, list[int] | None] = {}
    expanded: list[RunConfig] = []
    for run in runs:
        if run.name in seeds_of:
            raise ValueError(f"run name '{run.name}' is used twice")
        parent = seeds_of.get(run.after) if run.after is not None else None
        if parent is not None and run.seeds != parent:
            mine = f"seeds {run.seeds}" if run.seeds else "no seeds"
            raise ValueError(f"run '{run.name}' ({mine}) starts after '{run.after}', which has seeds {parent}: which "
                             f"seed? expected the same `seeds` (seed by seed) or `after: {run.after}@SEED`")
        seeds_of[run.name] = run.seeds
        if run.seeds is None:
            expanded.append(run)
            continue
        for seed in run.seeds:
            after = seeded_name(run.after, seed) if parent is not None and run.after is not None else run.after
            expanded.append(run.model_copy(update={"name": seeded_name(run.name, seed), "seed": seed, "after": after,
                                                   "seeds": None}))
    return expanded
