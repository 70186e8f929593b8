"""Where each agent's and source's passages stand in the vector store's history, for other processes.

A Milvus server orders writes by timestamp; a Session read sees the writes its own process made (pymilvus
remembers their timestamps) but another process's only once Milvus has applied them, a time tick later.
So each write of an agent's or a source's passages leaves its timestamp here (the newest only), and a search
of them first reads the newest timestamp of what it searches and asks Milvus to wait for it: a passage
another process inserted before the search began is always found, at the cost of one indexed read, and a
wait only when that write is younger than a time tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Column, String, Table, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from memgpt.errors import StorageError
from memgpt.storage.base import PassageStore
from memgpt.storage.sql import METADATA, MetadataStore

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# A Core table, as the other tables of the commands on sources: see memgpt.storage.sql.
MARKS = Table(
    "passage_marks",
    METADATA,
    Column("scope_id", String(64), primary_key=True),  # an agent's or a source's id
    Column("mark", BigInteger, nullable=False),  # the vector store's timestamp of its newest write
)


def forget_agent(s: Session | Connection, agent_id: str) -> None:
    """In the transaction that deletes the agent: the mark of its passages' newest write."""
    s.execute(delete(MARKS).where(MARKS.c.scope_id == agent_id))


class PassageMarks:
    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def record(self, scope_id: str, mark: int) -> None:
        """``scope_id``'s passages were written at ``mark`` (kept only if newer than what is recorded)."""
        if mark <= 0:
            return
        for attempt in range(2):  # a second try when another process inserted the row first
            try:
                with self._metadata.connection() as c:
                    moved = c.execute(
                        update(MARKS).where(MARKS.c.scope_id == scope_id, MARKS.c.mark < mark).values(mark=mark)
                    )
                    if moved.rowcount or c.scalar(select(MARKS.c.mark).where(MARKS.c.scope_id == scope_id)) is not None:
                        return
                    c.execute(insert(MARKS).values(scope_id=scope_id, mark=mark))  # the transaction's last statement
                return
            except StorageError as exc:
                if attempt or not isinstance(exc.__cause__, IntegrityError):
                    raise

    def newest(self, scope_ids: Sequence[str]) -> int:
        """The newest mark among ``scope_ids`` (0 when none was written)."""
        if not scope_ids:
            return 0
        with self._metadata.connection() as c:
            found = c.scalar(select(func.max(MARKS.c.mark)).where(MARKS.c.scope_id.in_(list(scope_ids))))
            return int(found or 0)

    def written(self, scope_id: str, store: PassageStore) -> None:
        """After writing ``scope_id``'s passages to ``store``: leave where they stand, for other processes."""
        if store.tracks_writes:
            self.record(scope_id, store.write_mark())

    def catch_up(self, scope_ids: Sequence[str], store: PassageStore) -> None:
        """Before reading ``scope_ids``' passages from ``store``: see what other processes wrote of them."""
        if store.tracks_writes:
            store.read_after(self.newest(scope_ids))
