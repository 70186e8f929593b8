"""A source's files one at a time: take an upload (stored under the home, loaded afterwards by the same
loader as `memgpt load`), load one file, give a file's text back, delete a file.

Uploads live in ``<home>/files/<source id>/<file id>/<name>``: the loader reads them from there, and a
load that a crash cut short can be run again from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from memgpt.config import EmbeddingSettings
from memgpt.data.filerecords import file_key, mime_type, new_file_id
from memgpt.data.ingest import LoadListener, LoadReport, SourceLoader
from memgpt.data.loaders import SUPPORTED_EXTENSIONS, parse, read_bytes
from memgpt.data.sections import strip_label
from memgpt.data.sources import remove_stored
from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import (
    AlreadyExistsError,
    InputFileError,
    NotFoundError,
    StorageError,
    UnsupportedFileTypeError,
    UserError,
)
from memgpt.owners import this_process
from memgpt.storage import Storage
from memgpt.storage.filters import all_of, eq, is_in
from memgpt.types import DocumentStatus, EmbeddingSpace, FileRecord, FileStatus, Passage, Source

_WORD = re.compile(r"\S+")
UPLOADS = "files"  # the folder under the home where uploads are kept
_DELETE_BATCH = 500


class DuplicateHandling(StrEnum):
    """What an upload does when its folder already has a file of that name (Letta's options)."""

    SKIP = "skip"  # keep the existing file, load nothing
    ERROR = "error"  # refuse the upload
    SUFFIX = "suffix"  # load it under a new name: "notes (1).md"
    REPLACE = "replace"  # delete the existing file, then load this one


@dataclass(frozen=True)
class Upload:
    record: FileRecord
    skipped: bool = False  # a file of that name exists and was kept (DuplicateHandling.SKIP)


def uploads_folder(home: Path) -> Path:
    return home / UPLOADS


def clean_file_name(name: str) -> str:
    """The last part of an uploaded file name (never a path), refused when empty or unprintable."""
    cleaned = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not cleaned or cleaned in (".", ".."):
        raise UserError("the uploaded file has no name; send it with a file name such as notes.md")
    if any(ord(ch) < 32 for ch in cleaned) or len(cleaned.encode("utf-8")) > 255:
        raise UserError(f"file name {cleaned[:80]!r} is not usable: at most 255 bytes, no control characters")
    return cleaned


def check_supported(name: str) -> None:
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        kind = f"files of type {suffix!r}" if suffix else "files without an extension"
        raise UnsupportedFileTypeError(
            f"{name}: {kind} cannot be loaded; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )


def _free_name(name: str, taken: set[str]) -> str:
    stem, suffix = os.path.splitext(name)
    number = 1
    while f"{stem} ({number}){suffix}" in taken:
        number += 1
    return f"{stem} ({number}){suffix}"


def check_loadable(source: Source, space: EmbeddingSpace) -> None:
    """Files can go into ``source`` with the model of ``space``: it is not being deleted and was made
    with that model."""
    if source.status == "deleting":
        raise UserError(f"folder {source.name!r} is being deleted; delete it again to finish")
    source.space.ensure_same(
        space,
        owner=f"folder {source.name!r}",
        user="this server's embedding model",
        fix="create a new folder for these files",
    )


def take_upload(
    storage: Storage,
    home: Path,
    source: Source,
    name: str,
    content: BinaryIO,
    *,
    space: EmbeddingSpace,
    content_type: str = "",
    duplicate_handling: DuplicateHandling = DuplicateHandling.SUFFIX,
    original_name: str = "",
    cancel: Callable[[list[str]], None] = lambda ids: None,
) -> Upload:
    """Store an uploaded file under the home and record it as pending; ``load_file`` loads it. ``cancel``
    stops loads of files this upload replaces before they are deleted."""
    name = clean_file_name(name)
    check_supported(name)
    check_loadable(source, space)
    same_name = [f for f in storage.files.list(source.id) if f.file_name == name]
    if same_name and duplicate_handling is DuplicateHandling.ERROR:
        raise AlreadyExistsError(f"file {name!r} already exists in folder {source.name!r}")
    if same_name and duplicate_handling is DuplicateHandling.SKIP:
        return Upload(same_name[0], skipped=True)
    if same_name and duplicate_handling is DuplicateHandling.SUFFIX:
        name = _free_name(name, {f.file_name for f in storage.files.list(source.id)})
    file_id = new_file_id()
    folder = uploads_folder(home) / source.id / file_id
    try:
        size = _write(content, folder / name)
        if size == 0:
            raise UserError(f"{name}: the uploaded file is empty")
        if same_name and duplicate_handling is DuplicateHandling.REPLACE:  # only once the new one is here
            cancel([f.id for f in same_name])
            for old in same_name:
                delete_file(storage, source, old)
        record = FileRecord(
            id=file_id,
            source_id=source.id,
            file_name=name,
            path=file_key(folder / name),
            stored=True,
            original_file_name=original_name or name,
            file_type=content_type or mime_type(name),
            file_size=size,
            status=FileStatus.PENDING,
            job_owner=this_process(),
        )
        return Upload(storage.files.add(record))
    except BaseException:
        remove_stored([folder])
        raise


def _write(content: BinaryIO, target: Path) -> int:
    """Copy the upload to ``target`` (whole or not at all); its size in bytes."""
    partial = target.parent / ".partial"  # the folder is the file's own; its name may be as long as allowed
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            shutil.copyfileobj(content, handle, length=1 << 20)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
        return target.stat().st_size
    except OSError as exc:
        raise StorageError(f"cannot store the upload in {target.parent}: {exc.strerror or exc}") from exc


def load_file(
    storage: Storage,
    model: EmbeddingModel,
    source: Source,
    record: FileRecord,
    *,
    settings: EmbeddingSettings,
    listener: LoadListener | None = None,
    keep_owner: bool = False,
    public_errors: bool = False,
) -> LoadReport:
    """Load one recorded file into its source with the loader and limits `memgpt load` uses; its row says
    how it went (``keep_owner``, ``public_errors``: see ``SourceLoader.load``)."""
    loader = SourceLoader.from_settings(storage, model, settings, user_id=source.user_id, listener=listener)
    # Each upload is its own file.
    return loader.load(
        source.name, [Path(record.path)], into=source, copies=True, keep_owner=keep_owner, public_errors=public_errors
    )


def get_file(storage: Storage, source: Source, file_id: str) -> FileRecord:
    """A file of ``source`` (found for its user); any other file id is not found."""
    record = storage.files.get(file_id)
    if record is None or record.source_id != source.id:
        raise NotFoundError(f"no file with id {file_id!r} in folder {source.name!r}")
    return record


def delete_file(storage: Storage, source: Source, record: FileRecord) -> int:
    """Hide the file's documents, forget the file, then delete its passages and what was stored; a crash
    midway leaves only hidden rows, which the next load into the source (or this again) clears."""
    documents = [d.id for d in storage.metadata.documents(source.id, file_path=record.path)]
    storage.metadata.publish([], documents)
    storage.files.delete([record.id])
    deleted = 0
    store = storage.passages(source.space)
    for start in range(0, len(documents), _DELETE_BATCH):
        batch = documents[start : start + _DELETE_BATCH]
        deleted += store.delete(all_of(eq("source_id", source.id), is_in("document_id", batch)))
        storage.metadata.delete_documents(batch)
    if record.stored:
        remove_stored([Path(record.path).parent])
    return deleted


def file_text(storage: Storage, source: Source, record: FileRecord) -> str | None:
    """The text the loader read from the file: from the file itself while it is there unchanged, else put
    back together from the file's passages (None when it has none)."""
    documents = [
        d
        for d in storage.metadata.documents(source.id, file_path=record.path)
        if d.status is DocumentStatus.READY
    ]
    path = Path(record.path)
    with contextlib.suppress(InputFileError, OSError):
        data = read_bytes(path)
        if not documents or hashlib.sha256(data).hexdigest() == documents[0].file_sha256:
            return "\n\n".join(unit.text for unit in parse(path, data).units)
    if not documents:
        return None
    store = storage.passages(source.space)
    ids = [d.id for d in documents]
    where = all_of(eq("source_id", source.id), is_in("document_id", ids))
    passages = [p for batch in store.iterate(where) for p in batch]
    order = {doc_id: index for index, doc_id in enumerate(ids)}
    passages.sort(key=lambda p: (order.get(p.document_id, 0), p.chunk_index))
    pages: list[str] = []
    for doc_id in ids:
        chunks = _unlabelled([p for p in passages if p.document_id == doc_id])
        if chunks:
            pages.append(join_chunks(chunks))
    return "\n\n".join(pages)


def _unlabelled(passages: list[Passage]) -> list[str]:
    """The passages' texts without the section label each one starts with; where the section changes,
    the headings entered there go back in as lines of their own (the loader keeps them only in the labels)."""
    chunks: list[str] = []
    previous: list[str] = []
    for passage in passages:
        section = str(passage.metadata.get("section") or "")
        page = passage.metadata.get("page")
        text = strip_label(passage.text, section, page if isinstance(page, int) else None)
        path = section.split(" > ") if section else []
        if path != previous:
            kept = 0
            while kept < min(len(path), len(previous)) and path[kept] == previous[kept]:
                kept += 1
            text = "\n".join([*path[kept:], text])
            previous = path
        chunks.append(text)
    return chunks


def join_chunks(chunks: list[str], longest_overlap: int = 400, shortest_overlap: int = 3) -> str:
    """Chunks in order back into one text. Each chunk repeats the end of the one before (the chunker's
    overlap, possibly with other white space): the longest run of words, at least ``shortest_overlap``
    of them, that ends one chunk and starts the next is kept once; without one, chunks are joined by a
    line break."""
    text = chunks[0]
    for chunk in chunks[1:]:
        tail = text.split()[-longest_overlap:]
        words = list(_WORD.finditer(chunk))
        head = [w.group() for w in words[:longest_overlap]]
        overlap = next(
            (n for n in range(min(len(tail), len(head)), shortest_overlap - 1, -1) if tail[-n:] == head[:n]), 0
        )
        text = text + chunk[words[overlap - 1].end() :] if overlap else f"{text}\n{chunk}"
    return text
