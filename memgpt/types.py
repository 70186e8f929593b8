"""Domain records shared by storage, memory and the CLI, defined once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from memgpt.errors import UserError


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, order=True)
class EmbeddingSpace:
    """One embedding model at one vector size. Vectors of different spaces cannot be compared, so each
    space has its own Milvus collection, and a source or an agent stays in the space it was made in."""

    model: str
    dimensions: int

    def __str__(self) -> str:
        return f"{self.model} ({self.dimensions} dims)"

    def ensure_same(self, other: EmbeddingSpace, *, owner: str, user: str = "the configured model", fix: str) -> None:
        """The one check that two spaces match. ``owner`` was embedded in this space (e.g. "source 'paper'"),
        ``user`` would use it with ``other``; ``fix`` says what to do. Raises UserError naming both."""
        if other != self:
            raise UserError(f"{owner} was embedded with {self}, but {user} is {other}; {fix}")


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
    instructions: str = ""  # how an agent should use the source (Letta's folder instructions)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def space(self) -> EmbeddingSpace:
        return EmbeddingSpace(self.embedding_model, self.embedding_dim)


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


class FileStatus(StrEnum):
    """Where a file is on its way into a source (Letta's ``processing_status``): waiting, being read,
    being embedded, then visible (``completed``) or failed (``error``, with a one-line reason)."""

    PENDING = "pending"
    PARSING = "parsing"
    EMBEDDING = "embedding"
    COMPLETED = "completed"
    ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in (FileStatus.COMPLETED, FileStatus.ERROR)


@dataclass(frozen=True)
class FileRecord:
    """One file of a source and how its load went. ``path`` is what the loader reads (and what its documents
    record as their file path); ``stored`` files were uploaded to a server and live under the home's
    ``files/`` folder, the others were loaded from the user's own disk by `memgpt load`."""

    id: str
    source_id: str
    file_name: str
    path: str
    stored: bool = False
    original_file_name: str = ""
    file_type: str = ""
    file_size: int = 0
    status: FileStatus = FileStatus.PENDING
    error_message: str = ""
    total_chunks: int = 0
    chunks_embedded: int = 0
    job_owner: str = ""  # the process loading it ("host:pid:nonce"); empty when nobody is
    created_at: datetime = field(default_factory=utc_now)
    updated_at: datetime = field(default_factory=utc_now)


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
    kind: str = "archival"  # or "recall": a message indexed for conversation_search


@dataclass(frozen=True)
class SearchHit:
    """One search result; higher ``score`` is better. Dense search: cosine similarity in [-1, 1].
    Hybrid search: a reciprocal-rank-fusion score (about 0.01-0.04). Keyword search: BM25 relevance."""

    passage: Passage
    score: float


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True)
class ToolCall:
    """A function call as the model wrote it; ``arguments`` is the raw JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One entry of an agent's history, kept forever in recall memory.

    ``content`` of an assistant message is the model's inner monologue; what it tells the user goes
    through the ``send_message`` tool call.
    """

    id: str
    agent_id: str
    role: Role
    content: str
    created_at: datetime = field(default_factory=utc_now)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""  # the function a TOOL message answers


@dataclass(frozen=True)
class Block:
    """A named piece of core memory, always in the prompt, limited in characters. A ``read_only`` block is
    shown to the agent but its own edits are refused (people may still change it)."""

    label: str
    value: str
    limit: int
    description: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class AgentState:
    """What identifies an agent and how it runs; its memory lives in blocks, messages and Milvus."""

    id: str
    name: str
    user_id: str
    persona: str
    human: str
    system_prompt: str
    llm_model: str
    context_window: int
    embedding_model: str
    embedding_dim: int
    created_at: datetime = field(default_factory=utc_now)
    summary: str = ""  # recursive summary of messages evicted from the context window
    heartbeats_paused_until: datetime | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    tools: tuple[str, ...] | None = None  # the functions it may call by name; None: every one there is
    updated_at: datetime | None = None

    @property
    def space(self) -> EmbeddingSpace:
        return EmbeddingSpace(self.embedding_model, self.embedding_dim)

@dataclass(frozen=True)
class User:
    """Someone whose agents and sources are kept apart from everyone else's. The home's own user (the
    config's ``user_id``, who runs the CLI) is the administrator of a server on that home."""

    id: str
    name: str
    created_at: datetime = field(default_factory=utc_now)


@dataclass(frozen=True)
class ApiKey:
    """A server API key as stored: only its prefix and a digest, never the key itself."""

    id: str
    user_id: str
    name: str
    prefix: str  # the first characters of the key, so a person can tell keys apart
    created_at: datetime = field(default_factory=utc_now)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
