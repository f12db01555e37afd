"""Benchmark: build pairs from 1,000,000 responses (250,000 prompts x 4 sources), Parquet in, Parquet out.

Runs, in child processes on the same synthetic file, pairforge's column-wise builder and a
straightforward per-prompt Python implementation of the same work (same filters, same pair types),
and prints wall time, responses/s and peak RSS side by side, with the ratio. Each child is timed from
its start (imports included) to the output file on disk. Medians over --repeat runs for ours.

    .venv/bin/python bench/pairs_build.py [--prompts 250000] [--repeat 3] [--baseline-repeat 1]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _child import run_child

SOURCES = ["s0", "s1", "s2", "s3"]
RANK = " > ".join(SOURCES)
OUT = Path(__file__).parent / "out"


def make_responses(prompts: int, path: Path, seed: int = 0) -> None:
    """Synthetic answers: 20-word prompts, 10-60-word answers, 1% truncated, 0.5% empty, 0.5% leaked markers."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    n = prompts * len(SOURCES)
    prompt_words = vocab[rng.integers(0, len(vocab), size=(prompts, 20))]
    prompt_text = np.array([" ".join(words) for words in prompt_words])
    lengths = rng.integers(10, 60, size=n)
    flat = vocab[rng.integers(0, len(vocab), size=int(lengths.sum()))]
    answers = np.split(flat, np.cumsum(lengths)[:-1])
    response = [" ".join(words) for words in answers]
    special = rng.random(n)
    for i in np.flatnonzero(special < 0.005):
        response[i] = "   "
    for i in np.flatnonzero((special >= 0.005) & (special < 0.01)):
        response[i] = "### Response: " + response[i]
    finish = np.where(rng.random(n) < 0.01, "length", "stop")
    table = pa.table({
        "prompt": np.repeat(prompt_text, len(SOURCES)),
        "source": np.tile(SOURCES, prompts),
        "response": response,
        "finish_reason": finish,
    })
    pq.write_table(table, path)


def run_ours(src: str, dst: str) -> None:
    from pairforge.config import PairsConfig
    from pairforge.pairs.build_files import build_from_files

    build_from_files(PairsConfig(inputs=[Path(src)], rank=RANK, pair_types="all", out=Path(dst)))


def run_loop(src: str, dst: str) -> None:
    """The obvious implementation of the same work: rows to dicts, group by prompt, loop over prompts and
    pair types; same filters, ids, margins, difficulty, length statistics and summary as ours."""
    import hashlib
    import statistics as stats
    import unicodedata
    from collections import Counter

    from pairforge.config import ROLE_MARKERS

    marker = re.compile(ROLE_MARKERS)
    levels = {s: i for i, s in enumerate(SOURCES)}
    dropped: Counter[str] = Counter()
    by_prompt: dict[str, dict[str, dict]] = {}
    for row in pq.read_table(src).to_pylist():
        text = row["response"]
        reason = ("empty answer" if not text.strip() else "truncated" if row["finish_reason"] == "length"
                  else "leaked role marker" if marker.search(text) else None)
        if reason:
            dropped[reason] += 1
            continue
        row["norm"] = " ".join(text.lower().split())
        row["length"] = len(text.split())
        by_prompt.setdefault(row["prompt"], {})[row["source"]] = row
    pairs = []
    span = len(SOURCES) - 1
    for prompt, answers in by_prompt.items():
        text = unicodedata.normalize("NFC", prompt).replace("\r\n", "\n").strip()
        prompt_id = hashlib.sha256(("user\x1f" + text).encode()).hexdigest()[:16]
        for strong in SOURCES:
            for weak in SOURCES:
                if levels[strong] >= levels[weak] or strong not in answers or weak not in answers:
                    continue
                chosen, rejected = answers[strong], answers[weak]
                if chosen["norm"] == rejected["norm"]:
                    dropped["chosen == rejected"] += 1
                    continue
                if min(chosen["length"], rejected["length"]) >= 0.9 * max(chosen["length"], rejected["length"]):
                    words_c = set(re.sub(r"[^\w\s]+", " ", chosen["norm"]).split())
                    words_r = set(re.sub(r"[^\w\s]+", " ", rejected["norm"]).split())
                    if len(words_c & words_r) / max(len(words_c | words_r), 1) >= 0.9:
                        dropped["near-duplicate"] += 1
                        continue
                margin = levels[weak] - levels[strong]
                pairs.append({"pair_id": f"{prompt_id}:{strong}.0>{weak}.0", "prompt_id": prompt_id, "prompt": prompt,
                              "chosen": chosen["response"], "rejected": rejected["response"], "chosen_source": strong,
                              "rejected_source": weak, "pair_type": f"{strong}>{weak}", "margin": float(margin),
                              "difficulty": 1 - margin / span, "chosen_length": chosen["length"],
                              "rejected_length": rejected["length"]})
    lengths = {side: {"mean": stats.fmean(p[f"{side}_length"] for p in pairs),
                      "median": stats.median(p[f"{side}_length"] for p in pairs)} for side in ("chosen", "rejected")}
    pq.write_table(pa.Table.from_pylist(pairs), dst, compression="zstd", compression_level=1)
    Path(dst).with_suffix(".summary.json").write_text(json.dumps({"dropped": dropped, "lengths": lengths}))


def child(kind: str, src: str, dst: str) -> None:
    """Entry point of one measured child process: prints its own wall time and peak RSS as JSON."""
    start = time.perf_counter()
    (run_ours if kind == "ours" else run_loop)(src, dst)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "pairs": pq.ParquetFile(dst).metadata.num_rows}))


def measure(kind: str, src: Path, repeat: int) -> list[dict]:
    return [run_child(__file__, [kind, str(src), str(OUT / f"{kind}.parquet")], kind) for _ in range(repeat)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=250_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-repeat", type=int, default=1)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    OUT.mkdir(exist_ok=True)
    src = OUT / f"responses-{args.prompts}.parquet"
    if not src.exists():
        make_responses(args.prompts, src)
    n = args.prompts * len(SOURCES)
    ours, loop = measure("ours", src, args.repeat), measure("loop", src, args.baseline_repeat)
    print(f"\n{n:,} responses ({args.prompts:,} prompts x {len(SOURCES)} sources), pair types: all; "
          f"medians of {args.repeat} (ours) and {args.baseline_repeat} (loop) runs")
    print(f"{'':28}{'pairforge':>14}{'per-prompt loop':>18}{'ratio':>10}")
    print(f"{'':28}{'':14}{'':18}{'(loop/ours)':>10}")
    for label, key in (("end to end, process (s)", "process_seconds"), ("build inside process (s)", "seconds"),
                       ("peak RSS (MB)", "rss_mb")):
        a, b = statistics.median(r[key] for r in ours), statistics.median(r[key] for r in loop)
        print(f"{label:28}{a:14,.1f}{b:18,.1f}{b / a:9.1f}x")
    a, b = ours[0]["pairs"], loop[0]["pairs"]
    print(f"{'pairs written':28}{a:14,}{b:18,}{'same' if a == b else 'DIFFERENT':>10}")
    a, b = statistics.median(r["process_seconds"] for r in ours), statistics.median(r["process_seconds"] for r in loop)
    print(f"{'responses/s (end to end)':28}{n / a:14,.0f}{n / b:18,.0f}{b / a:9.1f}x")


if __name__ == "__main__":
    main()
