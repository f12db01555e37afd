"""What every command shares: the stderr console and the few ways a command speaks or stops, so that all of
them print tables, failures and bad input alike (one line, exit 1 or 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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


def shard_option(asking: str) -> Any:
    """--shard K/N, the same on every command that asks a model per prompt."""
    return typer.Option(None, help=f"K/N: {asking} only the prompts of shard K of N, into <out>/shards/K-of-N.sqlite "
                        "(shards run at once, on many machines); run without --shard to merge them")


def said_sharded(shard: str, out: Path, command: str) -> None:
    """A sharded command's last line: where its answers are kept and how they come together."""
    from pairforge.layout import STORE
    from pairforge.requests.shards import Shard

    part = Shard.parse(shard)
    say(f"shard {part}: kept in {part.store(out / STORE)}; once every shard is done, run `pairforge {command}` on the "
        "same --out without --shard: it merges the shards and writes the outputs")


def fail_cleanly(command: Callable[[], T]) -> T:
    """Run a command; bad input becomes one line and exit 2."""
    try:
        return command()
    except InputError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
