"""The settings of every stage as pydantic models, one section per stage, every field documented.

Each section is what one stage (or stage command) takes: sources and the judge, ranking, pairs (with its
filters) and eval; the training sections (train, runs) are in train_config.py. `recipe.py` puts them
together into one YAML recipe. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from pairforge.errors import describe
from pairforge.fingerprints import by_content
from pairforge.models import AUTO_DTYPE, resolved_dtype
from pairforge.prompting import Endpoint, PromptFormat

ROLE_MARKERS = (
    r"(?m)^\s*(?:###\s*(?:Instruction|Response|Input)\s*:|Human:|Assistant:|USER:|ASSISTANT:)"
    r"|<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>|<\|eot_id\|>|<\|start_header_id\|>|\[/?INST\]"
    r"|<\|user\|>|<\|assistant\|>|<\|system\|>"
)


ROUND_MODEL = "@round"  # a source's model in an iterative recipe: the policy of the current round (rounds.py)


SEED_MAX = 2**32 - 1  # numpy's and torch's seeding both take [0, 2**32)

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
AUTO_DTYPE_WHY = ("auto: bfloat16 where the device computes it natively, a GPU or a CPU with AVX512-BF16 / AMX, "
                  "~2x float32's rate; float32 elsewhere; outputs and cache keys hold the dtype it resolved to")
GENERATION_BATCH = 32
GENERATION_BATCH_WHY = ("32: ~3/4 of the CPU rate of 64 rows, the fastest measured with the embedded model, at half "
                        "the memory a large model's batch needs; lower it if a batch runs out of memory")


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
    prompt_format: Literal["auto", PromptFormat] = Field(
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

    @property
    def read_files(self) -> list[Path]:
        """Every file a build reads: its inputs, the ranking it takes its order from, the decontamination files."""
        return [*self.inputs, *([self.rank_from] if self.rank_from else []), *self.filters.decontaminate]


def key_name_problem(name: str) -> str | None:
    """Why a model's name cannot be part of a request cache key, or None. ':' separates the key's parts
    (gen:SOURCE:PROMPT_ID:SAMPLE:settings), so source 'x:y' answering prompt 'q' would reuse source 'x''s cached
    answer to prompt 'y:q' (ids like 'alpaca:12' are common); refusing it keeps every valid recipe's keys as they
    were."""
    if ":" in name:
        return f"source name {name!r} contains ':', which separates the parts of the answer cache's keys; rename it " \
               f"(e.g. {name.replace(':', '-')!r})"
    return None


VLLM_NAMED = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "enable_prefix_caching")
VLLM_FROM_SOURCE = ("model", "seed", "dtype")  # vllm.LLM's keywords the source itself sets


class VLLMSettings(Section):
    """vLLM's engine settings (backend vllm): GPUs, memory, context length; an unset (null) one is vLLM's default.

    Not part of the cache key, like an API source's concurrency: they decide where and how fast the engine runs, not
    the model or the sampling its answers are drawn from, so changing them (another GPU count, a longer context)
    keeps every stored answer."""

    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs the model is split over (vLLM: 1)")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="share of each GPU's memory the "
                                                 "engine takes for weights and KV cache (vLLM: 0.9)")
    max_model_len: int | None = Field(None, ge=1, description="context length (prompt + answer) the engine "
                                      "reserves for (vLLM: the model's own); lower it when the KV cache does not fit")
    enable_prefix_caching: bool | None = Field(None, description="reuse the KV cache of shared prompt prefixes "
                                               "(system prompts, templates)")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="any other keyword of vllm.LLM, passed "
                                        "as given ({enforce_eager: true, quantization: awq, ...})")

    @field_validator("engine_args")
    @classmethod
    def _no_repeats(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in VLLM_NAMED:
                raise ValueError(f"engine_args key {key!r} repeats the setting vllm.{key}: set it there")
            if key in VLLM_FROM_SOURCE:
                raise ValueError(f"engine_args key {key!r} is the source's own `{key}`: set it on the source")
        return value


# settings of how fast, on what and at what price a model answers, never what it answers: out of the stages'
# fingerprints (as out of the cache key), so a rate limit, an engine setting or a price list changed, or added, on a
# finished run does not redo it; a source without them dumps as it did before they existed
PACE_ONLY = ("rpm", "tpm", "vllm", "price")


class Price(Section):
    """What a source's tokens cost in USD per million tokens, the unit of API price lists (not in the cache key).

    The dry run's estimate and the summaries' and report's cost; a new price list redoes no work."""

    input: float = Field(..., ge=0, description="USD per million prompt tokens")
    output: float = Field(..., ge=0, description="USD per million completion tokens")


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
    endpoint: Endpoint = Field("chat", description="chat: chat template / chat API; "
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
    batch_size: int = Field(GENERATION_BATCH, ge=1, description=f"transformers: prompts per generate() call "
                            f"({GENERATION_BATCH_WHY})")
    dtype: Dtype = Field("auto", description=f"transformers / vllm weights ({AUTO_DTYPE_WHY})")
    rpm: float | None = Field(None, gt=0, description="openai: requests per minute this process sends the source at "
                              "most, evenly spaced (60/rpm seconds apart; null: no limit)")
    tpm: float | None = Field(None, gt=0, description="openai: tokens per minute at most (prompt + answer): a "
                              "request reserves prompt characters / 4 + max_new_tokens before it is sent, corrected by "
                              "the tokens it used (null: no limit)")
    vllm: VLLMSettings | None = Field(None, description="vllm: the engine's settings (see sources[].vllm; not in "
                                      "the cache key: changing them keeps the stored answers)")
    price: Price | None = Field(None, description="{input: USD, output: USD} per million tokens: the cost that "
                                "`--dry-run` estimates and the summaries and report show (not part of the cache key)")

    @field_validator("name")
    @classmethod
    def _keyable_name(cls, name: str) -> str:
        if (problem := key_name_problem(name)) is not None:
            raise ValueError(problem)
        return name

    @model_validator(mode="after")
    def _file_needs_path(self) -> SourceConfig:
        if (self.backend == "file") != (self.path is not None):
            raise ValueError("backend file needs `path` (and `path` is only for backend file)")
        limits = [name for name in ("rpm", "tpm") if getattr(self, name) is not None]
        if limits and self.backend != "openai":
            raise ValueError(f"{' and '.join(limits)} limit requests to an API: only for backend openai, not "
                             f"{self.backend}")
        vllm_section_only_with_vllm(self.backend, self.vllm)
        return self

    @model_serializer(mode="wrap")
    def _pace_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A source without rate limits, engine settings or a price dumps as it did before they existed (written
        configs such as leaderboard.json's judge)."""
        data = handler(self)
        for name in PACE_ONLY:
            if getattr(self, name) is None:
                data.pop(name, None)
        return data

    def cache_settings(self) -> dict[str, Any]:
        """What determines the answers: the cache key's settings part (and so each request's sampling seed)."""
        settings = self.model_dump(include={"backend", "model", "endpoint", "temperature", "top_p",
                                            "max_new_tokens", "seed", "system", "stop"})
        settings["dtype"] = self.resolved_dtype
        return by_content(settings) if self.backend in ("transformers", "vllm") else settings

    @property
    def resolved_dtype(self) -> str:
        """The weights' dtype on this machine ('auto' resolved). A server's source has no weights here: its
        'auto' stays float32, the value its cache keys held before 'auto' existed, so its stored answers count."""
        if self.backend in ("transformers", "vllm"):
            return resolved_dtype(self.dtype)
        return "float32" if self.dtype == AUTO_DTYPE else self.dtype


def vllm_section_only_with_vllm(backend: str, section: VLLMSettings | None) -> None:
    """The `vllm:` engine section is read by backend vllm only: anywhere else it would be silently ignored."""
    if section is not None and backend != "vllm":
        raise ValueError(f"the `vllm` section sets vLLM's engine: only for backend vllm, not {backend}")


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
    batch_size: int = Field(GENERATION_BATCH, ge=1, description=f"prompts per generate() call of the evaluated "
                            f"models ({GENERATION_BATCH_WHY})")
    dtype: Dtype = Field("auto", description=f"the evaluated models' weights while answering ({AUTO_DTYPE_WHY})")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="what answers with the evaluated "
                                                     "models: transformers (local, batched) or vllm (offline GPU "
                                                     "engine, pairforge[vllm])")
    vllm: VLLMSettings | None = Field(None, description="backend vllm: the engine's settings (see sources[].vllm)")
    bootstrap: int = Field(1000, ge=10, description="bootstrap resamples for intervals and paired tests")
    judge_run: str | None = Field(None, description="a run with method reward-model trained on the judge split: "
                                  "it scores every answer again as a second, independent judge (eval/<run>/)")

    @model_validator(mode="after")
    def _vllm_section(self) -> EvalConfig:
        vllm_section_only_with_vllm(self.backend, self.vllm)
        return self
