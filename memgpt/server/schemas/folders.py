"""Folders (memgpt's sources) and their files as Letta's ``Folder`` and ``FileMetadata``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from memgpt.config import EmbeddingSettings
from memgpt.server.schemas.common import SourceOut, configured_space
from memgpt.types import FileRecord, Source


class FolderOut(SourceOut):
    """Letta's ``Folder`` (also its ``Source``, as ``agents.folders.list`` shows them), plus what memgpt counts
    and, when the folder cannot be used here, why."""

    documents: int = 0
    passages: int = 0
    warning: str | None = Field(
        default=None, description="Why files cannot be added to this folder or it cannot be attached, if so."
    )

    @classmethod
    def of(cls, source: Source, settings: EmbeddingSettings) -> FolderOut:
        server_space = configured_space(settings)
        warning = None
        if source.space != server_space:
            warning = (
                f"embedded with {source.space}, but this server embeds with {server_space}: uploads and "
                "attaching it to agents are refused; load the files into a new folder"
            )
        elif source.status == "deleting":
            warning = "only partly deleted: delete it again to finish"
        return cls(
            **SourceOut.of(source, settings).model_dump(),
            documents=source.documents,
            passages=source.passages,
            warning=warning,
        )


class FolderCreate(BaseModel):
    """``folders.create``: a name, and optionally the embedding it should use (it must be the server's)."""

    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    instructions: str | None = None
    metadata: dict[str, Any] | None = None
    embedding: str | None = Field(default=None, description="A handle, provider/model; the server's own model")
    embedding_chunk_size: int | None = None
    embedding_config: dict[str, Any] | None = None


ProcessingStatus = Literal["pending", "parsing", "embedding", "completed", "error"]


class FileMetadataOut(BaseModel):
    """Letta's ``FileMetadata``: a file of a folder and where its load is. Poll it until ``processing_status``
    is ``completed`` or ``error`` (then ``error_message`` says why, in one line)."""

    id: str
    source_id: str
    folder_id: str
    file_name: str
    original_file_name: str
    file_path: str | None = None
    file_type: str | None = None
    file_size: int
    processing_status: ProcessingStatus
    error_message: str | None = None
    total_chunks: int
    chunks_embedded: int
    content: str | None = None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: FileRecord, content: str | None = None) -> FileMetadataOut:
        return cls(
            id=record.id,
            source_id=record.source_id,
            folder_id=record.source_id,
            file_name=record.file_name,
            original_file_name=record.original_file_name or record.file_name,
            file_path=None if record.stored else record.path,  # where the server keeps uploads is its own affair
            file_type=record.file_type or None,
            file_size=record.file_size,
            processing_status=record.status.value,  # type: ignore[arg-type]
            error_message=record.error_message or None,
            total_chunks=record.total_chunks,
            chunks_embedded=record.chunks_embedded,
            content=content,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )
