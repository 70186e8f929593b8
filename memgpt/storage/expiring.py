"""Rows claimed with an expiry, one rule for all: an agent's lease (``memgpt.storage.turns``) and its recall
indexing claim (``memgpt.storage.claims``).

A claim names its owner as ``<host>:<pid>:<process start>:<token>`` (``new_owner``), a fresh token for every
claim. It is taken in one statement that inserts the row or, when the row exists, replaces it only if it
expired (``claim_statement``), decided by the database's clock (``database_now``); a row whose owner process on
this host no longer runs (``owner_gone``) is taken at once by an UPDATE that matches only that owner.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Float, Table, bindparam, func, literal_column, type_coerce

from memgpt.procfs import stat_fields
from memgpt.storage.sql import UTCDateTime
from memgpt.types import utc_now

# The dialects whose INSERT has ON CONFLICT, by module, imported when a home of that dialect takes a claim rather
# than with this module: PostgreSQL's cost ~0.07 s of every `memgpt run` on a SQLite home. A home's engine has
# imported its own dialect's module already, so a server's threads import nothing here.
_ON_CONFLICT: dict[str, str] = {"sqlite": "sqlalchemy.dialects.sqlite", "postgresql": "sqlalchemy.dialects.postgresql"}


def _place() -> str:
    """This host, and the pid namespace on it: only processes in the same one can see each other's pids."""
    try:
        namespace = "".join(ch for ch in os.readlink("/proc/self/ns/pid") if ch.isdigit())
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}#{namespace}" if namespace else socket.gethostname()


HOST = _place()


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


def owner_gone(owner: str) -> bool:
    """Whether the owner is a process of this host (and pid namespace) that no longer runs."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != HOST or not parts[1].isdigit():
        return False
    started = parts[2] if len(parts) >= 4 else None  # an owner written before the start was part of it
    return not _alive(int(parts[1]), started)


def database_now(dialect: str, ahead: Any = 0.0) -> Any:
    """The database's time now, plus ``ahead`` seconds (a number, or a bound parameter of one), as an SQL
    expression: what a claim's expiry is set and judged by. PostgreSQL's clock_timestamp() is the time the
    statement reads it (now() is when its transaction began, which may be long before, when the statement waited
    for a row lock); SQLite's 'now' is written in the format SQLAlchemy stores datetimes in (microseconds), so the
    strings compare as the times do. Another database gets this process's clock (``ahead`` a number)."""
    if dialect == "postgresql":
        moment = func.clock_timestamp(type_=DateTime(timezone=True))
        if isinstance(ahead, (int, float)):
            ahead = bindparam("lease_seconds", float(ahead), type_=Float) if ahead else None
        if ahead is not None:
            moment = moment + literal_column("interval '1 second'") * ahead
    elif dialect == "sqlite":
        moment = func.strftime("%Y-%m-%d %H:%M:%f000", "now", func.printf("%+.6f seconds", ahead))
    else:
        return utc_now() + timedelta(seconds=ahead)
    return type_coerce(moment, UTCDateTime)


def claim_statement(
    dialect: str, table: Table, key: Column[Any], *, values: dict[str, Any] | None = None, fresh: dict[str, Any]
) -> Any:
    """An INSERT of a claim row (``values``, or those given when it runs) that, when a row of the same ``key``
    exists, replaces it with ``fresh`` only if it expired by the database's clock; it returns the key of each row
    taken. ``fresh``'s values may be bound parameters, or columns of the row offered (None: its ``excluded``
    row's, by name). None on a database without ON CONFLICT: its callers insert, then update an expired row."""
    module = _ON_CONFLICT.get(dialect)
    if module is None:
        return None
    claim = importlib.import_module(module).insert(table)
    if values is not None:
        claim = claim.values(**values)
    offered = {name: claim.excluded[name] if value is None else value for name, value in fresh.items()}
    return claim.on_conflict_do_update(
        index_elements=[key], set_=offered, where=table.c.expires_at <= database_now(dialect)
    ).returning(key)
