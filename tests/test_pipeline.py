"""`pairforge run`: the quickstart end to end (--quick), resume and --from, dry runs, bad recipes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from conftest import REPO, sample_recipe

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def pairforge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True, timeout=1200)


def relocated(recipe: Path, folder: Path, **changes: Any) -> Path:
    """The recipe with its run folder in `folder` and its relative paths made absolute."""
    data = yaml.safe_load(recipe.read_text())
    base = recipe.parent
    data["run_dir"] = str(folder / "run")
    data["prompts"] = str((base / data["prompts"]).resolve())
    for source in data["sources"]:
        if "path" in source:
            source["path"] = str((base / source["path"]).resolve())
    if data.get("eval", {}).get("reference"):
        data["eval"]["reference"] = str((base / data["eval"]["reference"]).resolve())
    data.update(changes)
    path = folder / recipe.name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.slow
def test_quickstart_quick_makes_every_artifact_then_resumes(tmp_path: Path, pairforge_cache: Path) -> None:
    recipe = relocated(QUICKSTART, tmp_path)
    first = pairforge("run", str(recipe), "--quick")
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run-quick"
    runs = ("sft", "dpo")
    responses = pl.read_parquet(run / "responses.parquet")
    assert responses.height == 36 and set(responses["source"]) == {"smollm", "plain", "reference"}
    assert (run / "store.sqlite").exists() and (run / "responses.scored.parquet").exists()
    ranking = json.loads((run / "ranking.json").read_text())
    assert {s["name"] for s in ranking["sources"]} == {"smollm", "plain"}  # the judge's reference is not ranked
    assert ranking["declared_check"]["not_judged"] == ["reference > plain", "reference > smollm"]
    pairs = pl.read_parquet(run / "pairs.parquet")
    assert set(pairs["pair_type"]) <= {"reference>plain", "smollm>plain", "reference>smollm"} and pairs.height > 0
    assert pairs["prompt"][0].to_list()[-1]["role"] == "user"  # asked through the chat template: conversational
    trained = {json.loads((run / "train" / name / "run.json").read_text())["prompt_format"] for name in runs}
    assert trained == {"chat"}
    for name in runs:
        assert (run / "train" / name / "model" / "config.json").exists(), name  # merged LoRA: a plain model
        assert (run / "train" / name / "metrics.jsonl").read_text().strip()
    rows = [json.loads(line) for line in (run / "train" / "dpo" / "metrics.jsonl").read_text().splitlines()]
    stages = [r["stage"] for r in rows if "stage" in r]
    assert stages[0] == 0 and stages == sorted(stages)  # easy pairs (reference>plain) first, never back
    board = json.loads((run / "eval" / "leaderboard.json").read_text())
    assert {m["model"] for m in board["models"]} == {"base", *runs}
    assert all(m["vs_baseline"]["model"] == "base" for m in board["models"] if m["model"] != "base")
    assert all((run / "eval" / f"{name}.model_outputs.json").exists() for name in ("base", *runs))
    page = (run / "report.html").read_text()
    assert all(f"<section id='{s}'>" in page for s in ("pairs", "sources", "training", "evaluation", "reproduce"))
    assert "report: " in first.stderr and "similarity vs reference" in first.stderr  # the leaderboard

    again = pairforge("run", str(recipe), "--quick")  # everything finished: only the report is redone
    assert again.returncode == 0, again.stderr[-3000:]
    skipped = [line for line in again.stderr.splitlines() if "skipped (finished" in line]
    assert len(skipped) == 7, again.stderr[-3000:]

    rerun = pairforge("run", str(recipe), "--quick", "--from", "train:dpo")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    ran = [line.split(":")[0] + (":" + line.split(":")[1] if line.startswith("train") else "")
           for line in rerun.stderr.splitlines() if ": running:" in line]
    assert ran == ["train:dpo", "eval", "report"], ran


def test_dry_run_validates_checks_inputs_and_runs_nothing(tmp_path: Path) -> None:
    recipe = relocated(QUICKSTART, tmp_path)
    result = pairforge("run", str(recipe), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stderr and "train:dpo" in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.parquet"))


@pytest.mark.parametrize("changes, expected", [
    ({"runs": [{"name": "../../keep"}]}, "field 'runs.0.name': expected a name for files and folders"),
    ({"runs": [{"name": ""}]}, "field 'runs.0.name': expected a name for files and folders"),
    ({"runs": [{"name": "dpo", "lr": float("inf")}]}, "field 'runs.0.lr': Input should be a finite number"),
    ({"runs": [{"name": "dpo", "seed": -1}]}, "field 'runs.0.seed': Input should be greater than or equal to 0"),
    ({"sources": [{"name": "smollm", "stop": [""]}]}, "field 'sources.0.stop.0': String should have at least 1"),
    ({"runs": [{"name": "dpo", "after": "sft"}]}, "starts after 'sft', which is not an earlier run"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "run name 'a' is used twice"),
    ({"eval": {"prompts": "held-out", "judge": {"kind": "vibes"}}}, "eval.judge.kind"),
    ({"eval": {"judge_run": "dpo"}}, "eval.judge_run 'dpo' must name a run with method: reward-model and split: judge"),
    ({"runs": [{"name": "rm", "method": "reward-model", "split": "judge"}]},
     "run 'rm' trains on the judge split: set pairs.judge_fraction > 0"),
    ({"pairs": {"rank": "a > b", "eval_fraction": 0.5, "judge_fraction": 0.5}},
     "eval_fraction + judge_fraction must leave prompts to train on"),
    ({"rounds": True}, "field 'rounds': expected an integer, found boolean True"),
    ({"rounds": 100000}, "field 'rounds': Input should be less than or equal to 50"),
    ({"runs": [{"name": "base"}]}, "field 'runs.0.name': run name 'base' is reserved"),
    ({"runs": [{"name": "reference"}]}, "field 'runs.0.name': run name 'reference' is reserved"),
    ({"pairs": {"rank": "reference > smollm > plain", "judge_fraction": 0.2},
      "runs": [{"name": "dpo"}, {"name": "leaderboard.json", "method": "reward-model", "split": "judge"}],
      "eval": {"reference_source": "reference", "judge_run": "leaderboard.json"}},
     "eval.judge_run: 'leaderboard.json' is the name of a file in eval/"),
])
def test_bad_pipeline_recipes_are_one_line(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    result = pairforge("run", str(relocated(QUICKSTART, tmp_path, **changes)), "--dry-run")
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


def test_unknown_from_stage_is_refused(tmp_path: Path) -> None:
    result = pairforge("run", str(relocated(QUICKSTART, tmp_path)), "--from", "polish")
    assert result.returncode == 2 and "no stage 'polish' in this recipe" in result.stderr


def test_a_from_stage_after_the_to_stage_is_refused(tmp_path: Path) -> None:
    """`--from eval --to pairs` would run nothing and say so with exit 0."""
    result = pairforge("run", str(relocated(QUICKSTART, tmp_path)), "--from", "eval", "--to", "pairs", "--dry-run")
    assert result.returncode == 2 and "expected a stage at or before --to 'pairs', found 'eval'" in result.stderr


def test_docs_pages_list_every_recipe_field_as_validated() -> None:
    from pairforge.recipe_docs import PAGES, render

    for stage in PAGES:
        page = REPO / "docs" / f"{stage}.md"
        stale = f"{page} is stale: run python -m pairforge.recipe_docs docs"
        assert page.read_text(encoding="utf-8") == render(stage), stale


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes" / "paper").glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_recipes_pass_a_dry_run(recipe: Path) -> None:
    """Valid, their data formats checked on the shipped samples, a plan printed; no GPU, data or key here."""
    result = pairforge("run", str(recipe), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run: the recipe is valid" in result.stderr and "format on alpaca_data.sample.json" in result.stderr


def test_a_train_stage_resumes_only_its_own_unfinished_work(tmp_path: Path) -> None:
    """Checkpoints survive a crash and are resumed with the same settings; they are wiped when the settings
    changed or when a finished stage is run again (--from), so no run resumes another's checkpoint."""
    from pairforge.layout import RunDir
    from pairforge.pipeline import Plan, execute
    from pairforge.stage_unit import StageUnit

    work = tmp_path / "train" / "x"
    seen: list[bool] = []

    def stage(settings: dict[str, Any], crash: bool = False) -> Plan:
        def train(fresh: bool = False) -> list[Path]:
            if fresh:  # as the trainer does: the earlier work goes once this run's inputs are known good
                shutil.rmtree(work)
            seen.append((work / "checkpoint").exists())
            work.mkdir(parents=True, exist_ok=True)
            (work / "checkpoint").write_text("state")
            if crash:
                raise KeyboardInterrupt
            (work / "model").write_text("weights")
            return [work / "model"]
        return Plan(None, RunDir(tmp_path), [StageUnit("train:x", "t", "1", None, train, [], settings, work_dir=work,  # type: ignore[arg-type]
                                                       produce_fresh=lambda: train(fresh=True))])

    with pytest.raises(KeyboardInterrupt):
        execute(stage({"lr": 1}, crash=True))
    execute(stage({"lr": 1}))  # same settings after a crash: resumes from the checkpoint
    execute(stage({"lr": 2}))  # settings changed: starts empty
    execute(stage({"lr": 2}), start="train:x")  # finished, run again on purpose: starts empty
    assert seen == [False, True, False, False]


def test_a_fresh_start_that_failed_before_clearing_starts_fresh_again(tmp_path: Path) -> None:
    """Settings changed, and the new run fails before it clears the folder (its model does not load): the next
    attempt must start fresh again, not resume the earlier run's checkpoint as its own."""
    from pairforge.layout import RunDir
    from pairforge.pipeline import Plan, execute
    from pairforge.stage_unit import StageUnit

    work = tmp_path / "train" / "x"
    calls: list[tuple[str, int]] = []

    def stage(lr: int, fails: bool = False) -> Plan:
        def train(how: str) -> list[Path]:
            calls.append((how, lr))
            if fails:
                raise RuntimeError("the model does not load")
            work.mkdir(parents=True, exist_ok=True)
            (work / "model").write_text(f"lr {lr}")
            return [work / "model"]
        return Plan(None, RunDir(tmp_path), [StageUnit("train:x", "t", "1", None, lambda: train("run"), [],  # type: ignore[arg-type]
                                                       {"lr": lr}, work_dir=work,
                                                       produce_fresh=lambda: train("fresh"))])

    execute(stage(1))
    with pytest.raises(RuntimeError):
        execute(stage(2, fails=True))
    execute(stage(2))
    assert calls == [("run", 1), ("fresh", 2), ("fresh", 2)]


@pytest.mark.slow
def test_a_reward_model_judge_trained_on_pairs_kept_apart_scores_the_runs_again(tmp_path: Path,
                                                                               tiny_model_dir: Path) -> None:
    """pairs.judge_fraction keeps prompts apart from training and from the eval split; a reward-model run
    trains on them only, is not evaluated as a policy, and scores every evaluated model's answers again."""
    sample = REPO / "data" / "sample"
    tiny = {"model": str(tiny_model_dir), "max_steps": 2, "batch_size": 4, "max_length": 64}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "prompts": str(sample / "strong.json"),
        "sources": [{"name": n, "backend": "file", "path": str(sample / f"{n}.json")} for n in ("strong", "weak")],
        "pairs": {"rank": "strong > weak", "eval_fraction": 0.3, "judge_fraction": 0.3},
        "runs": [{"name": "rm", "method": "reward-model", "split": "judge", **tiny},
                 {"name": "dpo", "method": "dpo", **tiny}],
        "eval": {"reference": str(sample / "strong.json"), "judge_run": "rm", "max_new_tokens": 4, "bootstrap": 50},
    }))
    result = pairforge("run", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    ids = {split: set(pl.read_parquet(run / f"pairs{split}.parquet")["prompt_id"]) for split in ("", ".eval", ".judge")}
    assert all(ids.values()) and not (ids[""] & ids[".eval"] or ids[""] & ids[".judge"] or ids[".eval"] & ids[".judge"])
    assert json.loads((run / "train" / "rm" / "run.json").read_text())["config"]["pairs"] == str(
        run / "pairs.judge.parquet")
    first = json.loads((run / "eval" / "leaderboard.json").read_text())
    second = json.loads((run / "eval" / "rm" / "leaderboard.json").read_text())
    assert {m["model"] for m in first["models"]} == {"base", "dpo"}  # the judge is not evaluated as a policy
    assert second["judge"] == "reward-model" and {m["model"] for m in second["models"]} == {"base", "dpo"}
    assert all(m["prompts"] == len(ids[".eval"]) for m in second["models"])
    assert "vs_baseline" in next(m for m in second["models"] if m["model"] == "dpo")


def test_the_plan_sizes_each_run_by_the_pairs_it_trains_on(tmp_path: Path) -> None:
    """The quickstart's plan: 290 prompts, a quarter held out, three pair types (reference > smollm > plain).
    SFT's one-stage curriculum trains one pair type, DPO's three stages one type each; the eval is sized by the
    held-out prompts, as if they were a prompt file of that many (it was sized by 50 prompts, 3-4x off)."""
    from pairforge.pipeline import plan
    from pairforge.recipe import load_recipe

    recipe = load_recipe(QUICKSTART)
    stages = {s.name: s for s in plan(recipe, tmp_path / "run").stages}
    train_prompts = 290 * 0.75
    assert stages["pairs"].size == "<= 870 pairs"
    assert stages["train:sft"].size == f"~{round(train_prompts)} pair passes"
    assert stages["train:dpo"].size == f"~{round(3 * train_prompts)} pair passes"
    assert stages["train:sft"].estimate_s < stages["train:dpo"].estimate_s / 3  # a third of the pairs, target only
    held_out = tmp_path / "held-out.json"
    held_out.write_text(json.dumps([{"instruction": f"Say {i}."} for i in range(round(290 * 0.25))]))
    recipe.eval.prompts = held_out
    from_file = {s.name: s for s in plan(recipe, tmp_path / "run").stages}["eval"].estimate_s
    assert stages["eval"].estimate_s == pytest.approx(from_file, rel=0.01)
    recipe.runs[1].curriculum = None
    recipe.runs[1].epochs = 2
    assert {s.name: s for s in plan(recipe, tmp_path / "run").stages}["train:dpo"].size == \
        f"~{round(2 * 3 * train_prompts)} pair passes"


def test_eval_is_stale_when_its_held_out_prompts_change_and_only_then(tmp_path: Path) -> None:
    """The quickstart evaluates on the pairs' held-out split: an edited pairs.eval.parquet makes a finished eval
    stale, while pairs edited only in their train split leave it finished (it reads them only through the trained
    runs, whose markers change when they train again). Its fingerprint covered pairs.parquet instead."""
    from pairforge.layout import RunDir
    from pairforge.pipeline import plan
    from pairforge.recipe import load_recipe

    recipe, run = load_recipe(QUICKSTART), RunDir(tmp_path / "run")

    def eval_fingerprint() -> str:
        return {s.name: s for s in plan(recipe, run.root).stages}["eval"].fingerprint()

    def write(path: Path, prompt: str) -> None:
        pl.DataFrame({"prompt_id": ["p1"], "prompt": [prompt]}).write_parquet(path)

    run.root.mkdir()
    write(run.pairs("train"), "Say one.")
    write(run.pairs("eval"), "Say two.")
    finished = eval_fingerprint()
    write(run.pairs("train"), "Say three.")
    assert eval_fingerprint() == finished
    write(run.pairs("eval"), "Say four.")
    assert eval_fingerprint() != finished


def test_a_bad_edit_of_a_finished_run_loses_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A finished run's folder is started over only once its replacement has loaded: a run edited to a model
    that does not load is one line, and the trained model is still there. A damaged stage record (a hand edit,
    a full disk) makes that stage run again instead of a traceback. A renamed run's old folder stays on disk
    but leaves the report."""
    run = {"name": "dpo", "model": str(tiny_model_dir), "max_steps": 1, "max_length": 64, "batch_size": 4}
    path = sample_recipe(tmp_path, [run])
    recipe = yaml.safe_load(path.read_text())
    assert pairforge("run", str(path)).returncode == 0
    weights = tmp_path / "run" / "train" / "dpo" / "model" / "model.safetensors"
    trained = weights.read_bytes()
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    path.write_text(yaml.safe_dump({**recipe, "runs": [{**run, "model": str(not_a_model)}]}), encoding="utf-8")
    result = pairforge("run", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert weights.read_bytes() == trained
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    (tmp_path / "run" / "stages" / "pairs.json").write_text("{bad")
    result = pairforge("run", str(path))
    assert result.returncode == 0 and "pairs: running" in result.stderr, result.stderr
    path.write_text(yaml.safe_dump({**recipe, "runs": [{**run, "name": "renamed"}]}), encoding="utf-8")
    assert pairforge("run", str(path)).returncode == 0  # the report shows this recipe's runs, not the old folder's
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| renamed | dpo |" in report and "| dpo | dpo |" not in report and weights.read_bytes() == trained


@pytest.mark.parametrize("name", ["leaderboard.json", "eval.parquet", "store.sqlite", "store.sqlite-wal",
                                  "prompts.parquet", "reference.parquet", "dpo.model_outputs.json"])
def test_a_judge_run_named_like_an_eval_file_is_refused_before_training(name: str) -> None:
    """eval/<judge_run>/ holds the reward model's scores beside eval's own files: a run named like one of them
    failed only after every run had trained."""
    from pydantic import ValidationError

    from pairforge.recipe import Recipe

    recipe = {"pairs": {"rank": "a > b", "judge_fraction": 0.2},
              "runs": [{"name": "dpo"}, {"name": name, "method": "reward-model", "split": "judge"}],
              "eval": {"reference_source": "a", "judge_run": name}}
    with pytest.raises(ValidationError, match=f"eval.judge_run: '{name}' is the name of a file in eval/"):
        Recipe.model_validate(recipe)
    Recipe.model_validate({**recipe, "runs": [{"name": "dpo"}, {"name": "rm", "method": "reward-model",
                                                                 "split": "judge"}],
                           "eval": {"reference_source": "a", "judge_run": "rm"}})


@pytest.mark.parametrize(("section", "key"), [("", "samples_per_source"), ("runs", "max_steps"),
                                              ("runs", "lr"), ("eval", "bootstrap")])
def test_true_or_false_is_no_number_in_any_section(section: str, key: str) -> None:
    """pydantic's lax mode reads a boolean as 1 or 0 for a number field; a recipe's `max_steps: true` is a slip."""
    from pydantic import ValidationError

    from pairforge.recipe import Recipe

    data = {key: True} if not section else {"runs": [{"name": "dpo", key: True}]} if section == "runs" else \
        {"eval": {key: True}}
    with pytest.raises(ValidationError, match="found boolean True"):
        Recipe.model_validate(data)


def test_quick_dry_run_writes_nothing(tmp_path: Path) -> None:
    """`run --quick --dry-run` counted its prompts from run-quick/quick-prompts.parquet, which it wrote: a dry run
    writes nothing."""
    recipe = relocated(QUICKSTART, tmp_path)
    result = pairforge("run", str(recipe), "--quick", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "36 answers" in result.stderr and "(quick)" in result.stderr  # 3 sources x its 12 prompts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quickstart.yaml"]


def test_model_folders_replaced_in_place_are_trained_and_scored_again(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The base model and the reward-model judge replaced in their folders (the same paths, other weights): the
    stages that read them run again, and the judge's scores are the new model's, not the store's old ones."""
    from conftest import replace_weights
    from pairforge.models import load_causal_lm

    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    judge, tokenizer = load_causal_lm(str(tiny_model_dir), reward_head=True)
    judge.save_pretrained(str(tmp_path / "rm"))
    tokenizer.save_pretrained(str(tmp_path / "rm"))
    path = sample_recipe(tmp_path, [{"name": "dpo", "model": str(base), "max_steps": 1, "max_length": 64,
                                      "batch_size": 4}],
                         judge={"kind": "reward-model", "model": str(tmp_path / "rm"), "max_length": 64})
    assert pairforge("run", str(path)).returncode == 0
    scores = pl.read_parquet(tmp_path / "run" / "responses.scored.parquet")["score"].to_list()
    again = pairforge("run", str(path))
    assert "judge: skipped" in again.stderr and "train:dpo: skipped" in again.stderr, again.stderr
    replace_weights(base, seed=1)
    again = pairforge("run", str(path))
    assert "judge: skipped" in again.stderr and "train:dpo: running" in again.stderr, again.stderr
    replace_weights(tmp_path / "rm", seed=2)
    again = pairforge("run", str(path))
    assert again.returncode == 0 and "judge: running" in again.stderr, again.stderr
    assert pl.read_parquet(tmp_path / "run" / "responses.scored.parquet")["score"].to_list() != scores
