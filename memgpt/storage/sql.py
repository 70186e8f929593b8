"""Metadata (sources, documents; later agents and messages) in SQL through SQLAlchemy.

SQLite in the home folder by default; the same code runs on PostgreSQL given a URL. Rows here are
storage shapes only: callers get the frozen records from ``memgpt.types``.

Sources, documents, files and passage marks are SQLAlchemy Core tables run on plain connections: the commands
on sources (`memgpt load`, `search`, `list sources`) never import SQLAlchemy's ORM (~0.08 CPU s of each such
process). The agent family's models are ORM classes on the same ``METADATA`` (``memgpt.storage.orm``), and
``MetadataStore.session()`` imports the ORM at its first use.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    column,
    create_engine,
    delete,
    event,
    func,
    insert,
    make_url,
    select,
    table,
    update,
)
from sqlalchemy.engine import URL, Connection, Dialect
from sqlalchemy.exc import ArgumentError, DisconnectionError, OperationalError, SQLAlchemyError

from memgpt.config import HOME_REMEDY, read_only_message
from memgpt.errors import MetadataBusyError, StorageError, StorageUnavailable
from memgpt.procfs import describe, lock_holders
from memgpt.types import Document, DocumentStatus, Source, utc_now

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Every table of the metadata database: the Core tables here and in files.py and marks.py, and the ORM models of
# memgpt.storage.orm's Base (whose foreign keys name the sources table).
METADATA = MetaData()


def bump_agents(s: Session | Connection, agent_ids: str | Sequence[str] | Select[Any]) -> None:
    """Move the version of these agents (an id, ids, or a query of ids) in the caller's transaction: every
    write to what an opened agent holds (blocks, fields, messages, tools, attachments, what its archival
    memory counts) does this, except a server turn's own writes under its lease. A server process keeps an
    agent open between turns only while the version is the one it last saw (``memgpt.server.turns``).
    Writers lock rows in one order, so no two of them wait on each other: a lease row, then agents rows
    (this, first in the transaction), then the rest."""
    if isinstance(agent_ids, str):
        agent_ids = [agent_ids]
    elif isinstance(agent_ids, Select):
        agent_ids = list(s.scalars(agent_ids))
    # One row at a time in id order: two transactions that move the same agents lock them in the same order.
    for agent_id in sorted(set(agent_ids)):
        s.execute(update(_AGENTS).where(_AGENTS.c.id == agent_id).values(version=_AGENTS.c.version + 1))


def bump_agent(s: Session | Connection, agent_id: str, reading: Any = None, **values: Any) -> Any:
    """``bump_agents`` for one agent, setting more of its columns too, and reading ``reading`` (a scalar
    subquery) in the same statement; returns what it read."""
    statement = update(_AGENTS).where(_AGENTS.c.id == agent_id).values(version=_AGENTS.c.version + 1, **values)
    if reading is None:
        s.execute(statement)
        return None
    row = s.execute(statement.returning(reading)).first()
    return row[0] if row is not None else None


def bump_agents_of_sources(s: Session | Connection, source_ids: Sequence[str] | Select[Any]) -> None:
    """Move the version of the agents these sources are attached to (what their archival memory counts)."""
    bump_agents(s, select(_LINKS.c.agent_id).where(_LINKS.c.source_id.in_(source_ids)))


# The two columns these need, without the models (storage/agents.py and attachments.py build on this module).
_AGENTS = table("agents", column("id"), column("version"))
_LINKS = table("agent_sources", column("agent_id"), column("source_id"))


SOURCES = Table(
    "sources",
    METADATA,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False, index=True),
    Column("name", String(256), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("embedding_model", String(256), nullable=False),
    Column("embedding_dim", Integer, nullable=False),
    Column("status", String(16), nullable=False, default="ready"),
    Column("created_at", UTCDateTime, nullable=False, default=utc_now),
    Column("instructions", Text, nullable=False, default=""),
    Column("metadata", Text, nullable=False, default="{}", key="metadata_json"),  # `metadata` is SQLAlchemy's
    UniqueConstraint("user_id", "name", name="uq_sources_user_name"),
)


CURSOR_KEPT = timedelta(days=1)  # how long a deleted agent or source still places a page (its cursor)


# Where a deleted source stood in its user's list (oldest first, by creation time then name), kept for
# ``CURSOR_KEPT``: a client's next page of folders is asked for after the last one it was given, which a loop
# deleting each folder it is given has just deleted. The columns of memgpt.storage.orm's Tombstone, and the name.
DELETED_SOURCES = Table(
    "deleted_sources",
    METADATA,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("deleted_at", UTCDateTime, nullable=False, index=True),
    Column("name", String(256), nullable=False),
)


DOCUMENTS = Table(
    "documents",
    METADATA,
    Column("id", String(64), primary_key=True),
    Column("source_id", String(64), ForeignKey("sources.id", ondelete="CASCADE"), nullable=False),
    Column("file_path", Text, nullable=False),
    Column("file_name", String(512), nullable=False),
    Column("file_sha256", String(64), nullable=False),
    Column("file_size", BigInteger, nullable=False),
    Column("unit", Integer, nullable=True),  # PDF page number, 1-based
    Column("n_passages", Integer, nullable=False),
    Column("signature", String(128), nullable=False),  # how it was chunked and embedded
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utc_now),
    Index("ix_documents_source_status", "source_id", "status"),
    Index("ix_documents_source_file", "source_id", "file_path"),
)


def _source(row: Row[Any], counts: dict[str, tuple[int, int, int]] | None = None) -> Source:
    documents, passages, incomplete = (counts or {}).get(row.id, (0, 0, 0))
    return Source(
        id=row.id,
        name=row.name,
        user_id=row.user_id,
        embedding_model=row.embedding_model,
        embedding_dim=row.embedding_dim,
        created_at=row.created_at,
        description=row.description,
        documents=documents,
        passages=passages,
        incomplete_documents=incomplete,
        status=row.status,
        instructions=row.instructions,
        metadata=json.loads(row._mapping[SOURCES.c.metadata_json] or "{}"),
    )


def _document(row: Row[Any]) -> Document:
    return Document(
        id=row.id,
        source_id=row.source_id,
        file_path=row.file_path,
        file_name=row.file_name,
        file_sha256=row.file_sha256,
        file_size=row.file_size,
        unit=row.unit,
        n_passages=row.n_passages,
        signature=row.signature,
        status=DocumentStatus(row.status),
        created_at=row.created_at,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_MS}")  # first: switching to WAL may wait for another process
    _journal_wal(cursor)  # readers never block the writer
    # In WAL mode NORMAL syncs at checkpoints, not at every commit: a commit survives the process being
    # killed (the OS holds the WAL) and nothing is ever corrupted, but a power cut may lose the last
    # commits. FULL's fsync per commit cost ~6 ms here, twice per agent turn.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_BUSY_MS = 10_000


def _journal_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting like any statement for a database another process is writing. SQLite
    answers it "database is locked" at once, without its busy handler, while another connection holds a write
    lock on a database not yet in WAL mode (processes opening a new home at the same moment): so it is tried
    again for as long as the busy timeout."""
    import sqlite3

    deadline = time.monotonic() + _BUSY_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


def parse_metadata_url(url: str) -> URL:
    """Parse a metadata URL; ``postgresql://`` and ``postgres://`` (as hosting providers print them)
    mean psycopg 3, the PostgreSQL driver memgpt installs."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url.removeprefix(scheme)
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise StorageError(
            f"metadata_url {url!r} is not a database URL (e.g. postgresql://user:password@host/db)"
        ) from exc


def create_metadata_engine(url: URL, *, idle_transaction_seconds: float | None = None) -> Engine:
    """An engine with the options each database needs: SQLite waits for other processes' writes;
    PostgreSQL checks pooled connections before use (servers restart) and gives up connecting in 10 s, and with
    ``idle_transaction_seconds`` ends a session whose transaction waited that long for its client's next
    statement (see ``_end_idle_transactions``)."""
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql":
        from memgpt.storage.pg_cursor import StatementByStatementCursor

        defaults = {"connect_timeout": 10, "application_name": "memgpt"}
        connect_args: dict[str, Any] = {k: v for k, v in defaults.items() if k not in url.query}
        # The idle transaction timeout below holds only between statements that each end with a Sync: psycopg's
        # pipelined executemany leaves it off (see pg_cursor).
        connect_args["cursor_factory"] = StatementByStatementCursor
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800, connect_args=connect_args
        )
        _end_idle_transactions(engine, url, idle_transaction_seconds)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _end_idle_transactions(engine: Engine, url: URL, seconds: float | None) -> None:
    """PostgreSQL's ``idle_in_transaction_session_timeout`` for every session of ``engine`` (unless the URL's
    ``options`` set it). A process stopped between two statements of a transaction (a SIGSTOP, a frozen VM, a
    long pause) keeps that transaction's row locks while it is stopped; a server turn's transactions lock its
    agent's lease row, so another process's takeover of the expired lease would wait for as long as the stopped
    one stays stopped. Ended by the database after ``seconds`` (the lease's length), the stopped transaction is
    undone whole and the takeover goes on; the stopped process's next statement on that session fails (a fenced
    write then reports its lease lost). No transaction of memgpt waits for its client that long while the client
    runs. Set by a statement as each connection opens rather than as a startup option, which PgBouncer refuses.
    PostgreSQL arms it only as it answers a Sync: the sessions' cursor never leaves a Flush after one (pg_cursor)."""
    own = url.query.get("options", "")
    if seconds is None or "idle_in_transaction_session_timeout" in (" ".join(own) if isinstance(own, tuple) else own):
        return
    setting = f"SET idle_in_transaction_session_timeout = {max(1, round(seconds * 1000))}"

    def opened(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(setting)
        cursor.close()
        dbapi_connection.commit()  # a session's setting: it outlives this transaction

    event.listen(engine, "connect", opened)


def _unreachable(exc: SQLAlchemyError) -> bool:
    """The database was out of reach rather than the statement wrong: a dropped or refused connection (any
    OperationalError of PostgreSQL's driver), or SQLite's "database is locked"."""
    if isinstance(exc, DisconnectionError) or getattr(exc, "connection_invalidated", False):
        return True
    if not isinstance(exc, OperationalError):
        return False
    if "database is locked" in _reason(exc):
        return True
    return type(getattr(exc, "orig", None)).__module__.split(".")[0] == "psycopg"


def _reason(exc: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's statement and background link."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _cannot_open(url: URL, exc: Exception) -> StorageError:
    where = url.render_as_string(hide_password=True)
    reason = _reason(exc)
    if url.get_backend_name() == "postgresql" and isinstance(exc, OperationalError):
        server = f"{url.host or 'localhost'}:{url.port or 5432}"
        detail = reason.split("FATAL:", 1)[-1].strip()
        if "password authentication failed" in reason or "no pg_hba.conf entry" in reason:
            return StorageError(
                f"PostgreSQL at {server} refused the login ({detail}): fix the user or password in metadata_url"
            )
        if "does not exist" in reason and "database" in reason:
            return StorageError(
                f"PostgreSQL at {server}: {detail}: create it (createdb {url.database}) or fix metadata_url"
            )
        if "Connection refused" in reason or "failed to resolve host" in reason or "timeout expired" in reason:
            return StorageError(
                f"cannot reach PostgreSQL at {server} ({detail.removeprefix('connection failed: ')}):"
                " is it running there? Check metadata_url"
            )
    return StorageError(f"cannot open the metadata database {where}: {reason}")


class Direct:
    """A Core statement compiled once for one database and run on the driver's own cursor of the caller's transaction
    (a turn's statements: SQLAlchemy's execution of one cost ~5 times the driver's). What callers and tests rely on
    holds: the connection's ``before_cursor_execute`` and ``after_cursor_execute`` listeners run as around any
    statement (faults injected, statements counted), a driver's error is raised as SQLAlchemy raises it (wrapped in
    a DBAPIError, a connection the database ended invalidated), and values are bound and read through the columns'
    types (``UTCDateTime``)."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self._dialect = dialect
        binds = compiled.binds
        self._order = tuple(compiled.positiontup or ()) if compiled.positional else None
        # Values the statement carries (constants, ``version + 1``'s 1): bound as SQLAlchemy binds them.
        self._constants = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
        self._binds = tuple(
            (name, processor)
            for name, bind in binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        )
        if isinstance(statement, Select):  # its rows (``all``)
            returned = statement.selected_columns
        else:
            returned = getattr(statement, "exported_columns", None) if getattr(statement, "_returning", ()) else None
        self._results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in (returned or ())
        )

    def _parameters(self, values: dict[str, Any]) -> Any:
        bound = {**self._constants, **values}
        for name, processor in self._binds:
            bound[name] = processor(bound[name])
        return bound if self._order is None else tuple([bound[name] for name in self._order])

    def first(self, c: Session | Connection, values: dict[str, Any]) -> tuple[Any, ...] | None:
        """Run it with ``values`` in the caller's transaction; the first row it returns (None: none, or no
        RETURNING)."""
        rows = self._run(c, self._parameters(values), many=False)
        if not rows:
            return None
        row = zip(self._results, rows[0], strict=True)
        return tuple([value if process is None else process(value) for process, value in row])

    def rows(self, c: Session | Connection, values: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run it with ``values`` in the caller's transaction; every row it returns (a SELECT's, or RETURNING's)."""
        rows = self._run(c, self._parameters(values), many=False)
        results = self._results
        return [tuple([v if p is None else p(v) for p, v in zip(results, row, strict=True)]) for row in rows]

    def many(self, c: Session | Connection, values: list[dict[str, Any]]) -> None:
        """Run it once for each of ``values`` (the driver's executemany), in the caller's transaction."""
        self._run(c, [self._parameters(v) for v in values], many=True)

    def _run(self, c: Session | Connection, parameters: Any, *, many: bool) -> list[Any]:
        connection = c if isinstance(c, Connection) else c.connection()
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        sql = self.sql
        # As SQLAlchemy's own execution asks (reading a listener-less Connection's events costs more than a statement).
        events = connection._has_events or connection.engine._has_events
        try:
            try:
                if events:
                    for listener in connection.dispatch.before_cursor_execute:
                        sql, parameters = listener(connection, cursor, sql, parameters, None, many)
                if many:
                    cursor.executemany(sql, parameters)
                else:
                    cursor.execute(sql, parameters)
                if events:
                    connection.dispatch.after_cursor_execute(connection, cursor, sql, parameters, None, many)
                return cursor.fetchall() if self._results else []
            except self._dialect.loaded_dbapi.Error as exc:
                # As SQLAlchemy's execution: wrapped, a lost connection invalidated (raises).
                connection._handle_dbapi_exception(exc, sql, parameters, cursor, None)
                raise
        finally:
            cursor.close()


_DIRECT: dict[tuple[Any, str, str, str], Direct] = {}


def direct(statement: Any, c: Session | Connection) -> Direct:
    """``statement`` (built once, kept: it is the key) as a ``Direct`` for the database of ``c``, compiled once."""
    dialect = c.dialect if isinstance(c, Connection) else c.get_bind().dialect
    key = (statement, dialect.name, dialect.driver, str(dialect.paramstyle))
    found = _DIRECT.get(key)
    if found is None:
        found = _DIRECT.setdefault(key, Direct(statement, dialect))
    return found


class MetadataStore:
    """Sources and documents. Every method is one transaction."""

    def __init__(self, url: str, *, idle_transaction_seconds: float | None = None) -> None:
        """``idle_transaction_seconds``: see ``create_metadata_engine`` (PostgreSQL only)."""
        from memgpt.storage.migrations import apply_migrations

        parsed = parse_metadata_url(url)
        database = parsed.database if parsed.get_backend_name() == "sqlite" else None
        self._file = Path(database) if database and database != ":memory:" else None
        try:
            self.engine = create_metadata_engine(parsed, idle_transaction_seconds=idle_transaction_seconds)
        except (SQLAlchemyError, ImportError, OSError) as exc:  # an unknown dialect, no driver, a read-only home
            raise self._open_error(parsed, exc) from exc
        try:
            apply_migrations(self.engine)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise self._open_error(parsed, exc) from exc
        except BaseException:
            self.engine.dispose()
            raise
        self._session_factory: sessionmaker[Session] | None = None  # made at the first session(): see the module
        self._making_sessions = threading.Lock()
        # SQLite has one writer at a time, and its waiters poll (busy_timeout) rather than queue: with dozens
        # of threads (a server's turns) some waited past the timeout ("database is locked"). The threads of this
        # process take turns here instead, in order; other processes still meet the busy timeout.
        sqlite = parsed.get_backend_name() == "sqlite"
        self._serial: AbstractContextManager[Any] = threading.RLock() if sqlite else nullcontext()
        # On a SQLite file, whose transactions in this process run one at a time (``_serial``), ``connection``'s
        # transactions share one connection kept open, for any thread (the driver's thread check is off for a file,
        # as for SQLAlchemy's pool): a pool checkout and return cost ~100 µs a transaction, more than a turn's
        # statements, and a turn makes two. ``check_same_thread`` in the URL keeps the pool.
        self._keep = sqlite and self._file is not None and "check_same_thread" not in parsed.query
        self._kept: Connection | None = None

    def _open_error(self, url: URL, exc: Exception) -> StorageError:
        said = self._read_only()
        if said:
            return StorageError(said)
        locked = self._locked(exc)
        return MetadataBusyError(locked) if locked else _cannot_open(url, exc)

    def _error(self, exc: SQLAlchemyError) -> StorageError:
        """A failed statement as a StorageError, in one line; StorageUnavailable when the database was out of reach
        (the connection dropped or refused, or SQLite's writer lock held past the wait), which may pass. The lock's
        holder is looked for once (``_locked`` scans /proc)."""
        read_only = self._read_only()
        if read_only:
            return StorageError(read_only)
        locked = self._locked(exc)
        if locked:
            return MetadataBusyError(locked)
        said = f"metadata database error: {_reason(exc)}"
        return StorageUnavailable(said) if _unreachable(exc) else StorageError(said)

    def _locked(self, exc: Exception) -> str | None:
        """SQLite's "database is locked" once its wait (busy_timeout) ran out: which process holds the file, and what
        to do about it (one stopped inside a write, a migration say, holds it until it goes on or ends)."""
        if self._file is None or "database is locked" not in _reason(exc):
            return None
        holders = lock_holders([self._file, Path(f"{self._file}-wal"), Path(f"{self._file}-shm")])
        if not holders:
            return None
        pid = holders[0]
        command, stopped = describe(pid)
        # In WAL mode the process found may be a healthy peer that was writing just then: "e.g.", not "the culprit".
        todo = f"resume it (kill -CONT {pid}) or end it" if stopped else "if it stays busy, let it finish or end it"
        state = "stopped" if stopped else "running"
        return (
            f"the metadata database {self._file} stayed locked longer than this command waits ({_BUSY_MS // 1000} s),"
            f" held by process {pid} ({state}: {command}) and perhaps others: {todo}, then run this again"
        )

    def _read_only(self) -> str | None:
        """SQLite writes the database file and, in WAL mode, files beside it: a read-only file or folder
        shows only as "unable to open database file" or "attempt to write a readonly database"."""
        if self._file is None:
            return None
        return read_only_message(self._file, "the metadata database", HOME_REMEDY)

    @property
    def _sessions(self) -> sessionmaker[Session]:
        """The ORM's sessions of this database, made at first use (importing the ORM): see the module."""
        factory = self._session_factory
        if factory is None:
            from sqlalchemy.orm import sessionmaker

            with self._making_sessions:
                if self._session_factory is None:
                    self._session_factory = sessionmaker(self.engine, expire_on_commit=False)
                factory = self._session_factory
        return factory

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction in an ORM session (the agent family's models); the tables of this module, files.py and
        marks.py are read and written through :meth:`connection`."""
        sessions = self._sessions
        with self._serial:
            session = sessions()
            try:
                yield session
                session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                raise self._error(exc) from exc
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """``session()`` without the ORM: one transaction on a plain connection, for Core statements on a turn's
        path (an ORM session's set-up and commit cost as much again as such a statement)."""
        with self._serial:
            kept = self._kept
            if not self._keep or (kept is not None and kept.in_transaction()):  # (nested: a connection of its own)
                try:
                    with self.engine.begin() as connection:
                        yield connection
                except SQLAlchemyError as exc:
                    raise self._error(exc) from exc
                return
            try:
                if kept is None:
                    kept = self._kept = self.engine.connect()
                with kept.begin():
                    yield kept
            except SQLAlchemyError as exc:
                self._let_go(kept)
                raise self._error(exc) from exc
            except BaseException:
                if kept is not None and (kept.in_transaction() or kept.invalidated):  # (its rollback did not end it)
                    self._let_go(kept)
                raise

    def _let_go(self, kept: Connection | None, *, failed: bool = True) -> None:
        """After a failed transaction: the kept connection discarded (not given back to the pool, where its state, a
        read snapshot its rollback may not have ended, could serve another transaction), the next on a fresh one."""
        if kept is not None and self._kept is kept:
            self._kept = None
            with suppress(SQLAlchemyError):
                if failed:
                    kept.invalidate()
                kept.close()

    def close(self) -> None:
        with self._serial:
            self._let_go(self._kept, failed=False)
        self.engine.dispose()

    # -- sources ------------------------------------------------------------------------------
    def get_source(self, user_id: str, name: str) -> Source | None:
        with self.connection() as c:
            row = c.execute(select(SOURCES).where(SOURCES.c.user_id == user_id, SOURCES.c.name == name)).first()
            return _source(row, self._counts(c, [row.id])) if row else None

    def source_by_id(self, user_id: str, source_id: str) -> Source | None:
        """The source with this id, if it is this user's."""
        with self.connection() as c:
            row = c.execute(select(SOURCES).where(SOURCES.c.id == source_id)).first()
            return _source(row, self._counts(c, [row.id])) if row is not None and row.user_id == user_id else None

    def source_with_id(self, source_id: str) -> Source | None:
        """The source with this id whoever owns it: only for work done for its owner without a request
        (a server's background loads); everything a user asks for goes through ``source_by_id``."""
        with self.connection() as c:
            row = c.execute(select(SOURCES).where(SOURCES.c.id == source_id)).first()
            return _source(row, self._counts(c, [row.id])) if row is not None else None

    def list_sources(self, user_id: str) -> list[Source]:
        with self.connection() as c:
            query = select(SOURCES).where(SOURCES.c.user_id == user_id)
            rows = c.execute(query.order_by(SOURCES.c.created_at, SOURCES.c.name)).all()
            counts = self._counts(c, [r.id for r in rows])
            return [_source(r, counts) for r in rows]

    def create_source(self, source: Source) -> Source:
        with self.connection() as c:
            c.execute(
                insert(SOURCES).values(
                    id=source.id,
                    user_id=source.user_id,
                    name=source.name,
                    description=source.description,
                    embedding_model=source.embedding_model,
                    embedding_dim=source.embedding_dim,
                    status="ready",
                    created_at=source.created_at,
                    instructions=source.instructions,
                    metadata_json=json.dumps(source.metadata),
                )
            )
        return source

    def mark_source_deleting(self, source_id: str) -> None:
        with self.connection() as c:
            bump_agents_of_sources(c, [source_id])
            c.execute(update(SOURCES).where(SOURCES.c.id == source_id).values(status="deleting"))

    def delete_source(self, source_id: str) -> None:
        with self.connection() as c:
            bump_agents_of_sources(c, [source_id])
            c.execute(delete(DOCUMENTS).where(DOCUMENTS.c.source_id == source_id))
            row = c.execute(select(SOURCES).where(SOURCES.c.id == source_id)).first()
            c.execute(delete(SOURCES).where(SOURCES.c.id == source_id))
            if row is not None:  # it stays a cursor for a while; older tombstones are forgotten (as orm.bury)
                now = utc_now()
                c.execute(
                    delete(DELETED_SOURCES).where(
                        (DELETED_SOURCES.c.deleted_at < now - CURSOR_KEPT) | (DELETED_SOURCES.c.id == source_id)
                    )
                )
                c.execute(
                    insert(DELETED_SOURCES).values(
                        id=source_id, user_id=row.user_id, name=row.name, created_at=row.created_at, deleted_at=now
                    )
                )

    def deleted_source(self, user_id: str, source_id: str) -> tuple[datetime, str] | None:
        """Where a source of this user deleted within ``CURSOR_KEPT`` stood: its creation time and name."""
        with self.connection() as c:
            row = c.execute(select(DELETED_SOURCES).where(DELETED_SOURCES.c.id == source_id)).first()
            if row is None or row.user_id != user_id or row.deleted_at < utc_now() - CURSOR_KEPT:
                return None
            return (row.created_at, row.name)

    @staticmethod
    def _counts(c: Connection, source_ids: list[str]) -> dict[str, tuple[int, int, int]]:
        if not source_ids:
            return {}
        ready = DOCUMENTS.c.status == DocumentStatus.READY.value
        rows = c.execute(
            select(
                DOCUMENTS.c.source_id,
                func.count().filter(ready),
                func.coalesce(func.sum(DOCUMENTS.c.n_passages).filter(ready), 0),
                func.count().filter(DOCUMENTS.c.status == DocumentStatus.PENDING.value),
            )
            .where(DOCUMENTS.c.source_id.in_(source_ids))
            .group_by(DOCUMENTS.c.source_id)
        ).all()
        return {sid: (int(docs), int(passages), int(pending)) for sid, docs, passages, pending in rows}

    # -- documents ----------------------------------------------------------------------------
    def documents(self, source_id: str, *, file_path: str | None = None) -> list[Document]:
        with self.connection() as c:
            query = select(DOCUMENTS).where(DOCUMENTS.c.source_id == source_id)
            if file_path is not None:
                query = query.where(DOCUMENTS.c.file_path == file_path)
            # NULLs sort first on SQLite and last on PostgreSQL unless told; id breaks ties between versions
            query = query.order_by(DOCUMENTS.c.file_path, DOCUMENTS.c.unit.asc().nulls_first(), DOCUMENTS.c.id)
            return [_document(r) for r in c.execute(query)]

    def ready_file_with_hash(self, source_id: str, sha256: str, signature: str) -> str | None:
        """The path of an already loaded file with this content, if any."""
        with self.connection() as c:
            return c.scalar(
                select(DOCUMENTS.c.file_path)
                .where(
                    DOCUMENTS.c.source_id == source_id,
                    DOCUMENTS.c.file_sha256 == sha256,
                    DOCUMENTS.c.signature == signature,
                    DOCUMENTS.c.status == DocumentStatus.READY.value,
                )
                .limit(1)
            )

    def ready_passages(self, source_ids: Iterable[str]) -> int:
        """How many passages the fully loaded documents of these sources have (what a search of them sees)."""
        ids = list(source_ids)
        if not ids:
            return 0
        with self.connection() as c:
            total = c.scalar(
                select(func.coalesce(func.sum(DOCUMENTS.c.n_passages), 0)).where(
                    DOCUMENTS.c.source_id.in_(ids), DOCUMENTS.c.status == DocumentStatus.READY.value
                )
            )
            return int(total or 0)

    def hidden_document_ids(self, source_ids: Iterable[str]) -> list[str]:
        """Documents whose passages may sit in Milvus but must not be seen (loading or being deleted)."""
        ids = list(source_ids)
        if not ids:
            return []
        with self.connection() as c:
            return list(
                c.scalars(
                    select(DOCUMENTS.c.id).where(
                        DOCUMENTS.c.source_id.in_(ids), DOCUMENTS.c.status != DocumentStatus.READY.value
                    )
                )
            )

    def add_pending(self, documents: Iterable[Document]) -> None:
        """Record documents before their passages are written, so a crash leaves them hidden. A document already
        recorded (the same id: a load taken up again) is written over, as the ORM's merge did."""
        rows = [
            {
                "id": doc.id,
                "source_id": doc.source_id,
                "file_path": doc.file_path,
                "file_name": doc.file_name,
                "file_sha256": doc.file_sha256,
                "file_size": doc.file_size,
                "unit": doc.unit,
                "n_passages": doc.n_passages,
                "signature": doc.signature,
                "status": DocumentStatus.PENDING.value,
                "created_at": doc.created_at,
            }
            for doc in documents
        ]
        if not rows:
            return
        with self.connection() as c:
            ids = [row["id"] for row in rows]
            c.execute(delete(DOCUMENTS).where(DOCUMENTS.c.id.in_(ids)))
            c.execute(insert(DOCUMENTS), rows)

    def publish(self, ready_ids: list[str], retired_ids: list[str]) -> None:
        """Make a file's new documents visible and hide its old ones, in one transaction."""
        with self.connection() as c:
            changed = ready_ids + retired_ids
            if changed:
                bump_agents_of_sources(c, select(DOCUMENTS.c.source_id).where(DOCUMENTS.c.id.in_(changed)))
            if ready_ids:
                c.execute(
                    update(DOCUMENTS).where(DOCUMENTS.c.id.in_(ready_ids)).values(status=DocumentStatus.READY.value)
                )
            if retired_ids:
                c.execute(
                    update(DOCUMENTS)
                    .where(DOCUMENTS.c.id.in_(retired_ids))
                    .values(status=DocumentStatus.DELETING.value)
                )

    def documents_with_status(self, source_id: str, status: DocumentStatus) -> list[Document]:
        with self.connection() as c:
            rows = c.execute(
                select(DOCUMENTS).where(DOCUMENTS.c.source_id == source_id, DOCUMENTS.c.status == status.value)
            )
            return [_document(r) for r in rows]

    def delete_documents(self, ids: list[str]) -> None:
        if not ids:
            return
        with self.connection() as c:
            c.execute(delete(DOCUMENTS).where(DOCUMENTS.c.id.in_(ids)))
