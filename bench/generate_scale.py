"""Benchmark: the request engine at scale, pairforge's request path vs a bare `openai.AsyncOpenAI` loop.

10k prompts at concurrency 64 against a fast loopback OpenAI-compatible server (bench/_loopback_server.py,
its own process; a fixed latency per completion so the server is not the only bottleneck). Measured, each
run in its own child process (so its peak RSS is its own), the modes alternating in one run:

- bare: `openai.AsyncOpenAI` with a semaphore, `asyncio.gather` over every prompt, each request with the
  fields pairforge sends for a default source (model, messages, temperature, top_p, max_tokens, seed: the
  client's per-field work is part of the cost); nothing stored;
- pairforge: what `pairforge generate` does for one openai source: `source_requests` (cache keys, seeds),
  a fresh SQLite `Store` in a temp folder, `requests.engine.answer_all` with OpenAIBackend, every outcome
  committed as it arrives; the progress bar either on, rendering to a non-tty (stderr is a file, as under
  nohup or CI), or off;
- pairforge generate: the whole CLI process (`python -m pairforge generate RECIPE --out DIR`: interpreter
  start, imports, reading the prompts, the export to responses.parquet), against the bare child's whole
  process;
- N shards + merge: `--shards N` processes `pairforge generate RECIPE --out DIR --shard k/N` started at once
  (each into DIR/shards/k-of-N.sqlite), then the unsharded `pairforge generate` that merges them and writes
  responses.parquet sending no request; its time is the shards' (the slowest) plus the merge's.

Request-path seconds and CPU seconds (all threads) are measured inside each child around the requests only
(prompts already read); on a busy machine the CPU seconds are the steadier figure. Medians over --repeat runs;
each ratio is a median / the bare loop's median.

    .venv/bin/python bench/generate_scale.py [--prompts 10000] [--concurrency 64] [--latency-ms 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve()
SERVER = SCRIPT.with_name("_loopback_server.py")
MODEL = "loopback"
TOPICS = ("rivers", "prime numbers", "bread", "the moon", "chess", "volcanoes", "bees", "trains", "glass", "rain",
          "maps", "salt")
BARE = "bare AsyncOpenAI loop"
IN_PROCESS = {BARE: "bare", "pairforge, progress to non-tty": "pairforge-progress",
              "pairforge, progress off": "pairforge-quiet"}
CLI = "pairforge generate (CLI)"


def sharded_name(n: int) -> str:
    return f"{n} shard processes + merge (CLI)"


# --- the children: one measured run each, its figures as JSON on the last stdout line ---

def child_bare(prompts: Path, base_url: str, concurrency: int, max_new_tokens: int) -> dict:
    import asyncio

    import openai

    texts = [json.loads(line)["prompt"] for line in prompts.read_text().splitlines()]

    async def main() -> list[int]:
        client = openai.AsyncOpenAI(api_key="x", base_url=base_url)
        limit = asyncio.Semaphore(concurrency)

        async def one(seed: int, text: str) -> int:
            async with limit:  # the fields pairforge sends for a source with its defaults: the same request
                response = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": text}], temperature=0.7, top_p=1.0,
                    max_tokens=max_new_tokens, seed=seed)
                return response.usage.completion_tokens

        try:
            return await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
        finally:
            await client.close()

    start, cpu = time.perf_counter(), time.process_time()
    tokens = asyncio.run(main())
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "tokens": sum(tokens),
            "done": len(tokens)}


def child_pairforge(prompts: Path, base_url: str, concurrency: int, max_new_tokens: int, folder: Path,
                    progress: bool) -> dict:
    import openai  # noqa: F401 - imported before the clock starts, as in the bare loop (the backend imports it late)

    from pairforge.generation.answers import source_requests
    from pairforge.records import prompts_from_file
    from pairforge.requests.engine import answer_all, make_backend, progress_bar
    from pairforge.requests.store import opened

    source = loopback_source(base_url, concurrency, max_new_tokens)
    frame = prompts_from_file(prompts)
    start, cpu = time.perf_counter(), time.process_time()
    work = source_requests(source, frame, 1)
    with opened(folder / "store.sqlite") as store, progress_bar(progress) as bar:
        tally = answer_all(work, lambda: make_backend(source), store, "generation", source.name, bar)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "tokens": tally.tokens,
            "done": tally.done, "failed": tally.failed, "retries": tally.retries}


def loopback_source(base_url: str, concurrency: int, max_new_tokens: int):  # noqa: ANN201 - pairforge imported late
    from pairforge.config import SourceConfig

    return SourceConfig(name="loopback", backend="openai", model=MODEL, base_url=base_url, concurrency=concurrency,
                        max_new_tokens=max_new_tokens)


# --- processes: started together, timed until the last one exits, each one's peak RSS from the kernel ---

@dataclass
class Finished:
    seconds: float  # from the start of the batch until it was reaped (in order: the largest is the batch's time)
    peak_rss_mb: float
    stdout: str


def timed_processes(commands: list[list[str]], logs: Path) -> list[Finished]:
    """Run the commands at once (e.g. one per shard) and wait for all of them; a failure stops the benchmark with
    its stderr. The batch's wall time is the largest `seconds`."""
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    running = []
    for i, command in enumerate(commands):
        out, err = logs / f"{i}.out", logs / f"{i}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            running.append((command, subprocess.Popen(command, stdout=stdout, stderr=stderr), out, err))
    finished = []
    for command, process, out, err in running:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{err.read_text()[-3000:]}")
        finished.append(Finished(time.perf_counter() - start, usage.ru_maxrss / 1024, out.read_text()))
    return finished


def generate_command(recipe: Path, out: Path, *extra: str) -> list[str]:
    """`pairforge generate` as a user runs it (extra options appended, e.g. a shard)."""
    return [sys.executable, "-m", "pairforge", "generate", str(recipe), "--out", str(out), *extra]


def shards_then_merge(recipe: Path, folder: Path, n: int) -> list[Finished]:
    """N shard processes at once, then the unsharded merge: the last entry's seconds is the whole wall time."""
    out = folder / "out"
    shards = timed_processes([generate_command(recipe, out, "--shard", f"{k}/{n}") for k in range(1, n + 1)],
                             folder / "logs")
    merge = timed_processes([generate_command(recipe, out)], folder / "logs-merge")[0]
    took = max(f.seconds for f in shards)
    return [*shards, Finished(took + merge.seconds, max(f.peak_rss_mb for f in [*shards, merge]), merge.stdout)]


def child_command(mode: str, prompts: Path, base_url: str, args: argparse.Namespace, folder: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--child", mode, "--prompts-file", str(prompts), "--base-url", base_url,
            "--concurrency", str(args.concurrency), "--max-new-tokens", str(args.max_new_tokens),
            "--folder", str(folder)]


# --- the parent: inputs, the server, alternating runs, the table ---

def write_inputs(folder: Path, n: int, base_url: str, concurrency: int, max_new_tokens: int) -> tuple[Path, Path]:
    """The prompts (JSONL, no ids: pairforge computes them, as for most users' files) and a one-source recipe."""
    prompts = folder / "prompts.jsonl"
    texts = (f"Write two sentences about {TOPICS[i % len(TOPICS)]} (note {i})." for i in range(n))
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in texts))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"prompts: {prompts}\nsources:\n  - name: loopback\n    backend: openai\n    model: {MODEL}\n"
                      f"    base_url: {base_url}\n    concurrency: {concurrency}\n"
                      f"    max_new_tokens: {max_new_tokens}\n")
    return prompts, recipe


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen([sys.executable, str(SERVER), "--latency-ms", str(latency_ms)], stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    return server, f"http://127.0.0.1:{port}/v1"


@dataclass
class Run:
    seconds: float | None  # the request path, timed inside the process (None: a whole CLI process)
    cpu_seconds: float | None  # its CPU time: what the client itself costs, less at the mercy of a busy machine
    process_seconds: float
    peak_rss_mb: float


def measure(name: str, run: Callable[[Path], list[Finished]], folder: Path, n: int) -> Run:
    finished = run(folder)
    last = finished[-1]
    inner = json.loads(last.stdout.strip().splitlines()[-1]) if name in IN_PROCESS else None
    if inner is not None and (inner["done"] != n or inner.get("failed") or inner.get("retries")):
        raise SystemExit(f"{name}: {inner['done']} of {n} answered, {inner.get('failed')} failed, "
                         f"{inner.get('retries')} retried")
    return Run(inner["seconds"] if inner else None, inner["cpu"] if inner else None,
               max(f.seconds for f in finished), max(f.peak_rss_mb for f in finished))


def report(rows: dict[str, list[Run]], n: int) -> None:
    def median(runs: list[Run], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    base = {field: median(rows[BARE], field) for field in ("seconds", "cpu_seconds", "process_seconds")}
    print(f"\n{'':<32}{'median s':>9}{'req/s':>7}{'vs bare':>8}{'CPU s':>7}{'vs bare':>8}{'process s':>10}"
          f"{'vs bare':>8}{'peak RSS MB':>12}")
    for name, runs in rows.items():
        if runs[0].seconds is None:
            inner = f"{'-':>9}{'-':>7}{'-':>8}{'-':>7}{'-':>8}"
        else:
            seconds, cpu = median(runs, "seconds"), median(runs, "cpu_seconds")
            inner = (f"{seconds:>9.2f}{n / seconds:>7.0f}{seconds / base['seconds']:>7.2f}x"
                     f"{cpu:>7.1f}{cpu / base['cpu_seconds']:>7.2f}x")
        process = median(runs, "process_seconds")
        print(f"{name:<32}{inner}{process:>10.2f}{process / base['process_seconds']:>7.2f}x"
              f"{median(runs, 'peak_rss_mb'):>12,.0f}")
    print("per run (request path s and CPU s; the CLI: process s):")
    for name, runs in rows.items():
        print(f"  {name}: " + " / ".join(f"{r.process_seconds:.2f}" if r.seconds is None else
                                         f"{r.seconds:.2f} ({r.cpu_seconds:.1f})" for r in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the server's fixed delay per completion")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-cli", action="store_true", help="skip the whole `pairforge generate` process")
    parser.add_argument("--shards", type=int, default=2, help="also time N `--shard k/N` processes at once, then "
                        "the merge (0: skip)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--prompts-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        common = (args.prompts_file, args.base_url, args.concurrency, args.max_new_tokens)
        result = child_bare(*common) if args.child == "bare" else child_pairforge(
            *common, args.folder, progress=args.child == "pairforge-progress")
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="pairforge-scale-") as tmp:
        work = Path(tmp)
        server, base_url = start_server(args.latency_ms)
        try:
            prompts, recipe = write_inputs(work, args.prompts, base_url, args.concurrency, args.max_new_tokens)
            modes: dict[str, Callable[[Path], list[Finished]]] = {
                name: lambda folder, mode=mode: timed_processes([child_command(mode, prompts, base_url, args, folder)],
                                                                folder / "logs")
                for name, mode in IN_PROCESS.items()}
            if not args.no_cli:
                modes[CLI] = lambda folder: timed_processes([generate_command(recipe, folder / "out")], folder / "logs")
            if args.shards > 1:
                modes[sharded_name(args.shards)] = lambda folder: shards_then_merge(recipe, folder, args.shards)
            rows: dict[str, list[Run]] = {name: [] for name in modes}
            names = list(modes)
            for r in range(args.repeat):
                for name in names[r % len(names):] + names[:r % len(names)]:  # rotate: no mode always goes first
                    folder = work / f"run{r}-{IN_PROCESS.get(name, 'cli' if name == CLI else 'shards')}"
                    rows[name].append(measure(name, modes[name], folder, args.prompts))
                    print(f"repeat {r + 1}: {name} done", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait()
    print(f"\n{args.prompts} prompts, concurrency {args.concurrency}, server latency {args.latency_ms:g} ms, "
          f"medians of {args.repeat}")
    report(rows, args.prompts)


if __name__ == "__main__":
    main()
