"""How numbers look in tables (terminal and report), so every stage prints them the same way."""

from __future__ import annotations

from typing import Any


def number(value: float | None) -> str:
    """Three decimals, '-' for a missing value."""
    return "-" if value is None else f"{value:.3f}"


def interval(value: dict[str, float] | None) -> str:
    """{value, low, high} as '0.612 [0.540, 0.690]', '-' when absent."""
    return "-" if not value else f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def difference(versus: dict[str, float]) -> str:
    """A paired difference {difference, low, high} as '+0.034 [+0.012, +0.055]'."""
    return f"{versus['difference']:+.3f} [{versus['low']:+.3f}, {versus['high']:+.3f}]"


def significance(model: str, versus: dict[str, Any]) -> str:
    """One sentence on a paired difference: significant when its 95% interval excludes 0."""
    verdict = ("significantly better than" if versus["low"] > 0 else "significantly worse than"
               if versus["high"] < 0 else "not significantly different from")
    return (f"{model} is {verdict} {versus['model']}: {difference(versus)} (95% interval, p = {versus['p_value']:.3f}, "
            f"{versus['prompts']} prompts)")
