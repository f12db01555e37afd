"""docs/python.md runs: every ```python block, in order, in one namespace, in an empty folder, as a reader
pasting them into a notebook would (so the page cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)


@pytest.mark.slow
def test_every_python_block_of_the_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              embedded_tokenizer) -> None:
    code = blocks(DOC.read_text(encoding="utf-8"))
    assert len(code) >= 5  # the page's sections: pairs, TRL, train, a recipe, an evaluation
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for number, block in enumerate(code, 1):
        exec(compile(block, f"{DOC.name} block {number}", "exec"), namespace)  # noqa: S102 - the page is ours
    assert (tmp_path / "runs" / "dpo" / "model").is_dir() and (tmp_path / "eval" / "leaderboard.json").exists()
