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

GPU mode (`--device cuda --size 135m|1.7b`): a random-init Llama in SmolLM2's shapes is made on the spot
from its config (no download; the embedded tokenizer), saved once in bf16, and trained by both sides in
bf16 weights + bf16 autocast, batch 8, max_length 1024, one epoch of 256 (135m) / 384 (1.7b) pairs, wall
time including model load and saving the trained model. Printed besides: peak GPU memory (allocated),
the step-1 loss (ln 2 = 0.693147 when the reference pass matches the policy's), and our per-phase
seconds from run.json. `--size tiny` runs the same path on a CPU in seconds (a check of the script).

    python bench/train_vs_trl.py --device cuda --size 1.7b --repeat 1
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


# SmolLM2's shapes (config.json of HuggingFaceTB/SmolLM2-*), for random-init models made on the spot
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, rope_theta=100000.0),
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, rope_theta=130000.0),
}
GPU_PAIRS = {"tiny": 32, "135m": 256, "1.7b": 384}


def setting() -> dict:
    """What the parent chose, handed to the children through the environment."""
    return json.loads(os.environ["BENCH_SETTING"])


def make_model(size: str, folder: Path, tokenizer_from: str) -> None:
    """A random-init Llama in SmolLM2's shapes, in bf16, with the embedded tokenizer (or a saved copy of it,
    `--tokenizer`: the GPU machine has no embedded model): no weights travel."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pairforge.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_from)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[size])
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def run_ours(pairs: Path, work: Path) -> dict:
    from pairforge.models import cache_dir, load_tokenizer
    from pairforge.train_config import TrainConfig
    from pairforge.training.trainer import train

    s = setting()
    load_tokenizer(s["model"])  # warm the embedded conversion cache outside the timing, as TRL gets a ready folder
    shutil.rmtree(cache_dir() / "reference", ignore_errors=True)  # reference log-probs computed in every run
    start = time.perf_counter()
    result = train(TrainConfig(model=s["model"], pairs=pairs, out=work / "ours", method="dpo",
                               batch_size=s["batch"], forward_tokens=s["forward_tokens"] or None, dtype=s["dtype"],
                               epochs=1, lr=1e-6, beta=0.1, max_length=s["max_length"], warmup_ratio=0.0,
                               precompute_reference=True), progress=False)
    seconds = time.perf_counter() - start
    first = result.metrics[0]
    report = {"seconds": seconds, "loss1": first["train/loss"], **_device_peak(),
              "phases": json.loads((work / "ours" / "run.json").read_text())["seconds"]}
    if s["device"] == "cpu" and s["model"] == "embedded":
        counts = _token_counts(work / "ours", pairs, s["forward_tokens"] or None)
        report.update(counts, model_mb=_memory_model(counts["largest_forward"], counts["largest_width"]))
    return report


def _device_peak() -> dict:
    import torch

    return {"gpu_mb": torch.cuda.max_memory_allocated() / 2**20} if torch.cuda.is_available() else {}


def _token_counts(out: Path, pairs: Path, forward_tokens: int | None) -> dict:
    """Tokens needed (each prompt once + both answers) vs pushed (rows x padded width of every forward)."""
    import polars as pl

    from pairforge.models import load_tokenizer
    from pairforge.sequences.logprobs import forward_pieces, row_width
    from pairforge.sequences.tokenize import tokenize_pairs

    tokenizer = load_tokenizer("embedded")
    tokenized, _ = tokenize_pairs(pl.read_parquet(pairs), tokenizer, max_length=512)
    by_row = {p.index: p for p in tokenized}
    needed = pushed = largest = largest_width = 0
    for line in (out / "consumed-0.jsonl").read_text().splitlines():
        batch = [by_row[i] for i in json.loads(line)["rows"]]
        needed += sum(len(p.chosen.ids) + p.rejected.answer_tokens for p in batch)
        for piece in forward_pieces(batch, forward_tokens, share=True):
            size = _pushed(piece, tokenizer.pad_token_id)
            pushed += size
            if size > largest:
                largest, largest_width = size, max(row_width(p, share=True) for p in piece)
    by_width = sorted(tokenized, key=lambda p: row_width(p, share=True))  # as reference_logps batches them
    reference = sum(_pushed(piece, tokenizer.pad_token_id) for piece in forward_pieces(by_width, 4096, share=True))
    return {"tokens": needed, "pushed": pushed, "reference_pushed": reference, "largest_forward": largest,
            "largest_width": largest_width}


def _pushed(pairs: list, pad_id: int) -> int:
    from pairforge.sequences.logprobs import collate

    return collate(pairs, pad_id, with_targets=False, share_prompt=True).input_ids.numel()


def _memory_model(largest_forward: int, width: int) -> float:
    """The memory model's expected peak (MB) for this run: full fine-tuning, fp32, precomputed reference."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from pairforge.models import embedded_model_dir
    from pairforge.training.memory import estimate

    config = AutoConfig.from_pretrained(str(embedded_model_dir()))
    with torch.device("meta"):  # shapes only: no memory
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return estimate(config, parameters, parameters, largest_forward, chunk_tokens=512, row_width=width).total / 2**20


def run_trl(pairs: Path, work: Path, precompute: bool) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from pairforge.models import embedded_model_dir, load_tokenizer

    s = setting()
    folder = embedded_model_dir() if s["model"] == "embedded" else Path(s["model"])
    tokenizer = load_tokenizer(s["model"])
    dataset = datasets.load_dataset("parquet", data_files=str(pairs), split="train").remove_columns(["pair_type"])
    bf16 = s["dtype"] == "bfloat16"
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16 if bf16 else torch.float32)
    args = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=s["batch"], num_train_epochs=1,
                     learning_rate=1e-6, beta=0.1, max_length=s["max_length"], gradient_checkpointing=False,
                     bf16=bf16, use_cpu=s["device"] == "cpu", report_to=[], save_strategy="no", logging_steps=1,
                     lr_scheduler_type="constant", precompute_ref_log_probs=precompute, dataloader_num_workers=0,
                     seed=0)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(work / "trl" / "model"))  # as ours saves its trained model
    seconds = time.perf_counter() - start
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    # rows x padded width of each batch (prompt in both rows): what its policy pass pushes, and again its reference
    pushed = sum(batch["input_ids"].numel() for batch in trainer.get_train_dataloader())
    return {"seconds": seconds, "loss1": losses[0], "pushed": pushed, **_device_peak()}


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
    parser.add_argument("--pairs", type=int, default=None, help="default: 64 (CPU), 256 / 384 (GPU sizes)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--forward-tokens", type=int, default=None, help="ours: tokens per forward (0: whole "
                        "batch; default 512 on CPU, 0 on GPU)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["embedded", *SHAPES], default="embedded",
                        help="embedded: SmolLM2-135M's real weights in fp32 (CPU); else random init in bf16")
    parser.add_argument("--tokenizer", default="embedded", help="GPU sizes: the tokenizer of the random model "
                        "(default: the embedded model's; a saved folder where it is absent: bench/gpu.sh fetch)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    if args.size == "embedded":
        model, batch, max_length, dtype, n = "embedded", 4, 512, "float32", args.pairs or 64
    else:
        model, batch, max_length, dtype, n = str(out / f"random-{args.size}"), 8, 1024, "bfloat16", \
            args.pairs or GPU_PAIRS[args.size]
        if not (Path(model) / "config.json").exists():
            make_model(args.size, Path(model), args.tokenizer)
    forward_tokens = args.forward_tokens if args.forward_tokens is not None else (512 if args.device == "cpu" else 0)
    os.environ["BENCH_SETTING"] = json.dumps({"model": model, "batch": batch, "max_length": max_length,
                                              "dtype": dtype, "device": args.device, "forward_tokens": forward_tokens})
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # both sides on the CPU even where a GPU exists
    pairs = out / f"bench-pairs-{n}.parquet"
    make_pairs(n, pairs)
    print(_versions(), flush=True)
    results = {kind: measure(kind, pairs, args.repeat) for kind in ("ours", "trl", "trl-precompute")}
    if args.size != "embedded":
        return print_device_table(results, args.size, args.device, n, batch, max_length)
    med = {kind: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "rss_mb", "loss1")}
           for kind, runs in results.items()}
    ours = results["ours"][0]
    print(f"\nDPO, SmolLM2-135M fp32 CPU, {n} pairs, batch 4, max_length 512; "
          f"medians of {args.repeat} runs")
    print(f"{'':24}{'pairforge':>12}{'TRL':>12}{'TRL precomp':>13}{'ours/TRL':>10}{'ours/TRLp':>11}")
    rows = [("pairs/s", lambda k: n / med[k]["seconds"], True),
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


def print_device_table(results: dict[str, list[dict]], size: str, device: str, n: int, batch: int,
                       max_length: int) -> None:
    """The issue's table: seconds, pairs/s, peak device memory and step-1 loss per run, then our phases."""
    print(f"\nDPO, random-init SmolLM2-{size} shapes, bf16 weights + autocast, {device}, {n} pairs, batch {batch}, "
          f"max_length {max_length}; medians of {len(results['ours'])} runs (wall time incl. load and save)")
    print(f"{'run':28}{'seconds':>9}{'pairs/s':>9}{'peak GPU MB':>13}{'loss at step 1':>16}")
    names = {"ours": "pairforge (precompute ref)", "trl": "TRL DPOTrainer default", "trl-precompute":
             "TRL precompute_ref_log_probs"}
    med = {}
    for kind, runs in results.items():
        med[kind] = {key: statistics.median(r.get(key, float("nan")) for r in runs) for key in
                     ("seconds", "gpu_mb", "loss1")}
        m = med[kind]
        print(f"{names[kind]:28}{m['seconds']:9.1f}{n / m['seconds']:9.2f}{m['gpu_mb']:13,.0f}{m['loss1']:16.6f}")
    print(f"{'ours / TRL default':28}{'':9}{med['trl']['seconds'] / med['ours']['seconds']:8.2f}x"
          f"{med['ours']['gpu_mb'] / med['trl']['gpu_mb']:12.2f}x{abs(med['ours']['loss1'] - 0.6931472):>12.1e} "
          "from ln 2")
    phases = results["ours"][0]["phases"]
    print("pairforge phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
    attention_kernels(size, device, batch, max_length)


def attention_kernels(size: str, device: str, batch: int, width: int) -> None:
    """Which SDPA kernels take our shared-prompt block mask (prompt, then two answers that do not see each
    other; the additive bf16 mask training passes), how long each takes (forward + backward, this size's
    heads), which one the default dispatch picks (the kernels the profiler saw), and FlexAttention with the
    same mask as a block mask (compiled on CUDA): whether the packed rows fall off the fast kernels, and what
    a flex path would gain."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pairforge.sequences.logprobs import additive_mask

    shape = SHAPES[size]
    heads, head_dim = shape["num_attention_heads"], shape["hidden_size"] // shape["num_attention_heads"]
    prompt, answer = width // 4, (width - width // 4) // 2
    owner = torch.tensor([-1] * prompt + [0] * answer + [1] * (width - prompt - answer), device=device)
    allowed = torch.tril(torch.ones(width, width, dtype=torch.bool, device=device))
    allowed &= (owner[:, None] == owner[None, :]) | (owner[None, :] == -1)
    mask = additive_mask(allowed[None, None], torch.bfloat16)
    q, k, v = (torch.randn(batch, heads, width, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def milliseconds(attention) -> float:
        attention().sum().backward()  # warm-up (and compilation)
        times = []
        for _ in range(5):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            attention().sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - start))
        return statistics.median(times)

    print(f"\nAttention with the shared-prompt block mask, [{batch}, {heads}, {width}, {head_dim}] bf16, "
          "forward + backward:")
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                print(f"  SDPA {backend.name:22}{milliseconds(sdpa):9.2f} ms")
        except RuntimeError as exc:
            print(f"  SDPA {backend.name:22}   refused ({str(exc).strip().splitlines()[0][:200]})")
    activities = [torch.profiler.ProfilerActivity.CUDA if device == "cuda" else torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profile:
        sdpa().sum().backward()
    kernels = sorted({e.key for e in profile.key_averages() if any(word in e.key.lower() for word in
                      ("attention", "fmha", "flash", "cudnn", "sdpa", "softmax"))})
    print(f"  SDPA default dispatch   {milliseconds(sdpa):9.2f} ms; kernels seen: {', '.join(kernels)[:400]}")
    _flex_attention(q, k, v, owner, sdpa, milliseconds, device)


def _flex_attention(q, k, v, owner, sdpa, milliseconds, device: str) -> None:
    """FlexAttention with the block mask as a mask_mod: compiled and timed on CUDA; elsewhere its forward's
    agreement with SDPA only (no backward on CPU)."""
    import torch

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def same_branch(b, h, query, key):  # noqa: ANN001 (flex's mask_mod signature)
            return (key <= query) & ((owner[query] == owner[key]) | (owner[key] == -1))

        width = q.shape[2]
        block = create_block_mask(same_branch, None, None, width, width, device=device)
        flex = torch.compile(flex_attention) if device == "cuda" else flex_attention
        with torch.no_grad():
            difference = (flex(q.detach(), k.detach(), v.detach(), block_mask=block) - sdpa()).abs().max().item()
        if device != "cuda":  # no backward on CPU: the forward's agreement only
            print(f"  FlexAttention (eager)    forward only, max |difference| from SDPA {difference:.2e}")
            return
        timing = milliseconds(lambda: flex(q, k, v, block_mask=block))
        print(f"  FlexAttention (compiled){timing:9.2f} ms; max |difference| from SDPA {difference:.2e}")
    except Exception as exc:  # noqa: BLE001 (a probe: report why it could not run, keep the table)
        print(f"  FlexAttention            could not run ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")


def _versions() -> str:
    """Package versions and the card; pairforge from its source (on the GPU machine it is not installed)."""
    import importlib.metadata as metadata

    import torch

    import pairforge

    found = [f"{n} {metadata.version(n)}" for n in ("torch", "transformers", "accelerate", "peft", "trl")]
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return "versions: " + ", ".join([*found, f"pairforge {pairforge.__version__}"]) + f"; {card}"


if __name__ == "__main__":
    main()
