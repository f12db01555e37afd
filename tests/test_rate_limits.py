"""Client-side rate limits of API sources (`rpm`, `tpm`), measured where a quota is counted: at the server.

A FaultProxy that never injects a fault sits in front of the real llama.cpp server and records when each request
arrives; the rate a recipe asks for must be the rate the server sees, evenly spaced (no burst of a whole minute's
quota at the start), whatever `concurrency` allows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import FaultProxy
from test_generate import openai_source, prompts, run_cli, write_recipe

from pairforge.errors import InputError
from pairforge.generation.answers import generate
from pairforge.recipe import load_recipe
from pairforge.requests.rate_limit import RateLimiter


def arrivals_through_a_recorder(tmp_path: Path, llama_server: Any, n: int, **limits: Any) -> tuple[list[float],
                                                                                                 list[bytes]]:
    """Generate `n` answers (concurrency 8, 4 tokens each) through a recording proxy: arrival times and bodies."""
    proxy = FaultProxy(llama_server.port, every=10**9)
    try:
        source = openai_source(proxy.base_url, concurrency=8, max_new_tokens=4, **limits)
        recipe = load_recipe(write_recipe(tmp_path, prompts(n), [source]))
        result = generate(recipe, tmp_path / "out", show_progress=False)
    finally:
        proxy.close()
    assert result.exported == n
    return proxy.arrivals, proxy.bodies


@pytest.mark.slow
def test_rpm_is_the_rate_the_server_sees_evenly_spaced(tmp_path: Path, llama_server: Any) -> None:
    """2 requests a second, half of what the 2-core server answers unlimited (~4/s, the first 8 at once)."""
    arrivals, _ = arrivals_through_a_recorder(tmp_path, llama_server, 16, rpm=120)
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert abs(rate - 2.0) <= 0.2, rate
    assert min(np.diff(arrivals)) >= 0.4, np.diff(arrivals)  # 8 workers, yet one request every 0.5 s


@pytest.mark.slow
def test_tpm_is_the_token_rate_the_server_sees(tmp_path: Path, llama_server: Any) -> None:
    """Each request is counted as the client reserves it (prompt characters / 4 + max_tokens; the 4-token answers
    use all 4): 1200 tokens a minute is 20 a second, ~1.5 requests."""
    arrivals, bodies = arrivals_through_a_recorder(tmp_path, llama_server, 12, tpm=1200)
    tokens = [len(json.loads(b)["messages"][-1]["content"]) / 4 + json.loads(b)["max_tokens"] for b in bodies]
    rate = sum(tokens[:-1]) / (arrivals[-1] - arrivals[0])  # the last request's tokens are spent after the span
    assert 20 * 0.8 <= rate <= 20 * 1.1, rate


def test_a_servers_retry_after_holds_every_request_of_the_source() -> None:
    limiter = RateLimiter(rpm=6000)
    limiter.hold(0.3)
    waits = [limiter.reserve(1) for _ in range(3)]
    assert waits[0] >= 0.29 and waits[1] - waits[0] == pytest.approx(0.01, abs=1e-3)
    assert RateLimiter(rpm=6000).reserve(1) == 0  # a fresh source sends at once


@pytest.mark.parametrize(("source", "expected"), [
    ({"rpm": 0}, "field 'sources.0.rpm': Input should be greater than 0"),
    ({"tpm": -5}, "field 'sources.0.tpm': Input should be greater than 0"),
    ({"backend": "transformers", "rpm": 60}, "rpm limit requests to an API: only for backend openai, not transformers"),
])
def test_bad_rate_limits_are_one_line(tmp_path: Path, source: dict[str, Any], expected: str) -> None:
    recipe = write_recipe(tmp_path, prompts(1), [openai_source("http://127.0.0.1:9/v1", **source)])
    with pytest.raises(InputError, match=expected.split(": ", 1)[1]):
        load_recipe(recipe)
    result = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
