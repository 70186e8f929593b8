"""What can be done with a user's sources besides loading them (data/ingest.py): find, list, search, delete."""

from __future__ import annotations

from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import NotFoundError, UserError
from memgpt.storage import Storage
from memgpt.storage.filters import Filter, all_of, eq, not_in
from memgpt.types import SearchHit, Source


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
    return store.search(model.embed(query), text=query, limit=k, where=visible_passages(storage, source))


def delete_source(storage: Storage, source: Source) -> int:
    """Hide the source, delete its passages, then its rows; rerunning finishes an interrupted delete."""
    storage.metadata.mark_source_deleting(source.id)
    store = storage.passages(source.space)
    deleted = store.delete(all_of(eq("user_id", source.user_id), eq("source_id", source.id)))
    storage.metadata.delete_source(source.id)
    return deleted
