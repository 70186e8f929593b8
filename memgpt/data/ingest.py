"""Loading files into a source: read, parse, chunk, embed, write.

Idempotent and crash-safe. Document and passage ids are hashes of the source, the file's content
and how it was chunked, so a repeated load rewrites the same rows. A file's documents are recorded
as PENDING before any passage is written and made READY in one transaction after all are written;
searches hide every document that is not READY, so an interrupted load leaves nothing half-visible,
and running the same load again finishes it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from memgpt.data.chunking import Chunker, embedding_text
from memgpt.data.filerecords import FileTracker
from memgpt.data.loaders import LOADER_VERSION, SUPPORTED_EXTENSIONS, TextUnit, parse, read_bytes, too_big
from memgpt.data.sections import section_label
from memgpt.data.sources import delete_source, new_source, validate_source_name
from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import BackendError, InputFileError, StorageUnavailable, UserError, public_message
from memgpt.interrupts import interrupts_held
from memgpt.storage import Storage
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import is_in
from memgpt.types import Document, DocumentStatus, Passage, Source, utc_now

if TYPE_CHECKING:
    from memgpt.config import EmbeddingSettings

logger = logging.getLogger(__name__)

_WRITE_WINDOW = 256  # passages embedded and written together: bounds memory on huge files
_DELETE_BATCH = 500


@dataclass
class LoadReport:
    source: str
    passages: int = 0
    documents: int = 0
    files_loaded: int = 0
    unchanged: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, already loaded as)
    failures: list[InputFileError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    aborted: str = ""  # why the load stopped early (embedding endpoint or storage failure)
    storage_away: bool = False  # it stopped because storage failed (Milvus or the metadata database): worth again
    interrupted: bool = False
    dropped: bool = False  # the source this load created was deleted again: nothing in it was loaded
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("parse", "embed", "insert"), 0.0))

    @property
    def ok(self) -> bool:
        return not (self.failures or self.aborted or self.interrupted)


class LoadListener:
    """Progress hooks; the CLI draws bars with them. Every hook is optional."""

    def files_found(self, count: int) -> None: ...
    def file_started(self, path: Path) -> None: ...
    def passages_planned(self, count: int) -> None: ...
    def passages_embedded(self, count: int) -> None: ...
    def file_finished(self, path: Path) -> None: ...
    def warn(self, message: str) -> None: ...


def collect_files(
    input_files: Sequence[Path] = (),
    input_dir: Path | None = None,
    *,
    recursive: bool = False,
    extensions: Iterable[str] | None = None,
) -> list[Path]:
    """Files named explicitly are always taken (and fail later if unreadable); files in a directory
    are filtered by extension and hidden files are skipped. Symlinks to files are followed, symlinks
    to directories are not; a symlink loop or a broken link met in the directory is taken too, so the
    load reports it by name instead of skipping it silently (or, as before, aborting on it)."""
    wanted = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in (extensions or SUPPORTED_EXTENSIONS)}
    found: list[Path] = [p.expanduser() for p in input_files]
    if input_dir is not None:
        directory = input_dir.expanduser()
        if not directory.is_dir():
            raise UserError(f"{directory}: not a directory")
        found.extend(sorted(_walk(directory, wanted, recursive)))
    unique: dict[str, Path] = {}
    for path in found:
        # realpath, not Path.resolve: on Python 3.11 resolve raises on a symlink loop.
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _walk(directory: Path, wanted: set[str], recursive: bool) -> Iterator[Path]:
    pending = [directory]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError:
            yield folder  # unreadable: the load names it
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            path = folder / entry.name
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    pending.append(path)
            elif _to_load(path, wanted):
                yield path


def _to_load(path: Path, wanted: set[str]) -> bool:
    """A file with a wanted extension; also a broken link or a pipe or device with one (the load says
    what is wrong with it), and any symlink loop. Never a symlink to a directory."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return exc.errno == errno.ELOOP or path.suffix.lower() in wanted
    return not stat.S_ISDIR(mode) and path.suffix.lower() in wanted


def _check_name(path: Path) -> None:
    """A path whose bytes are not UTF-8 (a Latin-1 name from an old archive: Python keeps the bytes as lone
    surrogates) cannot be stored as text in the metadata database nor in Milvus: it crashed the whole load
    with a UnicodeEncodeError. Refused alone, named as its bytes read."""
    try:
        os.path.realpath(path).encode()
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        fix = "rename it (e.g. `convmv -f latin1 -t utf-8`)"
        raise InputFileError(shown, f"its name is not valid UTF-8; {fix}") from None


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]


class SourceLoader:
    """Loads files into one of ``user_id``'s sources with one embedding model, keeping each file's row in
    the files table in step (so a server's folder lists what `memgpt load` loaded, and shows progress)."""

    _files: FileTracker  # the current load's

    def __init__(
        self,
        storage: Storage,
        model: EmbeddingModel,
        *,
        user_id: str,
        chunk_size: int,
        chunk_overlap: int,
        listener: LoadListener | None = None,
        max_file_bytes: int | None = None,
        max_text_bytes: int | None = None,
    ) -> None:
        """``max_file_bytes`` and ``max_text_bytes`` bound one file's size on disk and the text read
        from it; a file over either fails alone, with a message naming the config setting."""
        self.storage = storage
        self.max_file_bytes = max_file_bytes
        self.max_text_bytes = max_text_bytes
        self.model = model
        self.user_id = user_id
        size = min(chunk_size, model.max_input_tokens)
        overlap = min(chunk_overlap, size // 2 - 1)
        self.chunker = Chunker(model.count_tokens, size, overlap)
        self.signature = f"{model.model_id}/{model.dimensions}/c{size}/o{overlap}/l{LOADER_VERSION}"
        self.listener = listener or LoadListener()
        self._copies = False  # set by each load

    @classmethod
    def from_settings(
        cls,
        storage: Storage,
        model: EmbeddingModel,
        settings: EmbeddingSettings,
        *,
        user_id: str,
        listener: LoadListener | None = None,
    ) -> SourceLoader:
        """The loader `memgpt load`, the server's folders and the benches use: chunking and the per-file limits
        from config.toml's ``[embedding]``."""
        return cls(
            storage,
            model,
            user_id=user_id,
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
            listener=listener,
            max_file_bytes=int(settings.max_file_mb * 1e6),
            max_text_bytes=int(settings.max_text_mb * 1e6),
        )

    @property
    def _store(self) -> PassageStore:
        # Looked up when first written to, so that a connection opening in the background (see
        # Storage.open_vectors_early) overlaps reading, parsing and embedding the first passages.
        return self.storage.passages(self.model.space)

    # -- sources ------------------------------------------------------------------------------
    def _source(self, name: str, description: str) -> tuple[Source, bool]:
        metadata = self.storage.metadata
        existing = metadata.get_source(self.user_id, name)
        if existing is None:
            return metadata.create_source(new_source(self.user_id, name, self.model.space, description)), True
        if existing.status == "deleting":
            raise UserError(f"source {name!r} is being deleted; finish with `memgpt delete source {name!r} -y`")
        existing.space.ensure_same(
            self.model.space,
            owner=f"source {name!r}",
            fix="load into a new source name or switch the model back with `memgpt configure`",
        )
        return existing, False

    # -- the load -----------------------------------------------------------------------------
    def load(
        self,
        name: str,
        paths: Sequence[Path],
        *,
        description: str = "",
        into: Source | None = None,
        copies: bool = False,
        keep_owner: bool = False,
        public_errors: bool = False,
    ) -> LoadReport:
        """Load ``paths`` into the source ``name`` (created when missing), or into the source ``into``. A file
        with the content of one already in the source is skipped as a duplicate, unless ``copies``: then it is
        loaded as a file of its own (a folder's uploads, as in Letta: "note (1).txt" is searched and deleted
        apart from "note.txt"). With ``keep_owner``, a load that stops early leaves its file's row owned by this
        process (see ``FileTracker``). With ``public_errors`` (a server's load, whose rows its API's clients read) a
        failure that stops it is told by its public line (``public_message``) in the rows and ``aborted``, and its
        detail logged; `memgpt load` shows its user all of it."""
        name = validate_source_name(name)
        report = LoadReport(source=name)
        source, created = (into, False) if into is not None else self._source(name, description)
        self._files = files = FileTracker(self.storage, source, keep_owner=keep_owner)
        self._copies = copies
        self.listener.files_found(len(paths))
        try:
            self._finish_deletions(source)
            for path in paths:
                self.listener.file_started(path)
                try:
                    _check_name(path)
                except InputFileError as exc:  # before its row: the database cannot hold the name
                    report.failures.append(exc)
                    self.listener.warn(str(exc))
                    self.listener.file_finished(path)
                    continue
                files.started(path)
                try:
                    self._load_file(source, path, report)
                except InputFileError as exc:
                    files.failed(exc.reason)
                    report.failures.append(exc)
                    self.listener.warn(str(exc))
                self.listener.file_finished(path)
        except BackendError as exc:
            report.aborted = public_message(exc) if public_errors else str(exc)
            if report.aborted != str(exc):
                logger.warning("loading into source %s stopped: %s: %s", source.id, type(exc).__name__, exc)
            files.abandoned(report.aborted)
            report.storage_away = isinstance(exc, StorageUnavailable)  # not one that fails the same way every time
        except KeyboardInterrupt:
            files.abandoned()
            report.interrupted = True
        if report.documents:
            self._store.flush()
        if created:
            self._drop_if_empty(source, report)
        return report

    def _drop_if_empty(self, source: Source, report: LoadReport) -> None:
        """Never leave behind a source this load created with nothing visible in it: every file failed, or
        the load was interrupted before its first file was done (its pending passages go with it)."""
        try:
            # A second Ctrl-C must not cut the clean-up short; the load is already reported as interrupted.
            with interrupts_held():
                if not self.storage.metadata.documents_with_status(source.id, DocumentStatus.READY):
                    delete_source(self.storage, source)
                    report.dropped = True
        except BackendError as exc:
            report.aborted = report.aborted or str(exc)

    def _load_file(self, source: Source, path: Path, report: LoadReport) -> None:
        started = time.perf_counter()
        data = read_bytes(path, self.max_file_bytes)
        sha = hashlib.sha256(data).hexdigest()
        key = str(path.resolve())
        metadata = self.storage.metadata
        existing = metadata.documents(source.id, file_path=key)
        if existing and all(
            d.status is DocumentStatus.READY and d.file_sha256 == sha and d.signature == self.signature
            for d in existing
        ):
            report.unchanged.append(str(path))
            self._files.completed(sum(d.n_passages for d in existing))
            return
        twin = None if self._copies else metadata.ready_file_with_hash(source.id, sha, self.signature)
        if twin and twin != key:
            report.duplicates.append((str(path), twin))
            self._retire([d.id for d in existing])  # this path's older content is superseded
            self._files.duplicate(twin)
            return
        parsed = parse(path, data)
        self._check_text_size(path, parsed.units)
        for warning in parsed.warnings:
            report.warnings.append(warning)
            self.listener.warn(warning)
        documents, passages = self._plan(source, path, key, sha, len(data), parsed.units)
        report.seconds["parse"] += time.perf_counter() - started
        if not passages:
            raise InputFileError(str(path), "no text in it")

        metadata.add_pending(documents)
        self.listener.passages_planned(len(passages))
        self._files.planned(len(passages))
        for start in range(0, len(passages), _WRITE_WINDOW):
            window = passages[start : start + _WRITE_WINDOW]
            began = time.perf_counter()
            vectors = self.model.embed_multi([embedding_text(p.text) for p in window], on_progress=self._embedded)
            embedded = time.perf_counter()
            self._store.upsert([replace(p, embedding=v) for p, v in zip(window, vectors, strict=True)])
            report.seconds["embed"] += embedded - began
            report.seconds["insert"] += time.perf_counter() - embedded
        self.storage.marks.written(source.id, self._store)  # searches in other processes see them once published

        new_ids = [d.id for d in documents]
        metadata.publish(new_ids, [d.id for d in existing if d.id not in set(new_ids)])
        self._finish_deletions(source)
        self._files.completed(len(passages))
        report.files_loaded += 1
        report.documents += len(documents)
        report.passages += len(passages)

    def _embedded(self, count: int) -> None:
        self.listener.passages_embedded(count)
        self._files.embedded(count)

    def _check_text_size(self, path: Path, units: Sequence[TextUnit]) -> None:
        if self.max_text_bytes is None:
            return
        size = sum(len(unit.text.encode("utf-8", "surrogatepass")) for unit in units)
        if size > self.max_text_bytes:
            raise InputFileError(str(path), too_big(size, self.max_text_bytes, "max_text_mb", " of text"))

    def _plan(
        self, source: Source, path: Path, key: str, sha: str, size: int, units: Sequence[TextUnit]
    ) -> tuple[list[Document], list[Passage]]:
        documents: list[Document] = []
        passages: list[Passage] = []
        now = utc_now()
        for index, unit in enumerate(units):
            chunks = self._chunks(unit)
            if not chunks:
                continue
            # The ids derive from the content (the same after a crash); a copy's from its path too, else it would
            # take over the documents and passages of the file it copies.
            copy = (key,) if self._copies else ()
            doc_id = _digest(source.id, sha, self.signature, unit.unit if unit.unit is not None else index, *copy)
            documents.append(
                Document(
                    id=doc_id,
                    source_id=source.id,
                    file_path=key,
                    file_name=path.name,
                    file_sha256=sha,
                    file_size=size,
                    unit=unit.unit,
                    n_passages=len(chunks),
                    signature=self.signature,
                    created_at=now,
                )
            )
            meta: dict[str, object] = {"file_name": path.name, "file_path": key}
            if unit.unit is not None:
                meta["page"] = unit.unit
            passages.extend(
                Passage(
                    id=_digest(doc_id, number),
                    text=chunk,
                    user_id=source.user_id,
                    source_id=source.id,
                    document_id=doc_id,
                    chunk_index=number,
                    created_at=now,
                    metadata={**meta, "section": heading} if heading else dict(meta),
                )
                for number, (heading, chunk) in enumerate(chunks)
            )
        return documents, passages

    def _chunks(self, unit: TextUnit) -> list[tuple[str, str]]:
        """(heading, passage text) of each chunk of ``unit``: every section is chunked on its own (a
        chunk never spans two sections, so a reference list is never glued to the prose before it), and
        each chunk under a heading starts with its label line (see ``section_label``)."""
        chunks: list[tuple[str, str]] = []
        for section in unit.parts():
            label = section_label(section.heading, unit.unit)
            reserve = self.model.count_tokens(label) + 1 if label else 0
            chunks.extend(
                (section.heading, f"{label}\n{chunk}" if label else chunk)
                for chunk in self.chunker.split(section.text, reserve)
            )
        return chunks

    # -- cleanup ------------------------------------------------------------------------------
    def _finish_deletions(self, source: Source) -> None:
        """Complete replacements an earlier, interrupted load started."""
        stale = self.storage.metadata.documents_with_status(source.id, DocumentStatus.DELETING)
        self._purge([d.id for d in stale])

    def _retire(self, document_ids: list[str]) -> None:
        if document_ids:
            self.storage.metadata.publish([], document_ids)
            self._purge(document_ids)

    def _purge(self, document_ids: list[str]) -> None:
        for start in range(0, len(document_ids), _DELETE_BATCH):
            batch = document_ids[start : start + _DELETE_BATCH]
            self._store.delete(is_in("document_id", batch))
            self.storage.metadata.delete_documents(batch)
