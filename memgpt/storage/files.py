"""The files of each source and how their loads went, in the metadata database.

A file's passages belong to its documents (``documents.file_path`` = ``files.path``); this table adds what
a person asks about a file: its name, type and size, and where its load is (Letta's ``processing_status``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    Row,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)

from memgpt.storage.sql import METADATA, MetadataStore, UTCDateTime
from memgpt.types import FileRecord, FileStatus, utc_now

# A Core table, as the other tables of the commands on sources: see memgpt.storage.sql.
FILES = Table(
    "files",
    METADATA,
    Column("id", String(64), primary_key=True),
    Column("source_id", String(64), ForeignKey("sources.id", ondelete="CASCADE"), nullable=False),
    Column("file_name", String(512), nullable=False),
    Column("path", Text, nullable=False),
    Column("stored", Boolean, nullable=False),
    Column("original_file_name", String(512), nullable=False),
    Column("file_type", String(128), nullable=False),
    Column("file_size", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error_message", Text, nullable=False),
    Column("total_chunks", Integer, nullable=False),
    Column("chunks_embedded", Integer, nullable=False),
    Column("job_owner", String(256), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_files_source_created", "source_id", "created_at"),
    Index("ix_files_source_path", "source_id", "path"),
    Index("ix_files_status", "status"),
)


# What a load may change on a file as it goes.
PROGRESS_FIELDS = frozenset({"status", "error_message", "total_chunks", "chunks_embedded", "job_owner", "file_size"})


def _record(row: Row[Any]) -> FileRecord:
    return FileRecord(
        id=row.id,
        source_id=row.source_id,
        file_name=row.file_name,
        path=row.path,
        stored=row.stored,
        original_file_name=row.original_file_name,
        file_type=row.file_type,
        file_size=row.file_size,
        status=FileStatus(row.status),
        error_message=row.error_message,
        total_chunks=row.total_chunks,
        chunks_embedded=row.chunks_embedded,
        job_owner=row.job_owner,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class FileStore:
    """File rows by source. Every method is one transaction; lookups by file id trust the caller to check
    that the file's source is the user's."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def add(self, record: FileRecord) -> FileRecord:
        with self._metadata.connection() as c:
            c.execute(
                insert(FILES).values(
                    id=record.id,
                    source_id=record.source_id,
                    file_name=record.file_name,
                    path=record.path,
                    stored=record.stored,
                    original_file_name=record.original_file_name,
                    file_type=record.file_type,
                    file_size=record.file_size,
                    status=record.status.value,
                    error_message=record.error_message,
                    total_chunks=record.total_chunks,
                    chunks_embedded=record.chunks_embedded,
                    job_owner=record.job_owner,
                    created_at=record.created_at,
                    updated_at=record.updated_at,
                )
            )
        return record

    def get(self, file_id: str) -> FileRecord | None:
        with self._metadata.connection() as c:
            row = c.execute(select(FILES).where(FILES.c.id == file_id)).first()
            return _record(row) if row is not None else None

    def by_path(self, source_id: str, path: str) -> FileRecord | None:
        """The source's file read from ``path`` (the newest, should there be several)."""
        with self._metadata.connection() as c:
            row = c.execute(
                select(FILES)
                .where(FILES.c.source_id == source_id, FILES.c.path == path)
                .order_by(FILES.c.created_at.desc(), FILES.c.id.desc())
                .limit(1)
            ).first()
            return _record(row) if row is not None else None

    def list(self, source_id: str) -> list[FileRecord]:
        """The source's files, oldest first."""
        with self._metadata.connection() as c:
            rows = c.execute(
                select(FILES).where(FILES.c.source_id == source_id).order_by(FILES.c.created_at, FILES.c.id)
            )
            return [_record(r) for r in rows]

    def unfinished(self) -> list[FileRecord]:
        """Every user's files whose load has not ended (queued, or cut short by a crash)."""
        finished = [FileStatus.COMPLETED.value, FileStatus.ERROR.value]
        with self._metadata.connection() as c:
            rows = c.execute(select(FILES).where(FILES.c.status.not_in(finished)).order_by(FILES.c.created_at))
            return [_record(r) for r in rows]

    def update(self, file_id: str, *, if_owner: str | None = None, **fields: str | int) -> bool:
        """Record a load's progress: some of ``PROGRESS_FIELDS``; with ``if_owner``, only while that process still
        loads the file (another may have taken the load over). False when no row was changed."""
        unknown = set(fields) - PROGRESS_FIELDS
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))} of a file")
        if isinstance(fields.get("status"), FileStatus):
            fields["status"] = fields["status"].value  # type: ignore[union-attr]
        where = [FILES.c.id == file_id] + ([FILES.c.job_owner == if_owner] if if_owner is not None else [])
        with self._metadata.connection() as c:
            result = c.execute(update(FILES).where(*where).values(**fields, updated_at=utc_now()))
            return bool(result.rowcount)

    def claim(self, file_id: str, owner: str, *, previous: str) -> bool:
        """Make ``owner`` the process loading the file if ``previous`` still is; False when another
        process took it first."""
        with self._metadata.connection() as c:
            result = c.execute(
                update(FILES)
                .where(FILES.c.id == file_id, FILES.c.job_owner == previous)
                .values(job_owner=owner, updated_at=utc_now())
            )
            return bool(result.rowcount)

    def delete(self, file_ids: Sequence[str]) -> None:
        if not file_ids:
            return
        with self._metadata.connection() as c:
            c.execute(delete(FILES).where(FILES.c.id.in_(list(file_ids))))
