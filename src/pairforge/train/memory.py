"""A memory model for training: the expected peak, by part, from the model's shape and the run's settings.

    peak ~ runtime + weights + gradients + AdamW state + frozen reference copy
           + activations of the largest forward + one head chunk

- weights: every parameter at the training dtype; gradients and AdamW's two moments: the trainable ones
  (all, or only LoRA's) in fp32;
- a frozen reference copy only when the reference is computed live on full fine-tuning (the default,
  precomputed reference log-probs, costs none; LoRA's reference is the adapter switched off);
- activations: what a Llama-style decoder layer keeps for backward, per token, about
  9 x hidden + 3 x kv_width + 4 x intermediate values (norm inputs/outputs, q/k/v, rotary q/k, attention
  and MLP intermediates), times layers and the tokens of the largest forward (rows x width; see
  `forward_tokens`) — on SmolLM2-135M 47.6 KB per token and layer in fp32, as measured;
- the head: one chunk of answer tokens x vocabulary in fp32, and its log-softmax;
- runtime: Python, torch and the libraries, ~0.45 GB on CPU (measured).
Checked against the measured peak in bench/train_vs_trl.py.
"""

from __future__ import annotations

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
    head: int

    @property
    def total(self) -> int:
        return sum(self.__dict__.values())

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / 2**30:.2f}" for name, value in self.__dict__.items() if value)
        return f"{self.total / 2**30:.2f} GiB ({parts})"


def estimate(config: Any, parameters: int, trainable: int, forward_tokens: int, chunk_tokens: int,
             dtype: str = "float32", live_reference_copy: bool = False) -> MemoryEstimate:
    """The expected peak for a decoder with HF `config`, `parameters` in all, `trainable` of them trained."""
    width = _DTYPE_BYTES[dtype]
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    kv_width = config.hidden_size // heads * kv_heads
    per_token_layer = 9 * config.hidden_size + 3 * kv_width + 4 * config.intermediate_size
    return MemoryEstimate(
        runtime=RUNTIME_BYTES,
        weights=parameters * width,
        gradients=trainable * 4,
        optimizer=2 * trainable * 4,
        reference=parameters * width if live_reference_copy else 0,
        activations=forward_tokens * config.num_hidden_layers * per_token_layer * width,
        head=2 * chunk_tokens * config.vocab_size * 4,
    )
