"""The report from a real tiny run: pairs, judge + rank, DPO training with a curriculum, evaluation;
rendered in headless Chromium (Debian's chromium) and checked section by section."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from conftest import SAMPLE

pytestmark = pytest.mark.slow


def pairforge(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pairforge", *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("run")
    samples = [str(SAMPLE / f"{name}.json") for name in ("strong", "medium", "weak")]
    pairforge("pairs", "build", *samples, "--rank", "strong > medium > weak", "--eval-fraction", "0.2",
              "--out", str(root / "pairs" / "pairs.parquet"))
    responses = root / "sources" / "responses.jsonl"
    responses.parent.mkdir()
    responses.write_text("".join(json.dumps({"prompt": r["instruction"], "source": name, "response": r["output"]})
                                 + "\n" for name in ("strong", "medium", "weak")
                                 for r in json.loads((SAMPLE / f"{name}.json").read_text())))
    (root / "judge.yaml").write_text("judge: {kind: similarity, reference: strong}\nranking: {bootstrap: 200}\n")
    pairforge("judge", str(root / "judge.yaml"), "--out", str(root / "sources"), "--responses", str(responses))
    pairforge("rank", str(root / "judge.yaml"), "--out", str(root / "sources"))
    pairforge("train", "--model", str(tiny_model_dir), "--pairs", str(root / "pairs" / "pairs.parquet"),
              "--out", str(root / "dpo-curriculum"), "--batch-size", "8", "--max-length", "96", "--lr", "1e-3",
              "--curriculum", "buckets", "--difficulty", "strength-gap")
    pairforge("eval", "--outputs", str(SAMPLE / "medium.json"), "--outputs", str(SAMPLE / "weak.json"),
              "--reference", str(SAMPLE / "strong.json"), "--judge", "similarity", "--out", str(root / "eval"),
              "--bootstrap", "200")
    return root


def test_report_has_every_section_and_renders_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    pairforge("report", str(run_dir), "--out", str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    for section in ("pairs", "sources", "training", "evaluation", "reproduce"):
        assert f"<section id='{section}'>" in page
    assert page.count("data:image/png;base64,") >= 5  # self-contained: every plot embedded
    assert "strong&gt;weak" in page and "dpo-curriculum" in page
    evaluation = page.split("<section id='evaluation'>")[1].split("</section>")[0]
    board = json.loads((run_dir / "eval" / "leaderboard.json").read_text())
    medium = next(m for m in board["models"] if m["model"] == "medium")
    versus = medium["vs_next"]
    p = versus["p_value"]
    assert versus["model"] == "weak" and versus["significant"] == (p < 0.05)
    verdict = (f"{'better' if versus['difference'] > 0 else 'worse'} on the {versus['prompts']} prompts both were "
               "judged on" if p < 0.05 else "not significantly different at this size")  # whether the gap is real
    assert f"medium vs weak: {verdict} ({'p < 0.001' if p < 0.001 else f'p = {p:.3f}'})" in evaluation
    markdown = (tmp_path / "report.md").read_text()
    pictures = sorted((tmp_path / "report_files").glob("*.png"))
    assert len(pictures) >= 5 and all(f"report_files/{p.name}" in markdown for p in pictures)
    for picture in pictures:  # every plot has something drawn on it
        assert plt.imread(picture).std() > 0.02, picture.name

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):  # .ci/run installs it: a CI run must check the rendered page
            pytest.fail("chromium is missing in CI: .ci/run should have installed Debian's chromium")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium); CI installs it")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'c'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", (tmp_path / "report.html").as_uri()], capture_output=True,
                         text=True, timeout=120)
    for section in ("pairs", "sources", "training", "evaluation", "reproduce"):
        assert f'<section id="{section}">' in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2400",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    image = plt.imread(shot)
    assert image.shape[0] == 2400 and image.std() > 0.05  # a rendered page, not a blank one


def test_report_of_nothing_is_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pairforge", "report", str(tmp_path), "--out",
                           str(tmp_path / "r.html")], capture_output=True, text=True)
    assert done.returncode == 2 and "nothing to report" in done.stderr and "Traceback" not in done.stderr


def test_markdown_settings_block_holds_raw_json(tmp_path: Path) -> None:
    """report.md's ```json block is code: raw text that parses as the settings (it held `&quot;` for every quote,
    194 in the quickstart's), fenced past any backticks a setting holds; the HTML page still escapes it."""
    samples = [str(SAMPLE / f"{name}.json") for name in ("strong", "medium", "weak")]
    pairforge("pairs", "build", *samples, "--rank", "strong > medium > weak", "--out", str(tmp_path / "pairs.parquet"))
    summary = tmp_path / "pairs.summary.json"
    data = json.loads(summary.read_text())
    data["config"]["note"] = 'a "quoted" <tag> & a ```fence```'  # as a revision template may hold
    summary.write_text(json.dumps(data))
    pairforge("report", str(summary), "--out", str(tmp_path / "report.html"))
    markdown = (tmp_path / "report.md").read_text()
    block = markdown.split("````json\n")[1].split("\n````")[0]
    assert json.loads(block) == {str(summary): data["config"]}
    assert "&quot;" not in markdown and "&lt;" not in markdown
    page = (tmp_path / "report.html").read_text()
    assert "\\&quot;quoted\\&quot; &lt;tag&gt; &amp;" in page and "<tag>" not in page
