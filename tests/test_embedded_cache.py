"""The embedded model's one-time conversion into the user's cache, as two commands started at once meet it (a
user's first `pairforge run` beside a second command): both finish, and the cache holds one working model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONVERT = "from pairforge.models import embedded_model_dir, load_tokenizer; print(embedded_model_dir())"


@pytest.mark.slow
def test_two_first_runs_at_once_both_get_the_converted_model(tmp_path: Path) -> None:
    env = {**os.environ, "PAIRFORGE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in results]
    saved = Path(results[0][0].strip())
    assert saved == Path(results[1][0].strip())
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model-v2", "tokenizer"]  # no temp folder left
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(saved)).config.num_hidden_layers == 30
