"""What every command shares: consoles, options, reading the config, opening storage, confirmation."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from memgpt.cli import startup_over
from memgpt.errors import UserError

if TYPE_CHECKING:
    from rich.table import Column, Table
    from rich.text import Text

    from memgpt.config import Config
    from memgpt.embeddings import EmbeddingModel
    from memgpt.storage import Storage
    from memgpt.storage.milvus.client import LockWait
    from memgpt.storage.turns import TurnStore


class TerminalConsole(Console):
    """A rich Console for text users and models wrote: every string it prints, a table cell as much as a
    line, has its control characters written out (ESC as ``\\x1b``, see :func:`one_line`) but for the
    newlines and tabs that lay text out. A file name or a passage holding ``\\x1b[31m`` is shown as
    written; it never recolours the terminal, moves the cursor or sets its title.

    Its size is the terminal's (or COLUMNS and LINES) when it prints, not when it was made: rich fixes the
    size from COLUMNS and LINES in the environment of the moment a console is made, and these two are made
    once, as this module is imported. A command run in a process whose environment changed since (the tests'
    in-process ``cli()``, which sets COLUMNS=200) printed at the width of the import: 80 in a pytest-xdist
    worker, which inherits the COLUMNS=80 and LINES=24 that GNU readline sets in the controller's C
    environment when pytest imports it (python/cpython#46927)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._width = options.get("width")
        self._height = options.get("height")

    def render_str(self, text: str, **options: Any) -> Text:
        return super().render_str(_outside_layout(text), **options)

    def print_json(self, json: str | None = None, *, data: Any = None, highlight: bool = True, **options: Any) -> None:
        """As rich prints JSON, with DEL and the C1 controls escaped (``\\u009b``) as JSON escapes C0 ones:
        rich writes them raw, and 0x9b is CSI to a terminal. The output decodes to the same data."""
        from rich.highlighter import JSONHighlighter
        from rich.json import JSON
        from rich.text import Text

        options["highlight"] = False  # highlighted below, once escaped
        rendered = JSON(json, **options) if json is not None else JSON.from_data(data, **options)
        text = _DEL_AND_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", rendered.text.plain)
        rendered.text = JSONHighlighter()(text) if highlight else Text(text)
        rendered.text.no_wrap = True
        rendered.text.overflow = None
        self.print(rendered, soft_wrap=True)


console = TerminalConsole(highlight=False, soft_wrap=True)
err_console = TerminalConsole(stderr=True, highlight=False, soft_wrap=True)

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
    anything is opened or created (``run``'s check that an LLM is configured). A Milvus Lite file another
    memgpt command holds is waited for (see :func:`lock_wait`), which is said once on stderr."""
    from memgpt.storage import Storage
    from memgpt.storage.milvus.client import command_holding

    home, config = home_and_config()
    if check is not None:
        check(config)
    with command_holding(command_name(), lock_wait()):
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


# How long a command waits for another memgpt command (not a server) that holds the home's Milvus Lite file.
LOCK_WAIT_ENV = "MEMGPT_LOCK_WAIT"
LOCK_WAIT_SECONDS = 60.0


def lock_wait() -> LockWait:
    """Wait up to ``MEMGPT_LOCK_WAIT`` seconds (default 60; 0 refuses at once) for a Milvus Lite file another
    memgpt command holds, telling the user once on stderr."""
    import os

    from memgpt.errors import ConfigError
    from memgpt.storage.milvus.client import LockWait

    raw = os.environ.get(LOCK_WAIT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else LOCK_WAIT_SECONDS
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigError(f"{LOCK_WAIT_ENV}={raw!r}: give a number of seconds (0 refuses at once)")
    return LockWait(
        seconds,
        lambda line: err_console.print(line, markup=False),
        longer=f"set {LOCK_WAIT_ENV}=SECONDS to wait longer",
    )


class TurnWait:
    """The pause of a wait for an agent's lease (``TurnStore.holding``'s ``pause``): the first one says so in one
    line on stderr, naming the process whose turn holds it (``where``)."""

    def __init__(self, turns: TurnStore, agent_id: str) -> None:
        self._turns, self._agent_id = turns, agent_id
        self._where: str | None = None

    def __call__(self, seconds: float) -> None:
        if self._where is None:
            self._where = self.where()
            err_console.print(f"waiting for the agent's turn in another memgpt process{self._where}...", markup=False)
        time.sleep(seconds)

    def where(self) -> str:
        """ " (pid N on host H)" of the process holding the agent's lease (as first seen while waiting), "" when not
        known: a PostgreSQL home is shared by processes of several hosts, where a pid alone names no process."""
        if self._where is not None:
            return self._where
        parts = (self._turns.holder(self._agent_id) or "").split(":")  # <host>:<pid>:<start>:<token>
        if len(parts) < 4 or not parts[1].isdigit():
            return ""
        host = parts[0].split("#")[0]  # <host name>#<pid namespace> (storage.expiring)
        return f" (pid {parts[1]} on host {host})" if host else f" (pid {parts[1]})"


def command_name() -> str:
    """The command being run, as other processes are told ("memgpt load directory"): its words, no values."""
    return _command


def name_command(words: Iterable[str]) -> None:
    """Set what :func:`command_name` says: the words of the command line that name the command."""
    global _command
    _command = " ".join(["memgpt", *words])


_command = "memgpt"


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


def one_line(text: str) -> str:
    """``text`` with its control characters written out (a newline as ``\\n``, ESC as ``\\x1b``): a file
    named with a newline or a terminal escape sequence is named in one line, and never moves the cursor,
    recolours the terminal or sets its title."""
    return _CONTROL.sub(_written_out, text)


def _outside_layout(text: str) -> str:
    """``text`` with the control characters other than newline and tab written out (as :func:`one_line`)."""
    return _CONTROL_BUT_LAYOUT.sub(_written_out, text)


_DEL_AND_C1 = re.compile("[\x7f-\x9f]")  # JSON escapes C0 itself
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (0x9b is CSI, as ESC [ is)
# A CR of a CRLF line end is left to rich, which drops it.
_CONTROL_BUT_LAYOUT = re.compile("\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _written_out(match: re.Match[str]) -> str:
    c = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or f"\\x{ord(c):02x}"


# How much of each message the resume banner and /dump show: a 1 MB reply was printed whole on every resume.
SHOWN_CHARS = 1_000
SHOWN_LINES = 20


def shortened(text: str) -> str:
    """``text`` up to SHOWN_CHARS characters or SHOWN_LINES lines, saying how many characters were left out."""
    end = min(len(text), SHOWN_CHARS)
    newline = -1
    for _ in range(SHOWN_LINES):
        newline = text.find("\n", newline + 1, end)
        if newline < 0:
            break
    else:
        end = newline
    if end >= len(text):
        return text
    return f"{text[:end].rstrip()} … [{len(text) - end:,} more characters not shown]"


def warn(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/yellow] {escape(one_line(message))}")


# The least a column other than the names gets before names are folded: a few characters plus padding.
_OTHER_COLUMN_ROOM = 6


def names_table(*headers: str, names: Iterable[str], width: int | None = None, **options: Any) -> Table:
    """A table whose first column holds names a user types (a source, an agent, a persona). No cell is
    ever cut short with "…": cells wrap or fold. A name stays on one line while the terminal (or COLUMNS
    when piped; ``width`` if given) leaves the other columns a little room; a longer one is folded over
    lines, whole."""
    from rich.table import Column, Table

    others = _OTHER_COLUMN_ROOM * (len(headers) - 1)
    first = names_column(headers[0], names, room=(console.width if width is None else width) - 4 - others)
    return Table(first, *(Column(header, overflow="fold") for header in headers[1:]), **options)


def names_column(header: str, names: Iterable[str], *, room: int) -> Column:
    """A table column of names a user types, never cut short: each stays on one line while it is at most
    ``room`` characters wide (the table's width less the other columns' and the borders'); a longer one
    is folded over lines, whole."""
    from rich.cells import cell_len
    from rich.table import Column

    widths = [cell_len(name) for name in names]
    fitting = [width for width in widths if width <= room]
    return Column(header, no_wrap=len(fitting) == len(widths), overflow="fold", min_width=max(fitting, default=None))
