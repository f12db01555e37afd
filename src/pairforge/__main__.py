"""`python -m pairforge` is the `pairforge` command (handy under `accelerate launch -m pairforge`)."""

from pairforge.cli import app

app(prog_name="pairforge")
