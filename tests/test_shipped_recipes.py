"""Every shipped recipe's `--quick` smoke test passes as a user runs it (recipes/*.yaml, on this machine's CPU with
the embedded model; the quickstart's in test_pipeline.py). recipes/paper/* need a GPU, hub models and an API key:
they get a dry run (tests/test_pipeline.py::test_paper_recipes_pass_a_dry_run), not a quick run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))
# quickstart's --quick runs in tests/test_pipeline.py::test_quickstart_quick_makes_every_artifact_then_resumes
QUICK_HERE = [p for p in SHIPPED if p.name != "quickstart.yaml"]


def relocated(recipe: Path, folder: Path) -> Path:
    """The recipe as shipped, with its run folder in `folder` and its relative paths made absolute."""
    data = yaml.safe_load(recipe.read_text())
    data["run_dir"] = str(folder / "run")
    data["prompts"] = str((recipe.parent / data["prompts"]).resolve())
    for source in data["sources"]:
        if "path" in source:
            source["path"] = str((recipe.parent / source["path"]).resolve())
    if (data.get("eval") or {}).get("reference"):
        data["eval"]["reference"] = str((recipe.parent / data["eval"]["reference"]).resolve())
    path = folder / recipe.name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_every_shipped_recipe_is_covered() -> None:
    assert [p.name for p in SHIPPED] == ["iterative.yaml", "mini-paper.yaml", "quickstart.yaml", "revised.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", QUICK_HERE, ids=lambda p: p.stem)
def test_a_shipped_recipe_passes_its_quick_run(recipe: Path, tmp_path: Path, pairforge_cache: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pairforge", "run", str(relocated(recipe, tmp_path)), "--quick"],
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run-quick" / "report.html").exists()
