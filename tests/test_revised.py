"""The `revised` pair strategy: a reviser's minimal edit of an answer against that answer.

The token-level edit distance against hand-computed values and a plain dynamic programme; the strategy on
written answers (no-ops and rewrites dropped and counted, near-duplicates kept on purpose); bad recipes as one
line; and the whole thing through a real llama.cpp server (the embedded SmolLM2 as a weak reviser): prompt,
original and revision recorded, a rerun sends no request, kill -9 mid-stage resumes from the store.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import polars as pl
import pytest
import yaml
from servers import FaultProxy
from test_cli_options import cli

from conftest import one_line_error, write_jsonl
from pairforge.edits import distribution, edit_distance, levenshtein, tokens
from pairforge.schema import prompt_id_of


def pairforge(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pairforge", *map(str, args)], capture_output=True, text=True,
                          timeout=900)


# --- the edit distance ---------------------------------------------------------------------------------------

def test_tokens_are_words_and_single_punctuation_marks() -> None:
    assert tokens("Hello, world!  It's 3.5 km.") == ["Hello", ",", "world", "!", "It", "'", "s", "3", ".", "5",
                                                      "km", "."]
    assert tokens(" \n\t ") == []


@pytest.mark.parametrize("original, revision, expected", [
    ("The cat sat on the mat.", "The cat sat on the mat.", 0.0),
    ("The cat sat\non the   mat.", "The cat sat on the mat.", 0.0),  # whitespace is not a token
    ("A spider has six legs.", "A spider has eight legs.", 1 / 6),  # one substitution in 6 tokens
    ("a b c", "a b x c", 1 / 4),  # one insertion; normalised by the longer (4)
    ("a b x c", "a b c", 1 / 4),  # one deletion
    ("Paris.", "paris.", 1 / 2),  # case counts
    ("one two three", "four five", 1.0),  # nothing in common: 3 edits / 3
    ("x y z w", "y z w x", 2 / 4),  # a token moved to the end: delete + insert
    ("", "", 0.0),
    ("", "Hi", 1.0),
])
def test_edit_distance_hand_computed(original: str, revision: str, expected: float) -> None:
    assert edit_distance(original, revision) == pytest.approx(expected)


def test_levenshtein_classic_and_against_a_plain_dynamic_programme() -> None:
    """The shared head and tail are cut before the DP; that shortcut must never change the distance."""
    def plain(a: list[str], b: list[str]) -> int:
        table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                substitute = table[i - 1][j - 1] + (a[i - 1] != b[j - 1])
                table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, substitute)
        return table[-1][-1]

    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein(list("flaw"), list("lawn")) == 2
    rng = random.Random(0)
    for _ in range(400):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 9))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 9))]
        assert levenshtein(a, b) == plain(a, b), (a, b)


def test_distribution_quartiles_and_histogram() -> None:
    d = distribution([0.0, 0.1, 0.2, 0.3, 1.0])
    assert (d.n, d.min, d.q1, d.median, d.q3, d.max) == (5, 0.0, 0.1, 0.2, 0.3, 1.0)
    assert len(d.histogram) == 50 and sum(d.histogram) == 5  # bins 0.02 wide: [0.1, 0.12) is bin 5
    assert [i for i, count in enumerate(d.histogram) if count] == [0, 5, 10, 15, 49]
    assert distribution([]).model_dump(exclude_none=True) == {"n": 0, "histogram": [0] * 50}  # no statistic of none


def test_terminal_bars_sum_neighbouring_bins_to_fit_their_column() -> None:
    from pairforge.render import bars

    assert bars(distribution([0.0, 0.01, 0.1, 0.3, 1.0]).histogram) == "█▄ ▄     ▄"  # 10 cells of 0.1
    assert bars([1, 0, 2]) == "▄ █"  # already narrow: as it is


# --- the revision requests ------------------------------------------------------------------------------------

def test_revision_requests_carry_the_filled_template_and_a_key_that_changes_with_what_changes_the_revision() -> None:
    from pairforge.config import RevisionConfig, SourceConfig
    from pairforge.records import responses_frame
    from pairforge.revision import revision_requests
    from pairforge.schema import Response

    originals = responses_frame([Response("What is {answer}?", "base", "It is {instruction}: 5."),
                                 Response([{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Yo"},
                                           {"role": "user", "content": "Name a colour."}], "base", "Blue.")])
    reviser = SourceConfig(name="editor", backend="openai", model="m", base_url="http://a/v1", system="Be brief.")
    cfg = RevisionConfig(reviser="editor", original="base", template="Q: {instruction}\nA: {answer}\n{json: 1}")

    def keys(source: SourceConfig = reviser, revision: RevisionConfig = cfg,
             frame: pl.DataFrame = originals) -> list[str]:
        return [r.key for r in revision_requests(frame, source, revision)]

    first, second = revision_requests(originals, reviser, cfg)
    asked = "Q: What is {answer}?\nA: It is {instruction}: 5.\n{json: 1}"  # filled once: braces in texts stay
    assert first.messages == [{"role": "system", "content": "Be brief."},  # the reviser's own system prompt
                              {"role": "user", "content": asked}]
    assert second.messages[-1]["content"] == "Q: Hi.\n\nYo\n\nName a colour.\nA: Blue.\n{json: 1}"  # chat turns
    assert first.key.startswith("revise:editor:base:") and len(set(keys())) == 2
    moved = reviser.model_copy(update={"base_url": "http://b/v1", "concurrency": 9, "max_retries": 1})
    assert keys(moved) == keys()  # where the server is and how hard it is pushed: the same revisions
    assert keys(reviser.model_copy(update={"temperature": 0.0})) != keys()
    assert keys(revision=cfg.model_copy(update={"template": "{instruction} {answer}"})) != keys()
    assert keys(revision=cfg.model_copy(update={"max_edit": 0.9})) == keys()  # the bounds only filter pairs
    edited = originals.with_columns(pl.lit("Four.").alias("response"))
    assert keys(frame=edited) != keys()  # a new original answer is revised again


def test_a_reviser_that_only_revises_answers_no_prompt(tmp_path: Path) -> None:
    """`generate` asks the answering sources only: the reviser (here a server nobody listens on, which would fail
    every request) is not asked to answer the prompts; a reviser that revises its own answers still answers."""
    from servers import free_port

    from pairforge.generation.answers import generate
    from pairforge.recipe import load_recipe

    written_answers(tmp_path)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ANSWERS))
    data = yaml.safe_load(revision_recipe(tmp_path).read_text())
    data["prompts"] = "prompts.jsonl"
    data["sources"][1].update(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data))
    recipe = load_recipe(tmp_path / "recipe.yaml")
    result = generate(recipe, tmp_path / "out", show_progress=False)
    assert set(result.tallies) == {"base"} and result.failed == 0 and result.exported == len(ANSWERS)
    itself = recipe.model_copy(update={"pairs": recipe.pairs.model_copy(
        update={"revision": recipe.pairs.revision.model_copy(update={"original": "editor"})})})  # type: ignore[union-attr]
    assert [s.name for s in itself.answering_sources] == ["base", "editor"]


# --- the strategy on written answers ---------------------------------------------------------------------------

LONG = ("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the chloroplasts of "
        "green plants, and it feeds almost every food chain on Earth")
ANSWERS = {  # prompt: (original, revision)
    "Capital of France?": ("The capital of France is Paris.", "The capital of France is Paris."),  # no-op
    "Legs of a spider?": ("A spider has six legs.", "A spider has  six legs."),  # re-spaced only: no-op
    "A primary colour?": ("Red is a primary colour.", "Red is a primary color."),  # minimal edit: 1 / 6
    "Photosynthesis?": (LONG + ".", LONG + " we know."),  # minimal, and a near-duplicate by word overlap
    "Say hello.": ("Hello there.", "Greetings, dear friend, how are you doing on this fine day?"),  # rewrite
    "Shout.": ("HELLO.", "hello."),  # differs in case only: identical after normalisation
}


def revision_recipe(folder: Path, **revision: Any) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "sources": [{"name": "base", "backend": "file", "path": "base.jsonl"},
                    {"name": "editor", "backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}],
        "pairs": {"strategy": "revised", "revision": {"reviser": "editor", "original": "base", **revision}}}))
    return recipe


def written_answers(folder: Path) -> tuple[Path, Path]:
    """The original answers (source base) and their revisions as `pairforge revise` writes them (source base+editor)."""
    base = write_jsonl(folder / "base.jsonl", [{"prompt": p, "source": "base", "response": o}
                                               for p, (o, _) in ANSWERS.items()])
    revised = write_jsonl(folder / "revisions.jsonl", [{"prompt": p, "source": "base+editor", "response": r}
                                                       for p, (_, r) in ANSWERS.items()])
    return base, revised


def test_revised_pairs_keep_minimal_edits_and_count_no_ops_and_rewrites(tmp_path: Path) -> None:
    base, revised = written_answers(tmp_path)
    out = tmp_path / "pairs.parquet"
    result = cli("pairs", "build", base, revised, "--config", revision_recipe(tmp_path), "--out", out)
    assert result.exit_code == 0, result.output
    pairs = pl.read_parquet(out).sort("edit_distance")
    text = {c: [turns[-1]["content"] for turns in pairs[c]] for c in ("prompt", "chosen", "rejected")}
    assert text["prompt"] == ["Photosynthesis?", "A primary colour?"]
    assert text["chosen"] == [ANSWERS[p][1] for p in text["prompt"]]  # chosen = the revision
    assert text["rejected"] == [ANSWERS[p][0] for p in text["prompt"]]  # rejected = the original
    assert pairs["edit_distance"].to_list() == pytest.approx([2 / 31, 1 / 6])  # 2 inserted in 28 + 3 tokens
    assert set(pairs["pair_type"]) == {"revision"}
    assert pairs["margin"].to_list() == pairs["edit_distance"].to_list()  # a small edit is a hard pair:
    assert pairs["difficulty"].to_list() == pytest.approx([1 - (2 / 31) / 0.5, 1 - (1 / 6) / 0.5])  # 1 - edit / max
    assert pairs["chosen_source"].to_list() == ["base+editor"] * 2 and set(pairs["rejected_source"]) == {"base"}

    summary = json.loads(out.with_name("pairs.summary.json").read_text())
    revision = summary["revision"]
    assert (revision["revisions"], revision["no_op"], revision["rewrite"], revision["kept"]) == (6, 2, 1, 3)
    assert summary["dropped_prompts"]["pairs with a no-op revision (edit distance <= 0.0)"] == 2
    assert summary["dropped_prompts"]["pairs with a rewrite, not a revision (edit distance > 0.5)"] == 1
    assert summary["dropped_pairs"] == {"chosen == rejected": {"revision": 1}}  # 'HELLO.' -> 'hello.'
    assert revision["edit_distance"]["all"]["n"] == 6 and revision["edit_distance"]["kept"]["n"] == 3
    histogram = revision["edit_distance"]["all"]["histogram"]
    assert histogram[0] == 2 and histogram[3] == 1  # the two no-ops; the 2/31 edit in [0.06, 0.08)
    assert "edit distance (tokens)" in result.stderr and "dropped as no-op: 2" in result.stderr  # the summary table


def test_scored_answers_keep_the_revision_order_and_carry_their_scores(tmp_path: Path) -> None:
    """Answers a judge scored (a `score` column, as responses.scored.parquet has): a revision pair's evidence is the
    revision, so a revision the judge scored below its original is still chosen, and both scores travel with it.
    This used to stop with a traceback ('a scored pair's chosen answer does not outscore the rejected one')."""
    scores = {"A primary colour?": (0.9, 0.4), "Photosynthesis?": (0.2, 0.7)}  # (original, revision)
    base, revised = written_answers(tmp_path)
    for path, side in ((base, 0), (revised, 1)):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        write_jsonl(path, [{**r, "score": scores.get(r["prompt"], (0.5, 0.5))[side]} for r in rows])
    out = tmp_path / "pairs.parquet"
    result = cli("pairs", "build", base, revised, "--config", revision_recipe(tmp_path), "--out", out)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    pairs = pl.read_parquet(out).sort("edit_distance")
    prompts = [turns[-1]["content"] for turns in pairs["prompt"]]
    assert prompts == ["Photosynthesis?", "A primary colour?"]
    assert [turns[-1]["content"] for turns in pairs["chosen"]] == [ANSWERS[p][1] for p in prompts]  # the revision
    assert [turns[-1]["content"] for turns in pairs["rejected"]] == [ANSWERS[p][0] for p in prompts]
    assert pairs["chosen_score"].to_list() == [0.7, 0.4] and pairs["rejected_score"].to_list() == [0.2, 0.9]
    assert pairs["margin"].to_list() == pytest.approx([2 / 31, 1 / 6])  # the edit, not the score gap
    summary = json.loads(out.with_name("pairs.summary.json").read_text())
    assert summary["strategy"] == "revised" and summary["pairs"]["train"] == {"revision": 2}
    revision = summary["revision"]
    assert (revision["revisions"], revision["no_op"], revision["rewrite"], revision["kept"]) == (6, 2, 1, 3)


def test_the_edit_bounds_come_from_the_recipe(tmp_path: Path) -> None:
    base, revised = written_answers(tmp_path)
    out = tmp_path / "pairs.parquet"
    result = cli("pairs", "build", base, revised, "--config", revision_recipe(tmp_path, min_edit=0.1, max_edit=0.9),
                 "--out", out)
    assert result.exit_code == 0, result.output
    revision = json.loads(out.with_name("pairs.summary.json").read_text())["revision"]
    assert (revision["no_op"], revision["rewrite"], revision["kept"]) == (3, 1, 2)  # the 2/31 edit is now too small
    assert pl.read_parquet(out)["edit_distance"].to_list() == pytest.approx([1 / 6])  # + 'HELLO.' dropped as equal


def test_edit_bound_flags_override_the_recipe(tmp_path: Path) -> None:
    base, revised = written_answers(tmp_path)
    recipe = revision_recipe(tmp_path, min_edit=0.1, max_edit=0.9)
    for flags, bounds, counts in ((["--min-edit", "0", "--max-edit", "0.5"], (0.0, 0.5), (2, 1, 3)),
                                  (["--max-edit", "0.2"], (0.1, 0.2), (3, 2, 1))):  # min_edit stays the recipe's
        out = tmp_path / f"pairs-{len(flags)}.parquet"
        result = cli("pairs", "build", base, revised, "--config", recipe, *flags, "--out", out)
        assert result.exit_code == 0, result.output
        revision = json.loads(out.with_name(f"{out.stem}.summary.json").read_text())["revision"]
        assert (revision["min_edit"], revision["max_edit"]) == bounds
        assert (revision["no_op"], revision["rewrite"], revision["kept"]) == counts


@pytest.mark.parametrize("flags, option, message", [
    (["--min-edit", "0.5", "--max-edit", "0.2"], "--min-edit", "expected min_edit < max_edit, found min_edit 0.5 >= "
                                                               "max_edit 0.2"),
    (["--max-edit", "0.05"], "--max-edit", "found min_edit 0.1 >= max_edit 0.05"),  # the recipe's min_edit is 0.1
    (["--min-edit", "0.95"], "--min-edit", "found min_edit 0.95 >= max_edit 0.9"),
    (["--min-edit", "-0.1"], "--min-edit", "greater than or equal to 0"),
    (["--min-edit", "1"], "--min-edit", "less than 1"),
    (["--max-edit", "1.5"], "--max-edit", "less than or equal to 1"),
    (["--max-edit", "0"], "--max-edit", "greater than 0"),
    (["--max-edit", "half"], "'--max-edit'", "Invalid value for '--max-edit'"),  # typer's own check, one line too
    (["--min-edit", "0.1", "NO-RECIPE"], "--min-edit", "expected a `revision:` section in the recipe (--config)"),
])
def test_bad_edit_bound_flags_are_one_line_naming_the_flag(tmp_path: Path, flags: list[str], option: str,
                                                           message: str) -> None:
    base, revised = written_answers(tmp_path)
    recipe = ["--strategy", "revised"] if "NO-RECIPE" in flags else ["--config", revision_recipe(tmp_path, min_edit=0.1,
                                                                                                  max_edit=0.9)]
    out = tmp_path / "pairs.parquet"
    result = cli("pairs", "build", base, revised, *recipe, *[f for f in flags if f != "NO-RECIPE"], "--out", out)
    line = one_line_error(result, message)
    assert line.startswith(f"error: {option}") or f"for {option}" in line, line
    assert not out.exists()


def test_the_report_shows_the_edit_distance_distribution(tmp_path: Path) -> None:
    base, revised = written_answers(tmp_path)
    out = tmp_path / "run" / "pairs.parquet"
    assert cli("pairs", "build", base, revised, "--config", revision_recipe(tmp_path), "--out", out).exit_code == 0
    result = cli("report", tmp_path / "run", "--out", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.md").read_text()
    assert "editor revised 6 of base's answers: 3 kept" in page and "2 dropped as no-op, 1 as rewrites" in page
    assert "| all | 6 | 0.000 |" in page and "| kept | 3 |" in page
    figure = tmp_path / "report_files" / "revisions-pairs.summary.png"  # the histogram, kept interval shaded
    assert f"![revisions-pairs.summary](report_files/{figure.name})" in page
    assert plt.imread(figure).std() > 0.02  # something is drawn on it
    assert "<img alt='revisions-pairs.summary' src='data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_the_shipped_recipe_passes_a_dry_run() -> None:
    recipe = Path(__file__).parents[1] / "recipes" / "revised.yaml"
    result = pairforge("run", recipe, "--dry-run")
    assert result.returncode == 0, result.stderr
    plan: dict[str, str] = {}  # stage -> size, from the plan (the estimate's table after it names the stages too)
    for line in result.stderr.splitlines():
        if line.startswith("│ ") and line.split("│")[1].strip():
            plan.setdefault(line.split("│")[1].strip(), line.split("│")[3].strip())
    assert plan["generate"] == "290 answers" and plan["revise"] == "290 revisions"  # the reviser answers nothing
    estimate = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in result.stderr.splitlines()
                if line.startswith("│ ") and "│" in line[2:] and line.split("│")[2].strip()}
    assert estimate["generate"] == "290" and estimate["revise"] == "290"  # requests: the reviser's are revisions


# --- bad recipes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("revision, fragments", [
    ({"reviser": "nobody", "original": "base"},
     ["pairs.revision.reviser: 'nobody' is not a source of this recipe", "expected one of: base, editor"]),
    ({"reviser": "editor", "original": "nobody"}, ["pairs.revision.original: 'nobody' is not a source"]),
    ({"reviser": "base", "original": "base"}, ["pairs.revision.reviser: 'base' is a file source",
                                               "expected a model that can be asked"]),
    ({"reviser": "editor", "original": "base", "template": "Improve: {answer}"},
     ["field 'pairs.revision.template'", "expected the placeholders {instruction} and {answer}",
      "{instruction} missing"]),
    ({"reviser": "editor", "original": "base", "min_edit": 0.5, "max_edit": 0.2},
     ["field 'pairs.revision'", "expected min_edit < max_edit, found min_edit 0.5 >= max_edit 0.2"]),
    ({"reviser": "editor", "original": "base", "max_edit": 1.5},
     ["field 'pairs.revision.max_edit'", "less than or equal to 1"]),
    ({"reviser": "editor", "original": "base", "min_edit": -0.1},
     ["field 'pairs.revision.min_edit'", "greater than or equal to 0"]),
    ({"original": "base"}, ["field 'pairs.revision.reviser'", "Field required"]),
])
def test_bad_revision_recipes_are_one_line(tmp_path: Path, revision: dict[str, Any], fragments: list[str]) -> None:
    (tmp_path / "base.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "p"}\n')
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "prompts": "prompts.jsonl",
        "sources": [{"name": "base", "backend": "file", "path": "base.jsonl"},
                    {"name": "editor", "backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}],
        "pairs": {"strategy": "revised", "revision": revision}}))
    for command in (["run", recipe, "--dry-run"], ["revise", recipe, "--out", tmp_path / "out"]):
        one_line_error(cli(*command), "recipe.yaml", *fragments)
    assert not (tmp_path / "out").exists()


def test_strategy_revised_and_the_revision_section_go_together(tmp_path: Path) -> None:
    base, revised = written_answers(tmp_path)
    one_line_error(cli("pairs", "build", base, revised, "--strategy", "revised"),
                   "--strategy", "`strategy` revised needs `revision` (reviser, original)")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"pairs": {"rank": "a > b", "revision": {"reviser": "a", "original": "b"}}}))
    one_line_error(cli("pairs", "build", base, "--config", recipe), "recipe.yaml", "expected both or neither")


# --- through a real llama.cpp server -----------------------------------------------------------------------------

CAREFUL = ("Rewrite the answer to the instruction more carefully: fix any mistake, change as little as possible, "
           "and reply with the rewritten answer only.\n\nInstruction: {instruction}\n\nAnswer: {answer}")


REFERENCE = Path(__file__).parents[1] / "data" / "quickstart" / "reference.json"


def served_recipe(folder: Path, base_url: str, prompts: int = 10, answers_file: Path | None = None,
                  **revision: Any) -> Path:
    """The embedded SmolLM2 behind llama.cpp answers (smollm; or a file source's answers are revised) and revises
    those answers at low temperature (careful: a weak reviser, but the machinery is real)."""
    rows = json.loads(REFERENCE.read_text())[:prompts]
    write_jsonl(folder / "prompts.jsonl", [{"prompt": r["instruction"]} for r in rows])
    served = {"backend": "openai", "model": "smollm2", "base_url": base_url, "concurrency": 1}
    original = ({"backend": "file", "path": str(answers_file)} if answers_file else
                {**served, "temperature": 0.7, "max_new_tokens": 40})
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(folder / "run"), "prompts": "prompts.jsonl",
        "sources": [{"name": "smollm", **original},
                    {"name": "careful", **served, "temperature": 0.1, "max_new_tokens": 64,
                     "stop": ["\n\nInstruction"]}],
        "pairs": {"strategy": "revised", "filters": {"drop_truncated": False},
                  "revision": {"reviser": "careful", "original": "smollm", "template": CAREFUL, **revision}}}))
    return recipe


def stage_said(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.split(":")[0]: line.split(": ")[1] for line in result.stderr.splitlines()
            if ": running" in line or ": skipped" in line}


@pytest.mark.slow
def test_revision_pairs_through_a_real_llama_cpp_server(tmp_path: Path, llama_server: Any) -> None:
    counter = FaultProxy(llama_server.port, every=10**9)  # faults off: forwards every request and counts it
    try:
        recipe = served_recipe(tmp_path, counter.base_url)
        said = stage_said(pairforge("run", recipe, "--to", "pairs"))
        assert [s for s, what in said.items() if what.startswith("running")] == ["generate", "revise", "pairs"]
        run = tmp_path / "run"
        responses = pl.read_parquet(run / "responses.parquet")
        assert set(responses["source"]) == {"smollm"} and responses.height == 10  # the reviser only revises
        asked = asked_texts(counter)  # distinct requests (a client retry after a timeout sends one again)
        prompts = set(responses["prompt"])
        assert len(asked) == 20 and len(asked & prompts) == 10  # 10 answers and 10 revisions, nothing else
        assert all(text.startswith("Rewrite the answer") for text in asked - prompts)
        sent = counter.requests

        revisions = pl.read_parquet(run / "revisions.parquet")
        original = dict(zip(responses["prompt_id"], responses["response"], strict=True))
        assert revisions.height == 10 and set(revisions["source"]) == {"smollm+careful"}
        assert set(revisions["reviser"]) == {"careful"} and set(revisions["original_source"]) == {"smollm"}
        assert revisions["original"].to_list() == [original[p] for p in revisions["prompt_id"]]  # what was revised
        assert revisions["prompt"].to_list() == responses["prompt"].to_list()
        assert revisions["edit_distance"].to_list() == [edit_distance(o, r) for o, r in
                                                        zip(revisions["original"], revisions["response"], strict=True)]
        keys = [k for (k,) in sqlite3.connect(run / "store.sqlite").execute(
            "SELECT key FROM results WHERE kind = 'revision' AND value IS NOT NULL")]
        assert len(keys) == 10 and all(k.startswith("revise:careful:smollm:") for k in keys)

        summary = json.loads((run / "pairs.summary.json").read_text())
        revision = summary["revision"]
        distances = revisions["edit_distance"]
        assert revision["revisions"] == 10
        assert revision["no_op"] == (distances == 0).sum() and revision["no_op"] >= 1  # the weak reviser often copies
        assert revision["rewrite"] == (distances > 0.5).sum()
        assert revision["kept"] == 10 - revision["no_op"] - revision["rewrite"]
        pairs = pl.read_parquet(run / "pairs.parquet")
        assert pairs.height == revision["kept"] - sum(sum(v.values()) for v in summary["dropped_pairs"].values())
        assert set(pairs["pair_type"]) == {"revision"} and pairs.height > 0
        assert all(0 < d <= 0.5 for d in pairs["edit_distance"])
        by_prompt = {p: (o, r) for p, o, r in revisions.select("prompt_id", "original", "response").iter_rows()}
        for pid, chosen, rejected in pairs.select("prompt_id", "chosen", "rejected").iter_rows():
            assert (rejected[-1]["content"], chosen[-1]["content"]) == by_prompt[pid]

        again = stage_said(pairforge("run", recipe, "--to", "pairs"))
        assert again == {"generate": "skipped (finished, inputs and settings unchanged)",
                         "revise": "skipped (finished, inputs and settings unchanged)",
                         "pairs": "skipped (finished, inputs and settings unchanged)"}
        forced = stage_said(pairforge("run", served_recipe(tmp_path, counter.base_url, max_edit=0.9),
                                      "--to", "pairs", "--from", "revise"))
        assert forced["revise"].startswith("running") and counter.requests == sent  # all from the store
        assert json.loads((run / "pairs.summary.json").read_text())["revision"]["max_edit"] == 0.9
        bounds_only = stage_said(pairforge("run", served_recipe(tmp_path, counter.base_url, max_edit=0.8),
                                           "--to", "pairs"))
        assert bounds_only["revise"].startswith("skipped") and bounds_only["pairs"].startswith("running")
    finally:
        counter.close()


@pytest.mark.slow
def test_kill_9_mid_revise_resumes_from_the_store(tmp_path: Path, llama_server: Any) -> None:
    counter = FaultProxy(llama_server.port, every=10**9)
    try:
        recipe = served_recipe(tmp_path, counter.base_url, prompts=8, answers_file=REFERENCE)  # no generation
        assert stage_said(pairforge("run", recipe, "--to", "generate"))["generate"].startswith("running")
        run = tmp_path / "run"
        process = subprocess.Popen([sys.executable, "-m", "pairforge", "revise", str(recipe), "--out", str(run)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and revised_rows(run / "store.sqlite") < 3:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        committed = {key.split(":")[3] for (key,) in sqlite3.connect(run / "store.sqlite").execute(
            "SELECT key FROM results WHERE kind = 'revision'")}  # revise:careful:smollm:<prompt_id>:...
        assert 3 <= len(committed) < 8 and not (run / "revisions.parquet").exists()
        before = len(counter.bodies)  # the committed ones and the one in flight

        said = stage_said(pairforge("run", recipe, "--to", "pairs"))
        assert said["generate"].startswith("skipped") and said["revise"].startswith("running")
        prompt_ids = set(pl.read_parquet(run / "responses.parquet")["prompt_id"])
        instructions = [text.split("Instruction: ")[1].split("\n\nAnswer: ")[0]  # the CAREFUL template's
                        for text in asked_texts(counter, since=before)]
        asked_again = {prompt_id_of([{"role": "user", "content": text}]) for text in instructions}
        assert asked_again == prompt_ids - committed  # only what was not committed
        revisions = pl.read_parquet(run / "revisions.parquet")
        assert revisions.height == 8 and revisions["prompt_id"].n_unique() == 8  # no lost row, no duplicate
    finally:
        counter.close()


def asked_texts(proxy: FaultProxy, since: int = 0) -> set[str]:
    """The distinct last chat turns the proxy forwarded (from its `since`-th request on)."""
    return {json.loads(body)["messages"][-1]["content"] for body in proxy.bodies[since:]}


def revised_rows(db: Path) -> int:
    """Revisions committed to a run's store while another process writes it."""
    try:
        return sqlite3.connect(db).execute("SELECT COUNT(*) FROM results WHERE kind = 'revision'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
