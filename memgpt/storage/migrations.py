"""Named schema migrations for the metadata database, applied in order on open.

Each migration carries its own snapshot of the DDL it needs, so a fresh database and an upgraded
one end up identical; tests compare the result with the ORM models in ``sql.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
)

_ledger_metadata = MetaData()
LEDGER = Table(
    "schema_migrations",
    _ledger_metadata,
    Column("name", String(128), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def _0001_sources_and_documents(conn: Connection) -> None:
    meta = MetaData()
    Table(
        "sources",
        meta,
        Column("id", String(64), primary_key=True),
        Column("user_id", String(64), nullable=False, index=True),
        Column("name", String(256), nullable=False),
        Column("description", Text, nullable=False),
        Column("embedding_model", String(256), nullable=False),
        Column("embedding_dim", Integer, nullable=False),
        Column("status", String(16), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("user_id", "name", name="uq_sources_user_name"),
    )
    Table(
        "documents",
        meta,
        Column("id", String(64), primary_key=True),
        Column("source_id", String(64), ForeignKey("sources.id", ondelete="CASCADE"), nullable=False),
        Column("file_path", Text, nullable=False),
        Column("file_name", String(512), nullable=False),
        Column("file_sha256", String(64), nullable=False),
        Column("file_size", BigInteger, nullable=False),
        Column("unit", Integer, nullable=True),
        Column("n_passages", Integer, nullable=False),
        Column("signature", String(128), nullable=False),
        Column("status", String(16), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Index("ix_documents_source_status", "source_id", "status"),
        Index("ix_documents_source_file", "source_id", "file_path"),
    )
    meta.create_all(conn)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_sources_and_documents", _0001_sources_and_documents),
]


def apply_migrations(engine: Engine) -> list[str]:
    """Apply what is missing, each in its own transaction; returns the names applied now."""
    _ledger_metadata.create_all(engine)
    applied_now = []
    with engine.connect() as conn:
        done = set(conn.scalars(select(LEDGER.c.name)))
    for name, migrate in MIGRATIONS:
        if name in done:
            continue
        with engine.begin() as conn:
            migrate(conn)
            conn.execute(LEDGER.insert().values(name=name, applied_at=datetime.now(UTC)))
        applied_now.append(name)
    return applied_now
