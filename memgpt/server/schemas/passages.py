"""Archival memory as Letta's API shows it: ``Passage``, and search results that are not passages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memgpt.server.schemas.common import EmbeddingConfig
from memgpt.types import Passage, SearchHit

PASSAGE_PREFIX = "passage-"


def api_passage_id(stored: str) -> str:
    """A passage's id as Letta shapes it ("passage-" and a UUID). The agent's own passages are stored so; a
    folder's are stored under 32 hex digits (derived from their document, so that a reload rewrites them in
    place), which are written as a UUID's: :func:`stored_passage_ids` reads them back."""
    if stored.startswith(PASSAGE_PREFIX):
        return stored
    try:
        return f"{PASSAGE_PREFIX}{uuid.UUID(hex=stored)}"
    except ValueError:
        return f"{PASSAGE_PREFIX}{stored}"


def stored_passage_ids(given: str) -> list[str]:
    """The stored ids an id the API took may name (see :func:`api_passage_id`): itself, and a folder passage's."""
    found = [given]
    rest = given.removeprefix(PASSAGE_PREFIX)
    try:
        found.append(uuid.UUID(rest).hex)
    except ValueError:
        if rest != given:
            found.append(rest)
    return found


def _tags(passage: Passage) -> list[str]:
    tags = passage.metadata.get("tags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


class PassageOut(BaseModel):
    id: str
    text: str
    created_at: datetime
    updated_at: datetime
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    agent_id: str | None = None
    source_id: str | None = None
    file_name: str | None = None
    embedding: list[float] | None = None  # never sent: vectors stay in Milvus
    embedding_config: EmbeddingConfig

    @classmethod
    def of(cls, passage: Passage, embedding_config: EmbeddingConfig) -> PassageOut:
        return cls(
            id=api_passage_id(passage.id),
            text=passage.text,
            created_at=passage.created_at,
            updated_at=passage.created_at,
            tags=_tags(passage),
            metadata={k: v for k, v in passage.metadata.items() if k != "tags"},
            agent_id=passage.agent_id or None,
            source_id=passage.source_id or None,
            file_name=passage.metadata.get("file_name"),
            embedding_config=embedding_config,
        )


class PassageCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str = Field(min_length=1)
    tags: list[str] | None = None
    created_at: datetime | None = None


class SearchResult(BaseModel):
    id: str
    content: str
    timestamp: str = Field(description="When it was stored, e.g. 2026-01-02 03:04:05 AM UTC+0000")
    tags: list[str] = Field(default_factory=list)
    score: float = Field(description="Higher is better: reciprocal-rank fusion of meaning and words (~0.01-0.04)")
    source_id: str | None = None

    @classmethod
    def of(cls, hit: SearchHit) -> SearchResult:
        passage = hit.passage
        return cls(
            id=api_passage_id(passage.id),
            content=passage.text,
            timestamp=passage.created_at.astimezone(UTC).strftime("%Y-%m-%d %I:%M:%S %p UTC%z"),
            tags=_tags(passage),
            score=hit.score,
            source_id=passage.source_id or None,
        )


class SearchResponse(BaseModel):
    count: int
    results: list[SearchResult]


TagMatch = Literal["any", "all"]
