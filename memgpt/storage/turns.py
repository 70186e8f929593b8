"""Turns of agents in the metadata database: who runs one now (a lease per agent, seen by every process on
the database) and what each turn was (a run), so a client's retry of a send finds the turn it started.

A lease names its owner as ``<host>:<pid>:<token>``. It is taken with one atomic statement (an INSERT, or
an UPDATE that only matches the stale owner it read), renewed while the turn runs and deleted at its end.
A lease is stale when it expired, or when its owner is a process of this host that no longer runs (kill -9):
then the next turn takes it over at once instead of waiting for the expiry.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Index, String, Text, column, delete, select, table, update
from sqlalchemy import insert as sql_insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.errors import LeaseLostError, StorageError
from memgpt.storage.sql import Base, MetadataStore, UTCDateTime
from memgpt.types import utc_now

HOST = socket.gethostname()


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


_inserts: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # with on_conflict_do_nothing

# Owners whose turns run in this process right now: a lease of this pid that is not here was left behind.
_held: set[str] = set()
_held_guard = threading.Lock()


def new_owner() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # a killed process its parent has not reaped yet still answers kill(0)
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_stale(owner: str, expires_at: datetime, now: datetime) -> bool:
    """Whether a lease may be taken over: expired, or its owner process on this host is gone."""
    if expires_at <= now:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False
    if int(pid_text) == os.getpid():
        with _held_guard:
            return owner not in _held
    return not _process_alive(int(pid_text))


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
        now = utc_now()
        expires = now + timedelta(seconds=ttl)
        fresh = {"owner": owner, "run_id": run_id, "expires_at": expires, "cancel_requested": False}
        # Usually nobody holds it (a lease is deleted at its end): one INSERT that does nothing on a
        # conflict takes it, without a failed statement in the database's log while another turn runs.
        insert = _inserts.get(self._metadata.engine.dialect.name)
        grant: Grant | None = None
        if insert is not None:
            with self._metadata.session() as s:
                added = s.execute(insert(_LEASES).values(agent_id=agent_id, **fresh).on_conflict_do_nothing())
                if added.rowcount == 1:
                    grant = self._granted(s, agent_id, run, keep, now)
        else:
            grant = self._insert(agent_id, fresh, run, keep, now)
        grant = grant or self._take_over(agent_id, fresh, now, run, keep)
        if grant is not None:
            with _held_guard:
                _held.add(owner)
        return grant

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
                s.add(LeaseRow(agent_id=agent_id, **fresh))
                s.flush()
                return self._granted(s, agent_id, run, keep, now)
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return None
            raise

    def _take_over(
        self, agent_id: str, fresh: dict[str, object], now: datetime, run: Run | None, keep: timedelta | None
    ) -> Grant | None:
        """Claim a lease row that exists: only when it is stale, and only the stale owner read here."""
        with self._metadata.session() as s:
            current = s.get(LeaseRow, agent_id)
            if current is None or not is_stale(current.owner, current.expires_at, now):
                return None  # released meanwhile (the next try inserts it), or held
            claimed = s.execute(
                update(LeaseRow)
                .where(LeaseRow.agent_id == agent_id, LeaseRow.owner == current.owner)
                .values(**fresh)
                .execution_options(synchronize_session=False)
            )
            return self._granted(s, agent_id, run, keep, now) if claimed.rowcount == 1 else None

    def renew(self, agent_id: str, owner: str, ttl: float) -> bool:
        """Push the expiry on; False when the lease is no longer this owner's."""
        with self._metadata.session() as s:
            renewed = s.execute(
                update(LeaseRow)
                .where(LeaseRow.agent_id == agent_id, LeaseRow.owner == owner)
                .values(expires_at=utc_now() + timedelta(seconds=ttl))
            )
            return bool(renewed.rowcount)

    def release(self, agent_id: str, owner: str, *, finished: Run | None = None) -> None:
        """Give the lease back; with ``finished`` (a run's id, stop reason and response), record the turn's end in
        the same transaction."""
        with self._metadata.session() as s:
            if finished is not None:
                self._finish_run(s, finished)
            s.execute(delete(_LEASES).where(_LEASES.c.agent_id == agent_id, _LEASES.c.owner == owner))
        with _held_guard:
            _held.discard(owner)

    def running_run(self, agent_id: str) -> str | None:
        """The id of the run that holds the agent's live lease, if any (a lease for an edit has no run)."""
        with self._metadata.session() as s:
            row = s.get(LeaseRow, agent_id)
            live = row is not None and row.run_id and not is_stale(row.owner, row.expires_at, utc_now())
            return row.run_id if live and row is not None else None

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
