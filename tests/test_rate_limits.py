"""Client-side rate limits of API sources (`rpm`, `tpm`), measured where a quota is counted: at the server.

A FaultProxy that never injects a fault sits in front of the real llama.cpp server and records when each request
arrives; the rate a recipe asks for must be the rate the server sees, evenly spaced (no burst of a whole minute's
quota at the start), whatever `concurrency` allows.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from servers import FaultProxy
from test_generate import openai_source, prompts, run_cli, write_recipe

from pairforge.errors import InputError
from pairforge.generation.answers import generate
from pairforge.judging.scoring import judge_llm
from pairforge.recipe import load_recipe
from pairforge.requests.backends.base import check_source
from pairforge.requests.rate_limit import RateLimiter


def arrivals_through_a_recorder(tmp_path: Path, llama_server: Any, n: int, **limits: Any) -> tuple[list[float],
                                                                                                 list[bytes]]:
    """Generate `n` answers (4 tokens each) through a recording proxy: arrival times and bodies. `concurrency` is `n`:
    without a limit all would be sent at once, and with one each is sent when the limiter lets it, however slowly
    the server (on a shared 2-core machine) answers the ones before."""
    proxy = FaultProxy(llama_server.port, every=10**9)
    try:
        source = openai_source(proxy.base_url, concurrency=n, max_new_tokens=4, **limits)
        recipe = load_recipe(write_recipe(tmp_path, prompts(n), [source]))
        result = generate(recipe, tmp_path / "out", show_progress=False)
    finally:
        proxy.close()
    assert result.exported == n
    return proxy.arrivals, proxy.bodies


@pytest.mark.slow
def test_rpm_is_the_rate_the_server_sees_evenly_spaced(tmp_path: Path, llama_server: Any) -> None:
    arrivals, _ = arrivals_through_a_recorder(tmp_path, llama_server, 24, rpm=240)  # 4 requests a second
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert abs(rate - 4.0) <= 0.4, rate
    assert min(np.diff(arrivals)) >= 0.1, np.diff(arrivals)  # 24 workers, yet one every 0.25 s (+- load jitter)


@pytest.mark.slow
def test_tpm_is_the_token_rate_the_server_sees(tmp_path: Path, llama_server: Any) -> None:
    """Each request is counted as the client reserves it (prompt characters / 4 + max_tokens; the 4-token answers
    use all 4): 2400 tokens a minute is 40 a second, ~3 requests."""
    arrivals, bodies = arrivals_through_a_recorder(tmp_path, llama_server, 16, tpm=2400)
    tokens = [len(json.loads(b)["messages"][-1]["content"]) / 4 + json.loads(b)["max_tokens"] for b in bodies]
    rate = sum(tokens[:-1]) / (arrivals[-1] - arrivals[0])  # the last request's tokens are spent after the span
    assert 40 * 0.8 <= rate <= 40 * 1.1, rate


def test_a_servers_retry_after_holds_every_request_of_the_source() -> None:
    """Requests booked after a Retry-After wait it out; so do those booked before it that are still waiting."""
    limiter = RateLimiter(rpm=600)

    async def booked_then_held() -> float:
        start = time.monotonic()
        booked = [asyncio.ensure_future(limiter.take_turn(1)) for _ in range(2)]  # slots at 0 s and 0.1 s
        await asyncio.sleep(0.05)
        limiter.hold(0.3)
        await asyncio.gather(*booked)
        return time.monotonic() - start

    assert asyncio.run(booked_then_held()) >= 0.34  # the slot at 0.1 s waited until 0.05 + 0.3 s
    waits = [limiter.reserve(1) for _ in range(2)]
    assert waits[1] - waits[0] == pytest.approx(0.1, abs=1e-3)  # then evenly spaced again
    assert RateLimiter(rpm=6000).reserve(1) == 0  # a fresh source sends at once


def test_requests_held_by_a_retry_after_go_out_spaced_not_in_a_burst() -> None:
    """Five requests booked before a 429's Retry-After all fall inside it: when it ends they must go out at the
    rpm's spacing, not all at once (the quota the server just refused)."""
    limiter = RateLimiter(rpm=600)  # one every 0.1 s

    async def sent_after_a_hold() -> list[float]:
        start, sent = time.monotonic(), []

        async def one() -> None:
            await limiter.take_turn(1)
            sent.append(time.monotonic() - start)

        booked = [asyncio.ensure_future(one()) for _ in range(6)]  # slots at 0, 0.1, ..., 0.5 s
        await asyncio.sleep(0.05)
        limiter.hold(0.5)
        await asyncio.gather(*booked)
        return sorted(sent)

    sent = asyncio.run(sent_after_a_hold())
    assert sent[0] < 0.05 and min(sent[1:]) >= 0.54, sent
    assert min(np.diff(sent[1:])) >= 0.09, sent  # evenly spaced after the hold


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


def test_a_tpm_below_one_requests_answer_is_one_line_but_a_judges_short_answers_fit(tmp_path: Path) -> None:
    """A quota smaller than one request's answer (tpm in thousands by mistake) made every request wait minutes in
    silence (an API refuses such a request anyway); a judge answers in 8 tokens unless set, so its tpm 100 is fine."""
    recipe = write_recipe(tmp_path, prompts(1), [openai_source("http://127.0.0.1:9/v1", tpm=10, max_new_tokens=16)])
    result = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "source 'served': tpm 10 is below one request's max_new_tokens 16" in result.stderr
    assert not (tmp_path / "out" / "store.sqlite").exists()
    judged = tmp_path / "judged.yaml"
    judged.write_text(yaml.safe_dump({"judge": {"kind": "llm-pairwise", "llm": {
        "backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "tpm": 100}}}))
    check_source(judge_llm(load_recipe(judged).judge))  # 8 tokens a verdict: within 100 a minute
