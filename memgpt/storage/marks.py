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

from sqlalchemy import BigInteger, String, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.storage.base import PassageStore
from memgpt.storage.sql import Base, MetadataStore


class PassageMarkRow(Base):
    __tablename__ = "passage_marks"

    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # an agent's or a source's id
    mark: Mapped[int] = mapped_column(BigInteger)  # the vector store's timestamp of its newest write


def forget_agent(s: Session, agent_id: str) -> None:
    """In the transaction that deletes the agent: the mark of its passages' newest write."""
    s.execute(delete(PassageMarkRow).where(PassageMarkRow.scope_id == agent_id))


class PassageMarks:
    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def record(self, scope_id: str, mark: int) -> None:
        """``scope_id``'s passages were written at ``mark`` (kept only if newer than what is recorded)."""
        if mark <= 0:
            return
        for _ in range(2):  # a second try when another process inserted the row first
            with self._metadata.session() as s:
                moved = s.execute(
                    update(PassageMarkRow)
                    .where(PassageMarkRow.scope_id == scope_id, PassageMarkRow.mark < mark)
                    .values(mark=mark)
                    .execution_options(synchronize_session=False)
                )
                if moved.rowcount or s.get(PassageMarkRow, scope_id) is not None:
                    return
                s.add(PassageMarkRow(scope_id=scope_id, mark=mark))
                try:
                    s.flush()
                    return
                except IntegrityError:
                    s.rollback()

    def newest(self, scope_ids: Sequence[str]) -> int:
        """The newest mark among ``scope_ids`` (0 when none was written)."""
        if not scope_ids:
            return 0
        with self._metadata.session() as s:
            found = s.scalar(select(func.max(PassageMarkRow.mark)).where(PassageMarkRow.scope_id.in_(list(scope_ids))))
            return int(found or 0)

    def written(self, scope_id: str, store: PassageStore) -> None:
        """After writing ``scope_id``'s passages to ``store``: leave where they stand, for other processes."""
        if store.tracks_writes:
            self.record(scope_id, store.write_mark())

    def catch_up(self, scope_ids: Sequence[str], store: PassageStore) -> None:
        """Before reading ``scope_ids``' passages from ``store``: see what other processes wrote of them."""
        if store.tracks_writes:
            store.read_after(self.newest(scope_ids))
