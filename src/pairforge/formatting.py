"""How numbers look in tables (terminal and report), so every stage prints them the same way."""

from __future__ import annotations


def number(value: float | None) -> str:
    """Three decimals, '-' for a missing value."""
    return "-" if value is None else f"{value:.3f}"


def interval(value: dict[str, float] | None) -> str:
    """{value, low, high} as '0.612 [0.540, 0.690]', '-' when absent."""
    return "-" if not value else f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
