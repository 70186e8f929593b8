"""What can be done with a user's sources besides loading them (data/ingest.py): create, find, list,
search, delete. A server calls them "folders"."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import AlreadyExistsError, NotFoundError, UserError
from memgpt.storage import Storage
from memgpt.storage.filters import Filter, all_of, eq, not_in
from memgpt.types import EmbeddingSpace, SearchHit, Source, utc_now


def validate_source_name(name: str) -> str:
    """The name without surrounding blanks; refused when empty, too long or on several lines."""
    stripped = name.strip()
    if not stripped:
        raise UserError("a source name cannot be empty")
    if len(stripped) > 256:
        raise UserError("a source name can be at most 256 characters")
    if any(ord(ch) < 32 for ch in stripped):
        raise UserError("a source name must be one line without control characters")
    return stripped


def new_source(
    user_id: str,
    name: str,
    space: EmbeddingSpace,
    description: str = "",
    *,
    instructions: str = "",
    metadata: dict[str, Any] | None = None,
) -> Source:
    """A new source record (not stored yet) with a Letta-style id, ``source-<uuid4>``."""
    return Source(
        id=f"source-{uuid.uuid4()}",
        name=validate_source_name(name),
        user_id=user_id,
        embedding_model=space.model,
        embedding_dim=space.dimensions,
        created_at=utc_now(),
        description=description,
        instructions=instructions,
        metadata=dict(metadata or {}),
    )


def create_source(
    storage: Storage,
    user_id: str,
    name: str,
    space: EmbeddingSpace,
    description: str = "",
    *,
    instructions: str = "",
    metadata: dict[str, Any] | None = None,
) -> Source:
    """An empty source, to load files into later; a taken name is a conflict."""
    source = new_source(user_id, name, space, description, instructions=instructions, metadata=metadata)
    if storage.metadata.get_source(user_id, source.name) is not None:
        raise AlreadyExistsError(f"a source named {source.name!r} already exists; pick another name")
    return storage.metadata.create_source(source)


def source_by_id(storage: Storage, user_id: str, source_id: str) -> Source:
    """The user's source with this id; another user's is as missing as one that never existed."""
    source = storage.metadata.source_by_id(user_id, source_id)
    if source is None:
        raise NotFoundError(f"no source (folder) with id {source_id!r}")
    return source


def get_source(storage: Storage, user_id: str, name: str) -> Source:
    """The user's source named ``name`` (blanks around it ignored)."""
    name = validate_source_name(name)
    source = storage.metadata.get_source(user_id, name)
    if source is None:
        known = ", ".join(repr(s.name) for s in storage.metadata.list_sources(user_id)) or "none yet"
        raise NotFoundError(f"no source named {name!r} (sources: {known}); create it with `memgpt load`")
    return source


def list_sources(storage: Storage, user_id: str) -> list[Source]:
    """The user's sources, oldest first, with their document and passage counts."""
    return storage.metadata.list_sources(user_id)


def visible_passages(storage: Storage, source: Source) -> Filter:
    """Passages of ``source`` that belong to fully loaded documents only."""
    hidden = storage.metadata.hidden_document_ids([source.id])
    return all_of(
        eq("user_id", source.user_id), eq("kind", "archival"), eq("source_id", source.id), not_in("document_id", hidden)
    )


def search_source(storage: Storage, source: Source, model: EmbeddingModel, query: str, *, k: int) -> list[SearchHit]:
    if source.status == "deleting":
        raise UserError(
            f"source {source.name!r} is being deleted; finish with `memgpt delete source {source.name!r} -y`"
        )
    source.space.ensure_same(model.space, owner=f"source {source.name!r}", fix="switch back with `memgpt configure`")
    if not query.strip():
        raise UserError("the search query is empty")
    store = storage.passages(source.space)
    storage.marks.catch_up([source.id], store)
    return store.search(model.embed(query), text=query, limit=k, where=visible_passages(storage, source))


def delete_source(storage: Storage, source: Source) -> int:
    """Hide the source, delete its passages, then its rows (its files' and its links to agents go with
    it), then the files a server stored for it; rerunning finishes an interrupted delete. Milvus is opened first:
    one that cannot be (a Milvus Lite file another process holds) leaves the source as it was, not half-deleted."""
    store = storage.passages(source.space)
    storage.metadata.mark_source_deleting(source.id)
    uploads = [Path(f.path).parent for f in storage.files.list(source.id) if f.stored]
    deleted = store.delete(all_of(eq("user_id", source.user_id), eq("source_id", source.id)))
    storage.metadata.delete_source(source.id)
    remove_stored(uploads)
    return deleted


def remove_stored(folders: list[Path]) -> None:
    """Remove the folders uploads were stored in (``files/<source>/<file>/``), and the source's folder
    once it is empty; what cannot be removed stays (it is no longer referenced)."""
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.parent.rmdir()
