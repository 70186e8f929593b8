"""Data sources from the shell: load, list, search, delete."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from memgpt.cli.common import (
    JsonOption,
    YesOption,
    confirm,
    console,
    embedding_model,
    err_console,
    names_column,
    names_table,
    one_line,
    open_storage,
    warn,
)
from memgpt.cli.progress import ProgressListener, load_progress
from memgpt.errors import UserError

if TYPE_CHECKING:
    from rich.table import Table

    from memgpt.data.ingest import LoadReport
    from memgpt.types import SearchHit


def load_directory(
    name: str = typer.Option(..., "--name", help="Name of the source to create or add to."),
    input_files: list[Path] = typer.Option(
        None, "--input-files", help="A file to load (repeat for more).", show_default=False
    ),
    input_dir: Path | None = typer.Option(None, "--input-dir", help="Load every supported file in this folder."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also load files in subfolders of --input-dir."),
    extensions: str = typer.Option(
        "",
        "--extensions",
        help="Comma-separated extensions to take from --input-dir, e.g. .pdf,.md (default: all supported).",
    ),
    description: str = typer.Option("", "--description", help="What the source is about."),
) -> None:
    """Load files into a data source: parse, chunk, embed and store them in Milvus."""
    from memgpt.data.ingest import SourceLoader, collect_files
    from memgpt.interrupts import terminate_as_interrupt

    if not input_files and input_dir is None:
        raise UserError("give --input-files FILE (repeatable) or --input-dir DIR")
    wanted = [e.strip() for e in extensions.split(",") if e.strip()] or None
    paths = collect_files(input_files or [], input_dir, recursive=recursive, extensions=wanted)
    if not paths:
        raise UserError(f"no supported files found in {input_dir}")
    with terminate_as_interrupt() as terminated, open_storage(vectors=True) as (storage, config):
        model = embedding_model(config)
        with load_progress() as progress:
            loader = SourceLoader.from_settings(
                storage, model, config.embedding, user_id=config.user_id, listener=ProgressListener(progress)
            )
            report = loader.load(name, paths, description=description)
    code = _summarize(report)
    raise typer.Exit(128 + signal.SIGTERM if code == 130 and terminated.received else code)


def _summarize(report: LoadReport) -> int:
    if report.dropped and report.failures and not (report.aborted or report.interrupted):
        # Not "Loaded 0 passages and 0 documents from NAME" of a source that is not there.
        err_console.print(
            f"error: nothing loaded: {len(report.failures)} file(s) could not be loaded (warnings above), so "
            f"source {report.source!r} was not created",
            markup=False,
        )
        return 1
    console.print(
        f"Loaded {report.passages} passages and {report.documents} documents from {report.source}",
        markup=False,
    )
    if report.unchanged:
        console.print(f"{len(report.unchanged)} file(s) already loaded and unchanged: skipped", markup=False)
    for path, twin in report.duplicates:
        console.print(f"{path}: same content as {twin}, already loaded: skipped", markup=False)
    if report.failures:
        err_console.print(f"{len(report.failures)} file(s) could not be loaded (warnings above)", markup=False)
    if report.aborted:
        err_console.print(f"error: {report.aborted}; run the same command again to finish", markup=False)
    if report.interrupted:
        err_console.print(
            "Interrupted: nothing half-loaded is visible; run the same command again to finish.", markup=False
        )
        return 130
    return 0 if report.ok else 1


def list_sources(as_json: JsonOption = False) -> None:
    """List data sources with their documents, passages and embedding model."""
    from memgpt.data.sources import list_sources as sources_of

    with open_storage() as (storage, config):
        sources = sources_of(storage, config.user_id)
    if as_json:
        rows = [
            {
                "name": s.name,
                "documents": s.documents,
                "passages": s.passages,
                "embedding_model": s.embedding_model,
                "embedding_dim": s.embedding_dim,
                "created_at": s.created_at.isoformat(),
                "incomplete_documents": s.incomplete_documents,
                "status": s.status,
            }
            for s in sources
        ]
        console.print_json(json.dumps(rows))
        return
    if not sources:
        console.print(
            "No sources yet. Create one with `memgpt load directory --name NAME --input-files FILE`.",
            markup=False,
        )
        return
    table = names_table("Name", "Documents", "Passages", "Embedding model", "Created", names=[s.name for s in sources])
    for s in sources:
        table.add_row(
            s.name,
            str(s.documents),
            str(s.passages),
            f"{s.embedding_model} ({s.embedding_dim})",
            s.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    for s in sources:
        if s.status == "deleting":
            warn(f"source {s.name!r} was only partly deleted; finish with `memgpt delete source {s.name!r} -y`")
        elif s.incomplete_documents:
            warn(f"source {s.name!r} has {s.incomplete_documents} unfinished document(s); rerun its `memgpt load`")


def delete_source(name: str = typer.Argument(..., help="Name of the source."), yes: YesOption = False) -> None:
    """Delete a data source and all its passages."""
    from memgpt.data.sources import delete_source as remove
    from memgpt.data.sources import get_source

    with open_storage() as (storage, config):
        source = get_source(storage, config.user_id, name)
        question = f"Delete source {source.name!r} ({source.documents} documents, {source.passages} passages)?"
        if not confirm(question, assume_yes=yes):
            console.print("Nothing deleted.")
            return
        deleted = remove(storage, source)
    console.print(f"Deleted source {source.name!r} and {deleted} passages", markup=False)


def search(
    source: str = typer.Argument(..., help="Name of the source."),
    query: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "-k", "--top-k", min=1, max=100, help="How many passages to show."),
    as_json: JsonOption = False,
) -> None:
    """Search a data source by meaning and by shared words (hybrid), and print the best passages."""
    from memgpt.data.sources import get_source, search_source

    # Milvus opens from the start, so that it overlaps SQLAlchemy's import and the source's lookup. A wrong
    # name is still told in one line (at the cost of Milvus's start), after a Milvus Lite file that another
    # process holds, if that is the case.
    with open_storage(vectors=True) as (storage, config):
        found = get_source(storage, config.user_id, source)
        model = embedding_model(config)
        hits = search_source(storage, found, model, query, k=k)
    if as_json:
        rows = [
            {
                "score": round(h.score, 4),
                "text": h.passage.text,
                "document_id": h.passage.document_id,
                **h.passage.metadata,
            }
            for h in hits
        ]
        console.print_json(json.dumps(rows))
        return
    if not hits:
        console.print(f"No passages in {found.name!r} match.", markup=False)
        return
    console.print(hits_table(hits, width=console.width))


# A passage's line breaks, with the blanks around them, shown as one mark.
_LINE_BREAK = re.compile(r"[ \t]*(?:\r\n|\r|\n)[ \t\r\n]*")
_SCORE_ROOM = 8  # "0.123" and its column's padding and border
_TEXT_ROOM = 6  # the least the passages' column keeps before file names fold


def hits_table(hits: Sequence[SearchHit], *, width: int) -> Table:
    """The table `memgpt search` prints at ``width`` columns: each passage on one line, its line breaks
    marked (↵) and its end cut with "…" where the line ends (a passage of a screen's height made a row as
    tall, all but its first line empty beside it; `--json` has the whole text). A file name is never cut
    (the name a user types to find the file): it stays on one line while the table leaves the passages a
    few characters, and is folded over lines, whole, beyond that."""
    from rich.table import Table
    from rich.text import Text

    wheres = []
    for hit in hits:
        meta = hit.passage.metadata
        wheres.append(one_line(meta.get("file_name", "?") + (f" p.{meta['page']}" if meta.get("page") else "")))
    document = names_column("Document", wheres, room=width - 4 - _SCORE_ROOM - _TEXT_ROOM)
    table = Table("Score", document, "Text", show_lines=not document.no_wrap)
    for hit, where in zip(hits, wheres, strict=True):
        text = one_line(_LINE_BREAK.sub(" ↵ ", hit.passage.text.strip()).replace("\t", " "))
        table.add_row(f"{hit.score:.3f}", Text(where), Text(text, no_wrap=True, overflow="ellipsis"))
    return table
