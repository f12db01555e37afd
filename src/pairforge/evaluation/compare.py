"""The `eval` stage: each model's answers to the eval prompts, judged against reference answers.

Answers come from model folders (generated greedily through the transformers backend, or vLLM's with
`backend: vllm`, cached in the run's store.sqlite like every generation; a model pairforge trained is asked in
the prompt format it was trained in) or from existing outputs files. Both are written / read in
AlpacaEval's model_outputs.json shape (instruction, output, generator, dataset), so the official
alpaca_eval can judge the same files. Each model is judged against the reference answer of every
prompt: llm-pairwise in both orders (verdict = P(model better)); reward-model as a win (1), tie (0.5) or
loss (0) on the rewards, with the mean reward; similarity as the mean similarity to the reference
(it has no notion of winning). Per model: win rate with a bootstrap interval, the length-controlled win
rate, mean length, a per-dataset breakdown, and paired bootstrap tests against the next row of the
leaderboard and against the baseline (the untrained base in a pipeline) on the prompts both were judged on:
the difference, its 95% bootstrap interval and a sign-flip test's p-value; a difference is significant when
p < 0.05. Verdicts the judge could not give are counted and left out, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from pairforge import layout
from pairforge import schema as S
from pairforge.config import Dtype, EvalConfig, JudgeConfig, SourceConfig, VLLMSettings
from pairforge.errors import InputError, unanswered
from pairforge.evaluation.arms import arm_rows, arms_of, pooled_versus, seeds_of
from pairforge.evaluation.leaderboard import Comparison, Leaderboard, Measure, Standing, Versus, measure_of
from pairforge.evaluation.stats import length_controlled_win_rate, win_rate
from pairforge.files import Records, check_output, read_records, write_json, write_table
from pairforge.generation.answers import source_requests
from pairforge.judging.scoring import check_judge, judge_frame
from pairforge.models import resolved_dtype
from pairforge.prompting import Endpoint, endpoint_of
from pairforge.records import prompts_from_file, responses_from_files
from pairforge.requests.backends.base import check_source
from pairforge.requests.engine import answer_all, make_backend, progress_bar
from pairforge.requests.shards import Shard
from pairforge.requests.store import Store, opened
from pairforge.text import prompt_text, word_count
from pairforge.training.result import RunInfo

REFERENCE = layout.REFERENCE_NAME


_DEFAULTS = EvalConfig.model_fields  # one default per setting: the recipe's `eval:` section's, the CLI's


@dataclass
class EvalSettings:
    endpoint: Endpoint = "chat"  # for models that are not training runs (a run: as trained)
    max_new_tokens: int = _DEFAULTS["max_new_tokens"].default
    temperature: float = _DEFAULTS["temperature"].default
    batch_size: int = _DEFAULTS["batch_size"].default
    dtype: Dtype = _DEFAULTS["dtype"].default  # 'auto' is resolved before anything is answered or recorded
    baseline: str | None = None  # every other model is tested against this one (difference + interval)
    bootstrap: int = _DEFAULTS["bootstrap"].default
    seed: int = 0
    backend: Literal["transformers", "vllm"] = _DEFAULTS["backend"].default
    vllm: VLLMSettings | None = None  # backend vllm: the engine's settings

    @classmethod
    def of(cls, cfg: EvalConfig, endpoint: Endpoint = "chat", baseline: str | None = None) -> EvalSettings:
        """The answering and statistics settings of an `eval:` section (a recipe's, or the API's keywords)."""
        return cls(endpoint=endpoint, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                   batch_size=cfg.batch_size, dtype=cfg.dtype, baseline=baseline, bootstrap=cfg.bootstrap,
                   backend=cfg.backend, vllm=cfg.vllm)

    def recorded(self) -> dict[str, Any]:
        """The settings as leaderboard.json records them; the backend only where it is vllm, so a transformers
        evaluation writes the file it wrote before backends could be chosen."""
        settings = {k: v for k, v in self.__dict__.items() if k not in ("backend", "vllm")}
        if self.backend == "vllm":
            settings |= {"backend": self.backend, "vllm": self.vllm.model_dump() if self.vllm else None}
        return settings


def evaluate(models: list[str], outputs: list[Path], reference: Path, judge_cfg: JudgeConfig, out_dir: Path,
             prompts_path: Path | None = None, settings: EvalSettings | None = None,
             show_progress: bool = True, store_path: Path | None = None, retry_failed: bool = False,
             shard: Shard | None = None) -> Leaderboard:
    """Every model judged against the reference: the leaderboard, also written to `out_dir`. Failed judge requests
    are counted (`judge_summary.failed_requests`) and their prompts left unjudged; `retry_failed` asks them, and any
    failed answers, again. A `shard` answers and judges only its prompts, into its own store, and writes no file:
    the leaderboard it returns is of those prompts alone (the unsharded call merges the shards)."""
    settings = settings or EvalSettings()
    settings = replace(settings, dtype=resolved_dtype(settings.dtype))
    check_output(out_dir, "folder", "--out")
    if not models and not outputs:
        raise InputError("eval", "expected --models (model folders) or --outputs (model_outputs.json files)")
    prompts = prompts_from_file(prompts_path or reference)
    if prompts.is_empty():
        raise InputError(str(prompts_path or reference), "no eval prompts: the file is empty")
    if shard and shard.keep(prompts).is_empty():
        raise InputError("--shard", f"shard {shard} holds none of the {prompts.height} eval prompts: expected fewer "
                         "shards than prompts")
    prompts = shard.keep(prompts) if shard else prompts
    names = [name for name, _ in _named(outputs, "outputs") + _named(models, "models")]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError("--models", f"two models are named '{twice[0]}' (an --outputs file and a --models folder): "
                         "name them NAME=PATH")
    arms = arms_of(names)  # NAME beside NAME@SEED is refused before anything is answered
    if settings.baseline is not None and settings.baseline not in names + list(arms):
        raise InputError("--baseline", f"no model named '{settings.baseline}' (models: {', '.join(names)})")
    reference_answers = _answers_for(reference, prompts, "reference")
    answers = {REFERENCE: reference_answers}
    answers |= {name: _answers_for(path, prompts, "outputs") for name, path in _named(outputs, "outputs")}
    check_judge(judge_cfg)
    with opened(store_path or out_dir / layout.STORE, shard) as store:
        for name, model in _named(models, "models"):
            answers[name] = _generate(name, model, prompts, settings, store, show_progress, retry_failed)
            if not shard:
                _write_model_outputs(answers[name], prompts, name, out_dir / f"{name}{layout.MODEL_OUTPUTS}")
        frame = _responses(answers, prompts)
        cfg = judge_cfg.model_copy(update={"reference": REFERENCE, "max_prompts": None})
        scores, judgments, tally = judge_frame(frame, cfg, store, retry_failed, show_progress)
    verdicts = _verdicts(frame.with_columns(pl.Series(S.SCORE, scores, dtype=pl.Float64)), judgments, cfg.kind)
    verdicts = verdicts.join(prompts.select(S.PROMPT_ID, "dataset"), on=S.PROMPT_ID, how="left")
    standings, comparisons = _leaderboard(verdicts, measure_of(cfg.kind), settings)
    board = Leaderboard(judge=cfg.kind, prompts=prompts.height, reference=str(reference),
                        models=standings, comparisons=comparisons, judge_summary=tally,
                        config={"judge": cfg.model_dump(mode="json"), "settings": settings.recorded(),
                                "models": [str(m) for m in models], "outputs": [str(o) for o in outputs]})
    if not shard:
        write_table(verdicts, out_dir / layout.VERDICTS)
        board.write(out_dir / layout.LEADERBOARD)
    return board


def _named(items: list[Any], option: str) -> list[tuple[str, Any]]:
    """NAME=PATH or PATH (named after the folder / file, a training run's folder for run/model)."""
    named = []
    for item in items:
        text = str(item)
        name, _, path = text.partition("=") if "=" in text else ("", "", text)
        if not path:
            raise InputError(f"--{option} {text}", "expected NAME=PATH or PATH, found no path")
        if not name:
            p = Path(path)
            name = p.parent.name if p.name == "model" else p.name.removesuffix(".json").removesuffix(".model_outputs")
        problem = layout.name_problem(name)
        if problem:
            raise InputError(f"--{option} {text}", f"{problem} (its answers go to <name>.model_outputs.json)")
        named.append((name, path if option == "models" else Path(path)))
    names = [n for n, _ in named]
    twice = sorted({n for n in names if names.count(n) > 1 or n == REFERENCE})
    if twice:
        raise InputError(f"--{option}", f"two models are named '{twice[0]}' (or it is reserved): name them "
                         "NAME=PATH")
    return named


def _answers_for(path: Path, prompts: pl.DataFrame, what: str) -> dict[str, str]:
    """prompt_id -> answer from an outputs file; every eval prompt must be answered."""
    records = read_records(path)
    frame = responses_from_files([records], "long")
    _refuse_repeated_instructions(frame, records, what)
    answers = dict(zip(frame[S.PROMPT_ID], frame[S.RESPONSE], strict=True))
    missing = [p for p in prompts[S.PROMPT_ID] if p not in answers]
    if missing:
        example = prompts.filter(pl.col(S.PROMPT_ID) == missing[0])[S.PROMPT].to_list()[0]
        raise InputError(str(path), f"the {what} file answers {len(prompts) - len(missing)} of the "
                         f"{len(prompts)} eval instructions; {len(missing)} are missing, e.g. {str(example)[:80]!r}")
    return answers


def _refuse_repeated_instructions(frame: pl.DataFrame, records: Records, what: str) -> None:
    """One answer per eval instruction: a second one would silently replace the first (the judge would see only
    the last), so it is refused like `pairs build` refuses a repeated (prompt, source, sample)."""
    second = frame.select(pl.arg_where(~pl.col(S.PROMPT_ID).is_first_distinct()).first()).item()
    if second is None:
        return
    first = frame.select(pl.arg_where(pl.col(S.PROMPT_ID) == frame[S.PROMPT_ID][second]).first()).item()
    text = prompt_text(frame.row(second, named=True)[S.PROMPT])
    in_order = frame.height == len(records)  # a long file: frame row n is the file's row n
    label = records.label(second) if in_order else None
    earlier = f" (first at {records.label(first)})" if in_order else ""
    raise InputError(str(records.path), f"the instruction {text[:80]!r} is answered again{earlier}: expected one "
                     f"answer per eval instruction in the {what} file", row=label)


def _generate(name: str, model: str, prompts: pl.DataFrame, settings: EvalSettings, store: Store,
              show_progress: bool, retry_failed: bool) -> dict[str, str]:
    path = Path(model)
    if (path / "model" / "config.json").exists() or (path / "model" / "adapter_config.json").exists():
        model = str(path / "model")  # a training run's folder
    source = SourceConfig(name=name, model=model, temperature=settings.temperature, batch_size=settings.batch_size,
                          max_new_tokens=settings.max_new_tokens, seed=settings.seed, dtype=settings.dtype,
                          endpoint=trained_endpoint(Path(model)) or settings.endpoint, backend=settings.backend,
                          vllm=settings.vllm)
    check_source(source)
    requests = source_requests(source, prompts, 1)
    with progress_bar(show_progress) as progress:
        tally = answer_all(requests, lambda: make_backend(source), store, "generation", name, progress, retry_failed)
    if tally.failed or tally.failed_before:
        reasons = f": {', '.join(tally.reasons)}" if tally.reasons else ""
        raise unanswered("eval", tally.failed + tally.failed_before, f" (answers of {name}{reasons})")
    entries = store.get(r.key for r in requests)
    return {pid: entries[r.key].value["text"] for pid, r in zip(prompts[S.PROMPT_ID], requests, strict=True)}  # type: ignore[index]


def trained_endpoint(model: Path) -> Endpoint | None:
    """How a model trained by pairforge must be asked: in the prompt format it was trained in (its run.json,
    beside the model folder); None for any other model."""
    run_json = (model.parent if model.name == layout.MODEL else model) / layout.RUN_INFO
    if not run_json.exists():
        return None
    trained = RunInfo.read(run_json).prompt_format
    return endpoint_of(trained) if trained in ("chat", "text") else None


def _write_model_outputs(answers: dict[str, str], prompts: pl.DataFrame, name: str, path: Path) -> None:
    rows = [{"instruction": _instruction_text(prompt), "output": answers[pid], "generator": name,
             "dataset": dataset or "pairforge"}
            for pid, prompt, dataset in prompts.select(S.PROMPT_ID, S.PROMPT, "dataset").iter_rows()]
    write_json(rows, path)


def _instruction_text(prompt: Any) -> Any:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"] if len(prompt) == 1 else prompt


def _responses(answers: dict[str, dict[str, str]], prompts: pl.DataFrame) -> pl.DataFrame:
    rows = [{S.PROMPT_ID: pid, S.PROMPT: prompt, S.SOURCE: name, S.RESPONSE: by_prompt[pid]}
            for name, by_prompt in answers.items()
            for pid, prompt in zip(prompts[S.PROMPT_ID], prompts[S.PROMPT].to_list(), strict=True)]
    frame = pl.DataFrame(rows, schema={S.PROMPT_ID: pl.String, S.PROMPT: prompts.schema[S.PROMPT],
                                       S.SOURCE: pl.String, S.RESPONSE: pl.String})
    return frame.with_columns(pl.lit(0, pl.Int64).alias(S.SAMPLE))


def _verdicts(scored: pl.DataFrame, judgments: pl.DataFrame | None, kind: str) -> pl.DataFrame:
    """One row per (model, prompt): verdict (P(model beats reference), null if unknown), score, lengths."""
    rows = scored.select(S.PROMPT_ID, pl.col(S.SOURCE).alias("model"), word_count(pl.col(S.RESPONSE)).alias("length"),
                         S.SCORE)
    ref = rows.filter(pl.col("model") == REFERENCE).select(S.PROMPT_ID, pl.col("length").alias("reference_length"),
                                                           pl.col(S.SCORE).alias("reference_score"))
    rows = rows.filter(pl.col("model") != REFERENCE).join(ref, on=S.PROMPT_ID, how="left", maintain_order="left")
    if kind == "llm-pairwise":
        assert judgments is not None
        rows = rows.join(judgments.select(S.PROMPT_ID, pl.col("source_a").alias("model"),
                                          pl.col("p_a").alias("verdict")), on=[S.PROMPT_ID, "model"], how="left")
    elif kind == "reward-model":
        versus = pl.col(S.SCORE) - pl.col("reference_score")  # equal within float noise of batching: a tie
        rows = rows.with_columns(pl.when(versus > S.SCORE_TIE).then(1.0).when(versus < -S.SCORE_TIE).then(0.0)
                                 .when(versus.is_not_null()).then(0.5).otherwise(None).alias("verdict"))
    else:
        rows = rows.with_columns(pl.lit(None, pl.Float64).alias("verdict"))
    return rows


def _leaderboard(verdicts: pl.DataFrame, measure: Measure, settings: EvalSettings) -> tuple[list[Standing],
                                                                                      list[Comparison] | None]:
    """Models best first by `measure`, each with its interval, its paired test against the next row, and against
    the baseline model (the untrained base, say) with the difference's 95% interval. Runs trained with several seeds
    (NAME@SEED) are ranked as one row per run, NAME, the mean over its seeds, with tests pooled over prompts and
    seeds (evaluation/arms.py); their seeds' rows follow the ranking, each tested against the baseline, and every
    two ranked rows are compared (the comparisons; None without seeds)."""
    arms = arms_of(verdicts["model"].unique(maintain_order=True).to_list())
    seeded = {arm: models for arm, models in arms.items() if seeds_of(models)}
    board = [_standing(models[0], verdicts.filter(pl.col("model") == models[0]), measure, settings)
             for arm, models in arms.items() if arm not in seeded]
    board += [_standing(arm, arm_rows(verdicts, arm, models), measure, settings).model_copy(
        update={"seeds": seeds_of(models)}) for arm, models in seeded.items()]
    board.sort(key=lambda row: -value.value if (value := measure.of(row)) else np.inf)
    members = {**{m: [m] for models in arms.values() for m in models}, **seeded}

    def versus(model: str, other: str) -> Versus | None:
        return pooled_versus(verdicts, measure.column, members[model], members[other], other, settings.bootstrap,
                             settings.seed)

    for upper, lower in zip(board, board[1:], strict=False):
        upper.vs_next = versus(upper.model, lower.model)
    ranked = [row.model for row in board]
    board += [_standing(m, verdicts.filter(pl.col("model") == m), measure, settings) for ms in seeded.values()
              for m in ms]
    for row in board:
        if settings.baseline in members and row.model != settings.baseline:
            row.vs_baseline = versus(row.model, settings.baseline)
    if not seeded:
        return board, None
    return board, [Comparison(model=upper, versus=gap) for i, upper in enumerate(ranked) for lower in ranked[i + 1:]
                   if (gap := versus(upper, lower)) is not None]


def _standing(model: str, rows: pl.DataFrame, measure: Measure, settings: EvalSettings) -> Standing:
    """One model's row: its mean score and, where the judge gave verdicts against the reference, its win rate,
    length-controlled win rate and per-dataset win rate; prompts without a value of `measure` are unjudged."""
    scores = rows[S.SCORE].drop_nulls().to_numpy()
    usable = rows.filter(pl.col("verdict").is_not_null())  # none with the similarity judge: it has no verdicts
    standing = Standing(model=model, prompts=rows.height, mean_length=float(rows["length"].mean()),
                        reference_length=float(rows["reference_length"].mean()),
                        score=win_rate(scores, settings.bootstrap, settings.seed) if len(scores) else None,
                        unjudged=rows.height - rows[measure.column].count())
    if usable.height:
        v = usable["verdict"].to_numpy()
        standing.win_rate = win_rate(v, settings.bootstrap, settings.seed)
        standing.length_controlled_win_rate = length_controlled_win_rate(
            v, usable["length"].to_numpy(), usable["reference_length"].to_numpy(), settings.bootstrap, settings.seed)
        standing.per_dataset = {d or "-": float(g["verdict"].mean()) for (d,), g in
                                usable.group_by("dataset", maintain_order=True)}
    return standing
