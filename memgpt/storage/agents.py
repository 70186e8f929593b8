"""Agents and their core-memory blocks, in the metadata database; a step's changes commit here whole.

A step may also change what no SQL transaction covers (a passage written to Milvus) and what a later
/retry or /pop must put back (a block's earlier value): those are its effects, kept per step in
``step_effects`` under the step's id (the id of the assistant message the step stores). A passage is
recorded, uncommitted, before it is written; the step's commit marks its effects committed in the
same transaction as its messages. So the uncommitted effects are exactly what steps that never
committed (a crash, a kill, an error mid-step) left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint, delete, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.storage.attachments import AgentSourceRow
from memgpt.storage.messages import MessageRow, StoredMessage, write_messages
from memgpt.storage.sql import Base, MetadataStore, UTCDateTime
from memgpt.types import AgentState, Block, utc_now


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
    # The server's token count over ours for the model named, learnt from the usage it reports.
    token_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    token_ratio_model: Mapped[str] = mapped_column(String(256), default="")


class BlockRow(Base):
    __tablename__ = "blocks"

    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    char_limit: Mapped[int] = mapped_column(Integer)


class StepEffectRow(Base):
    __tablename__ = "step_effects"

    step_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    target: Mapped[str] = mapped_column(String(256), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    previous: Mapped[str | None] = mapped_column(Text, nullable=True)
    committed: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


PASSAGE, BLOCK = "passage", "block"


@dataclass(frozen=True)
class StepEffect:
    """One thing a step changed outside its messages: a Milvus passage it wrote (``PASSAGE``, the
    passage id) or a core memory block it edited (``BLOCK``, the label, with the value before)."""

    step_id: str
    kind: str
    target: str
    previous: str | None = None


def _effect(row: StepEffectRow) -> StepEffect:
    return StepEffect(row.step_id, row.kind, row.target, row.previous)


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
    step_id: str = ""  # effects recorded under this id before the commit are committed with it
    effects: Sequence[StepEffect] = ()  # block edits, recorded with the step (passages are recorded before)
    token_ratio: tuple[str, float] | None = None  # (model, ratio) learnt this step


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
            for table in (StepEffectRow, MessageRow, BlockRow, AgentSourceRow):
                s.execute(delete(table).where(table.agent_id == agent_id))
            s.execute(delete(AgentRow).where(AgentRow.id == agent_id))

    def blocks(self, agent_id: str) -> list[Block]:
        with self._metadata.session() as s:
            rows = s.scalars(select(BlockRow).where(BlockRow.agent_id == agent_id).order_by(BlockRow.label))
            return [Block(r.label, r.value, r.char_limit) for r in rows]

    def commit_step(self, agent_id: str, changes: StepChanges) -> None:
        """A step is stored whole or not at all: its messages, blocks, effects, evictions and agent fields."""
        with self._metadata.session() as s:
            write_messages(s, agent_id, changes.messages)
            _write_blocks(s, agent_id, changes.blocks)
            if changes.step_id:
                s.execute(
                    update(StepEffectRow)
                    .where(StepEffectRow.agent_id == agent_id, StepEffectRow.step_id == changes.step_id)
                    .values(committed=True)
                )
            _write_effects(s, agent_id, changes.effects, committed=True)
            if changes.evicted_ids:
                s.execute(
                    update(MessageRow)
                    .where(MessageRow.agent_id == agent_id, MessageRow.id.in_(list(changes.evicted_ids)))
                    .values(in_context=False)
                )
            fields: dict[str, object] = {}
            if changes.summary is not None:
                fields["summary"] = changes.summary
            if changes.heartbeats_paused_until is not False:
                fields["heartbeats_paused_until"] = changes.heartbeats_paused_until
            if changes.token_ratio is not None:
                fields["token_ratio_model"], fields["token_ratio"] = changes.token_ratio
            if fields:
                s.execute(update(AgentRow).where(AgentRow.id == agent_id).values(**fields))

    def token_ratio(self, agent_id: str) -> tuple[str, float]:
        """The model the agent's token ratio was learnt for ("" for none yet) and the ratio."""
        with self._metadata.session() as s:
            row = s.execute(
                select(AgentRow.token_ratio_model, AgentRow.token_ratio).where(AgentRow.id == agent_id)
            ).one_or_none()
            return (row[0], float(row[1])) if row is not None else ("", 1.0)

    # -- step effects -----------------------------------------------------------------------------
    def record_effects(self, agent_id: str, effects: Sequence[StepEffect]) -> None:
        """Write effects down before making them (a passage before it goes to Milvus), in their own
        transaction: whatever happens next, they can be found and undone."""
        with self._metadata.session() as s:
            _write_effects(s, agent_id, effects, committed=False)

    def uncommitted_effects(self, agent_id: str) -> list[StepEffect]:
        """Effects of steps that never committed."""
        with self._metadata.session() as s:
            rows = s.scalars(
                select(StepEffectRow).where(StepEffectRow.agent_id == agent_id, StepEffectRow.committed.is_(False))
            )
            return [_effect(r) for r in rows]

    def effects(self, agent_id: str, step_ids: Sequence[str]) -> list[StepEffect]:
        """The recorded effects of these steps."""
        if not step_ids:
            return []
        with self._metadata.session() as s:
            rows = s.scalars(
                select(StepEffectRow).where(
                    StepEffectRow.agent_id == agent_id, StepEffectRow.step_id.in_(list(step_ids))
                )
            )
            return [_effect(r) for r in rows]

    def drop_effects(self, agent_id: str, step_ids: Sequence[str]) -> None:
        """Forget the effects of steps once they are undone."""
        if step_ids:
            with self._metadata.session() as s:
                s.execute(
                    delete(StepEffectRow).where(
                        StepEffectRow.agent_id == agent_id, StepEffectRow.step_id.in_(list(step_ids))
                    )
                )

    def forget_steps(
        self, agent_id: str, *, message_ids: Sequence[str], step_ids: Sequence[str], blocks: Sequence[Block]
    ) -> None:
        """Delete messages for good with the effects of the steps among them, restoring ``blocks`` to the
        values they had before those steps: one transaction."""
        with self._metadata.session() as s:
            if message_ids:
                s.execute(
                    delete(MessageRow).where(MessageRow.agent_id == agent_id, MessageRow.id.in_(list(message_ids)))
                )
            if step_ids:
                s.execute(
                    delete(StepEffectRow).where(
                        StepEffectRow.agent_id == agent_id, StepEffectRow.step_id.in_(list(step_ids))
                    )
                )
            _write_blocks(s, agent_id, blocks)


def _write_effects(s: Session, agent_id: str, effects: Sequence[StepEffect], *, committed: bool) -> None:
    now = utc_now()
    for effect in effects:
        s.merge(
            StepEffectRow(
                step_id=effect.step_id,
                kind=effect.kind,
                target=effect.target,
                agent_id=agent_id,
                previous=effect.previous,
                committed=committed,
                created_at=now,
            )
        )
