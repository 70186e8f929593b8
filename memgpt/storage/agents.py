"""Agents and their core-memory blocks, in the metadata database; a step's changes commit here whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, delete, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.storage.attachments import AgentSourceRow
from memgpt.storage.messages import MessageRow, StoredMessage, write_messages
from memgpt.storage.sql import Base, MetadataStore, UTCDateTime
from memgpt.types import AgentState, Block, EmbeddingSpace


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


@dataclass(frozen=True)
class AgentSummary:
    state: AgentState
    messages: int
    sources: int


@dataclass
class StepChanges:
    """Everything one agent step changes, written in one transaction."""

    messages: Sequence[StoredMessage] = ()
    blocks: Sequence[Block] = ()
    evicted_ids: Sequence[str] = ()
    summary: str | None = None
    heartbeats_paused_until: datetime | bool | None = False  # False: unchanged


# What a partial update may change; everything else is fixed when the agent is created.
UPDATABLE = frozenset({"name", "llm_model", "context_window"})


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


def _write_blocks(s: Session, agent_id: str, blocks: Sequence[Block]) -> None:
    for block in blocks:
        s.merge(BlockRow(agent_id=agent_id, label=block.label, value=block.value, char_limit=block.limit))


class AgentStore:
    """Agent rows and their blocks. Every method is one transaction. Lookups by name take the user id;
    those by agent id trust the caller to have found the agent for its user."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def create(self, state: AgentState, blocks: Sequence[Block]) -> AgentState:
        with self._metadata.session() as s:
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
            _write_blocks(s, state.id, blocks)
        return state

    def get(self, user_id: str, name: str) -> AgentState | None:
        with self._metadata.session() as s:
            row = s.scalar(select(AgentRow).where(AgentRow.user_id == user_id, AgentRow.name == name))
            return _state(row) if row else None

    def by_id(self, user_id: str, agent_id: str) -> AgentState | None:
        """The agent with this id, if it is this user's."""
        with self._metadata.session() as s:
            row = s.get(AgentRow, agent_id)
            return _state(row) if row is not None and row.user_id == user_id else None

    def names(self, user_id: str) -> set[str]:
        with self._metadata.session() as s:
            return set(s.scalars(select(AgentRow.name).where(AgentRow.user_id == user_id)))

    def list(self, user_id: str) -> list[AgentSummary]:
        """The user's agents, oldest first, with how many messages and attached sources each has."""
        with self._metadata.session() as s:
            query = select(AgentRow).where(AgentRow.user_id == user_id)
            rows = s.scalars(query.order_by(AgentRow.created_at, AgentRow.name)).all()
            ids = [r.id for r in rows]

            def per_agent(table: type[MessageRow] | type[AgentSourceRow]) -> dict[str, int]:
                query = select(table.agent_id, func.count()).where(table.agent_id.in_(ids)).group_by(table.agent_id)
                return {agent: int(n) for agent, n in s.execute(query).all()}

            counts, sources = per_agent(MessageRow), per_agent(AgentSourceRow)
            return [AgentSummary(_state(r), int(counts.get(r.id, 0)), int(sources.get(r.id, 0))) for r in rows]

    def update(self, agent_id: str, **fields: str | int) -> None:
        """Change some of the fields in ``UPDATABLE``."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))} of an agent")
        if fields:
            with self._metadata.session() as s:
                s.execute(update(AgentRow).where(AgentRow.id == agent_id).values(**fields))

    def delete(self, agent_id: str) -> None:
        """The agent with its blocks, messages and attachments (sources themselves stay)."""
        with self._metadata.session() as s:
            for table in (MessageRow, BlockRow, AgentSourceRow):
                s.execute(delete(table).where(table.agent_id == agent_id))
            s.execute(delete(AgentRow).where(AgentRow.id == agent_id))

    def unindex_messages(self, space: EmbeddingSpace) -> None:
        """Mark every message of the agents in ``space`` as not in the recall index, to be indexed again."""
        with self._metadata.session() as s:
            agents = select(AgentRow.id).where(
                AgentRow.embedding_model == space.model, AgentRow.embedding_dim == space.dimensions
            )
            s.execute(update(MessageRow).where(MessageRow.agent_id.in_(agents)).values(indexed=False))

    def blocks(self, agent_id: str) -> list[Block]:
        with self._metadata.session() as s:
            rows = s.scalars(select(BlockRow).where(BlockRow.agent_id == agent_id).order_by(BlockRow.label))
            return [Block(r.label, r.value, r.char_limit) for r in rows]

    def commit_step(self, agent_id: str, changes: StepChanges) -> None:
        """A step is stored whole or not at all: its messages, blocks, evictions and agent fields."""
        with self._metadata.session() as s:
            write_messages(s, agent_id, changes.messages)
            _write_blocks(s, agent_id, changes.blocks)
            if changes.evicted_ids:
                s.execute(
                    update(MessageRow)
                    .where(MessageRow.agent_id == agent_id, MessageRow.id.in_(list(changes.evicted_ids)))
                    .values(in_context=False)
                )
            row = s.get(AgentRow, agent_id)
            if row is not None:
                if changes.summary is not None:
                    row.summary = changes.summary
                if changes.heartbeats_paused_until is not False:
                    row.heartbeats_paused_until = changes.heartbeats_paused_until  # type: ignore[assignment]
