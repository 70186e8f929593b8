"""Domain records shared by storage, memory and the CLI, defined once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Source:
    """A named collection of loaded files whose passages can be attached to agents."""

    id: str
    name: str
    user_id: str
    embedding_model: str
    embedding_dim: int
    created_at: datetime
    description: str = ""
    documents: int = 0
    passages: int = 0
    incomplete_documents: int = 0
    status: str = "ready"  # "deleting" while `memgpt delete source` runs or after it was interrupted


class DocumentStatus(StrEnum):
    """Only READY documents are visible; the others exist so a crash can be finished later."""

    PENDING = "pending"  # passages being written
    READY = "ready"
    DELETING = "deleting"  # replaced or removed; passages being deleted


@dataclass(frozen=True)
class Document:
    """One unit of a loaded file (a PDF page, or a whole text file)."""

    id: str
    source_id: str
    file_path: str
    file_name: str
    file_sha256: str
    file_size: int
    unit: int | None
    n_passages: int
    signature: str
    status: DocumentStatus = DocumentStatus.PENDING
    created_at: datetime = field(default_factory=utc_now)


@dataclass(frozen=True)
class Passage:
    """A chunk of text small enough for the embedding model, stored with its vector.

    ``source_id``/``agent_id`` are empty strings when not set (Milvus has no NULL on every server).
    """

    id: str
    text: str
    user_id: str
    source_id: str = ""
    document_id: str = ""
    agent_id: str = ""
    chunk_index: int = 0
    created_at: datetime = field(default_factory=utc_now)
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: list[float] | None = None


@dataclass(frozen=True)
class SearchHit:
    """One search result. ``score`` is cosine similarity in [-1, 1]; higher is better."""

    passage: Passage
    score: float
