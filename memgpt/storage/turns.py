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
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Float,
    Index,
    String,
    Text,
    bindparam,
    column,
    delete,
    exists,
    func,
    literal,
    null,
    select,
    table,
    update,
)
from sqlalchemy import insert as sql_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.errors import AgentBusyError, ConflictError, LeaseLostError, MemGPTError, NotFoundError, StorageError
from memgpt.storage.claims import CLAIMS
from memgpt.storage.expiring import HOST as HOST  # a lease's owner rule, clock and claim: the module's to share
from memgpt.storage.expiring import claim_statement, database_now, owner_gone
from memgpt.storage.expiring import new_owner as new_owner
from memgpt.storage.orm import Base
from memgpt.storage.sql import MetadataStore, UTCDateTime, direct
from memgpt.types import utc_now

if TYPE_CHECKING:
    from memgpt.storage.messages import StoredMessage

logger = logging.getLogger(__name__)


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
    # By the database's clock: when a client's retry recorded this run without finding one of its first try, which
    # takes it (and clears this) instead of running (``Arrival``).
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


RUNNING, FINISHED = "running", "finished"
_LEASES, _RUNS = LeaseRow.__table__, RunRow.__table__


def forget_agent(c: Session | Connection, agent_id: str) -> None:
    """In the transaction that deletes the agent: its runs and lease, and the runs recorded under a key of it
    (``<kind>:<agent id>``, a write of the agent's other than a turn, e.g. ``passages:<agent id>``) with the
    leases of their own ids such a write holds while it runs (left behind when its process died)."""
    runs, leases = _RUNS, _LEASES
    keyed = (runs.c.agent_id == agent_id) | runs.c.agent_id.endswith(f":{agent_id}", autoescape=True)
    ids = list(c.execute(select(runs.c.id).where(keyed)).scalars())
    # The runs before the leases, as a write's release takes them (its run's end, then its lease).
    c.execute(delete(runs).where(keyed))
    # A lease a write holds locked now is left to its holder, whose release deletes it: that write takes the lease
    # row before the agents row, which this transaction holds already (waiting for it was a deadlock).
    free = select(leases.c.agent_id).where(leases.c.agent_id.in_([agent_id, *ids])).with_for_update(skip_locked=True)
    c.execute(delete(leases).where(leases.c.agent_id.in_(free)))


def sweep_deleted_agents(c: Session | Connection, dialect: str) -> None:
    """What agents deleted since left behind, swept where an agent's old runs are forgotten: an agent's delete skips
    a lease row its holder has locked (:func:`forget_agent`) and leaves it to that holder's release, and a lease, run
    or recall indexing claim can be taken for an agent just deleted (by a process that read it before); a holder
    that died first left its row for good, as nothing takes a lease or claim of an agent that is gone. Leases and
    claims go once expired (a live holder's are left to its release); a lease keyed by a write's run (see
    :func:`forget_agent`) is its agent's while that run is recorded. Runs go that no lease row names; a write's run
    keyed by a user (``import:<user id>``, an API import's) is its user's, not an agent's."""
    runs, leases = _RUNS, _LEASES
    agents = select(_agents().c.id)
    now = database_now(dialect)
    # A row locked now (its holder writing past its expiry) is skipped, not waited for, as forget_agent does.
    orphaned = leases.c.agent_id.not_in(agents) & leases.c.agent_id.not_in(select(runs.c.id))
    free = select(leases.c.agent_id).where(orphaned, leases.c.expires_at <= now).with_for_update(skip_locked=True)
    c.execute(delete(leases).where(leases.c.agent_id.in_(free)))
    lapsed = (CLAIMS.c.agent_id.not_in(agents), CLAIMS.c.expires_at <= now)
    c.execute(
        delete(CLAIMS).where(
            CLAIMS.c.agent_id.in_(select(CLAIMS.c.agent_id).where(*lapsed).with_for_update(skip_locked=True))
        )
    )
    keyed_agent = _after_colon(dialect, runs.c.agent_id)
    gone = runs.c.agent_id.not_in(agents) & runs.c.id.not_in(select(leases.c.run_id))
    if keyed_agent is not None:  # a write's run under ``<kind>:<agent id>``: its agent's (an import's: its user's)
        gone &= keyed_agent.not_in(agents) & keyed_agent.not_in(select(table("users", column("id")).c.id))
    else:  # no way to read the agent out of the key here: only the runs of turns
        gone &= ~runs.c.agent_id.contains(":", autoescape=True)
    c.execute(delete(runs).where(runs.c.id.in_(select(runs.c.id).where(gone).with_for_update(skip_locked=True))))


def _after_colon(dialect: str, key: Any) -> Any:
    """What follows the first ':' of ``key`` (the whole key when it has none), as SQL; None where not known how."""
    if dialect == "sqlite":
        return func.substr(key, func.instr(key, ":") + 1)
    if dialect == "postgresql":
        return func.substr(key, func.strpos(key, ":") + 1)
    return None


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


@dataclass(frozen=True)
class Arrival:
    """How a request that a client may retry (letta-client: the same body, ``X-Stainless-Retry-Count`` >= 1) records
    its run, so that a retry that overtakes its first try does not do the work twice.

    A first try may be held up before it records its run (a busy process: longer than the client's timeout), and its
    retry then finds no run to wait for. Such a retry records its run as *waiting* (``waiting_since``, the database's
    clock). A first try records its own run only when no run of the same request (key and digest) waits since after
    the first try arrived; else it takes the earliest such run (clearing its ``waiting_since``, so one first try
    takes each) and answers with it instead of working. A retry records a run only when there is none of the request
    within ``window``; else it answers with that one. Each check is made in the transaction that records the run,
    serialized with the other's: a turn's by the agent's lease row both take, a write with a lease of its own
    (``serialize``) by a PostgreSQL advisory lock on the digest (SQLite runs one write transaction at a time).

    When the first try arrived is judged on one clock, the database's: the statement reads the database's time
    less the seconds since ``arrived`` (this process's monotonic clock), so hosts whose clocks differ agree. The
    request's arrival is when this process began to handle it (``server.retried.Arrivals``, before its body is read):
    the client sends the retry only after it gave the first try up, so the first try arrived before its retry's run
    was recorded, unless its process had not even begun to handle it by then (it then works too: the limit). A
    retry whose first try never reached a server (the connection failed) leaves a run waiting that a deliberate
    send of the same body that arrived before it would take: with no idempotency key from the client, the two
    cannot be told apart."""

    arrived: float  # time.monotonic() when this process began to handle the request
    retry: bool  # a client's retry that found no run of its first try
    window: timedelta  # how far back a retry looks for its first try's run
    serialize: bool = False  # the run holds no lease its first try or retry also takes

    def values(self) -> dict[str, object]:
        """The bound values that say when it arrived: seconds before the statement's time (on another database than
        SQLite or PostgreSQL, this process's clock then)."""
        ago = -(time.monotonic() - self.arrived)
        return {"p_ago": ago, "p_arrived": utc_now() + timedelta(seconds=ago)}


class RunExists(ConflictError):
    """A run was not recorded: one stands for the request already. For a first try, ``run_id`` is the run its retry
    started, now this first try's to answer with; for a retry (``run_id`` None), its first try recorded one
    meanwhile, which it finds as it finds any."""

    def __init__(self, run_id: str | None) -> None:
        super().__init__(f"run {run_id} stands for this request already")
        self.run_id = run_id


class _NotRecorded(Exception):
    """Raised in a run's transaction to undo it (``Arrival``): a run stands for the request already."""


def _forget_run(c: Session | Connection, run_id: str, message: str | None) -> None:
    c.execute(delete(_RUNS).where(_RUNS.c.id == run_id))
    if message is not None:
        messages = table("messages", column("id"))
        c.execute(delete(messages).where(messages.c.id == message))


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
    dated: datetime | None = None  # when the message taken with the lease (``acquire``'s) is dated, as stored

    def follows(self, seen: tuple[int, datetime | None] | None) -> bool:
        """Whether this grant is the next after ``seen`` (the agent's version and creation time as an open agent last
        saw it stored): nothing else changed the agent meanwhile, so that open agent is current."""
        if seen is None or self.version is None:
            return False
        return (seen[0] + 1, seen[1]) == (self.version, self.created_at)


@dataclass(frozen=True)
class Held:
    """A lease ``TurnStore.holding`` holds: its owner (the fencing token of the holder's writes) and its grant."""

    owner: str
    grant: Grant


SERVER_PROCESS = "this server process"  # a Fence's holder unless it says another


@dataclass(frozen=True)
class Fence:
    """The lease a turn holds. Its owner names one grant of the lease (a fresh token each time it is taken, and
    a takeover replaces it), so it is the fencing token: writes that carry it are refused once another owner
    has the agent. ``cancelled`` is set when one of them finds a cancel requested on the lease (any process's
    ``request_cancel``): every step of a turn begins after such a write, so the turn needs no query of its own.
    A cancel requested after a step's write is seen at the next step's: at most one more step runs."""

    agent_id: str
    owner: str
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    holder: str = SERVER_PROCESS  # who holds it, as a refused write names it ("this memgpt run process")


FENCE_AGENT = "fence_agent"  # the bound parameter a ``reading`` of ``check_fence`` names the agent by


@functools.lru_cache(maxsize=8)
def _fence_statement(reading: Any) -> Any:
    """The fence's statement reading ``reading`` too, built once for each (building one costs more than running
    it; Core statements on the table, here and in every statement a turn makes: the ORM's cost more)."""
    leases = _LEASES
    statement = (
        update(leases)
        .where(leases.c.agent_id == bindparam(FENCE_AGENT), leases.c.owner == bindparam("fence_owner"))
        .values(owner=leases.c.owner)  # changes nothing; takes the row lock (SQLite: the write lock)
    )
    return statement.returning(leases.c.cancel_requested, *([reading] if reading is not None else []))


def check_fence(s: Session | Connection, fence: Fence | None, reading: Any = None) -> Any:
    """First statement of a turn's write transaction: lock the agent's lease row if ``fence`` still holds it,
    else raise LeaseLostError. The row stays locked until the transaction ends, so a takeover (an UPDATE of
    that row) waits for this commit and a commit after a takeover sees the new owner: never both.
    An expired lease nobody took over yet still holds: whoever takes it next reads what this commits.
    ``reading`` (a scalar subquery built once, naming the agent by the parameter FENCE_AGENT) is read in the
    same statement and returned. A cancel requested on the lease sets ``fence.cancelled``."""
    if fence is None:
        return None
    row = direct(_fence_statement(reading), s).first(s, {FENCE_AGENT: fence.agent_id, "fence_owner": fence.owner})
    if row is None:
        raise _lost(fence)
    if row[0]:
        fence.cancelled.set()
    return row[1] if reading is not None else None


def give_back(
    c: Session | Connection, agent_id: str, owner: str, finished: Run | None = None, *, dialect: str = ""
) -> None:
    """In the caller's transaction: with ``finished``, record that run's end (its stop reason and response), then
    give the lease back (deleted if ``owner`` holds it). ``TurnStore.release``, and a turn's last step's commit
    (``AgentStore.commit_step``, after its fence: one transaction fewer a turn). ``dialect``: the database's name
    (``c``'s unless given)."""
    dialect = dialect or _dialect_of(c)
    if finished is not None:
        _record_end(c, finished, dialect)
    direct(_prepared(dialect).release, c).first(c, {"p_agent": agent_id, "p_owner": owner})


def _record_end(c: Session | Connection, run: Run, dialect: str) -> None:
    values = {"p_run": run.id, "p_reason": run.stop_reason, "p_response": run.response, "p_now": utc_now()}
    direct(_prepared(dialect).finish_run, c).first(c, values)


def _dialect_of(c: Session | Connection) -> str:
    return str((c.dialect if isinstance(c, Connection) else c.get_bind().dialect).name)


@contextmanager
def fenced_write(metadata: MetadataStore, fence: Fence | None) -> Iterator[None]:
    """Around the transaction of a write ``fence`` guards: its failure while another owner holds the lease is the
    lease lost (LeaseLostError), not a database error. That is what a process that stopped inside the
    transaction meets once it runs again: the database ended its session (``create_metadata_engine``'s idle
    transaction timeout), undoing the transaction whole, so that another process could take the lease over.
    When nobody did, the lease is still ours but lapsed (expired, or our session ended for idling past it): that
    is a LeaseLostError too, saying so, never the bare database error."""
    try:
        yield
    except StorageError as exc:
        if fence is None:
            raise
        holder, expired = _holder(metadata, fence.agent_id)
        if holder not in (fence.owner, _UNKNOWN):
            raise _lost(fence) from exc
        if holder == fence.owner and (expired or _disconnected(exc)):
            raise _lapsed(fence) from exc
        raise


_UNKNOWN = "\0unknown"


def _holder(metadata: MetadataStore, agent_id: str) -> tuple[str | None, bool]:
    """The owner of the agent's lease (None: nobody's), or _UNKNOWN when it cannot be read; and whether the lease
    expired (by the database's clock)."""
    leases = _LEASES
    expired = leases.c.expires_at <= database_now(metadata.engine.dialect.name)
    try:
        with metadata.connection() as c:
            row = c.execute(select(leases.c.owner, expired).where(leases.c.agent_id == agent_id)).first()
    except StorageError:
        return _UNKNOWN, False
    return (row[0], bool(row[1])) if row is not None else (None, False)


def _disconnected(exc: StorageError) -> bool:
    """Whether the write failed because the database ended its session (SQLAlchemy invalidated the connection)."""
    cause = exc.__cause__
    return isinstance(cause, DBAPIError) and bool(cause.connection_invalidated)


# One family of answers (the server's 409s, see server/turns.py; the CLI's one line): who stalled (the process
# that holds the lease: ``Fence.holder``), what the database did, what is stored.
def _lost(fence: Fence) -> LeaseLostError:
    return LeaseLostError(
        f"agent {fence.agent_id}: {fence.holder} stalled past its lease and another process took the agent over; "
        "this turn's steps since then are not stored, the message is (the agent's next turn sees it)"
    )


def _lapsed(fence: Fence) -> LeaseLostError:
    return LeaseLostError(
        f"agent {fence.agent_id}: {fence.holder} stalled past its lease and the database ended its "
        "transaction; this step is not stored, the message is (the agent's next turn sees it)"
    )


def _unclaimed(agent_id: str, holder: str) -> LeaseLostError:
    return LeaseLostError(
        f"agent {agent_id}: {holder} stalled past its lease while it took the agent over and the database "
        "ended its transaction; the message is not stored (send it again)"
    )


def _agents() -> Any:
    """The agents table's id, user, version and created_at (storage/agents.py builds on this module)."""
    return table("agents", column("id"), column("user_id"), column("version"), column("created_at", UTCDateTime))


def _last_seq() -> Any:
    """Where the agent ``p_agent``'s messages end (storage/messages.py builds on this module), as a scalar subquery."""
    messages = table("messages", column("agent_id"), column("seq"))
    return select(func.max(messages.c.seq)).where(messages.c.agent_id == bindparam("p_agent")).scalar_subquery()


def _last_dated() -> Any:
    """When the agent ``p_agent``'s latest message is dated, as a scalar subquery: a message stored after the others
    is dated no earlier (another process's clock may be ahead of this one's)."""
    messages = table("messages", column("agent_id"), column("created_at", UTCDateTime))
    latest = select(func.max(messages.c.created_at)).where(messages.c.agent_id == bindparam("p_agent"))
    return latest.scalar_subquery()


@dataclass(frozen=True)
class _Prepared:
    """The statements of every turn, built once per database dialect with bound parameters (building one with
    its values in costs more CPU than running it)."""

    claim: Any  # None on a database without ON CONFLICT, which takes a lease with the two below instead
    insert_lease: Any  # a free lease (refused while the row exists)
    take_expired: Any  # an expired lease
    grant: Any
    grant_reading_last: Any  # ``grant`` reading where the agent's messages end (last seq, latest date) too
    record_run: Any
    record_first_try: Any  # record_run unless a run of the request's retry waits since after it arrived
    record_retry: Any  # record_run, as waiting, unless a run of the request was recorded within the window
    take_waiting: Any  # the earliest such waiting run, taken by the first try (its id returned)
    finish_run: Any
    release: Any


@functools.lru_cache(maxsize=4)
def _prepared(dialect: str) -> _Prepared:
    leases, runs, agents = _LEASES, _RUNS, _agents()
    claim = insert_lease = take_expired = None
    if dialect in ("sqlite", "postgresql"):
        expires, now = database_now(dialect, bindparam("p_ttl")), database_now(dialect)
    else:  # this process's clock (database_now), read at each call: bound values
        expires, now = bindparam("p_expires", type_=UTCDateTime), bindparam("p_now", type_=UTCDateTime)
    fresh = {"owner": bindparam("p_owner"), "run_id": bindparam("p_run_id"), "expires_at": expires}
    fresh["cancel_requested"] = False
    claim = claim_statement(
        dialect, leases, leases.c.agent_id, values={"agent_id": bindparam("p_agent"), **fresh}, fresh=fresh
    )
    if claim is None:
        insert_lease = sql_insert(leases).values(agent_id=bindparam("p_agent"), **fresh)
        take_expired = (
            update(leases).where(leases.c.agent_id == bindparam("p_agent"), leases.c.expires_at <= now).values(**fresh)
        )
    grant = update(agents).where(agents.c.id == bindparam("p_agent")).values(version=agents.c.version + 1)
    granted = (agents.c.version, agents.c.created_at, agents.c.user_id)
    other = runs.alias("other")  # the request's other runs, read in a statement that writes a run
    same = (other.c.agent_id == bindparam("p_agent"), other.c.digest == bindparam("p_digest"))
    # The first try's arrival by the database's clock (another database's: this process's, a bound value).
    ours = dialect not in ("sqlite", "postgresql")
    ago = bindparam("p_ago", type_=Float)
    arrived = bindparam("p_arrived", type_=UTCDateTime) if ours else database_now(dialect, ago)
    waiting = (*same, other.c.waiting_since > arrived)
    run_values = (
        bindparam("p_run", type_=String),
        bindparam("p_agent", type_=String),
        bindparam("p_digest", type_=String),
        literal(RUNNING, String),
        literal("", String),
        literal("", Text),
        bindparam("p_now", type_=UTCDateTime),
        null(),
    )
    columns = ["id", "agent_id", "digest", "status", "stop_reason", "response", "created_at", "finished_at"]
    recorded = select(*run_values, bindparam("p_now") if ours else database_now(dialect))
    since = other.c.created_at >= bindparam("p_since", type_=UTCDateTime)
    first = select(other.c.id).where(*waiting).order_by(other.c.waiting_since).limit(1)
    return _Prepared(
        claim=claim,
        insert_lease=insert_lease,
        take_expired=take_expired,
        grant=grant.returning(*granted),
        grant_reading_last=grant.returning(*granted, _last_seq(), _last_dated()),
        record_run=sql_insert(runs).values(
            id=bindparam("p_run"),
            agent_id=bindparam("p_agent"),
            digest=bindparam("p_digest"),
            status=RUNNING,
            stop_reason="",
            response="",
            created_at=bindparam("p_now", type_=UTCDateTime),
            finished_at=None,
        ),
        record_first_try=sql_insert(runs)
        .from_select(columns, select(*run_values).where(~exists(select(other.c.id).where(*waiting))))
        .returning(runs.c.id),
        record_retry=sql_insert(runs)
        .from_select([*columns, "waiting_since"], recorded.where(~exists(select(other.c.id).where(*same, since))))
        .returning(runs.c.id),
        take_waiting=update(runs)
        .where(runs.c.id == first.with_for_update(skip_locked=True).scalar_subquery())
        .where(runs.c.waiting_since.is_not(None))
        .values(waiting_since=None)
        .returning(runs.c.id),
        finish_run=update(runs)
        .where(runs.c.id == bindparam("p_run"))
        .values(
            status=FINISHED,
            stop_reason=bindparam("p_reason"),
            response=bindparam("p_response"),
            finished_at=bindparam("p_now", type_=UTCDateTime),
        ),
        release=delete(leases).where(leases.c.agent_id == bindparam("p_agent"), leases.c.owner == bindparam("p_owner")),
    )


@dataclass(frozen=True)
class _Take:
    """One attempt at a lease: its owner, its run id and expiry, when it is made, the run to record with it (and
    how old the agent's runs to forget then may be), and the user the agent must belong to."""

    owner: str
    run_id: str
    ttl: float
    now: datetime  # the run's time; the lease's is the database's
    run: Run | None
    keep: timedelta | None
    user_id: str | None
    message: StoredMessage | None = None
    arrival: Arrival | None = None  # how ``run`` is recorded against the request's other tries

    def fresh(self, dialect: str) -> dict[str, object]:
        expires = database_now(dialect, self.ttl)
        return {"owner": self.owner, "run_id": self.run_id, "expires_at": expires, "cancel_requested": False}


def _fallback_values(agent_id: str, take: _Take) -> dict[str, object]:
    """The bound values of the fallback's statements (``_Prepared.insert_lease``, ``take_expired``); the clock's
    are used only where the database's clock is not (another database than SQLite or PostgreSQL)."""
    now = utc_now()
    values = {"p_agent": agent_id, "p_owner": take.owner, "p_run_id": take.run_id, "p_ttl": take.ttl, "p_now": now}
    values["p_expires"] = now + timedelta(seconds=take.ttl)
    return values


BUSY_EDIT = "the agent is busy with a turn; try again in a moment"


def lease_tries(
    wait: float, busy: str, retry_after: int = 2, pause: Callable[[float], None] = time.sleep
) -> Iterator[None]:
    """One step per try to take an agent's lease that another turn may hold: the first at once, each next one after
    a pause from 0.05 s growing to 0.25 s (``pause`` waits it: a server's wakes early at a release in its process);
    once ``wait`` seconds went by, AgentBusyError(``busy``, ``retry_after``). The caller stops at the lease taken."""
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        yield
        if time.monotonic() >= deadline:
            raise AgentBusyError(busy, retry_after)
        pause(delay)
        delay = min(0.25, delay * 2)


class LeaseRenewer:
    """A thread that renews leases (``renew``: TurnStore.renew) every ``timing()[1]`` seconds for ``timing()[0]``
    more: the leases ``held()`` lists at each round, as (lease id, owner, what it is for). A lease found gone is
    passed to ``gone`` with the same three. The server's turns (one renewer for all of a process's leases) and
    ``TurnStore.holding`` (a CLI turn, one lease) use it. ``wake`` starts a round early (a new timing); ``close``
    ends the thread."""

    def __init__(
        self,
        renew: Callable[[str, str, float], bool],
        held: Callable[[], list[tuple[str, str, Any]]],
        timing: Callable[[], tuple[float, float]],
        gone: Callable[[str, str, Any], None],
    ) -> None:
        self._renew, self._held, self._timing, self._gone = renew, held, timing, gone
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self, *, wait: bool = True) -> None:
        """End the thread: no renewal starts after this; with ``wait``, one under way ends first."""
        self._stopping = True
        self._wake.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._timing()[1])
            self._wake.clear()
            if self._stopping:
                return
            ttl = self._timing()[0]
            for lease_id, owner, what in self._held():
                try:
                    if not self._renew(lease_id, owner, ttl):
                        self._gone(lease_id, owner, what)
                except MemGPTError as exc:  # the database is away for now: the next round tries again
                    logger.warning("cannot renew the lease %s: %s", lease_id, exc)
                except Exception:  # the renewer must live on, or every lease it keeps is lost
                    logger.exception("renewing the lease %s failed", lease_id)


@dataclass(frozen=True)
class _Unreleased:
    owner: str
    finished: Run | None  # the run whose end the release records
    deadline: float  # time.monotonic() past which the lease has lapsed by itself
    then: Callable[[], None] | None  # called once it is given back
    lease: bool = True  # False: the lease was given back; only the run's end (``finished``) is left to record
    forget: tuple[str, str] | None = None  # a run and its message to delete with the release (``TurnStore.release``)


CLOSE_WITHIN = 5.0  # seconds: LaterReleases.close starts no try after this (one try may take a connect timeout)


class LaterReleases:
    """Leases whose release failed (the metadata database out of reach), given back by a thread of their own as soon
    as the database answers again, tried for the lease's length at most (then it lapses by itself): else a live
    process's lease keeps its agent busy that long after the database is back, and the process's own next turn of
    the agent (`memgpt run`'s next message) waits for it, naming this process. The thread runs while there are
    leases to give back, never in the caller's way (the server's turn thread, the chat's prompt); the process's next
    take of the agent's lease tries its release first (``TurnStore.acquire``)."""

    def __init__(
        self,
        release: Callable[[str, str, Run | None, tuple[str, str] | None], None],
        finish: Callable[[Run], None],
    ) -> None:
        self._release = release
        self._finish = finish
        self._pending: dict[str, dict[str, _Unreleased]] = {}  # agent id -> owner -> what to give back
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(
        self,
        agent_id: str,
        owner: str,
        finished: Run | None,
        within: float,
        then: Callable[[], None] | None,
        *,
        lease: bool = True,
        forget: tuple[str, str] | None = None,
    ) -> None:
        with self._lock:
            self._pending.setdefault(agent_id, {})[owner] = _Unreleased(
                owner, finished, time.monotonic() + within, then, lease, forget
            )
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="lease-releaser", daemon=True)
                self._thread.start()

    def pending(self, agent_id: str) -> bool:
        return agent_id in self._pending  # (a read of the dict: no lock for the usual case, nothing pending)

    def retry(self, agent_id: str) -> bool:
        """Try to give back the agent's leases left to give back now; whether none is left."""
        with self._lock:
            mine = list(self._pending.get(agent_id, {}).values())
        return all([self._try(agent_id, unreleased) for unreleased in mine])  # each tried

    def close(self, within: float = CLOSE_WITHIN) -> None:
        """One last try of each (the thread ends), none started after ``within`` seconds: with the database out of
        reach by timeout (PostgreSQL's connect_timeout, 10 s) a try of each of N agents took ~10*N s. A lease left is
        taken from this process once it is gone (by a process of its host), or lapses."""
        with self._lock:
            self._closed = True
            agents = list(self._pending)
        self._wake.set()
        deadline = time.monotonic() + within
        for tried, agent_id in enumerate(agents):
            if tried and time.monotonic() >= deadline:
                logger.warning(
                    "left %d agents' leases to lapse by themselves: the database did not answer within %.0f s",
                    len(agents) - tried,
                    within,
                )
                return
            self.retry(agent_id)

    def _try(self, agent_id: str, unreleased: _Unreleased) -> bool:
        """Give one lease back; whether it is done with (given back, or given up at its deadline)."""
        try:
            if unreleased.lease:
                self._release(agent_id, unreleased.owner, unreleased.finished, unreleased.forget)
            elif unreleased.finished is not None:
                self._finish(unreleased.finished)
        except Exception as exc:  # any failure is a failed try: the thread must live on
            if not isinstance(exc, MemGPTError):
                logger.exception("giving back the lease of agent %s failed (tried again)", agent_id)
            if time.monotonic() < unreleased.deadline:
                return False
            if self._forget(agent_id, unreleased):
                logger.error("gave up giving back the lease of agent %s (it lapses by itself): %s", agent_id, exc)
            return True
        if self._forget(agent_id, unreleased):
            ran = f" and recorded run {unreleased.finished.id}" if unreleased.finished is not None else ""
            if unreleased.lease:
                logger.info("gave back the lease of agent %s%s", agent_id, ran)
            else:
                logger.info("recorded run %s of agent %s", unreleased.finished and unreleased.finished.id, agent_id)
            if unreleased.then is not None:
                try:
                    unreleased.then()
                except Exception:  # the caller's, not the release's: the thread lives on for the other leases
                    logger.exception("after giving back the lease of agent %s, its follow-up failed", agent_id)
        return True

    def _forget(self, agent_id: str, unreleased: _Unreleased) -> bool:
        """Take it off the list; False when another thread did first."""
        with self._lock:
            mine = self._pending.get(agent_id, {})
            if mine.get(unreleased.owner) is not unreleased:
                return False
            del mine[unreleased.owner]
            if not mine:
                del self._pending[agent_id]
            return True

    def _run(self) -> None:
        try:
            pause = 0.05
            while True:
                self._wake.wait(pause)
                with self._lock:
                    agents = list(self._pending)
                    if not agents or self._closed:
                        self._thread = None  # under the lock: an add() from now on starts another
                        return
                for agent_id in agents:
                    self.retry(agent_id)
                pause = min(2 * pause, 1.0)
        finally:  # ended by anything else: the next add() starts another
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None


class TurnStore:
    """Leases and runs; every method is one transaction."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata
        self._later = LaterReleases(
            lambda agent_id, owner, finished, forget: self.release(agent_id, owner, finished=finished, forget=forget),
            lambda run: self.finish_run(run.id, run.stop_reason, run.response),
        )

    def close(self) -> None:
        """Give back what is left to give back (``release_later``) one last time; the process is done with leases."""
        self._later.close()

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
        user_id: str | None = None,
        message: StoredMessage | None = None,
        holder: str = SERVER_PROCESS,
        arrival: Arrival | None = None,
    ) -> Grant | None:
        """Take the agent's lease for ``ttl`` seconds; None while another live owner holds it. With ``run``, the
        turn is recorded in the same transaction (and with ``keep``, the agent's runs older than that are forgotten),
        and so is ``message``, the one the turn answers (after the agent's last; the version does not move for it),
        dated in that transaction (``Grant.dated``: the date it was handed with is not kept).
        With ``user_id``, an agent that is not that user's is a NotFoundError and nothing is taken. With ``arrival``,
        RunExists when another run stands for the request (see ``Arrival``): nothing is taken, nothing recorded."""
        if self._later.pending(agent_id):  # this process's own lease, left to give back: at once if it can
            self._later.retry(agent_id)
        if run is None or arrival is None:
            take = _Take(owner, run_id, float(ttl), utc_now(), run, keep, user_id, message)
            return self._acquire(agent_id, take, holder)
        for _ in range(10):
            take = _Take(owner, run_id, float(ttl), utc_now(), run, keep, user_id, message, arrival)
            try:
                return self._acquire(agent_id, take, holder)
            except _NotRecorded:
                if arrival.retry:
                    raise RunExists(None) from None
            taken = self.take_waiting(run.agent_id, run.digest, arrival)
            if taken is not None:
                raise RunExists(taken)
            # another first try took the waiting run between the two transactions: record this one's own
        raise ConflictError("retries of this request keep starting runs of their own; send it again in a moment")

    def take_waiting(self, key: str, digest: str, arrival: Arrival) -> str | None:
        """For a first try (``key``: the agent, or a write's key): take the earliest run of its request's retry waiting
        since after it arrived (see ``Arrival``); its id, None when there is none."""
        with self._metadata.connection() as c:
            values = {"p_agent": key, "p_digest": digest, **arrival.values()}
            return c.execute(_prepared(self._dialect).take_waiting, values).scalar()

    def _acquire(self, agent_id: str, take: _Take, holder: str) -> Grant | None:
        owner = take.owner
        prepared = _prepared(self._dialect)
        try:
            if prepared.claim is None:  # no ON CONFLICT: an INSERT refused while the row exists, then an UPDATE
                grant = self._insert(prepared, agent_id, take) or self._take_expired(prepared, agent_id, take)
            else:
                grant = self._claim(prepared, agent_id, take)
            return grant or self._take_from_the_dead(agent_id, take)
        except StorageError as exc:
            # A process that stalled inside its claim's transaction (say, stopped while it stored the message) finds
            # its session ended by the database (the idle transaction timeout), the claim undone whole: the lease is
            # not its owner's (a fresh token), so nothing of the claim is stored, the message neither.
            if _disconnected(exc) and _holder(self._metadata, agent_id)[0] not in (owner, _UNKNOWN):
                raise _unclaimed(agent_id, holder) from exc
            raise

    def _claim(self, prepared: _Prepared, agent_id: str, take: _Take) -> Grant | None:
        """One statement takes a free lease (the row is deleted at a turn's end) or an expired one, and says whether
        it did (its RETURNING: an INSERT's rowcount is not reported on every driver, psycopg 3 through SQLAlchemy 2.1
        says -1). While the row is locked by a turn's fenced write, it waits for that commit, then decides on what
        it reads. Neither case leaves a failed statement in the database's log."""
        values = {"p_agent": agent_id, "p_owner": take.owner, "p_run_id": take.run_id, "p_ttl": take.ttl}
        with self._metadata.connection() as c:
            if direct(prepared.claim, c).first(c, values) is None:
                return None
            return self._granted(c, agent_id, take)

    def _granted(self, c: Session | Connection, agent_id: str, take: _Take) -> Grant:
        """In the transaction that took the lease: move the agent's version and read it (and where its messages end),
        record the run and the turn's message. An agent not ``take.user_id``'s raises NotFoundError, which undoes the
        transaction (the lease is not taken)."""
        prepared = _prepared(self._dialect)
        grant = prepared.grant if take.message is None else prepared.grant_reading_last
        moved = direct(grant, c).first(c, {"p_agent": agent_id})
        if take.user_id is not None and (moved is None or moved[2] != take.user_id):
            raise NotFoundError(f"no agent with id {agent_id!r}")
        if take.run is not None:
            self._record_run(c, take.run, take.keep, take.now, take.arrival)
        if take.message is not None and moved is not None:
            from memgpt.storage.messages import write_messages  # that module builds on this one

            # Dated now, the lease ours: after the turn it may have waited for stored its last messages (dated before
            # that turn gave the lease back), and never before the agent's latest message.
            dated = max(utc_now(), moved[4]) if moved[4] is not None else utc_now()
            entry = replace(take.message, message=replace(take.message.message, created_at=dated))
            write_messages(c, agent_id, [entry], last=moved[3] or 0)
            return Grant(moved[0], moved[1], dated)
        return Grant(moved[0], moved[1]) if moved is not None else Grant(None, None)

    def _insert(self, prepared: _Prepared, agent_id: str, take: _Take) -> Grant | None:
        try:
            with self._metadata.session() as s:
                s.execute(prepared.insert_lease, _fallback_values(agent_id, take))
                return self._granted(s, agent_id, take)
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return None
            raise

    def _take_expired(self, prepared: _Prepared, agent_id: str, take: _Take) -> Grant | None:
        with self._metadata.session() as s:
            claimed = s.execute(prepared.take_expired, _fallback_values(agent_id, take))
            return self._granted(s, agent_id, take) if claimed.rowcount == 1 else None

    def _take_from_the_dead(self, agent_id: str, take: _Take) -> Grant | None:
        """Claim a lease before it expires when its owner process on this host is gone: only from the owner read
        here (a dead process renews nothing, so its owner in the row means nothing changed it)."""
        leases = _LEASES
        with self._metadata.session() as s:
            current = s.execute(select(leases.c.owner).where(leases.c.agent_id == agent_id)).first()
            if current is None or not owner_gone(current.owner):
                return None  # released meanwhile (the next try inserts it), expired (the next try claims it), or held
            held = (leases.c.agent_id == agent_id, leases.c.owner == current.owner)
            claimed = s.execute(update(leases).where(*held).values(**take.fresh(self._dialect)))
            return self._granted(s, agent_id, take) if claimed.rowcount == 1 else None

    @contextmanager
    def holding(
        self,
        agent_id: str,
        ttl: float,
        wait: float,
        *,
        busy: str = BUSY_EDIT,
        retry_after: int = 2,
        pause: Callable[[float], None] = time.sleep,
        renew_every: float | None = None,
        holder: str = SERVER_PROCESS,
    ) -> Iterator[Held]:
        """Hold the agent's lease (with no run) for a change that must not interleave with a turn of any process
        (a block edit, a delete, a turn of `memgpt run`), from the server, the CLI or MCP alike: waits up to
        ``wait`` seconds for a running turn (``lease_tries``), then raises AgentBusyError(``busy``) and changes
        nothing. Yields the lease's owner and grant; the lease lasts ``ttl`` seconds, renewed every
        ``renew_every`` seconds (by a LeaseRenewer of its own) while held when that is given. ``holder`` names the
        process in a LeaseLostError."""
        owner = new_owner()
        grant: Grant | None = None
        for _ in lease_tries(wait, busy, retry_after, pause):
            grant = self.acquire(agent_id, owner, "", ttl, holder=holder)
            if grant is not None:
                break
        assert grant is not None
        held = [(agent_id, owner, None)]
        renewer = None
        if renew_every is not None:
            every = renew_every
            # A lease found gone is left so (no more renewals): the holder's next fenced write is refused.
            renewer = LeaseRenewer(self.renew, lambda: list(held), lambda: (ttl, every), lambda *_: held.clear())
        try:
            yield Held(owner, grant)
        finally:
            if renewer is not None:
                renewer.close()
            try:
                self.release(agent_id, owner)
            except MemGPTError as exc:  # what the lease was held for is done (or failed with its own error, said)
                logger.info("cannot give back the lease of agent %s now (%s); trying again meanwhile", agent_id, exc)
                self.release_later(agent_id, owner, within=ttl)

    def settled_version(self, agent_id: str) -> tuple[int, datetime | None] | None:
        """The agent's version and creation time (what a Grant reports) when nobody holds its lease, read in one
        statement; None while someone does (a turn's own writes do not move the version, so what is read during
        a turn does not tell its steps apart) or when the agent is gone. An agent opened after this read is
        current when the next grant is one past it."""
        agents, leases = _agents(), _LEASES
        held = select(leases.c.agent_id).where(leases.c.agent_id == agent_id).exists()
        query = select(agents.c.version, agents.c.created_at, held).where(agents.c.id == agent_id)
        with self._metadata.connection() as c:
            row = c.execute(query).first()
        return (int(row[0]), row[1]) if row is not None and not row[2] else None

    def version(self, agent_id: str) -> tuple[int, datetime | None] | None:
        """The agent's version and creation time as stored now (None: the agent is gone). Read by the lease's holder
        after its own writes (which may move it: attaching a source, removing messages), it is what the holder's
        open agent holds: the next grant one past it says nobody else changed the agent since."""
        agents = _agents()
        with self._metadata.connection() as c:
            row = c.execute(select(agents.c.version, agents.c.created_at).where(agents.c.id == agent_id)).first()
        return (int(row[0]), row[1]) if row is not None else None

    def holder(self, agent_id: str) -> str | None:
        """The owner of the agent's lease now (None: nobody's, or it cannot be read)."""
        holder = _holder(self._metadata, agent_id)[0]
        return None if holder == _UNKNOWN else holder

    def renew(self, agent_id: str, owner: str, ttl: float) -> bool:
        """Push the expiry on; False when the lease is no longer this owner's."""
        with self._metadata.session() as s:
            renewed = s.execute(
                update(LeaseRow)
                .where(LeaseRow.agent_id == agent_id, LeaseRow.owner == owner)
                .values(expires_at=self._now(ttl))
            )
            return bool(renewed.rowcount)

    def release(
        self, agent_id: str, owner: str, *, finished: Run | None = None, forget: tuple[str, str] | None = None
    ) -> None:
        """Give the lease back; with ``finished`` (a run's id, stop reason and response), record the turn's end in
        the same transaction; with ``forget`` (a run's id and its message's), delete that run and message in it, when
        the lease was still ``owner``'s (else another turn may have seen the message since: it stays)."""
        with self._metadata.connection() as c:
            if forget is None:
                give_back(c, agent_id, owner, finished, dialect=self._dialect)
                return
            if finished is not None:
                self._finish_run(c, finished)
            released = c.execute(_prepared(self._dialect).release, {"p_agent": agent_id, "p_owner": owner})
            if released.rowcount == 1:
                _forget_run(c, *forget)

    def release_later(
        self,
        agent_id: str,
        owner: str,
        *,
        within: float,
        finished: Run | None = None,
        then: Callable[[], None] | None = None,
        forget: tuple[str, str] | None = None,
    ) -> None:
        """``release`` that failed (the database out of reach), tried again in the background until it works, for
        ``within`` seconds (the lease's length: then it lapses by itself); ``then`` is called once it worked."""
        self._later.add(agent_id, owner, finished, within, then, forget=forget)

    def finish_run_later(self, finished: Run, then: Callable[[], None] | None = None) -> None:
        """Record the end of a run whose lease was given back without it (its transaction failed): in the
        background, by run id (idempotent, unfenced), until it is recorded or the process closes -- past the
        lease's length, as a run left "running" with no lease reads as one whose process died mid-turn, and a
        client's retry would run the turn again. ``then`` is called once it is recorded."""
        self._later.add(finished.agent_id, f"run {finished.id}", finished, math.inf, then, lease=False)

    def running_run(self, agent_id: str) -> str | None:
        """The id of the run that holds the agent's live lease, if any (a lease for an edit has no run)."""
        leases = _LEASES
        query = select(leases.c.run_id, leases.c.owner, leases.c.expires_at > self._now()).where(
            leases.c.agent_id == agent_id
        )
        with self._metadata.session() as s:
            row = s.execute(query).first()
        if row is None or not row[0] or not row[2] or owner_gone(row[1]):  # no run, expired, or its owner is gone
            return None
        return str(row[0])

    @property
    def _dialect(self) -> str:
        return str(self._metadata.engine.dialect.name)

    def _now(self, ahead: float = 0.0) -> Any:
        return database_now(self._dialect, ahead)

    def request_cancel(self, agent_id: str) -> str | None:
        """Ask the running turn (in whatever process) to stop at its next step; the run id, or None."""
        run_id = self.running_run(agent_id)
        if run_id is None:
            return None
        with self._metadata.session() as s:
            s.execute(
                update(LeaseRow)
                .where(LeaseRow.agent_id == agent_id, LeaseRow.run_id == run_id)
                .values(cancel_requested=True)
            )
        return run_id

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self, run: Run, *, keep: timedelta | None = None) -> None:
        """Record a started turn; with ``keep``, forget the agent's runs older than that."""
        with self._metadata.connection() as c:
            self._record_run(c, run, keep, utc_now())

    def _record_run(
        self, c: Session | Connection, run: Run, keep: timedelta | None, now: datetime, arrival: Arrival | None = None
    ) -> None:
        """Record ``run``; with ``arrival``, only when no other run stands for the request (else _NotRecorded)."""
        runs = _RUNS
        if keep is not None:
            c.execute(delete(runs).where(runs.c.agent_id == run.agent_id, runs.c.created_at < now - keep))
            sweep_deleted_agents(c, self._dialect)
        values: dict[str, object] = {"p_run": run.id, "p_agent": run.agent_id, "p_digest": run.digest, "p_now": now}
        prepared = _prepared(self._dialect)
        if arrival is None:
            direct(prepared.record_run, c).first(c, values)
            return
        if arrival.serialize and self._dialect == "postgresql":  # until this transaction ends (SQLite: one at a time)
            c.execute(select(func.pg_advisory_xact_lock(func.hashtext(run.digest))))
        if arrival.retry:
            statement, values["p_since"] = prepared.record_retry, now - arrival.window
        else:
            statement = prepared.record_first_try
            values.update(arrival.values())
        if direct(statement, c).first(c, values) is None:
            raise _NotRecorded

    def finish_run(self, run_id: str, stop_reason: str, response: str) -> None:
        with self._metadata.connection() as c:
            self._finish_run(c, Run(run_id, "", "", FINISHED, stop_reason, response))

    def _finish_run(self, c: Connection, run: Run) -> None:
        _record_end(c, run, self._dialect)

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

    def retried_run(
        self, agent_id: str, digest: str, window: timedelta, wait: float, *, own_lease: bool = False
    ) -> Run | None:
        """The run a retried request repeats (the agent's newest with this digest in the last ``window``), waiting up
        to ``wait`` seconds while it runs (TimeoutError after): finished, or not when its process died mid-run; None
        when there is none (or it failed and was forgotten). A turn's run holds the agent's lease; with ``own_lease``,
        the run holds a lease of its own id (an API import's)."""
        deadline = time.monotonic() + wait
        while True:
            run = self.recent_run(agent_id, digest, utc_now() - window)
            if run is None or run.status == FINISHED:
                return run
            if self.running_run(run.id if own_lease else agent_id) != run.id:
                # Its lease is gone: it ended since the run was read (its answer is recorded in the transaction that
                # gives the lease back), or its process died.
                return self.run(run.id)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {run.id} is still running")
            time.sleep(0.1)
