"""Turns of agents in the metadata database: who runs one now (a lease per agent, seen by every process on
the database) and what each turn was (a run), so a client's retry of a send finds the turn it started.

A lease names its owner as ``<host>:<pid>:<process start>:<token>``, a fresh token for every grant: the owner
is the fencing token that renewals, releases and a turn's writes carry. The database decides who holds it:
the lease is taken with its owner in one statement, in the same transaction as the run it is taken for: an
INSERT that, when the row exists, replaces it only if it expired (decided on the row as it is then, so a
renewal that came first wins), or, when its owner process on this host no longer runs (kill -9; a process of
the same pid that started at another time is another process), an UPDATE that only matches the dead owner, at
once instead of after the expiry. A renewal and a release match the owner. No process keeps a note of its
own leases: each process's are told apart by the database row alone. Expiry is set and judged by the
database's clock, in the statement that acts, never by the caller's: on a PostgreSQL shared by hosts whose
clocks differ, a newcomer's clock ahead would take live leases, a holder's clock behind would lose its own,
and a holder's clock ahead would keep them long after it died.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, DateTime, Index, String, Text, column, delete, func, select, table, type_coerce, update
from sqlalchemy import insert as sql_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.errors import LeaseLostError, StorageError
from memgpt.procfs import stat_fields
from memgpt.storage.sql import Base, MetadataStore, UTCDateTime
from memgpt.types import utc_now


def _place() -> str:
    """This host, and the pid namespace on it: only processes in the same one can see each other's pids."""
    try:
        namespace = "".join(ch for ch in os.readlink("/proc/self/ns/pid") if ch.isdigit())
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}#{namespace}" if namespace else socket.gethostname()


HOST = _place()


class LeaseRow(Base):
    __tablename__ = "agent_leases"

    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    run_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean)


class RunRow(Base):
    __tablename__ = "agent_runs"
    __table_args__ = (Index("ix_agent_runs_agent_created", "agent_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))  # of the request that started it: retries carry the same
    status: Mapped[str] = mapped_column(String(16))  # running, then finished
    stop_reason: Mapped[str] = mapped_column(String(64))
    response: Mapped[str] = mapped_column(Text)  # the finished turn's answer (JSON), for a retry to get
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


RUNNING, FINISHED = "running", "finished"
_LEASES, _RUNS = LeaseRow.__table__, RunRow.__table__


@dataclass(frozen=True)
class Run:
    id: str
    agent_id: str
    digest: str
    status: str = RUNNING
    stop_reason: str = ""
    response: str = ""
    created_at: datetime | None = None
    finished_at: datetime | None = None


def _run(row: RunRow) -> Run:
    return Run(
        row.id, row.agent_id, row.digest, row.status, row.stop_reason, row.response, row.created_at, row.finished_at
    )


@dataclass(frozen=True)
class Grant:
    """A lease just taken, with the agent's version as the lease's transaction moved it (taking a lease moves
    it, as every write to the agent does but a turn's own under its lease): a process that kept the agent open
    since its own last grant, at ``version - 1``, knows nothing changed it meanwhile. ``version`` is None when
    the agent has no row."""

    version: int | None
    created_at: datetime | None


@dataclass(frozen=True)
class Fence:
    """The lease a turn holds. Its owner names one grant of the lease (a fresh token each time it is taken, and
    a takeover replaces it), so it is the fencing token: writes that carry it are refused once another owner
    has the agent."""

    agent_id: str
    owner: str


def check_fence(s: Session, fence: Fence | None, reading: Any = None) -> Any:
    """First statement of a turn's write transaction: lock the agent's lease row if ``fence`` still holds it,
    else raise LeaseLostError. The row stays locked until the transaction ends, so a takeover (an UPDATE of
    that row) waits for this commit and a commit after a takeover sees the new owner: never both.
    An expired lease nobody took over yet still holds: whoever takes it next reads what this commits.
    ``reading`` (a scalar subquery) is read in the same statement and returned."""
    if fence is None:
        return None
    leases = _LEASES  # Core statements on the table, here and in every statement a turn makes: the ORM's cost more
    statement = (
        update(leases)
        .where(leases.c.agent_id == fence.agent_id, leases.c.owner == fence.owner)
        .values(owner=leases.c.owner)  # changes nothing; takes the row lock (SQLite: the write lock)
    )
    if reading is not None:
        row = s.execute(statement.returning(reading)).first()
        if row is None:
            raise _lost(fence)
        return row[0]
    held = s.execute(statement)
    if held.rowcount != 1:
        raise _lost(fence)
    return None


def _lost(fence: Fence) -> LeaseLostError:
    return LeaseLostError(
        f"agent {fence.agent_id}: another server process took the agent over while this one stalled past its "
        "lease; this turn's work since then is not stored (send the message again)"
    )


def _agents() -> Any:
    """The agents table's id, version and created_at (storage/agents.py builds on this module)."""
    return table("agents", column("id"), column("version"), column("created_at", UTCDateTime))


# The dialects whose INSERT has ON CONFLICT, by module, imported when a home of that dialect takes a lease rather
# than with this module: PostgreSQL's cost ~0.07 s of every `memgpt run` on a SQLite home. A home's engine has
# imported its own dialect's module already, so a server's threads import nothing here.
_inserts: dict[str, str] = {"sqlite": "sqlalchemy.dialects.sqlite", "postgresql": "sqlalchemy.dialects.postgresql"}


def new_owner() -> str:
    return f"{HOST}:{os.getpid()}:{_started(os.getpid())}:{uuid.uuid4().hex}"


@functools.lru_cache(maxsize=64)
def _started(pid: int) -> str:
    """When this process (``pid`` is its own: a forked child has another) started, in clock ticks since boot
    from /proc; "" where that cannot be read."""
    return _read_start(pid)


def _read_start(pid: int) -> str:
    fields = stat_fields(pid)
    if not fields:
        return ""
    if fields[0] == "Z":
        return "-"  # a zombie: killed, not yet reaped by its parent
    return fields[19] if len(fields) > 19 else ""  # starttime is field 22


def _alive(pid: int, started: str | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` (None: unknown) still runs."""
    if pid == os.getpid():  # this process, or one that had its pid before (pids wrap around)
        return started == _started(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    now = _read_start(pid)
    if now == "-":  # it still answers kill(0)
        return False
    return not now or not started or now == started  # a start unknown on either side: the pid alone says


def database_now(dialect: str, ahead: float = 0.0) -> Any:
    """The database's time now, plus ``ahead`` seconds, as an SQL expression: what a lease's expiry is set and
    judged by. PostgreSQL's clock_timestamp() is the time the statement reads it (now() is when its transaction
    began, which may be long before, when the statement waited for a row lock); SQLite's 'now' is written in the
    format SQLAlchemy stores datetimes in (microseconds), so the strings compare as the times do. Another
    database gets this process's clock."""
    if dialect == "postgresql":
        moment = func.clock_timestamp(type_=DateTime(timezone=True)) + timedelta(seconds=ahead)
    elif dialect == "sqlite":
        moment = func.strftime("%Y-%m-%d %H:%M:%f000", "now", f"{ahead:+.6f} seconds")
    else:
        return utc_now() + timedelta(seconds=ahead)
    return type_coerce(moment, UTCDateTime)


def _gone(owner: str) -> bool:
    """Whether the owner is a process of this host (and pid namespace) that no longer runs."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != HOST or not parts[1].isdigit():
        return False
    started = parts[2] if len(parts) >= 4 else None  # an owner written before the start was part of it
    return not _alive(int(parts[1]), started)


class TurnStore:
    """Leases and runs; every method is one transaction."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    # -- leases -----------------------------------------------------------------------------------
    def acquire(
        self,
        agent_id: str,
        owner: str,
        run_id: str,
        ttl: float,
        *,
        run: Run | None = None,
        keep: timedelta | None = None,
    ) -> Grant | None:
        """Take the agent's lease for ``ttl`` seconds; None while another live owner holds it. With ``run``, the
        turn is recorded in the same transaction (and with ``keep``, the agent's runs older than that are forgotten)."""
        now = utc_now()  # a run's time; the lease's is the database's
        dialect = self._metadata.engine.dialect.name
        expires = database_now(dialect, ttl)
        fresh = {"owner": owner, "run_id": run_id, "expires_at": expires, "cancel_requested": False}
        module = _inserts.get(dialect)
        insert = importlib.import_module(module).insert if module else None
        if insert is None:  # another database: an INSERT refused while the row exists, then an expired row's UPDATE
            grant = self._insert(agent_id, fresh, run, keep, now) or self._take_expired(agent_id, fresh, run, keep, now)
        else:
            grant = self._claim(insert(_LEASES), agent_id, fresh, run, keep, now)
        return grant or self._take_from_the_dead(agent_id, fresh, now, run, keep)

    def _claim(
        self,
        insert: Any,
        agent_id: str,
        fresh: dict[str, object],
        run: Run | None,
        keep: timedelta | None,
        now: datetime,
    ) -> Grant | None:
        """One statement takes a free lease (the row is deleted at a turn's end) or an expired one, and says whether
        it did (its RETURNING: an INSERT's rowcount is not reported on every driver, psycopg 3 through SQLAlchemy 2.1
        says -1). While the row is locked by a turn's fenced write, it waits for that commit, then decides on what
        it reads. Neither case leaves a failed statement in the database's log."""
        leases = _LEASES
        expired = leases.c.expires_at <= self._now()
        statement = (
            insert.values(agent_id=agent_id, **fresh)
            .on_conflict_do_update(index_elements=[leases.c.agent_id], set_=fresh, where=expired)
            .returning(leases.c.agent_id)
        )
        with self._metadata.session() as s:
            if s.execute(statement).first() is None:
                return None
            return self._granted(s, agent_id, run, keep, now)

    def _granted(self, s: Session, agent_id: str, run: Run | None, keep: timedelta | None, now: datetime) -> Grant:
        """In the transaction that took the lease: move the agent's version and read it, record the run."""
        table = _agents()
        moved = s.execute(
            update(table)
            .where(table.c.id == agent_id)
            .values(version=table.c.version + 1)
            .returning(table.c.version, table.c.created_at)
        ).first()
        if run is not None:
            self._record_run(s, run, keep, now)
        return Grant(moved[0], moved[1]) if moved is not None else Grant(None, None)

    def _insert(
        self, agent_id: str, fresh: dict[str, object], run: Run | None, keep: timedelta | None, now: datetime
    ) -> Grant | None:
        try:
            with self._metadata.session() as s:
                s.execute(sql_insert(_LEASES).values(agent_id=agent_id, **fresh))
                return self._granted(s, agent_id, run, keep, now)
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return None
            raise

    def _take_expired(
        self, agent_id: str, fresh: dict[str, object], run: Run | None, keep: timedelta | None, now: datetime
    ) -> Grant | None:
        leases = _LEASES
        with self._metadata.session() as s:
            claimed = s.execute(
                update(leases).where(leases.c.agent_id == agent_id, leases.c.expires_at <= self._now()).values(**fresh)
            )
            return self._granted(s, agent_id, run, keep, now) if claimed.rowcount == 1 else None

    def _take_from_the_dead(
        self, agent_id: str, fresh: dict[str, object], now: datetime, run: Run | None, keep: timedelta | None
    ) -> Grant | None:
        """Claim a lease before it expires when its owner process on this host is gone: only from the owner read
        here (a dead process renews nothing, so its owner in the row means nothing changed it)."""
        leases = _LEASES
        with self._metadata.session() as s:
            current = s.execute(select(leases.c.owner).where(leases.c.agent_id == agent_id)).first()
            if current is None or not _gone(current.owner):
                return None  # released meanwhile (the next try inserts it), expired (the next try claims it), or held
            claimed = s.execute(
                update(leases).where(leases.c.agent_id == agent_id, leases.c.owner == current.owner).values(**fresh)
            )
            return self._granted(s, agent_id, run, keep, now) if claimed.rowcount == 1 else None

    def renew(self, agent_id: str, owner: str, ttl: float) -> bool:
        """Push the expiry on; False when the lease is no longer this owner's."""
        with self._metadata.session() as s:
            renewed = s.execute(
                update(LeaseRow)
                .where(LeaseRow.agent_id == agent_id, LeaseRow.owner == owner)
                .values(expires_at=self._now(ttl))
            )
            return bool(renewed.rowcount)

    def release(self, agent_id: str, owner: str, *, finished: Run | None = None) -> None:
        """Give the lease back; with ``finished`` (a run's id, stop reason and response), record the turn's end in
        the same transaction."""
        with self._metadata.session() as s:
            if finished is not None:
                self._finish_run(s, finished)
            s.execute(delete(_LEASES).where(_LEASES.c.agent_id == agent_id, _LEASES.c.owner == owner))

    def running_run(self, agent_id: str) -> str | None:
        """The id of the run that holds the agent's live lease, if any (a lease for an edit has no run)."""
        leases = _LEASES
        query = select(leases.c.run_id, leases.c.owner, leases.c.expires_at > self._now()).where(
            leases.c.agent_id == agent_id
        )
        with self._metadata.session() as s:
            row = s.execute(query).first()
        if row is None or not row[0] or not row[2] or _gone(row[1]):  # no run, expired, or its owner is gone
            return None
        return str(row[0])

    def _now(self, ahead: float = 0.0) -> Any:
        return database_now(self._metadata.engine.dialect.name, ahead)

    def request_cancel(self, agent_id: str) -> str | None:
        """Ask the running turn (in whatever process) to stop at its next step; the run id, or None."""
        run_id = self.running_run(agent_id)
        if run_id is None:
            return None
        with self._metadata.session() as s:
            s.execute(
                update(LeaseRow).where(LeaseRow.agent_id == agent_id, LeaseRow.run_id == run_id).values(
                    cancel_requested=True
                )
            )
        return run_id

    def cancel_requested(self, agent_id: str, owner: str) -> bool:
        with self._metadata.session() as s:
            leases = _LEASES
            query = select(leases.c.cancel_requested).where(leases.c.agent_id == agent_id, leases.c.owner == owner)
            return bool(s.scalar(query))

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self, run: Run, *, keep: timedelta | None = None) -> None:
        """Record a started turn; with ``keep``, forget the agent's runs older than that."""
        with self._metadata.session() as s:
            self._record_run(s, run, keep, utc_now())

    @staticmethod
    def _record_run(s: Session, run: Run, keep: timedelta | None, now: datetime) -> None:
        runs = _RUNS
        if keep is not None:
            s.execute(delete(runs).where(runs.c.agent_id == run.agent_id, runs.c.created_at < now - keep))
        s.execute(
            sql_insert(runs).values(
                id=run.id,
                agent_id=run.agent_id,
                digest=run.digest,
                status=RUNNING,
                stop_reason="",
                response="",
                created_at=now,
                finished_at=None,
            )
        )

    def finish_run(self, run_id: str, stop_reason: str, response: str) -> None:
        with self._metadata.session() as s:
            self._finish_run(s, Run(run_id, "", "", FINISHED, stop_reason, response))

    @staticmethod
    def _finish_run(s: Session, run: Run) -> None:
        s.execute(
            update(_RUNS)
            .where(_RUNS.c.id == run.id)
            .values(status=FINISHED, stop_reason=run.stop_reason, response=run.response, finished_at=utc_now())
        )

    def forget_run(self, run_id: str) -> None:
        """Delete a run that never started (its agent could not be opened)."""
        with self._metadata.session() as s:
            s.execute(delete(RunRow).where(RunRow.id == run_id))

    def run(self, run_id: str) -> Run | None:
        with self._metadata.session() as s:
            row = s.get(RunRow, run_id)
            return _run(row) if row is not None else None

    def recent_run(self, agent_id: str, digest: str, since: datetime) -> Run | None:
        """The newest run of the agent started by a request with this digest after ``since``."""
        with self._metadata.session() as s:
            row = s.scalar(
                select(RunRow)
                .where(RunRow.agent_id == agent_id, RunRow.digest == digest, RunRow.created_at >= since)
                .order_by(RunRow.created_at.desc())
                .limit(1)
            )
            return _run(row) if row is not None else None
