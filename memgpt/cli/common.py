"""What every command shares: consoles, options, reading the config, opening storage, confirmation."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from memgpt.cli import startup_over
from memgpt.errors import UserError

if TYPE_CHECKING:
    from rich.table import Table

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
def open_storage(
    *, vectors: bool = False, check: Callable[[Config], object] | None = None
) -> Iterator[tuple[Storage, Config]]:
    """The home's storage. A command that will use Milvus either passes ``vectors=True`` (once its input is
    checked), and Milvus and the configured embedding model start loading before anything else, SQLAlchemy
    included; or calls ``storage.open_vectors_early()`` later. Either way Milvus then opens while the
    command goes on with its imports, its SQL and reading files. ``check`` runs on the config before
    anything is opened or created (``run``'s check that an LLM is configured)."""
    from memgpt.storage import Storage

    home, config = home_and_config()
    if check is not None:
        check(config)
    if vectors:
        model = embedding_model(config)
        storage = Storage(config, home, vectors_early=model.space, meanwhile=model.load_early)
    else:
        storage = Storage(config, home)
    try:
        startup_over()  # inside: whatever it raises (a Ctrl-C), the storage just opened is closed
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


# The least a column other than the names gets before names are folded: a few characters plus padding.
_OTHER_COLUMN_ROOM = 6


def names_table(*headers: str, names: Iterable[str], **options: Any) -> Table:
    """A table whose first column holds names a user types (a source, an agent, a persona). No cell is
    ever cut short with "…": cells wrap or fold. A name stays on one line while the terminal (or COLUMNS
    when piped) leaves the other columns a little room; a longer one is folded over lines, whole."""
    from rich.cells import cell_len
    from rich.table import Column, Table

    room = console.width - 4 - _OTHER_COLUMN_ROOM * (len(headers) - 1)
    widths = [cell_len(name) for name in names]
    fitting = [width for width in widths if width <= room]
    first = Column(
        headers[0],
        no_wrap=len(fitting) == len(widths),
        overflow="fold",
        min_width=max(fitting, default=None),
    )
    return Table(first, *(Column(header, overflow="fold") for header in headers[1:]), **options)
