"""Every message of every agent (recall memory's record), in the metadata database.

SQL is the source of truth for messages and serves the date search and the word search that stands in
while the Milvus recall index is unreachable. Which messages those searches see, and by what text, is
decided in ``memgpt.memory.messages`` and handed in with each message (``StoredMessage``).
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.storage.orm import Base
from memgpt.storage.sql import MetadataStore, UTCDateTime, bump_agent, bump_agents, direct
from memgpt.storage.turns import FENCE_AGENT, Fence, check_fence, fenced_write
from memgpt.types import Message, Role, ToolCall

# How far (in sequence numbers) ``neighbours`` looks around a message in its first, shared read.
_REACH = 4


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_agent_seq", "agent_id", "seq"),
        Index("ix_messages_agent_created", "agent_id", "created_at"),
        Index("ix_messages_agent_backlog", "agent_id", "searchable", "indexed", "seq"),  # recall's unindexed
        Index("ix_messages_agent_window", "agent_id", "in_context", "seq"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    tool_calls: Mapped[str] = mapped_column(Text)  # JSON list of {id, name, arguments}
    tool_call_id: Mapped[str] = mapped_column(Text)  # from the LLM: any length
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    in_context: Mapped[bool] = mapped_column(Boolean)
    search_text: Mapped[str] = mapped_column(Text)  # the text recall search matches, lower-cased
    indexed: Mapped[bool] = mapped_column(Boolean, default=False)  # also in Milvus for recall search
    searchable: Mapped[bool] = mapped_column(Boolean, default=False)  # recall searches may return it


@dataclass(frozen=True)
class StoredMessage:
    """A message with what memory decided about searching it; storage keeps both as handed."""

    message: Message
    search_text: str = ""
    searchable: bool = False


def _calls_json(message: Message) -> str:
    return json.dumps([{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls])


def _message(row: MessageRow | Row[Any]) -> Message:
    calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in json.loads(row.tool_calls or "[]"))
    return Message(
        id=row.id,
        agent_id=row.agent_id,
        role=Role(row.role),
        content=row.content,
        created_at=row.created_at,
        tool_calls=calls,
        tool_call_id=row.tool_call_id,
        name=row.name,
    )


# What ``_unindexed`` reads of each message: a ``Message``'s fields (``_read``), its sequence number and search text.
_READ = ("id", "agent_id", "role", "content", "tool_calls", "tool_call_id", "name", "created_at", "seq", "search_text")
_SEQ, _TEXT = _READ.index("seq"), _READ.index("search_text")


def _read(row: tuple[Any, ...]) -> Message:
    """The message of a row of ``_READ``'s columns."""
    calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in json.loads(row[4] or "[]"))
    return Message(
        id=row[0],
        agent_id=row[1],
        role=Role(row[2]),
        content=row[3],
        created_at=row[7],
        tool_calls=calls,
        tool_call_id=row[5],
        name=row[6],
    )


@functools.lru_cache(maxsize=1)
def _unindexed_statements() -> tuple[Any, Any, Any]:
    """The statements of ``_unindexed``, built once with bound parameters and run as ``Direct`` ones (the recall
    indexer runs them for every agent with new messages; SQLAlchemy's execution of one cost more CPU than the
    database's): the agent's unindexed searchable messages; the worded ones from the last before ``p_seq`` to
    ``p_last``; the last worded one before ``p_seq``."""
    table, near = MessageRow.__table__, MessageRow.__table__.alias("near")
    agent, seq = bindparam("p_agent"), bindparam("p_seq")
    searchable = select(*[table.c[name] for name in _READ]).where(
        table.c.agent_id == agent, table.c.searchable.is_(True)
    )
    worded = searchable.where(table.c.search_text != "")
    rows = searchable.where(table.c.indexed.is_(False)).order_by(table.c.seq).limit(bindparam("p_limit"))
    earlier = (
        select(func.max(near.c.seq))
        .where(near.c.agent_id == agent, near.c.searchable.is_(True), near.c.search_text != "", near.c.seq < seq)
        .scalar_subquery()
    )
    span = worded.where(table.c.seq.between(func.coalesce(earlier, seq), bindparam("p_last"))).order_by(table.c.seq)
    before = worded.where(table.c.seq < seq).order_by(table.c.seq.desc()).limit(1)
    return rows, span, before


def _unindexed(
    c: Connection, agent_id: str, limit: int, texts: dict[str, str] | None = None
) -> list[tuple[Message, Message | None]]:
    """See ``MessageStore.unindexed_of``; in the caller's transaction."""
    unindexed, span, before = _unindexed_statements()
    rows = direct(unindexed, c).rows(c, {"p_agent": agent_id, "p_limit": limit})
    if not rows:
        return []
    if texts is not None:
        texts.update((row[0], row[_TEXT]) for row in rows)
    first, last = rows[0][_SEQ], rows[-1][_SEQ]
    if last - first <= _REACH * len(rows):  # mostly the batch itself (new messages): one range read
        near = direct(span, c).rows(c, {"p_agent": agent_id, "p_seq": first, "p_last": last})
        order = [row[_SEQ] for row in near]
        at = [bisect.bisect_left(order, row[_SEQ]) for row in rows]
        previous = [near[i - 1] if i else None for i in at]
    else:  # scattered (edited messages, or the rest after a crash): each one's own read
        reading = direct(before, c)
        previous = [next(iter(reading.rows(c, {"p_agent": agent_id, "p_seq": row[_SEQ]})), None) for row in rows]
    # A message read twice (the batch's own, before another of it) is one Message.
    made: dict[str, Message] = {}

    def message(row: tuple[Any, ...]) -> Message:
        found = made.get(row[0])
        if found is None:
            found = made[row[0]] = _read(row)
        return found

    return [(message(row), message(p) if p else None) for row, p in zip(rows, previous, strict=True)]


_MARK_AS_READ = (
    update(MessageRow.__table__)
    .where(
        MessageRow.__table__.c.id == bindparam("p_id"),
        MessageRow.__table__.c.agent_id == bindparam("p_agent"),
        MessageRow.__table__.c.search_text == bindparam("p_text"),
    )
    .values(indexed=True)
)


def escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def last_seq(agent_id: Any) -> Any:
    """Where the agent's messages end, as a scalar subquery (read with the statement that opens a write)."""
    table = MessageRow.__table__
    return select(func.max(table.c.seq)).where(table.c.agent_id == agent_id).scalar_subquery()


FENCED_LAST_SEQ = last_seq(bindparam(FENCE_AGENT))  # ``last_seq`` for ``check_fence``: built once, read by every turn


_COLUMNS = (
    "id", "agent_id", "seq", "role", "content", "tool_calls", "tool_call_id", "name", "created_at", "in_context",
    "search_text", "indexed", "searchable",
)  # fmt: skip
# Bound by name, each through its column's type: run as a ``Direct`` (a turn writes messages twice).
_INSERT = insert(MessageRow.__table__).values(
    {name: bindparam(name, type_=MessageRow.__table__.c[name].type) for name in _COLUMNS}
)


def write_messages(
    s: Session | Connection, agent_id: str, messages: Sequence[StoredMessage], *, last: int | None = None
) -> None:
    """Append ``messages`` after the agent's last one (``last``, its sequence number, when the caller read it
    already), in the caller's transaction (one INSERT for all)."""
    if not messages:
        return
    # Core statements on the table, not the ORM's: a turn writes messages twice, and the ORM's bulk insert
    # and select paths took over half of a turn's CPU time.
    table = MessageRow.__table__
    if last is None:
        last = s.scalar(select(func.max(table.c.seq)).where(table.c.agent_id == agent_id)) or 0
    direct(_INSERT, s).many(
        s,
        [
            {
                "id": entry.message.id,
                "agent_id": agent_id,
                "seq": last + offset,
                "role": entry.message.role.value,
                "content": entry.message.content,
                "tool_calls": _calls_json(entry.message),
                "tool_call_id": entry.message.tool_call_id,
                "name": entry.message.name,
                "created_at": entry.message.created_at,
                "in_context": True,
                "search_text": entry.search_text.lower(),  # LIKE ignores case only for ASCII on SQLite
                "indexed": False,
                "searchable": entry.searchable,
            }
            for offset, entry in enumerate(messages, start=1)
        ],
    )


class MessageStore:
    """Messages by agent. Every method is one transaction; ids passed in are scoped to the agent."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def append(self, agent_id: str, messages: Sequence[StoredMessage], *, fence: Fence | None = None) -> None:
        """Add messages; with a ``fence``, only while that lease still holds the agent (else LeaseLostError);
        without one, the agent's version moves."""
        # Core statements only: no ORM session to set up (a turn's first write)
        with fenced_write(self._metadata, fence), self._metadata.connection() as c:
            # One statement holds the fence (or moves the version: the agents row first, as every writer) and
            # reads where the messages end.
            if fence is None:
                last = bump_agent(c, agent_id, reading=last_seq(agent_id))
            else:
                last = check_fence(c, fence, reading=FENCED_LAST_SEQ)
            write_messages(c, agent_id, messages, last=last or 0)

    def in_context(self, agent_id: str) -> list[Message]:
        """The messages in the agent's context window, oldest first."""
        with self._metadata.session() as s:
            rows = s.scalars(
                select(MessageRow)
                .where(MessageRow.agent_id == agent_id, MessageRow.in_context.is_(True))
                .order_by(MessageRow.seq)
            )
            return [_message(r) for r in rows]

    def last(self, agent_id: str, count: int) -> list[Message]:
        """The newest ``count`` messages, oldest first."""
        with self._metadata.session() as s:
            rows = s.scalars(
                select(MessageRow).where(MessageRow.agent_id == agent_id).order_by(MessageRow.seq.desc()).limit(count)
            ).all()
            return [_message(r) for r in reversed(rows)]

    def remove(self, agent_id: str, message_ids: Sequence[str]) -> None:
        """Delete messages outright: only for the user's explicit /pop, never for eviction."""
        with self._metadata.session() as s:
            bump_agents(s, agent_id)
            s.execute(delete(MessageRow).where(MessageRow.agent_id == agent_id, MessageRow.id.in_(list(message_ids))))

    def replace(self, entry: StoredMessage, *, fence: Fence | None = None) -> None:
        """Store a message's new content and tool calls (the chat's /rethink and /rewrite, a turn's note over the
        heartbeat it never answered); with a ``fence``, only while that lease still holds the agent (else
        LeaseLostError) and without moving the agent's version, as every write of a turn under its lease."""
        message = entry.message
        with fenced_write(self._metadata, fence), self._metadata.session() as s:
            if fence is None:
                bump_agents(s, message.agent_id)
            else:
                check_fence(s, fence)
            row = s.get(MessageRow, message.id)
            if row is not None and row.agent_id == message.agent_id:
                row.content = message.content
                row.tool_calls = _calls_json(message)
                row.search_text = entry.search_text.lower()
                row.searchable = entry.searchable
                row.indexed = False  # changed text: index it again

    def page(
        self, agent_id: str, *, limit: int, ascending: bool, after: str | None = None, before: str | None = None
    ) -> list[Message]:
        """Up to ``limit`` messages in history order (oldest first when ``ascending``), strictly after and/or
        before the messages with those ids in that order. An id that is not the agent's gives ``[]``.
        With only ``before``, the page holds the messages closest to it."""
        with self._metadata.session() as s:
            where = [MessageRow.agent_id == agent_id]
            for cursor, later in ((after, ascending), (before, not ascending)):
                if cursor is None:
                    continue
                anchor = s.get(MessageRow, cursor)
                if anchor is None or anchor.agent_id != agent_id:
                    return []
                where.append(MessageRow.seq > anchor.seq if later else MessageRow.seq < anchor.seq)
            backwards = before is not None and after is None
            order = MessageRow.seq if ascending != backwards else MessageRow.seq.desc()
            rows = list(s.scalars(select(MessageRow).where(*where).order_by(order).limit(limit)))
            return [_message(r) for r in (rows[::-1] if backwards else rows)]

    def count(self, agent_id: str) -> int:
        with self._metadata.session() as s:
            return int(s.scalar(select(func.count()).where(MessageRow.agent_id == agent_id)) or 0)

    def search(
        self,
        agent_id: str,
        query: str,
        *,
        offset: int,
        limit: int,
        start: datetime | None = None,
        end: datetime | None = None,
        role: Role | None = None,
    ) -> tuple[list[Message], int]:
        """Searchable messages whose search text contains every word of ``query`` (any case), oldest first;
        optionally only those between ``start`` and ``end`` (inclusive) and of one ``role``."""
        terms = [t for t in query.lower().split() if t]
        conditions = [MessageRow.search_text.like(f"%{escape_like(t)}%", escape="\\") for t in terms]
        if start is not None:
            conditions.append(MessageRow.created_at >= start)
        if end is not None:
            conditions.append(MessageRow.created_at <= end)
        if role is not None:
            conditions.append(MessageRow.role == role.value)
        return self._page(agent_id, conditions, offset, limit)

    def between(
        self, agent_id: str, start: datetime, end: datetime, *, offset: int, limit: int
    ) -> tuple[list[Message], int]:
        return self._page(agent_id, [MessageRow.created_at >= start, MessageRow.created_at <= end], offset, limit)

    def unindexed(self, agent_id: str, limit: int) -> list[Message]:
        """Searchable messages not yet in the Milvus recall index, oldest first."""
        return [message for message, _ in self.unindexed_with_previous(agent_id, limit)]

    def unindexed_with_previous(self, agent_id: str, limit: int) -> list[tuple[Message, Message | None]]:
        """Up to ``limit`` searchable messages not yet in the Milvus recall index, oldest first, each with the
        searchable message with words right before it (what recall indexes it with; an agent message that only
        called a tool may sit between a question and its answer), in one transaction."""
        return self.unindexed_of([agent_id], limit).get(agent_id, [])

    def unindexed_of(
        self, agent_ids: Sequence[str], limit: int, texts: dict[str, str] | None = None
    ) -> dict[str, list[tuple[Message, Message | None]]]:
        """``unindexed_with_previous`` of several agents, each in a transaction of its own (the recall indexer's
        pass over every agent with new messages): up to ``limit`` messages in all, taken in the agents' order;
        agents the limit did not reach are left out. ``texts`` gets each unindexed message's search text as
        read (by id), for ``mark_indexed_as_read``."""
        found: dict[str, list[tuple[Message, Message | None]]] = {}
        for agent_id in agent_ids:
            if limit <= 0:
                break
            with self._metadata.connection() as c:  # one each: others' statements wait less for SQLite's lock
                found[agent_id] = _unindexed(c, agent_id, limit, texts)
            limit -= len(found[agent_id])
        return found

    def mark_indexed(self, agent_id: str, message_ids: Sequence[str], indexed: bool = True) -> None:
        self.mark_indexed_of({agent_id: message_ids}, indexed)

    def mark_indexed_of(self, marks: Mapping[str, Sequence[str]], indexed: bool = True) -> None:
        """``mark_indexed`` for several agents (agent id -> its message ids) in one statement."""
        ids = [message_id for message_ids in marks.values() for message_id in message_ids]
        if not ids:
            return
        table = MessageRow.__table__  # Core: the ORM's bulk update path costs several times more
        with self._metadata.session() as s:
            s.execute(
                update(table).where(table.c.agent_id.in_(list(marks)), table.c.id.in_(ids)).values(indexed=indexed)
            )

    def mark_indexed_as_read(self, marks: Mapping[str, Mapping[str, str]]) -> None:
        """Mark messages indexed (agent id -> message id -> its search text as ``unindexed_of`` read it) in one
        transaction, each only if its text is still that one: a message another process edited meanwhile (its
        text changed, and it was marked unindexed) stays unindexed, to be indexed with its new text. One statement
        of a fixed shape for every message (the driver's executemany): compiled once, where a statement naming
        them all took SQLAlchemy longer to build and compile than the database to run."""
        rows = [
            {"p_agent": agent_id, "p_id": message_id, "p_text": text}
            for agent_id, texts in marks.items()
            for message_id, text in texts.items()
        ]
        if rows:
            with self._metadata.connection() as c:
                direct(_MARK_AS_READ, c).many(c, rows)

    def backlog(self, agent_id: str) -> int:
        """How many searchable messages are not in the Milvus recall index yet."""
        with self._metadata.session() as s:
            query = select(func.count()).where(
                MessageRow.agent_id == agent_id, MessageRow.searchable.is_(True), MessageRow.indexed.is_(False)
            )
            return int(s.scalar(query) or 0)

    def by_id(self, agent_id: str, message_ids: Sequence[str]) -> dict[str, Message]:
        with self._metadata.session() as s:
            rows = s.scalars(
                select(MessageRow).where(MessageRow.agent_id == agent_id, MessageRow.id.in_(list(message_ids)))
            )
            return {r.id: _message(r) for r in rows}

    def around(
        self, agent_id: str, message_ids: Sequence[str], *, before: int = 1, after: int = 1, worded: bool = False
    ) -> dict[str, tuple[list[Message], Message, list[Message]]]:
        """Each message with up to ``before`` searchable messages right before it and ``after`` right after
        it (``worded``: only those with words, however many without sit between), oldest first. Ids of other
        agents' or unknown messages are left out."""
        table = MessageRow.__table__
        searchable = select(table).where(table.c.agent_id == agent_id, table.c.searchable.is_(True))
        if worded:
            searchable = searchable.where(table.c.search_text != "")
        with self._metadata.session() as s:
            mine = select(table).where(table.c.agent_id == agent_id, table.c.id.in_(list(message_ids)))
            rows = {row.id: row for row in s.execute(mine)}
            if not rows:
                return {}
            # One read for all: the searchable rows near each message (tool results and heartbeats may sit
            # between them); a message whose neighbours lie farther away is read on its own.
            reach = _REACH * max(before, after)
            near = s.execute(
                searchable.where(
                    or_(*(table.c.seq.between(row.seq - reach, row.seq + reach) for row in rows.values()))
                ).order_by(table.c.seq)
            ).all()
            order = [row.seq for row in near]
            found: dict[str, tuple[list[Message], Message, list[Message]]] = {}
            for message_id, row in rows.items():
                start, end = bisect.bisect_left(order, row.seq), bisect.bisect_right(order, row.seq)
                earlier = near[max(0, start - before) : start] if before else []
                later = near[end : end + after]
                if len(earlier) < before:
                    query = searchable.where(table.c.seq < row.seq).order_by(table.c.seq.desc()).limit(before)
                    earlier = list(reversed(s.execute(query).all()))
                if len(later) < after:
                    query = searchable.where(table.c.seq > row.seq).order_by(table.c.seq).limit(after)
                    later = s.execute(query).all()
                found[message_id] = ([_message(r) for r in earlier], _message(row), [_message(r) for r in later])
        return found

    def worded_neighbours(self, agent_id: str, message_ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """Each message's nearest searchable messages with words before and after it, by id (None at either end
        of the history): the neighbours a recall result shows, read without the messages themselves. Ids of
        other agents' or unknown messages are left out."""
        if not message_ids:
            return {}
        table = MessageRow.__table__
        near = table.alias("near")
        worded = (near.c.agent_id == agent_id, near.c.searchable.is_(True), near.c.search_text != "")
        before = select(near.c.id).where(*worded, near.c.seq < table.c.seq).order_by(near.c.seq.desc()).limit(1)
        after = select(near.c.id).where(*worded, near.c.seq > table.c.seq).order_by(near.c.seq).limit(1)
        query = select(table.c.id, before.scalar_subquery(), after.scalar_subquery()).where(
            table.c.agent_id == agent_id, table.c.id.in_(list(message_ids))
        )
        with self._metadata.session() as s:
            return {row[0]: (row[1], row[2]) for row in s.execute(query)}

    def _page(self, agent_id: str, conditions: list, offset: int, limit: int) -> tuple[list[Message], int]:
        where = [MessageRow.agent_id == agent_id, MessageRow.searchable.is_(True), *conditions]
        with self._metadata.session() as s:
            total = int(s.scalar(select(func.count()).select_from(MessageRow).where(*where)) or 0)
            rows = s.scalars(select(MessageRow).where(*where).order_by(MessageRow.seq).offset(offset).limit(limit))
            return [_message(r) for r in rows], total
