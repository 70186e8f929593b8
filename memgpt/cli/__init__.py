"""The `memgpt` command line: one module per noun, heavy imports inside commands."""

from __future__ import annotations

import sys
from typing import NoReturn


def main() -> None:
    """The `memgpt` executable. The command modules are imported here, so that a Ctrl-C while they
    load (most of a second) ends as cleanly as one during a command."""
    try:
        from memgpt.cli.app import main as run
    except KeyboardInterrupt:
        interrupted()
    run()


def interrupted() -> NoReturn:
    """How every Ctrl-C ends that no command handled itself: one line and the shell's code for SIGINT."""
    sys.stderr.write("Interrupted\n")
    sys.exit(130)
