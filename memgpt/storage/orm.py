"""The ORM's base for the agent family's models (agents, messages, turns, users, templates...), on the metadata
database's one ``METADATA`` (see memgpt.storage.sql): importing SQLAlchemy's ORM costs ~0.08 CPU s, which the
commands on sources (Core tables only) never pay."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from sqlalchemy import String, delete
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from memgpt.storage.sql import CURSOR_KEPT, METADATA, UTCDateTime
from memgpt.types import utc_now


class Base(DeclarativeBase):
    metadata = METADATA


class Tombstone:
    """The columns of a deleted agent's row kept for ``CURSOR_KEPT`` (``bury``, ``tombstone``; a deleted source's
    are memgpt.storage.sql's DELETED_SOURCES)."""

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


_Buried = TypeVar("_Buried", bound=Tombstone)


def bury(s: Session, tombstone: Tombstone) -> None:
    """Write a tombstone (its ``deleted_at`` is now); those of its table older than ``CURSOR_KEPT`` are forgotten."""
    table = type(tombstone)
    s.execute(delete(table).where(table.deleted_at < tombstone.deleted_at - CURSOR_KEPT))
    s.merge(tombstone)


def tombstone(s: Session, table: type[_Buried], row_id: str, user_id: str) -> _Buried | None:
    """The user's tombstone of this id, if written within ``CURSOR_KEPT`` (an older one not yet forgotten by
    ``bury`` is no cursor any more)."""
    row = s.get(table, row_id)
    if row is None or row.user_id != user_id or row.deleted_at < utc_now() - CURSOR_KEPT:
        return None
    return row
