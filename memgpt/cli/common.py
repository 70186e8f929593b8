"""What every command shares: consoles, options, reading the config, opening storage, confirmation."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from memgpt.errors import UserError

if TYPE_CHECKING:
    from memgpt.config import Config
    from memgpt.embeddings import EmbeddingModel
    from memgpt.storage import Storage

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

# Options several commands take, defined once: `as_json: JsonOption = False`.
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def interactive() -> bool:
    """Prompts are shown only to a person at a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def home_and_config() -> tuple[Path, Config]:
    from memgpt.config import load_config, memgpt_home

    home = memgpt_home()
    return home, load_config(home)


@contextmanager
def open_storage() -> Iterator[tuple[Storage, Config]]:
    from memgpt.storage import Storage

    home, config = home_and_config()
    storage = Storage(config, home)
    try:
        yield storage, config
    finally:
        storage.close()


def embedding_model(config: Config) -> EmbeddingModel:
    from memgpt.embeddings import embedding_model as create

    return create(config.embedding)


def confirm(question: str, *, assume_yes: bool) -> bool:
    """``-y`` answers yes; without it a terminal is asked and a script is refused."""
    if assume_yes:
        return True
    if not interactive():
        raise UserError(f"{question} — not a terminal, so nothing was done; pass -y to confirm")
    import questionary

    return bool(questionary.confirm(question, default=False).ask())


def warn(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}")
