"""The progress bars of commands that load files (`memgpt load`, `memgpt import`), drawn on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from memgpt.cli.common import err_console, one_line

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class ProgressListener:
    """Draws the seed's "Loading files" bar plus a bar for passages as they are embedded."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.files: TaskID | None = None
        self.passages: TaskID | None = None

    def files_found(self, count: int) -> None:
        self.files = self.progress.add_task("Loading files", total=count, unit="file")

    def file_started(self, path: Path) -> None: ...

    def passages_planned(self, count: int) -> None:
        if self.passages is None:
            self.passages = self.progress.add_task("Embedding passages", total=0, unit="passage")
        task = self.progress.tasks[self.passages]
        self.progress.update(self.passages, total=(task.total or 0) + count)

    def passages_embedded(self, count: int) -> None:
        if self.passages is not None:
            self.progress.advance(self.passages, count)

    def file_finished(self, path: Path) -> None:
        if self.files is not None:
            self.progress.advance(self.files)

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.progress.console.print(f"[yellow]warning:[/yellow] {escape(one_line(message))}")


def load_progress() -> Progress:
    """The bars, one line each: "Loading files: 50% ━━━━━━  1/2 [0:00:03 < 0:00:03]"."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class Bars(Progress):
        def stop(self) -> None:
            if self.tasks:
                super().stop()
            else:  # nothing was loaded (an agent file without files, an import refused): no empty line either
                self.live.transient = True
                self.live.stop()

    return Bars(
        TextColumn("{task.description}:"),
        TaskProgressColumn(),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("["),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
        TextColumn("]"),
        console=err_console,
        # Off a terminal rich draws the bars once, when they stop, so redrawing them ten times a second in
        # a thread only burnt CPU beside the embedding (~0.15 CPU s of a `memgpt load` of the seed paper,
        # busy machine): the final bars are printed just the same without it.
        auto_refresh=err_console.is_terminal and not err_console.is_dumb_terminal,
    )
