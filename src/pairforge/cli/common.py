"""What every command shares: the stderr console and the few ways a command speaks or stops, so that all of
them print tables, failures and bad input alike (one line, exit 1 or 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pairforge import render
from pairforge.errors import EXIT_BAD_INPUT, InputError

console = Console(stderr=True, soft_wrap=True, emoji=False)  # one line per message; "train:dpo" is no emoji

T = TypeVar("T")


def show(*grids: render.Grid | None) -> None:
    for grid in grids:
        if grid is not None:
            console.print(render.terminal(grid))


def say(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def stop_on_failures(failed: int, what: str, detail: str = "") -> None:
    """Failed requests are kept in the store (never exported as answers): exit 1 and say how to retry them."""
    if failed:
        console.print(f"[bold red]{failed} {what} failed{detail}[/]; they are kept in the store: run again with "
                      "--retry-failed", highlight=False)
        raise typer.Exit(1)


def fail_cleanly(command: Callable[[], T]) -> T:
    """Run a command; bad input becomes one line and exit 2."""
    try:
        return command()
    except InputError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
