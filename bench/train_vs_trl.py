"""Benchmark: DPO training, pairforge vs TRL's DPOTrainer, on identical work, side by side.

Model: the embedded SmolLM2-135M-Instruct, fp32 on CPU. Data: seeded conversational pairs, prompts of
20-120 words, answers of 20-200 words. Batch 4, one epoch, lr 1e-6, beta 0.1, max length 512,
gradient checkpointing off on both. TRL runs twice: default, and with precompute_ref_log_probs=True
(and bf16=False: TRL 1.16 otherwise runs its reference under bf16 autocast even on CPU). Each run is
its own child process, so peak RSS is its own. Printed: pairs/s, tokens/s, peak RSS, loss at step 1,
and our useful-token fraction (tokens that had to be computed / tokens pushed through the model; padding
and the prompt repeated for the rejected answer count as waste). Medians over --repeat runs; the ratio
ours/TRL is computed from the medians. Ours computes its reference log-probs in every run (the on-disk
cache is cleared first), as TRL's precompute does, and cuts each batch of 4 into forwards of at most
--forward-tokens (rows x width; gradients summed: the same step, less activation memory, no padding).

    .venv/bin/python bench/train_vs_trl.py [--pairs 64] [--repeat 3] [--forward-tokens 512]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _child import run_child

WORDS = ("model data answer question system training value result method paper language time people "
         "example number point problem word order level change study source pair reward policy").split()


def make_pairs(n: int, path: Path, seed: int = 0) -> None:
    import polars as pl

    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) + "."

    rows = [{"prompt": [{"role": "user", "content": text(20, 120)}],
             "chosen": [{"role": "assistant", "content": text(20, 200)}],
             "rejected": [{"role": "assistant", "content": text(20, 200)}], "pair_type": "bench"} for _ in range(n)]
    pl.DataFrame(rows).write_parquet(path)


def run_ours(pairs: Path, work: Path) -> dict:
    from pairforge.config import TrainConfig
    from pairforge.models import cache_dir, load_tokenizer
    from pairforge.train.trainer import train

    load_tokenizer("embedded")  # warm the conversion cache outside the timing, as TRL gets a ready folder
    shutil.rmtree(cache_dir() / "reference", ignore_errors=True)  # reference log-probs computed in every run
    forward_tokens = int(os.environ["BENCH_FORWARD_TOKENS"]) or None
    start = time.perf_counter()
    result = train(TrainConfig(model="embedded", pairs=pairs, out=work / "ours", method="dpo", batch_size=4,
                               forward_tokens=forward_tokens,
                               epochs=1, lr=1e-6, beta=0.1, max_length=512, warmup_ratio=0.0,
                               precompute_reference=True), progress=False)
    seconds = time.perf_counter() - start
    first = result.metrics[0]
    counts = _token_counts(work / "ours", pairs, forward_tokens)
    return {"seconds": seconds, "loss1": first["train/loss"], **counts,
            "model_mb": _memory_model(counts["largest_forward"])}


def _token_counts(out: Path, pairs: Path, forward_tokens: int | None) -> dict:
    """Tokens needed (each prompt once + both answers) vs pushed (rows x padded width of every forward)."""
    import polars as pl

    from pairforge.models import load_tokenizer
    from pairforge.train.logprobs import forward_pieces, row_width
    from pairforge.train.tokenize import tokenize_pairs

    tokenizer = load_tokenizer("embedded")
    tokenized, _ = tokenize_pairs(pl.read_parquet(pairs), tokenizer, max_length=512)
    by_row = {p.index: p for p in tokenized}
    needed = pushed = largest = 0
    for line in (out / "consumed-0.jsonl").read_text().splitlines():
        batch = [by_row[i] for i in json.loads(line)["rows"]]
        needed += sum(len(p.chosen.ids) + p.rejected.answer_tokens for p in batch)
        for piece in forward_pieces(batch, forward_tokens, share=True):
            size = _pushed(piece, tokenizer.pad_token_id)
            pushed += size
            largest = max(largest, size)
    by_width = sorted(tokenized, key=lambda p: row_width(p, share=True))  # as reference_logps batches them
    reference = sum(_pushed(piece, tokenizer.pad_token_id) for piece in forward_pieces(by_width, 4096, share=True))
    return {"tokens": needed, "pushed": pushed, "reference_pushed": reference, "largest_forward": largest}


def _pushed(pairs: list, pad_id: int) -> int:
    from pairforge.train.logprobs import collate

    return collate(pairs, pad_id, with_targets=False, share_prompt=True).input_ids.numel()


def _memory_model(largest_forward: int) -> float:
    """The memory model's expected peak (MB) for this run: full fine-tuning, fp32, precomputed reference."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pairforge.models import embedded_model_dir
    from pairforge.train.memory import estimate

    config = AutoConfig.from_pretrained(str(embedded_model_dir()))
    with torch.device("meta"):  # shapes only: no memory
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return estimate(config, parameters, parameters, largest_forward, chunk_tokens=512).total / 2**20


def run_trl(pairs: Path, work: Path, precompute: bool) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from pairforge.models import embedded_model_dir, load_tokenizer

    folder = embedded_model_dir()
    tokenizer = load_tokenizer("embedded")
    dataset = datasets.load_dataset("parquet", data_files=str(pairs), split="train").remove_columns(["pair_type"])
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    args = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=4, num_train_epochs=1,
                     learning_rate=1e-6, beta=0.1, max_length=512, gradient_checkpointing=False, bf16=False,
                     use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, lr_scheduler_type="constant",
                     precompute_ref_log_probs=precompute, dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    # rows x padded width of each batch (prompt in both rows): what its policy pass pushes, and again its reference
    pushed = sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())
    return {"seconds": seconds, "loss1": losses[0], "pushed": pushed}


def child(kind: str, pairs: str, work: str) -> None:
    runners = {"ours": lambda: run_ours(Path(pairs), Path(work)),
               "trl": lambda: run_trl(Path(pairs), Path(work), precompute=False),
               "trl-precompute": lambda: run_trl(Path(pairs), Path(work), precompute=True)}
    report = runners[kind]()
    report["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report))


def measure(kind: str, pairs: Path, repeat: int) -> list[dict]:
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as work:
            runs.append(run_child(__file__, [kind, str(pairs), work], kind))
        print(kind, json.dumps(runs[-1]), flush=True)  # each run as it ends: a cut-short session keeps them
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--forward-tokens", type=int, default=512, help="ours: tokens per forward (0: whole batch)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    os.environ["BENCH_FORWARD_TOKENS"] = str(args.forward_tokens)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    pairs = out / f"bench-pairs-{args.pairs}.parquet"
    make_pairs(args.pairs, pairs)
    results = {kind: measure(kind, pairs, args.repeat) for kind in ("ours", "trl", "trl-precompute")}
    med = {kind: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "rss_mb", "loss1")}
           for kind, runs in results.items()}
    ours = results["ours"][0]
    print(f"\nDPO, SmolLM2-135M fp32 CPU, {args.pairs} pairs, batch 4, max_length 512; "
          f"medians of {args.repeat} runs")
    print(f"{'':24}{'pairforge':>12}{'TRL':>12}{'TRL precomp':>13}{'ours/TRL':>10}{'ours/TRLp':>11}")
    rows = [("pairs/s", lambda k: args.pairs / med[k]["seconds"], True),
            ("tokens/s (needed)", lambda k: ours["tokens"] / med[k]["seconds"], True),
            ("peak RSS (MB)", lambda k: med[k]["rss_mb"], True),
            ("loss at step 1", lambda k: med[k]["loss1"], False)]
    for label, value, ratio in rows:
        a, b, c = (value(k) for k in ("ours", "trl", "trl-precompute"))
        tail = f"{a / b:9.2f}x{a / c:10.2f}x" if ratio else f"  |d|={max(abs(a - b), abs(a - c)):.1e}"
        print(f"{label:24}{a:12.4g}{b:12.4g}{c:13.4g}{tail}")
    trl = results["trl"][0]
    print(f"{'tokens pushed per pass':24}{ours['pushed']:12,}{trl['pushed']:12,}{trl['pushed']:13,}"
          f"   (policy pass; the reference pass pushes the same again: ours {ours['reference_pushed']:,})")
    print(f"{'useful-token fraction':24}{2 * ours['tokens'] / (ours['pushed'] + ours['reference_pushed']):12.3f}"
          f"{2 * ours['tokens'] / (2 * trl['pushed']):12.3f}   (needed / pushed, policy + reference passes)")
    print(f"{'TRL work / ours':24}{trl['pushed'] / ours['pushed']:12.2f}x  (pushed tokens: the speed-up that fewer "
          f"FLOPs alone explain)")
    print(f"{'memory model (MB)':24}{ours['model_mb']:12.4g}   (ours' expected peak; measured above)")


if __name__ == "__main__":
    main()
