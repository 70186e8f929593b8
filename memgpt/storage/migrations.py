"""Named schema migrations for the metadata database, applied in order on open.

Each migration carries its own snapshot of the DDL it needs, so a fresh database and an upgraded
one end up identical; tests compare the result with the ORM models in ``sql.py``.

Several processes may open a new or old database at the same moment (two commands, several server
workers): migrations run with their ledger rows in one transaction that first takes a lock held by the
database itself and then re-reads the ledger, so whoever waited finds the work done. A new database gets
them all in that one transaction; an existing one takes them one transaction each (see apply_migrations).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from memgpt.errors import SchemaMismatchError

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


def _0004_messages_unbounded_tool_fields(conn: Connection) -> None:
    """A tool call's id and function name come from the LLM: TEXT, not VARCHAR(128), which PostgreSQL
    enforces (a long id or an invented name failed the step there while SQLite kept it)."""
    if conn.dialect.name != "sqlite":
        conn.execute(text("ALTER TABLE messages ALTER COLUMN tool_call_id TYPE TEXT, ALTER COLUMN name TYPE TEXT"))
        return
    # SQLite cannot change a column's type: rebuild the table (nothing references it) in this transaction.
    meta = MetaData()
    Table("agents", meta, Column("id", String(64), primary_key=True))  # referenced only
    Table(
        "messages_rebuilt",
        meta,
        Column("id", String(64), primary_key=True),
        Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
        Column("seq", Integer, nullable=False),
        Column("role", String(16), nullable=False),
        Column("content", Text, nullable=False),
        Column("tool_calls", Text, nullable=False),
        Column("tool_call_id", Text, nullable=False),
        Column("name", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("in_context", Boolean, nullable=False),
        Column("search_text", Text, nullable=False),
        Column("indexed", Boolean, nullable=False, server_default=text("FALSE")),
    ).create(conn)
    columns = (
        "id, agent_id, seq, role, content, tool_calls, tool_call_id, name, created_at, in_context, search_text, indexed"
    )
    conn.execute(text(f"INSERT INTO messages_rebuilt ({columns}) SELECT {columns} FROM messages"))
    conn.execute(text("DROP TABLE messages"))
    conn.execute(text("ALTER TABLE messages_rebuilt RENAME TO messages"))
    for name, columns in (
        ("seq", "agent_id, seq"),
        ("created", "agent_id, created_at"),
        ("indexed", "agent_id, indexed"),
    ):
        conn.execute(text(f"CREATE INDEX ix_messages_agent_{name} ON messages ({columns})"))


def _0005_messages_searchable(conn: Connection) -> None:
    """Memory decides which messages recall search returns and hands their text to storage. Rows written
    before keep the rule storage applied itself: what the person typed (user messages without a name)
    and every assistant message. Their search text stays as it was; the others' is emptied."""
    conn.execute(text("ALTER TABLE messages ADD COLUMN searchable BOOLEAN NOT NULL DEFAULT FALSE"))
    conn.execute(
        text("UPDATE messages SET searchable = TRUE WHERE (role = 'user' AND name = '') OR role = 'assistant'")
    )
    conn.execute(text("UPDATE messages SET search_text = '' WHERE NOT searchable"))


def _0006_users_and_api_keys(conn: Connection) -> None:
    """Users of a `memgpt server` and their API keys (stored as digests only)."""
    meta = MetaData()
    Table(
        "users",
        meta,
        Column("id", String(64), primary_key=True),
        Column("name", String(256), nullable=False, unique=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "api_keys",
        meta,
        Column("id", String(64), primary_key=True),
        Column("user_id", String(64), ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
        Column("name", String(256), nullable=False),
        Column("prefix", String(32), nullable=False, index=True),
        Column("digest", String(64), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("last_used_at", DateTime(timezone=True), nullable=True),
        Column("revoked_at", DateTime(timezone=True), nullable=True),
    )
    meta.create_all(conn)


def _0007_agents_for_the_api(conn: Connection) -> None:
    """What Letta's API lets people set on an agent (description, tags, metadata, its tools) and on a block
    (description, read-only); one running turn per agent across server processes (a lease row) and a
    record of each turn (a run) so a client's retry finds the turn it already started."""
    for column in (
        "description TEXT NOT NULL DEFAULT ''",
        "metadata TEXT NOT NULL DEFAULT '{}'",
        "tools TEXT",
        "updated_at TIMESTAMP",
    ):
        conn.execute(text(f"ALTER TABLE agents ADD COLUMN {_timestamp(conn, column)}"))
    conn.execute(text("ALTER TABLE blocks ADD COLUMN description TEXT NOT NULL DEFAULT ''"))
    conn.execute(text("ALTER TABLE blocks ADD COLUMN read_only BOOLEAN NOT NULL DEFAULT FALSE"))
    meta = MetaData()
    Table("agents", meta, Column("id", String(64), primary_key=True))  # referenced only
    Table(
        "agent_tags",
        meta,
        Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
        Column("tag", String(256), primary_key=True),
        Index("ix_agent_tags_tag", "tag"),
    )
    Table(
        "agent_leases",
        meta,
        Column("agent_id", String(64), primary_key=True),
        Column("owner", String(256), nullable=False),
        Column("run_id", String(64), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("cancel_requested", Boolean, nullable=False),
    )
    Table(
        "agent_runs",
        meta,
        Column("id", String(64), primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("digest", String(64), nullable=False),
        Column("status", String(16), nullable=False),
        Column("stop_reason", String(64), nullable=False),
        Column("response", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("finished_at", DateTime(timezone=True), nullable=True),
        Index("ix_agent_runs_agent_created", "agent_id", "created_at"),
    )
    for name in ("agent_tags", "agent_leases", "agent_runs"):
        meta.tables[name].create(conn)


def _timestamp(conn: Connection, column: str) -> str:
    """A timezone-aware timestamp column in this database's words."""
    zoned = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    return column.replace("TIMESTAMP", zoned)


def _0008_files(conn: Connection) -> None:
    """Files of a source with their load progress (a server's uploads and `memgpt load`'s files), and a
    source's instructions and metadata (Letta's folders have both). Files loaded before get a row each."""
    conn.execute(text("ALTER TABLE sources ADD COLUMN instructions TEXT NOT NULL DEFAULT ''"))
    conn.execute(text("ALTER TABLE sources ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'"))
    meta = MetaData()
    Table("sources", meta, Column("id", String(64), primary_key=True))  # referenced only
    files = Table(
        "files",
        meta,
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
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Index("ix_files_source_created", "source_id", "created_at"),
        Index("ix_files_source_path", "source_id", "path"),
        Index("ix_files_status", "status"),
    )
    files.create(conn)
    documents = Table(
        "documents",
        meta,
        Column("source_id", String(64)),
        Column("file_path", Text),
        Column("file_name", String(512)),
        Column("file_size", BigInteger),
        Column("n_passages", Integer),
        Column("status", String(16)),
        Column("created_at", DateTime(timezone=True)),
    )
    c = documents.c
    ready, pending = c.status == "ready", c.status == "pending"
    loaded = conn.execute(
        select(
            c.source_id,
            c.file_path,
            func.max(c.file_name),
            func.max(c.file_size),
            func.min(c.created_at),
            func.coalesce(func.sum(c.n_passages).filter(ready), 0),
            func.count().filter(ready),
            func.count().filter(pending),
        ).group_by(c.source_id, c.file_path)
    ).all()
    for source_id, path, name, size, created, chunks, n_ready, n_pending in loaded:
        if not n_ready and not n_pending:
            continue  # only being deleted
        done = bool(n_ready) and not n_pending
        conn.execute(
            files.insert().values(
                id=f"file-{uuid.uuid4()}",
                source_id=source_id,
                file_name=name,
                path=path,
                stored=False,
                original_file_name=name,
                file_type="",
                file_size=size,
                status="completed" if done else "error",
                error_message="" if done else "the load was interrupted; run the same `memgpt load` again",
                total_chunks=int(chunks or 0),
                chunks_embedded=int(chunks or 0) if done else 0,
                job_owner="",
                created_at=_aware(created),
                updated_at=_aware(created),
            )
        )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _0009_agent_steps(conn: Connection) -> None:
    """What a step changes outside its messages, so an unfinished step can be undone and a dropped one
    forgotten (``step_effects``); indexes for the context window and the recall backlog, so neither
    scans an agent's whole history; the agent's calibrated token ratio for its model."""
    meta = MetaData()
    Table("agents", meta, Column("id", String(64), primary_key=True))  # referenced only
    Table(
        "step_effects",
        meta,
        Column("step_id", String(64), primary_key=True),
        Column("kind", String(16), primary_key=True),
        Column("target", String(256), primary_key=True),
        Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), nullable=False, index=True),
        Column("previous", Text, nullable=True),
        Column("committed", Boolean, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    meta.tables["step_effects"].create(conn)
    conn.execute(text("DROP INDEX ix_messages_agent_indexed"))
    conn.execute(text("CREATE INDEX ix_messages_agent_backlog ON messages (agent_id, searchable, indexed, seq)"))
    conn.execute(text("CREATE INDEX ix_messages_agent_window ON messages (agent_id, in_context, seq)"))
    conn.execute(text("ALTER TABLE agents ADD COLUMN token_ratio FLOAT NOT NULL DEFAULT 1.0"))
    conn.execute(text("ALTER TABLE agents ADD COLUMN token_ratio_model VARCHAR(256) NOT NULL DEFAULT ''"))


def _0010_agent_mcp_servers(conn: Connection) -> None:
    """The MCP servers each agent uses (by name; the servers themselves are in the home's mcp.toml)."""
    meta = MetaData()
    Table("agents", meta, Column("id", String(64), primary_key=True))  # referenced only
    Table(
        "agent_mcp_servers",
        meta,
        Column("agent_id", String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
        Column("server_name", String(64), primary_key=True),
        Column("attached_at", DateTime(timezone=True), nullable=False),
    )
    meta.tables["agent_mcp_servers"].create(conn)


def _0014_passage_marks(conn: Connection) -> None:
    """The vector store's timestamp of each agent's and source's newest passage write (see storage/marks.py)."""
    meta = MetaData()
    Table(
        "passage_marks",
        meta,
        Column("scope_id", String(64), primary_key=True),
        Column("mark", BigInteger, nullable=False),
    )
    meta.tables["passage_marks"].create(conn)


def _0015_agent_versions(conn: Connection) -> None:
    """A counter in each agent's row that every change to what an opened agent holds moves, so a server
    process may keep an agent open between turns while the counter says it is current (server/turns.py)."""
    conn.execute(text("ALTER TABLE agents ADD COLUMN version INTEGER NOT NULL DEFAULT 0"))


def _0016_recall_without_bare_entries(conn: Connection) -> None:
    """Messages without words (an agent message that only called a tool) are no longer in the recall index:
    marked unindexed, the next indexing pass deletes the entries earlier versions wrote for them."""
    conn.execute(text("UPDATE messages SET indexed = FALSE WHERE searchable AND search_text = '' AND indexed"))


def _0017_recall_index_claims(conn: Connection) -> None:
    """Which process writes an agent's recall index entries now, where other processes write them too (see
    storage/claims.py)."""
    meta = MetaData()
    Table(
        "recall_index_claims",
        meta,
        Column("agent_id", String(64), primary_key=True),
        Column("owner", String(256), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
    )
    meta.tables["recall_index_claims"].create(conn)


def _0018_agents_last_system(conn: Connection) -> None:
    """The system message each agent's last step was sent, so that the next process sends it again to the byte
    while memory is unchanged and the LLM server's prompt cache keeps serving it (agent/agent.py ``_system``)."""
    conn.execute(text("ALTER TABLE agents ADD COLUMN last_system TEXT"))


def _0019_agents_pressure_alerted(conn: Connection) -> None:
    """Whether each agent was sent the memory-pressure alert since its last summary, so that a new process (each
    `memgpt run --message`, a server that opens the agent again) does not send it again (agent/agent.py)."""
    conn.execute(text("ALTER TABLE agents ADD COLUMN pressure_alerted BOOLEAN NOT NULL DEFAULT FALSE"))


def _0020_deleted_agents(conn: Connection) -> None:
    """Where each recently deleted agent and source stood in its user's list, so that it stays a paging cursor
    (see storage/agents.py ``DeletedAgentRow``, storage/sql.py ``DeletedSourceRow``)."""
    meta = MetaData()
    Table(
        "deleted_agents",
        meta,
        Column("id", String(64), primary_key=True),
        Column("user_id", String(64), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("deleted_at", DateTime(timezone=True), nullable=False, index=True),
    )
    meta.tables["deleted_agents"].create(conn)
    Table(
        "deleted_sources",
        meta,
        Column("id", String(64), primary_key=True),
        Column("user_id", String(64), nullable=False),
        Column("name", String(256), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("deleted_at", DateTime(timezone=True), nullable=False, index=True),
    )
    meta.tables["deleted_sources"].create(conn)


def _0021_runs_waiting_for_their_first_try(conn: Connection) -> None:
    """When a client's retry recorded its run without finding one of its first try (held up before it recorded its
    own, see storage/turns.py ``Arrival``): by the database's clock, cleared once that first try takes the run."""
    conn.execute(text(f"ALTER TABLE agent_runs ADD COLUMN {_timestamp(conn, 'waiting_since TIMESTAMP')}"))


def _0022_agents_archival_count(conn: Connection) -> None:
    """The count of each agent's own archival passages, kept in SQL so that opening an agent (its prompt shows
    the count) needs no vector store; existing agents are counted once, when next opened (storage/agents.py)."""
    conn.execute(text("ALTER TABLE agents ADD COLUMN archival_version INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE agents ADD COLUMN archival_count INTEGER"))
    conn.execute(text("ALTER TABLE agents ADD COLUMN archival_counted INTEGER"))
    conn.execute(text("ALTER TABLE agents ADD COLUMN archival_writes_open INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text(f"ALTER TABLE agents ADD COLUMN {_timestamp(conn, 'archival_write_began TIMESTAMP')}"))


logger = logging.getLogger(__name__)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_sources_and_documents", _0001_sources_and_documents),
    ("0002_agents", _0002_agents),
    ("0003_messages_indexed", _0003_messages_indexed),
    ("0004_messages_unbounded_tool_fields", _0004_messages_unbounded_tool_fields),
    ("0005_messages_searchable", _0005_messages_searchable),
    ("0006_users_and_api_keys", _0006_users_and_api_keys),
    ("0007_agents_for_the_api", _0007_agents_for_the_api),
    ("0008_files", _0008_files),
    ("0009_agent_steps", _0009_agent_steps),
    ("0010_agent_mcp_servers", _0010_agent_mcp_servers),
    ("0014_passage_marks", _0014_passage_marks),
    ("0015_agent_versions", _0015_agent_versions),
    ("0016_recall_without_bare_entries", _0016_recall_without_bare_entries),
    ("0017_recall_index_claims", _0017_recall_index_claims),
    ("0018_agents_last_system", _0018_agents_last_system),
    ("0019_agents_pressure_alerted", _0019_agents_pressure_alerted),
    ("0020_deleted_agents", _0020_deleted_agents),
    ("0021_runs_waiting_for_their_first_try", _0021_runs_waiting_for_their_first_try),
    ("0022_agents_archival_count", _0022_agents_archival_count),
]


def apply_migrations(engine: Engine) -> list[str]:
    """Apply what is missing with their ledger rows in locked transactions; returns the names applied now
    (by this call: what another process applied meanwhile is not counted).

    A new database (an empty ledger) gets every migration in one transaction: one lock and one commit
    instead of one per migration, ~30% less CPU on a new home's first command (82 -> 56 ms a home, measured
    on a busy machine), and a crash leaves nothing to finish. Built by the same migrations, it ends up as
    an upgraded one does (tests/test_migrations.py compares them). An existing database takes them one
    transaction each, so those that succeeded stay applied if a later one fails."""
    if not _pending(_applied(engine)):
        return []  # the common case: one read, no lock
    applied_now: list[str] = []
    ended = 0  # times another process ended this one's migrations' session as stalled (``_end_stalled_migrator``)
    while True:
        try:
            with _migration_lock(engine) as conn:
                _ledger_metadata.create_all(conn)  # checks first, inside the lock
                applied = set(conn.scalars(select(LEDGER.c.name)))
                pending = _pending(applied)
                if not pending:
                    return applied_now
                batch = pending if not applied else pending[:1]
                for _name, migrate in batch:
                    migrate(conn)
                now = datetime.now(UTC)
                conn.execute(LEDGER.insert(), [{"name": name, "applied_at": now} for name, _ in batch])
        except DBAPIError as exc:
            # Ended by the database, the transaction undone whole: what the ledger says (read again under the lock)
            # is what is applied, so the next try goes on from it; e.g. after a pause here the next process took
            # for a stopped migrator.
            ended += 1
            if not exc.connection_invalidated or ended > 3:
                raise
            logger.info("the migrations' session was ended (%s): trying again", exc.orig)
            continue
        applied_now.extend(name for name, _ in batch)


def _applied(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        if not inspect(conn).has_table(LEDGER.name):
            return set()
        return set(conn.scalars(select(LEDGER.c.name)))


def _pending(applied: set[str]) -> list[tuple[str, Callable[[Connection], None]]]:
    unknown = applied - {name for name, _ in MIGRATIONS}
    if unknown:
        raise SchemaMismatchError(
            f"the metadata database was upgraded by a newer memgpt (migration {max(unknown)}); upgrade memgpt to use it"
        )
    return [(name, migrate) for name, migrate in MIGRATIONS if name not in applied]


# Any fixed number: PostgreSQL advisory locks are per database, so this only serializes memgpt's migrations.
_ADVISORY_LOCK_KEY = 0x6D656D677074  # "memgpt"
# The migrations' own idle-in-transaction limit. A metadata engine ends transactions idle for a lease's length
# (sql._end_idle_transactions: 3 s at the shortest), and a new database's migrations are one transaction of ~70
# statements: one garbage collection of a loaded process between two of them (3-4 s seen at load ~22) ended it,
# and the open failed. A stopped migrator still gives the lock up after this long.
_MIGRATION_IDLE_LIMIT = "60s"
# A process waiting for the migration lock ends the session holding it once that session has waited this long for its
# client inside its transaction: a stopped process (SIGSTOP, a frozen VM) held the next one for the whole idle limit
# (60.6 s measured). Ended, the transaction is undone whole (a new database's migrations are one); a holder that was
# only paused (a garbage collection under load: 3-4 s seen) tries again from what the ledger says, so nothing is
# applied twice or on top of a half-done try. (A killed process's session ends at once: its socket closes.)
_STALLED_MIGRATOR = 10.0
_WAIT_POLL = 0.1  # seconds between a waiting process's tries to take the lock


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """One transaction that holds the database's migration lock until it commits or rolls back."""
    if engine.dialect.name == "sqlite":
        with _sqlite_exclusive(engine) as conn:
            yield conn
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = '{_MIGRATION_IDLE_LIMIT}'"))
            taking = text("SELECT pg_try_advisory_xact_lock(:key)")
            while not conn.execute(taking, {"key": _ADVISORY_LOCK_KEY}).scalar():
                _end_stalled_migrator(engine)
                time.sleep(_WAIT_POLL)
        yield conn


# The session holding the migration lock (an advisory lock on a bigint: its high and low 32 bits in classid and
# objid, objsubid 1) in this database, when it has idled in its transaction for _STALLED_MIGRATOR seconds.
_END_STALLED = text(
    """
    SELECT pg_terminate_backend(a.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND a.state = 'idle in transaction'
      AND a.state_change < clock_timestamp() - make_interval(secs => :stalled)
    """
)


def _end_stalled_migrator(engine: Engine) -> None:
    """End the session of a migrator stalled inside its transaction (see _STALLED_MIGRATOR), from a session of its
    own (the waiting transaction stays clean). Not allowed to (another role's session): the wait goes on, up to the
    holder's idle limit."""
    key = {"high": _ADVISORY_LOCK_KEY >> 32, "low": _ADVISORY_LOCK_KEY & 0xFFFFFFFF, "stalled": _STALLED_MIGRATOR}
    try:
        with engine.connect() as other:
            ended = other.execute(_END_STALLED, key).scalars().all()
            other.commit()
    except SQLAlchemyError as exc:
        logger.debug("cannot end a stalled migrator's session: %s", exc)
        return
    if any(ended):
        logger.warning("ended the session of a process stalled inside the migrations for %.0f s", _STALLED_MIGRATOR)


@contextmanager
def _sqlite_exclusive(engine: Engine) -> Iterator[Connection]:
    """BEGIN EXCLUSIVE: other writers wait (busy_timeout), and SQLite's DDL is transactional.

    The driver's own implicit transactions would commit DDL early and cannot take the lock, so the
    connection is put in driver autocommit and the transaction is written out by hand."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("BEGIN EXCLUSIVE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(SQLAlchemyError):  # SQLite may have rolled back already (disk full)
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
