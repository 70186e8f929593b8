"""The psycopg cursor of memgpt's PostgreSQL sessions: ``executemany`` runs one statement at a time.

psycopg 3 runs ``executemany`` in pipeline mode (libpq >= 14) and ends the pipeline with a Sync followed by a Flush
request. PostgreSQL arms ``idle_in_transaction_session_timeout`` only as it answers a Sync (ReadyForQuery) and
disarms it on reading any message: the trailing Flush leaves the session in a transaction with no timeout until its
next Sync, that is, the client's next statement. A process stopped inside or right after such an ``executemany``
(a turn's messages, written while the transaction holds the agent's lease row) then keeps that row locked for as long
as it stays stopped, and another process's takeover of the expired lease waits as long (seen: > 24 s on a 3 s
lease). ``create_metadata_engine`` relies on that timeout (``_end_idle_transactions``), so its sessions use this
cursor: each parameter set is one statement with its own Sync, after which the database ends the session if it idles
in its transaction for longer than the timeout. It costs a round trip per row instead of one per call: the callers
on a turn's path write a few rows at a time.

Imported only for a PostgreSQL metadata URL (SQLAlchemy's psycopg dialect imports psycopg then anyway).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.abc import Params, Query


class StatementByStatementCursor(psycopg.Cursor[Any]):
    """``executemany`` as one ``execute`` per parameter set (see the module's docstring); ``rowcount`` after it is
    the sum of theirs, as psycopg's own ``executemany`` reports (SQLAlchemy checks it against the rows an ORM flush
    meant to change)."""

    _many_rowcount: int | None = None

    def execute(self, query: Any, params: Params | None = None, **options: Any) -> StatementByStatementCursor:
        self._many_rowcount = None
        super().execute(query, params, **options)
        return self

    def executemany(self, query: Query, params_seq: Iterable[Params], *, returning: bool = False) -> None:
        if returning:  # SQLAlchemy never asks (its "insertmanyvalues" runs a RETURNING batch as one statement)
            raise psycopg.NotSupportedError("executemany(returning=True) is not supported on memgpt's sessions")
        total = 0
        for params in params_seq:
            super().execute(query, params)
            total += max(super().rowcount, 0)
        self._many_rowcount = total

    @property
    def rowcount(self) -> int:
        return super().rowcount if self._many_rowcount is None else self._many_rowcount
