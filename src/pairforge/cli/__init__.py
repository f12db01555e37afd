"""The `pairforge` command: one sub-command per stage.

Every flag is also a recipe key (`--config recipe.yaml` reads the recipe's section; flags given on the
command line win). Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:
    from typer._click.exceptions import UsageError  # typer >= 0.2x vendors click and exports no public name
except ImportError:
    from click import UsageError

from pairforge.cli import data_commands, pipeline_commands, train_command
from pairforge.cli.common import console
from pairforge.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED


class _OneLineUsageErrors(TyperGroup):
    """An option of the wrong type ('--bootstrap x') or an unknown option is bad input like any other: one
    line and exit 2, instead of click's usage box. Ctrl-C is one line too, and exit 130 (typer exits silently)."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "pairforge"
            console.print(f"[bold red]error:[/] {escape(exc.format_message())} (see {command} --help)",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            console.print("interrupted", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(name="pairforge", cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  help=__doc__.splitlines()[0])
pairs_app = typer.Typer(no_args_is_help=True, help="Build preference pairs from answers of several models.")
app.add_typer(pairs_app, name="pairs")
curriculum_app = typer.Typer(no_args_is_help=True, help="Inspect a curriculum before training on it.")
app.add_typer(curriculum_app, name="curriculum")

# registered here, in the order `pairforge --help` lists them
pairs_app.command("build")(data_commands.pairs_build)
curriculum_app.command("show")(data_commands.curriculum_show)
app.command("train")(train_command.train_command)
app.command("generate")(data_commands.generate_command)
app.command("judge")(data_commands.judge_command)
app.command("revise")(data_commands.revise_command)
app.command("rank")(data_commands.rank_command)
app.command("eval", cls=pipeline_commands.ManyValues)(pipeline_commands.eval_command)
app.command("report")(pipeline_commands.report_command)
app.command("run")(pipeline_commands.run_command)
