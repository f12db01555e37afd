"""What every command shares: the stderr console and the few ways a command speaks or stops, so that all of
them print tables, failures and bad input alike (one line, exit 1 or 2)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pairforge import render
from pairforge.errors import EXIT_BAD_INPUT, InputError
from pairforge.files import check_output
from pairforge.folder_lock import held
from pairforge.layout import RunDir

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


def fail_cleanly(run: Callable[[], T]) -> T:
    """Run a command; bad input becomes one line and exit 2."""
    try:
        return run()
    except InputError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None


@contextmanager
def writing(folder: Path, option: str = "--out") -> Iterator[Callable[[], None]]:
    """A command's work on a run folder: the folder checked, then held by this command alone (`folder_lock`), so a
    second command on it stops with one line instead of mixing its outputs with this one's."""
    check_output(folder, "folder", option)
    with held(RunDir(folder).lock, option) as still_held:
        yield still_held
