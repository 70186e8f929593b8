"""The files table kept in step with a load, so `memgpt load` and a server's uploads show alike in a
folder's file list, with where each load is: parsing, embedding (so many chunks of so many), completed or
error with the loader's one-line reason."""

from __future__ import annotations

import logging
import mimetypes
import os
import time
import uuid
from pathlib import Path

from memgpt.errors import StorageError
from memgpt.owners import this_process
from memgpt.storage import Storage
from memgpt.types import FileRecord, FileStatus, Source

logger = logging.getLogger(__name__)
_PROGRESS_EVERY = 0.5  # seconds between progress writes while embedding
INTERRUPTED = "the load was interrupted; load the file again"


def new_file_id() -> str:
    return f"file-{uuid.uuid4()}"


def file_key(path: Path) -> str:
    """The path a file is known by in its source: absolute, symlinks resolved (as documents record it)."""
    return os.path.realpath(path)


def mime_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or ("text/markdown" if name.lower().endswith(".md") else "")


class FileTracker:
    """One load's file rows: the current file's status and progress. Only the loader calls it."""

    def __init__(self, storage: Storage, source: Source, *, keep_owner: bool = False) -> None:
        self._files = storage.files
        # A load that stops (``abandoned``) leaves its row this process's: its caller decides what comes next (the
        # server's file jobs try it again, or queue it for the next start, fenced by the owner).
        self._keep_owner = keep_owner
        self._source = source
        self._current: FileRecord | None = None
        self._created = False
        self._embedded = 0
        self._written_at = 0.0

    def started(self, path: Path) -> None:
        """A file's load begins: its row (made now for a file new to the source) says parsing."""
        key = file_key(path)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        record = self._files.by_path(self._source.id, key)
        self._created = record is None
        if record is None:
            record = self._files.add(
                FileRecord(
                    id=new_file_id(),
                    source_id=self._source.id,
                    file_name=path.name,
                    path=key,
                    original_file_name=path.name,
                    file_type=mime_type(path.name),
                    file_size=size,
                    status=FileStatus.PARSING,
                    job_owner=this_process(),
                )
            )
        else:
            self._files.update(
                record.id,
                status=FileStatus.PARSING,
                error_message="",
                total_chunks=0,
                chunks_embedded=0,
                job_owner=this_process(),
                file_size=size or record.file_size,
            )
        self._current = record
        self._embedded = 0

    def planned(self, chunks: int) -> None:
        if self._current is not None:
            self._files.update(self._current.id, status=FileStatus.EMBEDDING, total_chunks=chunks)
            self._written_at = time.monotonic()

    def embedded(self, count: int) -> None:
        self._embedded += count
        if self._current is not None and time.monotonic() - self._written_at >= _PROGRESS_EVERY:
            self._files.update(self._current.id, chunks_embedded=self._embedded)
            self._written_at = time.monotonic()

    def completed(self, chunks: int) -> None:
        self._finish(status=FileStatus.COMPLETED, total_chunks=chunks, chunks_embedded=chunks)

    def duplicate(self, twin: str) -> None:
        """The file has the same content as another file of the source, so nothing was loaded for it. A row
        made by this load goes again (as `memgpt load` says, it was skipped); an older one says why it failed (a file
        `memgpt load` loaded before, now a copy of another; uploads are loaded as copies, see ``SourceLoader.load``)."""
        if self._current is None:
            return
        if self._created and not self._current.stored:
            self._files.delete([self._current.id])
            self._current = None
            return
        self.failed(f"same content as {Path(twin).name}, already in this folder")

    def failed(self, reason: str) -> None:
        self._finish(status=FileStatus.ERROR, error_message=reason)

    def abandoned(self, reason: str = INTERRUPTED) -> None:
        """The load stopped (endpoint or storage failure, Ctrl-C): say so if the database still answers."""
        try:
            self._finish(status=FileStatus.ERROR, error_message=reason, release=not self._keep_owner)
        except StorageError as exc:
            logger.warning("could not record that the load of %s stopped: %s", self._current, exc)

    def _finish(self, *, release: bool = True, **fields: str | int) -> None:
        if self._current is not None:
            # A kept row (a server's load) is written only while it is still this process's: another that took the
            # load over (this one stalled past its lease) owns it now.
            owner = this_process() if self._keep_owner else None
            self._files.update(self._current.id, if_owner=owner, **({"job_owner": ""} if release else {}), **fields)
            self._current = None
