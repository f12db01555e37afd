"""Benchmark: the quickstart's generate stage on the transformers backend, old settings vs new, same run.

The workload is the quickstart's: the embedded SmolLM2-135M-Instruct answers the repo's prompts through
its chat template (temperature 0.7) and as plain-text continuations (temperature 1.0). "before" is how the
quickstart generated until 2026-11 (float32 weights, 10 prompts per generate() call); "after" is what it
uses now (bfloat16 weights, 64 prompts per call). The two alternate per repeat, so drift in the machine
hits both; medians of tokens per second, and the tokens generated, so both visibly did the same work.
Why it is faster: at 10 rows a step is a handful of small matrix products that leave the cores idle; 64
rows fill them; and bfloat16 matmuls run at about twice the float32 rate on CPUs with AVX512-BF16 / AMX
(on a CPU without them bfloat16 is emulated and slower: the script says which this machine has).

With `--before-src DIR` (the `src` folder of an older checkout, e.g. `git worktree add /tmp/old bd1c2dd`),
"before" runs that code in a child process: the quickstart's generation as it was, against now.

    .venv/bin/python bench/generate_local.py [--prompts 128] [--max-new-tokens 64] [--repeat 2] [--before-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _tokens import TokenCount

from pairforge.config import SourceConfig

try:
    from pairforge.requests.backends.base import Request
    from pairforge.requests.backends.local import TransformersBackend
except ImportError:  # --before-src: a checkout from before the backends moved to requests/ (2026-11-28)
    from pairforge.generate.base import Request  # type: ignore[no-redef]
    from pairforge.generate.local import TransformersBackend  # type: ignore[no-redef]

PROMPTS = Path(__file__).resolve().parents[1] / "data" / "quickstart" / "reference.json"
SETTINGS = {"before": {"dtype": "float32", "batch_size": 10}, "after": {"dtype": "bfloat16", "batch_size": 64}}
SOURCES = {"chat": {"endpoint": "chat", "temperature": 0.7}, "plain": {"endpoint": "completions", "temperature": 1.0}}


def run(setting: str, prompts: list[str], max_new_tokens: int) -> tuple[float, int]:
    """Seconds and tokens for both quickstart sources answering every prompt (model load excluded)."""
    seconds, tokens = 0.0, 0
    for name, source in SOURCES.items():
        cfg = SourceConfig(name=name, max_new_tokens=max_new_tokens, **source, **SETTINGS[setting])
        backend = TransformersBackend(cfg)
        work = [Request(f"{name}{i}", [{"role": "user", "content": p}], seed=i) for i, p in enumerate(prompts)]
        count = TokenCount()
        start = time.perf_counter()
        backend.run(work, count)
        seconds += time.perf_counter() - start
        tokens += count.tokens
    return seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--before-src", type=Path, help="run 'before' with the pairforge in this src folder")
    parser.add_argument("--only", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    prompts = [row["instruction"] for row in json.loads(PROMPTS.read_text())][: args.prompts]
    if args.only:  # a child: one setting, its seconds and tokens as JSON
        return print(json.dumps(run(args.only, prompts, args.max_new_tokens)))
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16 matmul: {native}; "
          f"{len(prompts)} prompts x {len(SOURCES)} sources, <= {args.max_new_tokens} new tokens", flush=True)
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in SETTINGS}
    for repeat in range(args.repeat):
        for setting in SETTINGS:
            if setting == "before" and args.before_src:
                seconds, tokens = run_elsewhere(args.before_src, setting, args)
            else:
                seconds, tokens = run(setting, prompts, args.max_new_tokens)
            results[setting].append((seconds, tokens))
            print(f"  repeat {repeat + 1} {setting:<6} {seconds:7.1f} s  {tokens:6d} tokens  "
                  f"{tokens / seconds:7.1f} tok/s", flush=True)
    rates = {k: statistics.median(t / s for s, t in v) for k, v in results.items()}
    print("\n| settings | dtype | prompts per call | median tok/s |\n|---|---|---:|---:|")
    for setting, rate in rates.items():
        print(f"| {setting} | {SETTINGS[setting]['dtype']} | {SETTINGS[setting]['batch_size']} | {rate:.1f} |")
    print(f"\nafter / before: {rates['after'] / rates['before']:.2f}x tokens per second"
          + (f" (before: the code in {args.before_src})" if args.before_src else ""))


def run_elsewhere(src: Path, setting: str, args: argparse.Namespace) -> tuple[float, int]:
    """One setting with another checkout's pairforge (PYTHONPATH first), in a child process."""
    command = [sys.executable, __file__, "--only", setting, "--prompts", str(args.prompts),
               "--max-new-tokens", str(args.max_new_tokens)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(src.resolve())})
    seconds, tokens = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, tokens


if __name__ == "__main__":
    main()
