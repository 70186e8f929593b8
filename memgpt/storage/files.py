"""The files of each source and how their loads went, in the metadata database.

A file's passages belong to its documents (``documents.file_path`` = ``files.path``); this table adds what
a person asks about a file: its name, type and size, and where its load is (Letta's ``processing_status``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column

from memgpt.storage.sql import Base, MetadataStore, UTCDateTime
from memgpt.types import FileRecord, FileStatus, utc_now


class FileRow(Base):
    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_source_created", "source_id", "created_at"),
        Index("ix_files_source_path", "source_id", "path"),
        Index("ix_files_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(64), ForeignKey("sources.id", ondelete="CASCADE"))
    file_name: Mapped[str] = mapped_column(String(512))
    path: Mapped[str] = mapped_column(Text)
    stored: Mapped[bool] = mapped_column(Boolean)
    original_file_name: Mapped[str] = mapped_column(String(512))
    file_type: Mapped[str] = mapped_column(String(128))
    file_size: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    error_message: Mapped[str] = mapped_column(Text)
    total_chunks: Mapped[int] = mapped_column(Integer)
    chunks_embedded: Mapped[int] = mapped_column(Integer)
    job_owner: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


# What a load may change on a file as it goes.
PROGRESS_FIELDS = frozenset({"status", "error_message", "total_chunks", "chunks_embedded", "job_owner", "file_size"})


def _record(row: FileRow) -> FileRecord:
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
        with self._metadata.session() as s:
            s.add(
                FileRow(
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
        with self._metadata.session() as s:
            row = s.get(FileRow, file_id)
            return _record(row) if row is not None else None

    def by_path(self, source_id: str, path: str) -> FileRecord | None:
        """The source's file read from ``path`` (the newest, should there be several)."""
        with self._metadata.session() as s:
            row = s.scalar(
                select(FileRow)
                .where(FileRow.source_id == source_id, FileRow.path == path)
                .order_by(FileRow.created_at.desc(), FileRow.id.desc())
                .limit(1)
            )
            return _record(row) if row is not None else None

    def list(self, source_id: str) -> list[FileRecord]:
        """The source's files, oldest first."""
        with self._metadata.session() as s:
            rows = s.scalars(
                select(FileRow).where(FileRow.source_id == source_id).order_by(FileRow.created_at, FileRow.id)
            )
            return [_record(r) for r in rows]

    def unfinished(self) -> list[FileRecord]:
        """Every user's files whose load has not ended (queued, or cut short by a crash)."""
        finished = [FileStatus.COMPLETED.value, FileStatus.ERROR.value]
        with self._metadata.session() as s:
            rows = s.scalars(select(FileRow).where(FileRow.status.not_in(finished)).order_by(FileRow.created_at))
            return [_record(r) for r in rows]

    def update(self, file_id: str, *, if_owner: str | None = None, **fields: str | int) -> bool:
        """Record a load's progress: some of ``PROGRESS_FIELDS``; with ``if_owner``, only while that process still
        loads the file (another may have taken the load over). False when no row was changed."""
        unknown = set(fields) - PROGRESS_FIELDS
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))} of a file")
        if isinstance(fields.get("status"), FileStatus):
            fields["status"] = fields["status"].value  # type: ignore[union-attr]
        where = [FileRow.id == file_id] + ([FileRow.job_owner == if_owner] if if_owner is not None else [])
        with self._metadata.session() as s:
            result = s.execute(update(FileRow).where(*where).values(**fields, updated_at=utc_now()))
            return bool(result.rowcount)

    def claim(self, file_id: str, owner: str, *, previous: str) -> bool:
        """Make ``owner`` the process loading the file if ``previous`` still is; False when another
        process took it first."""
        with self._metadata.session() as s:
            result = s.execute(
                update(FileRow)
                .where(FileRow.id == file_id, FileRow.job_owner == previous)
                .values(job_owner=owner, updated_at=utc_now())
            )
            return bool(result.rowcount)

    def delete(self, file_ids: Sequence[str]) -> None:
        if not file_ids:
            return
        with self._metadata.session() as s:
            s.execute(delete(FileRow).where(FileRow.id.in_(list(file_ids))))
