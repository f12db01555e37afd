"""`python -m pairforge` is the `pairforge` command (handy under `accelerate launch -m pairforge`).

Ctrl-C while the command's modules still load (torch, transformers: the first second or so) is said in one
line, as it is once a command runs (exit 130), instead of a KeyboardInterrupt traceback from an import. Once the
command is over, a Ctrl-C while Python shuts down (its threads and modules torn down) changes nothing: it is
ignored, so finished work exits 0 instead of dying by the signal (exit -2)."""

import signal
import sys


def main() -> None:
    try:
        from pairforge.cli import app

        app(prog_name="pairforge")
    except KeyboardInterrupt:
        from pairforge.errors import EXIT_INTERRUPTED

        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    main()
