"""Agents, their core-memory blocks, every message (recall memory), attached sources, and
user-added personas and humans — rows in the same SQL database as sources."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    UniqueConstraint,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.storage.sql import Base, MetadataStore, UTCDateTime
from memgpt.types import AgentState, Block, Message, Role, ToolCall, utc_now


class AgentRow(Base):
    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_agents_user_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    persona: Mapped[str] = mapped_column(String(256))
    human: Mapped[str] = mapped_column(String(256))
    system_prompt: Mapped[str] = mapped_column(Text)
    llm_model: Mapped[str] = mapped_column(String(256))
    context_window: Mapped[int] = mapped_column(Integer)
    embedding_model: Mapped[str] = mapped_column(String(256))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    summary: Mapped[str] = mapped_column(Text)
    heartbeats_paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BlockRow(Base):
    __tablename__ = "blocks"

    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    char_limit: Mapped[int] = mapped_column(Integer)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_agent_seq", "agent_id", "seq"),
        Index("ix_messages_agent_created", "agent_id", "created_at"),
        Index("ix_messages_agent_indexed", "agent_id", "indexed"),
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
    search_text: Mapped[str] = mapped_column(Text)  # lower-cased readable text, for recall search
    indexed: Mapped[bool] = mapped_column(Boolean, default=False)  # also in Milvus for recall search


class AgentSourceRow(Base):
    __tablename__ = "agent_sources"

    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(64), ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)
    attached_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TemplateRow(Base):
    """A persona or human profile a user added (the shipped ones are package data)."""

    __tablename__ = "templates"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


@dataclass(frozen=True)
class AgentSummary:
    state: AgentState
    messages: int
    sources: int


def _state(row: AgentRow) -> AgentState:
    return AgentState(
        id=row.id,
        name=row.name,
        user_id=row.user_id,
        persona=row.persona,
        human=row.human,
        system_prompt=row.system_prompt,
        llm_model=row.llm_model,
        context_window=row.context_window,
        embedding_model=row.embedding_model,
        embedding_dim=row.embedding_dim,
        created_at=row.created_at,
        summary=row.summary,
        heartbeats_paused_until=row.heartbeats_paused_until,
    )


def searchable_text(message: Message) -> str:
    """What recall search matches: the words a person would remember, not JSON syntax."""
    parts = [message.content]
    for call in message.tool_calls:
        try:
            arguments = json.loads(call.arguments)
        except json.JSONDecodeError:
            parts.append(call.arguments)
            continue
        if isinstance(arguments, dict):
            parts.extend(str(v) for k, v in arguments.items() if k != "request_heartbeat")
    return " ".join(p for p in parts if p).lower()


def _calls_json(message: Message) -> str:
    return json.dumps([{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls])


def _message(row: MessageRow) -> Message:
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


def _conversational() -> Any:
    """User messages the person typed (system alerts are user-role messages with a name) and replies."""
    typed = (MessageRow.role == Role.USER.value) & (MessageRow.name == "")
    return or_(typed, MessageRow.role == Role.ASSISTANT.value)


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass
class StepChanges:
    """Everything one agent step changes, written in one transaction."""

    messages: Sequence[Message] = ()
    blocks: Sequence[Block] = ()
    evicted_ids: Sequence[str] = ()
    summary: str | None = None
    heartbeats_paused_until: datetime | bool | None = False  # False: unchanged


class AgentStore:
    """Agent rows on the metadata database's engine."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def _session(self):
        return self._metadata.session()

    # -- agents -------------------------------------------------------------------------------
    def create(self, state: AgentState, blocks: Sequence[Block], messages: Sequence[Message]) -> AgentState:
        with self._session() as s:
            s.add(
                AgentRow(
                    id=state.id,
                    user_id=state.user_id,
                    name=state.name,
                    persona=state.persona,
                    human=state.human,
                    system_prompt=state.system_prompt,
                    llm_model=state.llm_model,
                    context_window=state.context_window,
                    embedding_model=state.embedding_model,
                    embedding_dim=state.embedding_dim,
                    summary=state.summary,
                    heartbeats_paused_until=None,
                    created_at=state.created_at,
                )
            )
            s.flush()
            self._write_blocks(s, state.id, blocks)
            self._append(s, state.id, messages)
        return state

    def get(self, user_id: str, name: str) -> AgentState | None:
        with self._session() as s:
            row = s.scalar(select(AgentRow).where(AgentRow.user_id == user_id, AgentRow.name == name))
            return _state(row) if row else None

    def by_id(self, agent_id: str) -> AgentState | None:
        with self._session() as s:
            row = s.get(AgentRow, agent_id)
            return _state(row) if row else None

    def names(self, user_id: str) -> set[str]:
        with self._session() as s:
            return set(s.scalars(select(AgentRow.name).where(AgentRow.user_id == user_id)))

    def list(self, user_id: str) -> list[AgentSummary]:
        with self._session() as s:
            query = select(AgentRow).where(AgentRow.user_id == user_id)
            rows = s.scalars(query.order_by(AgentRow.created_at, AgentRow.name)).all()
            ids = [r.id for r in rows]

            def per_agent(table: type[MessageRow] | type[AgentSourceRow]) -> dict[str, int]:
                query = select(table.agent_id, func.count()).where(table.agent_id.in_(ids)).group_by(table.agent_id)
                return {agent: int(n) for agent, n in s.execute(query).all()}

            counts, sources = per_agent(MessageRow), per_agent(AgentSourceRow)
            return [AgentSummary(_state(r), int(counts.get(r.id, 0)), int(sources.get(r.id, 0))) for r in rows]

    def delete(self, agent_id: str) -> None:
        with self._session() as s:
            for table in (MessageRow, BlockRow, AgentSourceRow):
                s.execute(delete(table).where(table.agent_id == agent_id))
            s.execute(delete(AgentRow).where(AgentRow.id == agent_id))

    def set_model(self, agent_id: str, model: str, context_window: int) -> None:
        with self._session() as s:
            row = s.get(AgentRow, agent_id)
            if row is not None:
                row.llm_model, row.context_window = model, context_window

    # -- core memory --------------------------------------------------------------------------
    def blocks(self, agent_id: str) -> list[Block]:
        with self._session() as s:
            rows = s.scalars(select(BlockRow).where(BlockRow.agent_id == agent_id).order_by(BlockRow.label))
            return [Block(r.label, r.value, r.char_limit) for r in rows]

    @staticmethod
    def _write_blocks(s: Session, agent_id: str, blocks: Sequence[Block]) -> None:
        for block in blocks:
            s.merge(BlockRow(agent_id=agent_id, label=block.label, value=block.value, char_limit=block.limit))

    # -- messages -----------------------------------------------------------------------------
    @staticmethod
    def _append(s: Session, agent_id: str, messages: Sequence[Message]) -> None:
        last = s.scalar(select(func.max(MessageRow.seq)).where(MessageRow.agent_id == agent_id)) or 0
        for offset, message in enumerate(messages, start=1):
            s.add(
                MessageRow(
                    id=message.id,
                    agent_id=agent_id,
                    seq=last + offset,
                    role=message.role.value,
                    content=message.content,
                    tool_calls=_calls_json(message),
                    tool_call_id=message.tool_call_id,
                    name=message.name,
                    created_at=message.created_at,
                    in_context=True,
                    search_text=searchable_text(message),
                    indexed=False,
                )
            )

    def append(self, agent_id: str, messages: Sequence[Message]) -> None:
        with self._session() as s:
            self._append(s, agent_id, messages)

    def commit_step(self, agent_id: str, changes: StepChanges) -> None:
        """A step is stored whole or not at all."""
        with self._session() as s:
            self._append(s, agent_id, changes.messages)
            self._write_blocks(s, agent_id, changes.blocks)
            if changes.evicted_ids:
                s.execute(
                    update(MessageRow).where(MessageRow.id.in_(list(changes.evicted_ids))).values(in_context=False)
                )
            row = s.get(AgentRow, agent_id)
            if row is not None:
                if changes.summary is not None:
                    row.summary = changes.summary
                if changes.heartbeats_paused_until is not False:
                    row.heartbeats_paused_until = changes.heartbeats_paused_until  # type: ignore[assignment]

    def in_context(self, agent_id: str) -> list[Message]:
        with self._session() as s:
            rows = s.scalars(
                select(MessageRow)
                .where(MessageRow.agent_id == agent_id, MessageRow.in_context.is_(True))
                .order_by(MessageRow.seq)
            )
            return [_message(r) for r in rows]

    def last_messages(self, agent_id: str, count: int) -> list[Message]:
        with self._session() as s:
            rows = s.scalars(
                select(MessageRow).where(MessageRow.agent_id == agent_id).order_by(MessageRow.seq.desc()).limit(count)
            ).all()
            return [_message(r) for r in reversed(rows)]

    def remove(self, message_ids: Sequence[str]) -> None:
        """Delete messages outright: only for the user's explicit /pop, never for eviction."""
        with self._session() as s:
            s.execute(delete(MessageRow).where(MessageRow.id.in_(list(message_ids))))

    def replace_content(self, message: Message) -> None:
        with self._session() as s:
            row = s.get(MessageRow, message.id)
            if row is not None:
                row.content = message.content
                row.tool_calls = _calls_json(message)
                row.search_text = searchable_text(message)
                row.indexed = False  # changed text: index it again

    def count_messages(self, agent_id: str) -> int:
        with self._session() as s:
            return int(s.scalar(select(func.count()).where(MessageRow.agent_id == agent_id)) or 0)

    def search_messages(self, agent_id: str, query: str, *, offset: int, limit: int) -> tuple[list[Message], int]:
        """User and assistant messages containing every word of ``query`` (any case), oldest first."""
        terms = [t for t in query.lower().split() if t]
        conditions = [MessageRow.search_text.like(f"%{_escape_like(t)}%", escape="\\") for t in terms]
        return self._page(agent_id, conditions, offset, limit)

    def messages_between(
        self, agent_id: str, start: datetime, end: datetime, *, offset: int, limit: int
    ) -> tuple[list[Message], int]:
        return self._page(agent_id, [MessageRow.created_at >= start, MessageRow.created_at <= end], offset, limit)

    def unindexed(self, agent_id: str, limit: int) -> list[Message]:
        """Conversational messages not yet in the Milvus recall index, oldest first."""
        with self._session() as s:
            rows = s.scalars(
                select(MessageRow)
                .where(MessageRow.agent_id == agent_id, _conversational(), MessageRow.indexed.is_(False))
                .order_by(MessageRow.seq)
                .limit(limit)
            )
            return [_message(r) for r in rows]

    def mark_indexed(self, message_ids: Sequence[str]) -> None:
        with self._session() as s:
            s.execute(update(MessageRow).where(MessageRow.id.in_(list(message_ids))).values(indexed=True))

    def messages_by_id(self, message_ids: Sequence[str]) -> dict[str, Message]:
        with self._session() as s:
            rows = s.scalars(select(MessageRow).where(MessageRow.id.in_(list(message_ids))))
            return {r.id: _message(r) for r in rows}

    def _page(self, agent_id: str, conditions: list, offset: int, limit: int) -> tuple[list[Message], int]:
        where = [MessageRow.agent_id == agent_id, _conversational(), *conditions]
        with self._session() as s:
            total = int(s.scalar(select(func.count()).select_from(MessageRow).where(*where)) or 0)
            rows = s.scalars(select(MessageRow).where(*where).order_by(MessageRow.seq).offset(offset).limit(limit))
            return [_message(r) for r in rows], total

    # -- attached sources ---------------------------------------------------------------------
    def attach(self, agent_id: str, source_id: str) -> bool:
        """Link a source; False when it was already attached."""
        with self._session() as s:
            if s.get(AgentSourceRow, (agent_id, source_id)) is not None:
                return False
            s.add(AgentSourceRow(agent_id=agent_id, source_id=source_id, attached_at=utc_now()))
            return True

    def detach(self, agent_id: str, source_id: str) -> bool:
        with self._session() as s:
            result = s.execute(
                delete(AgentSourceRow).where(AgentSourceRow.agent_id == agent_id, AgentSourceRow.source_id == source_id)
            )
            return bool(result.rowcount)

    def attached(self, agent_id: str) -> list[str]:
        with self._session() as s:
            return list(
                s.scalars(
                    select(AgentSourceRow.source_id)
                    .where(AgentSourceRow.agent_id == agent_id)
                    .order_by(AgentSourceRow.attached_at, AgentSourceRow.source_id)
                )
            )

    # -- personas and humans ------------------------------------------------------------------
    def save_template(self, user_id: str, kind: str, name: str, text: str) -> None:
        with self._session() as s:
            s.merge(TemplateRow(user_id=user_id, kind=kind, name=name, text=text, created_at=utc_now()))

    def template(self, user_id: str, kind: str, name: str) -> str | None:
        with self._session() as s:
            row = s.get(TemplateRow, (user_id, kind, name))
            return row.text if row else None

    def templates(self, user_id: str, kind: str) -> dict[str, str]:
        with self._session() as s:
            rows = s.scalars(select(TemplateRow).where(TemplateRow.user_id == user_id, TemplateRow.kind == kind))
            return {r.name: r.text for r in rows}
