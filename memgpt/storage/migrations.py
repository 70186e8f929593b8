"""Named schema migrations for the metadata database, applied in order on open.

Each migration carries its own snapshot of the DDL it needs, so a fresh database and an upgraded
one end up identical; tests compare the result with the ORM models in ``sql.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
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
    text,
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


def _0002_agents(conn: Connection) -> None:
    meta = MetaData()
    Table("sources", meta, Column("id", String(64), primary_key=True))  # referenced only
    Table(
        "agents",
        meta,
        Column("id", String(64), primary_key=True),
        Column("user_id", String(64), nullable=False, index=True),
        Column("name", String(256), nullable=False),
        Column("persona", String(256), nullable=False),
        Column("human", String(256), nullable=False),
        Column("system_prompt", Text, nullable=False),
        Column("llm_model", String(256), nullable=False),
        Column("context_window", Integer, nullable=False),
        Column("embedding_model", String(256), nullable=False),
        Column("embedding_dim", Integer, nullable=False),
        Column("summary", Text, nullable=False),
        Column("heartbeats_paused_until", DateTime(timezone=True), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("user_id", "name", name="uq_agents_user_name"),
    )
    Table(
        "blocks",
        meta,
        Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
        Column("label", String(64), primary_key=True),
        Column("value", Text, nullable=False),
        Column("char_limit", Integer, nullable=False),
    )
    Table(
        "messages",
        meta,
        Column("id", String(64), primary_key=True),
        Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
        Column("seq", Integer, nullable=False),
        Column("role", String(16), nullable=False),
        Column("content", Text, nullable=False),
        Column("tool_calls", Text, nullable=False),
        Column("tool_call_id", String(128), nullable=False),
        Column("name", String(128), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("in_context", Boolean, nullable=False),
        Column("search_text", Text, nullable=False),
        Index("ix_messages_agent_seq", "agent_id", "seq"),
        Index("ix_messages_agent_created", "agent_id", "created_at"),
    )
    Table(
        "agent_sources",
        meta,
        Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
        Column("source_id", String(64), ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True),
        Column("attached_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "templates",
        meta,
        Column("user_id", String(64), primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("name", String(256), primary_key=True),
        Column("text", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    for name in ("agents", "blocks", "messages", "agent_sources", "templates"):
        meta.tables[name].create(conn)


def _0003_messages_indexed(conn: Connection) -> None:
    """Messages are also indexed in Milvus for recall search; this marks which ones are."""
    conn.execute(text("ALTER TABLE messages ADD COLUMN indexed BOOLEAN NOT NULL DEFAULT FALSE"))
    conn.execute(text("CREATE INDEX ix_messages_agent_indexed ON messages (agent_id, indexed)"))


def _0004_messages_searchable(conn: Connection) -> None:
    """Memory decides which messages recall search returns and hands their text to storage. Rows written
    before keep the rule storage applied itself: what the person typed (user messages without a name)
    and every assistant message. Their search text stays as it was; the others' is emptied."""
    conn.execute(text("ALTER TABLE messages ADD COLUMN searchable BOOLEAN NOT NULL DEFAULT FALSE"))
    conn.execute(
        text("UPDATE messages SET searchable = TRUE WHERE (role = 'user' AND name = '') OR role = 'assistant'")
    )
    conn.execute(text("UPDATE messages SET search_text = '' WHERE NOT searchable"))


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_sources_and_documents", _0001_sources_and_documents),
    ("0002_agents", _0002_agents),
    ("0003_messages_indexed", _0003_messages_indexed),
    ("0004_messages_searchable", _0004_messages_searchable),
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
