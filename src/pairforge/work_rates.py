"""Work rates of the embedded model, measured on the project's 2-core CPU (AVX512-BF16) on the quickstart in
2026-11: the stages' time estimates in the plan `pairforge run` prints are built from them, a rough guide,
printed as such; models other than the embedded one get no estimate."""

from __future__ import annotations

from typing import Any

_TOKENS_PER_S_AT_10_ROWS = 80.0  # float32 generation, 10 prompts per generate() call
SECONDS_PER_PAIR_PASS = 1.0  # float32 training, LoRA, ~150-token rows
BF16_SPEED_UP = 2.2
TARGET_ONLY_COST = 0.66  # plain SFT pushes prompt + target only: its train phase took 0.66x (2026-11-28)


def local_tokens_per_s(batch_size: int, dtype: str) -> float:
    """More rows per step use the cores better, up to ~2.4x at 64 rows."""
    return _TOKENS_PER_S_AT_10_ROWS * min(2.4, (batch_size / 10) ** 0.5) * (BF16_SPEED_UP if dtype == "bfloat16"
                                                                           else 1.0)


def answering_seconds(sources: list[Any], answers: int) -> float:
    """Seconds for local embedded-size sources to write `answers` answers each, at the measured token rates."""
    return sum(answers * s.max_new_tokens / local_tokens_per_s(s.batch_size, s.resolved_dtype) for s in sources)
