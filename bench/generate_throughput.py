"""Benchmark: generation throughput, pairforge's backends vs the plain way, in the same run.

1. openai backend vs a bare client: a real llama.cpp server (llama-cpp-python[server]) serves the
   embedded SmolLM2 GGUF; the same greedy requests go through pairforge's OpenAIBackend (retries,
   bookkeeping, cache-key reporting) and through a bare `openai.AsyncOpenAI` loop with a semaphore, both
   at the same concurrency. The two alternate, so drift in the machine hits both.
2. transformers backend: batched generation (left padding) vs one prompt at a time, embedded model.

Medians over --repeat runs; tokens are counted to show both sides did the same work.

    .venv/bin/python bench/generate_throughput.py [--requests 24] [--concurrency 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' real llama.cpp server

from _tokens import TokenCount  # noqa: E402
from servers import LlamaServer  # noqa: E402

from pairforge.config import SourceConfig  # noqa: E402
from pairforge.models import embedded_gguf  # noqa: E402
from pairforge.requests.backends.base import Request  # noqa: E402

TOPICS = ("rivers", "prime numbers", "bread", "the moon", "chess", "volcanoes", "bees", "trains", "glass", "rain",
          "maps", "salt")


def requests(n: int) -> list[Request]:
    return [Request(f"k{i}", [{"role": "user", "content": f"Write two sentences about {TOPICS[i % len(TOPICS)]} "
                                                          f"(note {i})."}], seed=i) for i in range(n)]


def run_pairforge(cfg: SourceConfig, work: list[Request]) -> tuple[float, int]:
    from pairforge.requests.backends.openai_api import OpenAIBackend

    count = TokenCount()
    start = time.perf_counter()
    OpenAIBackend(cfg).run(work, count)
    return time.perf_counter() - start, count.tokens


def run_bare(cfg: SourceConfig, work: list[Request]) -> tuple[float, int]:
    import openai

    async def main() -> int:
        client = openai.AsyncOpenAI(api_key="x", base_url=cfg.base_url)
        limit = asyncio.Semaphore(cfg.concurrency)

        async def one(request: Request) -> int:
            async with limit:
                response = await client.chat.completions.create(
                    model=cfg.model, messages=request.messages, temperature=cfg.temperature, top_p=cfg.top_p,
                    max_tokens=cfg.max_new_tokens, seed=request.seed)
                return response.usage.completion_tokens

        tokens = await asyncio.gather(*(one(r) for r in work))
        await client.close()
        return sum(tokens)

    start = time.perf_counter()
    tokens = asyncio.run(main())
    return time.perf_counter() - start, tokens


def run_local(batch_size: int, work: list[Request], max_new_tokens: int) -> tuple[float, int]:
    from pairforge.requests.backends.local import TransformersBackend

    backend = TransformersBackend(SourceConfig(name="local", temperature=0, max_new_tokens=max_new_tokens,
                                               batch_size=batch_size))
    count = TokenCount()
    start = time.perf_counter()
    backend.run(work, count)
    return time.perf_counter() - start, count.tokens


def report(title: str, rows: dict[str, list[tuple[float, int]]], n: int, anchor: str) -> None:
    print(f"\n{title}")
    print(f"{'':<28}{'median s':>10}{'req/s':>9}{'tok/s':>9}{'tokens':>9}   vs {anchor}")
    base = statistics.median(s for s, _ in rows[anchor])
    for name, runs in rows.items():
        seconds = statistics.median(s for s, _ in runs)
        tokens = statistics.median(t for _, t in runs)
        print(f"{name:<28}{seconds:>10.2f}{n / seconds:>9.2f}{tokens / seconds:>9.1f}{tokens:>9.0f}"
              f"   {base / seconds:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--local-requests", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    server = LlamaServer(embedded_gguf())
    server.start()
    try:
        cfg = SourceConfig(name="served", backend="openai", model="smollm2", base_url=server.base_url,
                           temperature=0, max_new_tokens=args.max_new_tokens, concurrency=args.concurrency)
        work = requests(args.requests)
        run_bare(cfg, work[:2])  # warm the server
        served: dict[str, list[tuple[float, int]]] = {"bare AsyncOpenAI": [], "pairforge openai backend": []}
        for _ in range(args.repeat):
            served["bare AsyncOpenAI"].append(run_bare(cfg, work))
            served["pairforge openai backend"].append(run_pairforge(cfg, work))
    finally:
        server.stop()
    report(f"llama.cpp server, {args.requests} requests, concurrency {args.concurrency}, greedy, "
           f"max {args.max_new_tokens} new tokens", served, args.requests, "bare AsyncOpenAI")

    local_work = requests(args.local_requests)
    local: dict[str, list[tuple[float, int]]] = {"one at a time (batch 1)": [], "batched (batch 8)": []}
    for _ in range(args.repeat):
        local["one at a time (batch 1)"].append(run_local(1, local_work, args.max_new_tokens))
        local["batched (batch 8)"].append(run_local(8, local_work, args.max_new_tokens))
    report(f"transformers backend, embedded model fp32 CPU, {args.local_requests} prompts, greedy", local,
           args.local_requests, "one at a time (batch 1)")


if __name__ == "__main__":
    main()
