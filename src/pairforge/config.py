"""The settings of every stage as pydantic models, one section per stage, every field documented.

Each section is what one stage (or stage command) takes: sources and the judge, ranking, pairs (with its
filters), train (with LoRA and the curriculum), the pipeline's runs, and eval. `recipe.py` puts them
together into one YAML recipe. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pairforge.errors import describe
from pairforge.fingerprints import by_content
from pairforge.layout import run_name_problem

ROLE_MARKERS = (
    r"(?m)^\s*(?:###\s*(?:Instruction|Response|Input)\s*:|Human:|Assistant:|USER:|ASSISTANT:)"
    r"|<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|start_header_id\|>|\[/?INST\]"
    r"|<\|user\|>|<\|assistant\|>|<\|system\|>"
)


ROUND_MODEL = "@round"  # a source's model in an iterative recipe: the policy of the current round (rounds.py)


SEED_MAX = 2**32 - 1  # numpy's and torch's seeding both take [0, 2**32)


def error_message(error: Any) -> str:
    """A pydantic error as our one line says it: without pydantic's "Value error, " and with "unknown key"."""
    return error["msg"].removeprefix("Value error, ").replace("Extra inputs are not permitted", "unknown key")


class Section(BaseModel):
    """A recipe section: unknown keys are errors, no number may be inf or NaN (an lr of inf trained NaN weights
    without a word), and true/false is no number (pydantic took `rounds: true` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        kind = cls.model_fields[info.field_name].annotation
        kinds = set(get_args(kind)) if get_origin(kind) in (Union, UnionType) else {kind}  # a union's members
        if isinstance(value, bool) and kinds & {int, float} and bool not in kinds:
            raise ValueError(f"expected {'an integer' if int in kinds else 'a number'}, found {describe(value)}")
        return value


class FilterConfig(Section):
    """What makes an answer or a pair unusable. Every drop is counted, by reason, in the summary."""

    drop_truncated: bool = Field(True, description="drop answers whose finish_reason is 'length' (cut off)")
    role_markers: str | None = Field(ROLE_MARKERS, description="regex of leaked chat-template markers; null disables")
    near_duplicate: float | None = Field(0.9, ge=0, le=1, description="drop pairs whose chosen and rejected word "
                                         "sets have Jaccard similarity >= this; null disables")
    min_length: int | None = Field(None, ge=0, description="drop answers shorter than this (length_unit)")
    max_length: int | None = Field(None, ge=1, description="drop answers longer than this (length_unit)")
    length_unit: Literal["words", "tokens"] = Field("words", description="unit of lengths, filters and stats")
    tokenizer: str = Field("embedded", description="tokenizer for length_unit=tokens: 'embedded', a folder or hub id")
    length_ratio: tuple[float, float] | None = Field(None, description="keep pairs with len(chosen)/len(rejected) "
                                                     "inside [low, high]")
    decontaminate: list[Path] = Field(default_factory=list, description="eval prompt files: drop training prompts "
                                      "sharing an n-gram with any of them")
    ngram: int = Field(13, ge=1, description="n-gram size (words) for decontamination")

    @field_validator("length_ratio")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"expected 0 < low <= high, found {value}")
        return value


REVISION_TEMPLATE = (
    "Below is an instruction and an answer to it. Improve the answer with as few changes as possible: fix what is "
    "wrong, unclear or missing, and keep every part that is already right word for word. Reply with the improved "
    "answer only, without any comment.\n\n### Instruction:\n{instruction}\n\n### Answer:\n{answer}\n"
)


class RevisionConfig(Section):
    """The revised strategy: a reviser source minimally edits another source's answers, pair (revision, original).

    A pair is kept when its token-level edit distance (`edits.py`) is in (min_edit, max_edit]; no-ops and
    rewrites are counted in the summary."""

    reviser: str = Field(..., description="the source (a name in `sources`) that revises: it is asked the template "
                         "with each prompt and answer, through the same cached request engine as generation")
    original: str = Field(..., description="the source (a name in `sources`) whose answers are revised")
    template: str = Field(REVISION_TEMPLATE, description="what the reviser is asked; {instruction} becomes the "
                          "prompt's text, {answer} the original answer (both required)")
    min_edit: float = Field(0.0, ge=0, lt=1, description="keep revisions whose edit distance (word and punctuation "
                            "tokens, Levenshtein / longer length) is above this; 0 drops only no-op revisions")
    max_edit: float = Field(0.5, gt=0, le=1, description="and at most this: a larger edit rewrote the answer "
                            "instead of revising it")

    @field_validator("template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        missing = [p for p in ("{instruction}", "{answer}") if p not in value]
        if missing:
            raise ValueError(f"expected the placeholders {{instruction}} and {{answer}} in the template; "
                             f"{' and '.join(missing)} missing")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> RevisionConfig:
        if self.min_edit >= self.max_edit:
            raise ValueError(f"expected min_edit < max_edit, found min_edit {self.min_edit} >= max_edit "
                             f"{self.max_edit}")
        return self

    @property
    def revision_source(self) -> str:
        """The source name the revisions carry in responses and pairs: the original's name + the reviser's."""
        return f"{self.original}+{self.reviser}"


class PairsConfig(Section):
    """How responses become preference pairs (the `pairs` section of a recipe)."""

    inputs: list[Path] = Field(default_factory=list, description="response files (JSONL, JSON, Parquet, HF folder)")
    format: Literal["auto", "long", "wide", "ultrafeedback", "nectar", "sharegpt", "preference"] = Field(
        "auto", description="input shape; auto detects it from the fields. preference: TRL prompt/chosen/rejected "
        "pairs in, re-filtered and split (no strategy: they are pairs already)")
    columns: dict[str, str] = Field(default_factory=dict, description="wide format: source name -> column")
    strategy: Literal["ranked", "scored", "verified", "revised"] | None = Field(
        None, description="ranked: declared strength order; scored: by scores; verified: order kept where scores "
        "agree; revised: (revision, original) pairs, see `revision`. Default: ranked when `rank` is set, else scored")
    rank: str | None = Field(None, description="strength order, strongest first: 'gpt-4 > chatgpt > davinci'")
    rank_from: Path | None = Field(None, description="or: a ranking.json from `pairforge rank` ('ranking' in a "
                                   "pipeline: its own); only the orders it found significant make pairs")
    pair_types: str = Field("all", description="'all', 'adjacent', 'extremes' or 'a>b,c>d' (ranked, verified)")
    scored_mode: Literal["best-worst", "best-random", "all"] = Field("best-worst", description="scored strategy")
    min_margin: float = Field(0.0, ge=0, description="scored: smallest score gap that makes a pair (ties never do)")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of best-random")
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="share of prompts (by prompt_id hash) held out")
    judge_fraction: float = Field(0.0, ge=0, lt=1, description="share of prompts kept apart from both training and "
                                  "the eval split, in <out>.judge.*: pairs to train a reward-model judge on (a run "
                                  "with method reward-model and split: judge, named by eval.judge_run)")
    prompt_format: Literal["auto", "chat", "text"] = Field(
        "auto", description="chat: conversational records (TRL's [{role, content}]), trained through the chat "
        "template the answers were asked with; text: plain strings, for answers that continued the prompt as "
        "plain text. auto: chat, or text when every generating source of the recipe used endpoint completions")
    out: Path = Field(Path("pairs.parquet"), description=".parquet or .jsonl; eval split and summary go beside it")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="what makes an answer or a pair "
                                  "unusable (see pairs.filters)")
    revision: RevisionConfig | None = Field(None, description="strategy revised: who revises whose answers, the "
                                            "template, the edit-distance bounds (see pairs.revision)")

    @model_validator(mode="after")
    def _strategy_needs_rank(self) -> PairsConfig:
        if self.rank and self.rank_from:
            raise ValueError("give either `rank` or `rank_from`, not both")
        if self.strategy in ("ranked", "verified") and not (self.rank or self.rank_from):
            raise ValueError(f"strategy '{self.strategy}' needs 'rank' (a strength order)")
        if self.eval_fraction + self.judge_fraction >= 1:
            raise ValueError("eval_fraction + judge_fraction must leave prompts to train on (expected a sum < 1)")
        if (self.strategy == "revised") != (self.revision is not None):
            raise ValueError("`strategy` revised needs `revision` (reviser, original), and `revision` is read by "
                             "strategy revised only: expected both or neither")
        return self

    @property
    def resolved_strategy(self) -> str:
        return self.strategy or ("ranked" if self.rank or self.rank_from else "scored")


class LoraSettings(Section):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (0 keeps step-0 rewards exactly 0)")
    target_modules: list[str] | str = Field("all-linear", description="modules to adapt")
    merge: bool = Field(False, description="save the merged model instead of the adapter")


class Stage(Section):
    """One stage of a staged curriculum: which pairs, and how many passes over them."""

    pair_types: list[str] | None = Field(None, description="pair types in this stage")
    difficulty: tuple[float, float] | None = Field(None, description="or: difficulty range [low, high)")
    epochs: int = Field(1, ge=1, description="passes over this stage's pairs")
    restart_lr: bool = Field(False, description="restart warmup + decay at this stage's start")

    @model_validator(mode="after")
    def _one_selector(self) -> Stage:
        if (self.pair_types is None) == (self.difficulty is None):
            raise ValueError("a stage names either pair_types or a difficulty range [low, high)")
        return self


class CurriculumConfig(Section):
    """The order pairs are trained in (the `curriculum` part of a train section)."""

    difficulty: str = Field("strength-gap", description="strength-gap | score-margin | reference-margin | "
                            "embedding-similarity | column:NAME (higher = harder)")
    schedule: Literal["random", "staged", "sorted", "anti", "buckets", "pacing"] = Field(
        "sorted", description="random; staged (stages in order); sorted easy->hard; anti hard->easy; buckets; "
        "pacing (a growing pool of the easiest pairs)")
    stages: list[Stage] = Field(default_factory=list, description="staged: the stages, in order")
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
        known = ("strength-gap", "score-margin", "reference-margin", "embedding-similarity")
        if value not in known and not (value.startswith("column:") and len(value) > 7):
            raise ValueError(f"unknown difficulty '{value}': expected one of {', '.join(known)} or column:NAME")
        return value

    @model_validator(mode="after")
    def _stages_for_staged(self) -> CurriculumConfig:
        if self.schedule == "staged" and not self.stages:
            raise ValueError("the staged schedule needs `stages`")
        return self


Method = Literal["dpo", "sigmoid", "cdpo", "robust", "hinge", "ipo", "apo_zero", "apo_down", "simpo", "r-dpo",
                 "slic", "sft", "reward-model"]
METHODS: tuple[str, ...] = get_args(Method)  # train/losses.py has one loss function for each


LossWeight = Annotated[float, Field(allow_inf_nan=True)]  # a bad weight is `_known_methods`' one line, not a union's


class TrainConfig(Section):
    """Contrastive post-training (the `train` section of a recipe)."""

    method: str | dict[str, LossWeight] = Field("dpo", description="a loss name (dpo, cdpo, robust, hinge, ipo, "
                                                "apo_zero, apo_down, simpo, r-dpo, slic, sft, reward-model) or a "
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
    lr: float = Field(5e-7, gt=0, description="peak learning rate (AdamW)")
    epochs: int = Field(1, ge=1, description="passes over the pairs (a staged curriculum sets its own per stage)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    batch_size: int = Field(8, ge=1, description="pairs per device per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step (each pair weighs as in one "
                            "batch of batch_size x grad_accum x processes, short micro-batches included)")
    max_length: int = Field(1024, ge=8, description="tokens of prompt + answer")
    max_prompt_length: int | None = Field(None, ge=1, description="truncate: prompt tokens kept (its end) at most")
    prompt_format: Literal["auto", "chat", "text"] = Field(
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
        if "reward-model" in names and len(names) > 1:
            raise ValueError("reward-model trains a score head and cannot be mixed with other losses")
        if isinstance(value, dict):
            bad = {n: w for n, w in value.items() if not (math.isfinite(w) and w >= 0)}
            if bad or not any(value.values()):
                raise ValueError(f"expected finite loss weights >= 0, not all zero, found {bad or value}")
        return value

    @property
    def loss_weights(self) -> dict[str, float]:
        return {self.method: 1.0} if isinstance(self.method, str) else dict(self.method)


class SourceConfig(Section):
    """One model that answers the prompts (an entry of `sources`), or the model behind an LLM judge.

    Settings that change the answers (model, endpoint, sampling, system prompt, stop) key the cache;
    the rest (where the server is, concurrency, retries) can change between runs without redoing work.
    """

    name: str = Field("", description="the source's name in responses and pair types ('gpt-4')")
    backend: Literal["transformers", "openai", "vllm", "file"] = Field(
        "transformers", description="transformers: local; openai: any OpenAI-compatible server; vllm: offline GPU "
        "engine; file: answers that already exist (`path`)")
    path: Path | None = Field(None, description="file: an answers file (AlpacaEval outputs, long, ...) to take "
                              "this source's answers from")
    model: str = Field("embedded", description="'embedded', a model folder or hub id, or the server's model name")
    endpoint: Literal["chat", "completions"] = Field("chat", description="chat: chat template / chat API; "
                                                     "completions: the prompt as plain text, no template")
    temperature: float = Field(0.7, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the smallest set of tokens with this "
                         "probability mass")
    max_new_tokens: int = Field(256, ge=1, description="answer length limit; an answer cut here has finish_reason "
                                "'length'")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="sampling seed (each request gets its own, derived from this "
                      "and its key)")
    system: str | None = Field(None, description="system prompt put before every prompt")
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, description="stop strings (not "
                                                             "included in the answer; an empty one would stop at once)")
    base_url: str | None = Field(None, description="openai: the server's URL ('http://127.0.0.1:8000/v1')")
    api_key_env: str | None = Field(None, description="openai: name of the environment variable holding the key "
                                    "(the key itself never goes in a recipe, log or output)")
    concurrency: int = Field(4, ge=1, description="openai: requests in flight")
    timeout: float = Field(120.0, gt=0, description="openai: seconds per request")
    max_retries: int = Field(6, ge=0, description="openai: retries on 429 / 5xx / timeouts / dropped connections")
    batch_size: int = Field(8, ge=1, description="transformers: prompts per generate() call")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="transformers / vllm weights")

    @model_validator(mode="after")
    def _file_needs_path(self) -> SourceConfig:
        if (self.backend == "file") != (self.path is not None):
            raise ValueError("backend file needs `path` (and `path` is only for backend file)")
        return self

    def cache_settings(self) -> dict[str, Any]:
        """What determines the answers: the cache key's settings part (and so each request's sampling seed)."""
        settings = self.model_dump(include={"backend", "model", "endpoint", "temperature", "top_p",
                                            "max_new_tokens", "seed", "system", "stop", "dtype"})
        return by_content(settings) if self.backend in ("transformers", "vllm") else settings


class JudgeConfig(Section):
    """How answers are judged (the `judge` section): a score per answer, or pairwise verdicts."""

    kind: Literal["reward-model", "llm-pairwise", "similarity"] = Field("similarity", description="reward-model: "
                                                                        "an HF sequence-classification model; "
                                                                        "llm-pairwise: an LLM compares two answers "
                                                                        "(both orders); similarity: cosine to a "
                                                                        "reference answer")
    model: str = Field("embedded", description="reward-model: folder or hub id; similarity: sentence-transformers "
                       "model ('embedded' = MiniLM)")
    llm: SourceConfig | None = Field(None, description="llm-pairwise: the judge model and its backend")
    reference: str | None = Field(None, description="a source whose answers are the reference (similarity: "
                                  "required; llm-pairwise: compare every source with it instead of all pairs)")
    max_prompts: int | None = Field(None, ge=1, description="judge a seeded sample of this many prompts")
    batch_size: int = Field(8, ge=1, description="reward-model / similarity batch size")
    max_length: int = Field(1024, ge=8, description="reward-model: tokens of prompt + answer (longer: truncated)")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the prompt sample")

    @model_validator(mode="after")
    def _needs(self) -> JudgeConfig:
        if self.kind == "llm-pairwise" and self.llm is None:
            raise ValueError("llm-pairwise needs `llm` (the judge model: backend, model, ...)")
        if self.kind == "similarity" and not self.reference:
            raise ValueError("similarity needs `reference` (the source whose answers are the reference)")
        return self

    def cache_settings(self) -> dict[str, Any]:
        """What determines a score (reward-model, similarity): the cache key's settings part."""
        return by_content(self.model_dump(include={"kind", "model", "reference", "max_length"}))


class RankingConfig(Section):
    """Source strength from pairwise judgments (the `ranking` section): Bradley-Terry with bootstrap."""

    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples of prompts for the intervals")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="interval level; an order is significant when its "
                              "two-sided test passes at 1 - confidence, Holm-corrected over all pairs of sources")
    min_win_probability: float = Field(0.55, ge=0.5, lt=1, description="and the smallest fitted P(stronger beats "
                                       "weaker) that counts: a tiny but consistent edge is not a strength gap")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the bootstrap")


class RunConfig(TrainConfig):
    """One training run of a pipeline (an entry of `runs`): a train section with a name."""

    name: str = Field(..., description="the run's name: its folder, and its name in the evaluation (not 'base' or "
                      "'reference', the evaluation's names of the starting model and the reference answers)")
    after: str | None = Field(None, description="start from this earlier run's model (e.g. sft) instead of `model`")
    split: Literal["train", "judge"] = Field("train", description="which pairs it trains on: the training split, "
                                             "or the judge split kept apart from it (pairs.judge_fraction; for a "
                                             "reward-model judge)")

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, value: str) -> str:
        problem = run_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class EvalConfig(Section):
    """The pipeline's evaluation (the `eval` section): every run's answers judged against references."""

    prompts: Literal["held-out"] | Path = Field("held-out", description="'held-out' (the pairs' eval split) or "
                                                "a prompts file")
    reference: Path | None = Field(None, description="reference answers (AlpacaEval shape; default: a file source "
                                   "named by `reference_source`)")
    reference_source: str | None = Field(None, description="or: the source whose answers are the reference")
    judge: JudgeConfig = Field(default_factory=lambda: JudgeConfig(kind="similarity", reference="reference"),
                               description="default: similarity to the reference (offline)")
    base: bool = Field(True, description="also evaluate the starting model, untrained")
    base_model: str | None = Field(None, description="the model evaluated as 'base' (default: the first run's "
                                   "starting model; in an iterative recipe, the model round 1 started from)")
    max_new_tokens: int = Field(128, ge=1, description="answer length limit of the evaluated models")
    temperature: float = Field(0.0, ge=0, description="sampling temperature of the evaluated models (0: greedy)")
    batch_size: int = Field(8, ge=1, description="prompts per generate() call of the evaluated models")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="the evaluated models' "
                                                             "weights while answering (bfloat16: ~2x faster on "
                                                             "CPUs with AVX512-BF16 / AMX and on GPUs)")
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples for intervals and paired tests")
    judge_run: str | None = Field(None, description="a run with method reward-model trained on the judge split: "
                                  "it scores every answer again as a second, independent judge (eval/<run>/)")
