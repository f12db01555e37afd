"""A memory model for training: the expected peak, by part, from the model's shape and the run's settings.

    peak ~ runtime + weights + gradients + AdamW state + frozen reference copy
           + activations of the largest forward + its attention mask + one head chunk

- weights: every parameter at the training dtype; gradients and AdamW's two moments: the trainable ones,
  all of them in the weights' dtype (full fine-tuning), or only LoRA's in fp32 (peft keeps adapters in fp32);
- a frozen reference copy only when the reference is computed live on full fine-tuning (the default,
  precomputed reference log-probs, costs none; LoRA's reference is the adapter switched off);
- activations: what a Llama-style decoder layer keeps for backward, per token, in training (a block or
  padding mask is always given, so attention runs on keys and values repeated to every head):
  10 x hidden + 4 x intermediate + heads + 2 values (norm inputs, q and the repeated k/v, attention output
  and its per-head log-sum-exp, MLP intermediates, two rstd), or 8 x hidden + 2 x intermediate + heads + 2
  with `lean_blocks` (training/lean.py) — exact: tests/test_lean.py counts the bytes with saved-tensor hooks on
  shapes that vary one dimension at a time (SmolLM2-135M: 47.7 KB per token and layer in fp32, 30.8 KB
  lean) — times layers and the tokens of the largest forward (rows x width; see `forward_tokens`);
- the attention mask: one [rows, 1, width, width] additive mask for all layers (sequences/logprobs.py
  `additive_mask`: the shared layout's block mask, or right padding), forward_tokens x width values;
- the head: one [chunk of answer tokens, vocabulary] buffer in fp32 (sequences/logprobs.py `_HeadLogps`);
- runtime: Python, torch and the libraries, ~0.45 GB on CPU (measured).
Checked against the measured peak in bench/train_vs_trl.py.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any

RUNTIME_BYTES = 450 * 2**20
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    runtime: int
    weights: int
    gradients: int
    optimizer: int
    reference: int
    activations: int
    mask: int
    head: int

    @property
    def total(self) -> int:
        return sum(self.__dict__.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / 2**30:.2f}" for name, value in self.__dict__.items() if value)
        return f"{self.total / 2**30:.2f} GiB ({parts})"


def estimate(config: Any, parameters: int, trainable: int, forward_tokens: int, chunk_tokens: int,
             dtype: str = "float32", live_reference_copy: bool = False, lean: bool = True,
             row_width: int = 0) -> MemoryEstimate:
    """The expected peak for a decoder with HF `config`, `parameters` in all, `trainable` of them trained, whose
    largest forward is `forward_tokens` tokens in rows of `row_width`."""
    width = _DTYPE_BYTES[dtype]
    trained_width = width if trainable == parameters else 4  # peft keeps a LoRA adapter in fp32
    hidden, intermediate = (8, 2) if lean else (10, 4)
    per_token_layer = (hidden * config.hidden_size + intermediate * config.intermediate_size
                       + config.num_attention_heads + 2)
    return MemoryEstimate(
        runtime=RUNTIME_BYTES,
        weights=(parameters - trainable) * width + trainable * trained_width,
        gradients=trainable * trained_width,
        optimizer=2 * trainable * trained_width,
        reference=parameters * width if live_reference_copy else 0,
        activations=forward_tokens * config.num_hidden_layers * per_token_layer * width,
        mask=forward_tokens * row_width * width,
        head=chunk_tokens * config.vocab_size * 4,
    )


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Tensors below glibc's mmap threshold (dynamic, up to 32 MiB: every activation and gradient here) come
    from the heap, and pages freed there stay in the process: after a backward pass the activations'
    pages are still counted, the next piece of a different shape cannot reuse them all, and peak RSS
    climbs step after step. The trainer calls this after each backward pass: -0.2 GB peak RSS on the
    training benchmark, for the cost of touching those pages again (~0.25 s per GiB here). A fixed low
    mmap threshold would keep RSS at the live tensors (-0.5 GB) but made training ~20% slower.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (musl and friends have no malloc_trim)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()
