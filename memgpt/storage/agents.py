"""Agents and their core-memory blocks, in the metadata database; a step's changes commit here whole.

A step may also change what no SQL transaction covers (a passage written to Milvus) and what a later
/retry or /pop must put back (a block's earlier value): those are its effects, kept per step in
``step_effects`` under the step's id (the id of the assistant message the step stores). A passage is
recorded, uncommitted, before it is written; the step's commit marks its effects committed in the
same transaction as its messages. So the uncommitted effects are exactly what steps that never
committed (a crash, a kill, an error mid-step) left behind.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from memgpt.storage import claims, marks, turns
from memgpt.storage.attachments import AgentSourceRow
from memgpt.storage.mcp_servers import AgentMCPServerRow
from memgpt.storage.messages import FENCED_LAST_SEQ, MessageRow, StoredMessage, escape_like, last_seq, write_messages
from memgpt.storage.orm import Base, Tombstone, bury, tombstone
from memgpt.storage.sql import MetadataStore, UTCDateTime, bump_agents, direct
from memgpt.storage.turns import Fence, Run, check_fence, fenced_write, give_back
from memgpt.types import AgentState, Block, EmbeddingSpace, utc_now


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
    description: Mapped[str] = mapped_column(Text, default="")
    metadata_json: Mapped[str] = mapped_column("metadata", Text, default="{}")  # a JSON object
    tools: Mapped[str | None] = mapped_column(Text, nullable=True)  # a JSON list of names; NULL: every tool
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The server's token count over ours for the model named, learnt from the usage it reports.
    token_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    token_ratio_model: Mapped[str] = mapped_column(String(256), default="")
    # The system message the agent's last committed step was sent, with what it was built from (a JSON object;
    # NULL: none yet, or history was edited since): a new process reuses it while memory is what it was.
    last_system: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Whether the memory-pressure alert was sent since the last summary (the agent warns once per summary).
    pressure_alerted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Moved by every change to what an opened agent holds but a server turn's own writes (sql.bump_agents).
    version: Mapped[int] = mapped_column(Integer, default=0)
    # How many archival passages of its own the agent has in the vector store, kept here so that opening it
    # (its prompt shows the count) needs no vector store: ``archival_count`` is valid only while
    # ``archival_counted`` equals ``archival_version``, which every write of its passages moves before and after
    # writing (see ``archival_writing``). NULL: not counted since the column came (an agent of an older memgpt).
    archival_version: Mapped[int] = mapped_column(Integer, default=0)
    archival_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    archival_counted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Writes of its passages begun and not ended (one a process died in never ends) and when the latest began.
    archival_writes_open: Mapped[int] = mapped_column(Integer, default=0)
    archival_write_began: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BlockRow(Base):
    __tablename__ = "blocks"

    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    char_limit: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, default="")
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)


class DeletedAgentRow(Tombstone, Base):
    """Where a deleted agent stood in its user's list, kept for ``CURSOR_KEPT``: a client's next page is asked for
    after the last agent it was given, which a loop deleting each agent it is given has just deleted."""

    __tablename__ = "deleted_agents"


class AgentTagRow(Base):
    __tablename__ = "agent_tags"
    __table_args__ = (Index("ix_agent_tags_tag", "tag"),)

    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(256), primary_key=True)


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
    last_system: str | None = None  # the system message the step was sent, when not stored yet (a JSON object)
    pressure_alerted: bool | None = None  # True: the memory-pressure alert was sent; False: a summary reset it


@dataclass(frozen=True)
class StepFacts:
    """What an opened agent's steps start from, as its last committed step left it."""

    ratio_model: str = ""  # the model its token ratio was learnt for ("" for none yet; see ``token_ratio``)
    ratio: float = 1.0
    last_system: str | None = None  # the system message its last step was sent (``StepChanges.last_system``)
    pressure_alerted: bool = False  # ``StepChanges.pressure_alerted``


@functools.cache  # one per set of fields (a few dozen at most): each is a key of ``direct``'s
def _fields_update(names: tuple[str, ...]) -> Any:
    """The UPDATE of these agent fields a fenced step makes, built once per set of fields with bound parameters
    (``p_agent``, ``p_<field>``): building one costs more CPU than running it, and a step makes one."""
    agents = AgentRow.__table__
    values = {name: bindparam(f"p_{name}", type_=agents.c[name].type) for name in names}
    return update(agents).where(agents.c.id == bindparam("p_agent")).values(values)


# What a partial update may change; everything else is fixed when the agent is created.
UPDATABLE = frozenset(
    {"name", "llm_model", "context_window", "system_prompt", "description", "metadata", "tools", "tags"}
)


@dataclass(frozen=True)
class AgentQuery:
    """Which of a user's agents a page holds: ``after``/``before`` are agent ids (cursors) relative to the
    order (oldest first when ``ascending``); ``query_text`` matches part of the name in any case."""

    limit: int = 50
    ascending: bool = False
    after: str | None = None
    before: str | None = None
    name: str | None = None
    query_text: str | None = None
    tags: Collection[str] = ()
    match_all_tags: bool = False


def _state(row: AgentRow, tags: Sequence[str] = ()) -> AgentState:
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
        description=row.description or "",
        tags=tuple(tags),
        metadata=json.loads(row.metadata_json or "{}"),
        tools=tuple(json.loads(row.tools)) if row.tools is not None else None,
        updated_at=row.updated_at,
    )


def _tools_json(tools: Sequence[str] | None) -> str | None:
    return None if tools is None else json.dumps(list(tools))


def _tags_of(s: Session, agent_ids: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if agent_ids:
        query = select(AgentTagRow).where(AgentTagRow.agent_id.in_(list(agent_ids))).order_by(AgentTagRow.tag)
        for row in s.scalars(query):
            found.setdefault(row.agent_id, []).append(row.tag)
    return found


def _states(s: Session, rows: Sequence[AgentRow]) -> list[AgentState]:
    tags = _tags_of(s, [r.id for r in rows])
    return [_state(r, tags.get(r.id, ())) for r in rows]


def _write_tags(s: Session, agent_id: str, tags: Sequence[str]) -> None:
    s.execute(delete(AgentTagRow).where(AgentTagRow.agent_id == agent_id))
    for tag in dict.fromkeys(tags):
        s.add(AgentTagRow(agent_id=agent_id, tag=tag))


def _write_blocks(s: Session, agent_id: str, blocks: Sequence[Block]) -> None:
    for block in blocks:
        s.merge(
            BlockRow(
                agent_id=agent_id,
                label=block.label,
                value=block.value,
                char_limit=block.limit,
                description=block.description,
                read_only=block.read_only,
            )
        )


def _beyond(row: AgentRow | DeletedAgentRow, later: bool) -> ColumnElement[bool]:
    """Agents after ``row`` in creation order (``later``), or before it; the id breaks ties."""
    if later:
        return or_(
            AgentRow.created_at > row.created_at, and_(AgentRow.created_at == row.created_at, AgentRow.id > row.id)
        )
    return or_(AgentRow.created_at < row.created_at, and_(AgentRow.created_at == row.created_at, AgentRow.id < row.id))


class AgentStore:
    """Agent rows and their blocks. Every method is one transaction. Lookups by name take the user id;
    those by agent id trust the caller to have found the agent for its user."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def create(
        self,
        state: AgentState,
        blocks: Sequence[Block],
        *,
        history: Sequence[StoredMessage] = (),
        out_of_context: Sequence[str] = (),
        source_ids: Sequence[str] = (),
        own_passages: int = 0,
    ) -> AgentState:
        """A new agent with its blocks and, in the same transaction (an imported agent exists whole or not at
        all), earlier messages (those in ``out_of_context`` only in recall) and attached sources. ``own_passages``:
        the archival passages of its own already written (an imported agent's), its first archival count."""
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
                    description=state.description,
                    metadata_json=json.dumps(state.metadata),
                    tools=_tools_json(state.tools),
                    updated_at=state.updated_at,
                    version=0,
                    archival_version=0,
                    archival_count=own_passages,
                    archival_counted=0,
                    archival_writes_open=0,
                )
            )
            s.flush()
            _write_blocks(s, state.id, blocks)
            _write_tags(s, state.id, state.tags)
            if history:
                write_messages(s, state.id, history)
                s.flush()
            if out_of_context:
                s.execute(
                    update(MessageRow)
                    .where(MessageRow.agent_id == state.id, MessageRow.id.in_(list(out_of_context)))
                    .values(in_context=False)
                )
            now = utc_now()
            for order, source_id in enumerate(source_ids):  # attached in this order
                attached = now + timedelta(microseconds=order)
                s.add(AgentSourceRow(agent_id=state.id, source_id=source_id, attached_at=attached))
        return state

    def get(self, user_id: str, name: str) -> AgentState | None:
        with self._metadata.session() as s:
            row = s.scalar(select(AgentRow).where(AgentRow.user_id == user_id, AgentRow.name == name))
            return _states(s, [row])[0] if row else None

    def by_id(self, user_id: str, agent_id: str) -> AgentState | None:
        """The agent with this id, if it is this user's."""
        with self._metadata.session() as s:
            row = s.get(AgentRow, agent_id)
            return _states(s, [row])[0] if row is not None and row.user_id == user_id else None

    def belongs(self, user_id: str, agent_id: str) -> bool:
        """Whether the agent with this id exists and is this user's (one indexed read, for a check)."""
        with self._metadata.session() as s:
            agents = AgentRow.__table__  # a Core query: one made for every message sent
            return s.scalar(select(agents.c.user_id).where(agents.c.id == agent_id)) == user_id

    def page(self, user_id: str, query: AgentQuery) -> list[AgentState]:
        """One page of the user's agents in creation order; a cursor may be an agent deleted within ``CURSOR_KEPT``,
        an unknown one gives an empty page."""
        with self._metadata.session() as s:
            where: list[ColumnElement[bool]] = [AgentRow.user_id == user_id]
            for cursor, later in ((query.after, query.ascending), (query.before, not query.ascending)):
                if cursor is None:
                    continue
                anchor = s.get(AgentRow, cursor) or tombstone(s, DeletedAgentRow, cursor, user_id)
                if anchor is None or anchor.user_id != user_id:
                    return []
                where.append(_beyond(anchor, later))
            if query.name is not None:
                where.append(AgentRow.name == query.name)
            if query.query_text:
                pattern = f"%{escape_like(query.query_text.lower())}%"
                where.append(func.lower(AgentRow.name).like(pattern, escape="\\"))
            where += self._tag_conditions(query.tags, query.match_all_tags)
            # A page that ends at ``before`` holds the agents closest to it: read backwards, then turn around.
            backwards = query.before is not None and query.after is None
            ascending = query.ascending != backwards
            keys = [AgentRow.created_at, AgentRow.id]
            order = keys if ascending else [k.desc() for k in keys]
            rows = list(s.scalars(select(AgentRow).where(*where).order_by(*order).limit(query.limit)))
            return _states(s, rows[::-1] if backwards else rows)

    @staticmethod
    def _tag_conditions(tags: Collection[str], match_all: bool) -> list[ColumnElement[bool]]:
        if not tags:
            return []
        if match_all:
            return [AgentRow.id.in_(select(AgentTagRow.agent_id).where(AgentTagRow.tag == tag)) for tag in tags]
        return [AgentRow.id.in_(select(AgentTagRow.agent_id).where(AgentTagRow.tag.in_(list(tags))))]

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
            states = _states(s, rows)
            return [AgentSummary(st, int(counts.get(st.id, 0)), int(sources.get(st.id, 0))) for st in states]

    def update(self, agent_id: str, **fields: Any) -> None:
        """Change some of the fields in ``UPDATABLE`` (``tools=None``: every tool there is), in one transaction."""
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))} of an agent")
        if not fields:
            return
        values = {k: v for k, v in fields.items() if k not in ("metadata", "tools", "tags")}
        if "metadata" in fields:
            values["metadata_json"] = json.dumps(fields["metadata"])
        if "tools" in fields:
            values["tools"] = _tools_json(fields["tools"])
        with self._metadata.session() as s:
            s.execute(
                update(AgentRow)
                .where(AgentRow.id == agent_id)
                .values(**values, updated_at=utc_now(), version=AgentRow.version + 1)
            )
            if "tags" in fields:
                _write_tags(s, agent_id, fields["tags"])

    def delete(self, agent_id: str) -> None:
        """The agent with its blocks, messages, tags and attachments, its turns' runs and leases, its recall indexing
        claim and passage mark, in one transaction (sources and MCP servers themselves stay)."""
        with self._metadata.session() as s:
            # The agents row first, as every writer takes it (``bump_agents``), and FOR UPDATE, which also waits
            # for a turn that has added a message (its foreign key holds the row): a step committing meanwhile
            # finishes first. Deleting its messages first had this wait on a step that waited on it.
            row = s.execute(
                select(AgentRow.user_id, AgentRow.created_at).where(AgentRow.id == agent_id).with_for_update()
            ).first()
            for table in (StepEffectRow, MessageRow, BlockRow, AgentSourceRow, AgentTagRow, AgentMCPServerRow):
                s.execute(delete(table).where(table.agent_id == agent_id))
            # Rows that name the agent without a foreign key (other processes write them, some outside a lease).
            for forget in (turns.forget_agent, claims.forget_agent, marks.forget_agent):
                forget(s, agent_id)
            s.execute(delete(AgentRow).where(AgentRow.id == agent_id))
            if row is not None:  # it stays a cursor for a while
                now = utc_now()
                gone = DeletedAgentRow(id=agent_id, user_id=row.user_id, created_at=row.created_at, deleted_at=now)
                bury(s, gone)

    def unindex_messages(self, space: EmbeddingSpace) -> None:
        """Mark every message of the agents in ``space`` as not in the recall index, to be indexed again."""
        with self._metadata.session() as s:
            agents = select(AgentRow.id).where(
                AgentRow.embedding_model == space.model, AgentRow.embedding_dim == space.dimensions
            )
            s.execute(update(MessageRow).where(MessageRow.agent_id.in_(agents)).values(indexed=False))

    def blocks(self, agent_id: str) -> list[Block]:
        return self.blocks_of([agent_id])[agent_id]

    def blocks_of(self, agent_ids: Sequence[str]) -> dict[str, list[Block]]:
        """The blocks of each of these agents (by label), in one query."""
        found: dict[str, list[Block]] = {agent_id: [] for agent_id in agent_ids}
        with self._metadata.session() as s:
            query = select(BlockRow).where(BlockRow.agent_id.in_(list(agent_ids)))
            rows = s.scalars(query.order_by(BlockRow.agent_id, BlockRow.label))
            for r in rows:
                found[r.agent_id].append(Block(r.label, r.value, r.char_limit, r.description or "", bool(r.read_only)))
        return found

    def save_block(self, agent_id: str, block: Block) -> None:
        """Store one block as it is now (a person's edit, outside any step)."""
        with self._metadata.session() as s:
            s.execute(
                update(AgentRow)
                .where(AgentRow.id == agent_id)
                .values(updated_at=utc_now(), version=AgentRow.version + 1)
            )
            _write_blocks(s, agent_id, [block])

    def swap_block_value(self, agent_id: str, label: str, expected: str, value: str) -> bool:
        """Set a block's value if it still is ``expected`` (an edit made outside a step, e.g. over MCP);
        False when it changed meanwhile and nothing was written."""
        with self._metadata.session() as s:
            bump_agents(s, agent_id)  # first, as every writer: a version moved in vain costs one reopening
            result = s.execute(
                update(BlockRow)
                .where(BlockRow.agent_id == agent_id, BlockRow.label == label, BlockRow.value == expected)
                .values(value=value)
            )
            return bool(result.rowcount)

    def commit_step(
        self, agent_id: str, changes: StepChanges, *, fence: Fence | None = None, finished: Run | None = None
    ) -> None:
        """A step is stored whole or not at all: its messages, blocks, effects, evictions and agent fields;
        with a ``fence``, only while that lease still holds the agent (else LeaseLostError, nothing stored).
        Without one (a chat outside the server), the agent's version moves. With ``fence`` and ``finished`` (the
        turn's last step), the run's end is recorded and the lease given back in the same transaction."""
        fields: dict[str, object] = {}
        if changes.summary is not None:
            fields["summary"] = changes.summary
        if changes.heartbeats_paused_until is not False:
            fields["heartbeats_paused_until"] = changes.heartbeats_paused_until
        if changes.token_ratio is not None:
            fields["token_ratio_model"], fields["token_ratio"] = changes.token_ratio
        if changes.last_system is not None:
            fields["last_system"] = changes.last_system
        if changes.pressure_alerted is not None:
            fields["pressure_alerted"] = changes.pressure_alerted
        agents = AgentRow.__table__
        # Blocks and effects are merged by the ORM; a step without them (most) needs no ORM session set up.
        orm = bool(changes.blocks or changes.effects)
        opened: AbstractContextManager[Any] = self._metadata.session() if orm else self._metadata.connection()
        with fenced_write(self._metadata, fence), opened as s:
            # The lease row, then the agents row, then the rest: the order every writer keeps. Where the messages
            # end is read by the first statement.
            if fence is None:
                moved = update(agents).where(agents.c.id == agent_id).values(**fields, version=agents.c.version + 1)
                last = s.scalar(moved.returning(last_seq(agent_id)))
            else:
                last = check_fence(s, fence, reading=FENCED_LAST_SEQ)
                if fields:  # most steps: last_system (the recall count it shows moves every step)
                    values = {"p_agent": agent_id, **{f"p_{name}": value for name, value in fields.items()}}
                    direct(_fields_update(tuple(fields)), s).first(s, values)
            write_messages(s, agent_id, changes.messages, last=last or 0)
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
            if fence is not None and finished is not None:  # the lease row last, as TurnStore.release
                give_back(s, agent_id, fence.owner, finished)

    def touch(self, agent_id: str) -> None:
        """Move the agent's version after a change stored elsewhere (its own passages in the vector store)."""
        with self._metadata.session() as s:
            bump_agents(s, agent_id)

    # -- the count of the agent's own archival passages ----------------------------------------------
    def archival_writing(self, agent_id: str, *, ended: bool = False, touch: bool = False) -> None:
        """Called just before (``ended=False``) and just after (``ended=True``) each write of the agent's own
        passages to the vector store. Both move the version, so a count kept before the write, or made while it
        went on, is no longer taken (``archival_count``). A count made while another process's write is open is
        not kept (``keep_archival_count``): were that process to die between its write and the call after it,
        the count would miss its passages for good. ``touch``: also move the agent's version (``touch``)."""
        values: dict[str, Any] = {"archival_version": AgentRow.archival_version + 1}
        if ended:
            values["archival_writes_open"] = case(
                (AgentRow.archival_writes_open > 0, AgentRow.archival_writes_open - 1), else_=0
            )
        else:
            values["archival_writes_open"] = AgentRow.archival_writes_open + 1
            values["archival_write_began"] = utc_now()
        with self._metadata.session() as s:
            s.execute(
                update(AgentRow)
                .where(AgentRow.id == agent_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if touch:
                bump_agents(s, agent_id)

    def archival_count(self, agent_id: str) -> tuple[int | None, int]:
        """The kept count of the agent's own archival passages (None when it must be counted again) and the
        version to hand to ``keep_archival_count`` with a count made now."""
        with self._metadata.session() as s:
            row = s.execute(
                select(AgentRow.archival_version, AgentRow.archival_count, AgentRow.archival_counted).where(
                    AgentRow.id == agent_id
                )
            ).one_or_none()
        if row is None:
            return None, 0
        version, count, counted = int(row[0]), row[1], row[2]
        return (int(count) if count is not None and counted == version else None), version

    def last_archival_count(self, agent_id: str) -> int | None:
        """The count of the agent's own archival passages kept last, even one a write since may have made stale
        (None: never counted)."""
        with self._metadata.session() as s:
            count = s.scalar(select(AgentRow.archival_count).where(AgentRow.id == agent_id))
        return None if count is None else int(count)

    def keep_archival_count(self, agent_id: str, count: int, version: int, *, open_for: float) -> None:
        """Keep ``count``, begun when ``archival_count`` gave ``version``, unless a write began since or one is
        open: one that began less than ``open_for`` seconds ago (a lease's length; an older one is taken to be
        of a process that died, whose passages the count saw, as it was made after)."""
        stale = utc_now() - timedelta(seconds=open_for)
        with self._metadata.session() as s:
            s.execute(
                update(AgentRow)
                .where(
                    AgentRow.id == agent_id,
                    AgentRow.archival_version == version,
                    or_(
                        AgentRow.archival_writes_open == 0,
                        AgentRow.archival_write_began.is_(None),
                        AgentRow.archival_write_began < stale,
                    ),
                )
                .values(archival_count=count, archival_counted=version)
                .execution_options(synchronize_session=False)
            )

    def token_ratio(self, agent_id: str) -> tuple[str, float]:
        """The model the agent's token ratio was learnt for ("" for none yet) and the ratio."""
        facts = self.step_facts(agent_id)
        return facts.ratio_model, facts.ratio

    def step_facts(self, agent_id: str) -> StepFacts:
        """What an opened agent's steps start from (one query)."""
        with self._metadata.session() as s:
            row = s.execute(
                select(
                    AgentRow.token_ratio_model, AgentRow.token_ratio, AgentRow.last_system, AgentRow.pressure_alerted
                ).where(AgentRow.id == agent_id)
            ).one_or_none()
            return StepFacts(row[0], float(row[1]), row[2], bool(row[3])) if row is not None else StepFacts()

    # -- step effects -----------------------------------------------------------------------------
    def record_effects(self, agent_id: str, effects: Sequence[StepEffect], *, fence: Fence | None = None) -> None:
        """Write effects down before making them (a passage before it goes to Milvus), in their own
        transaction: whatever happens next, they can be found and undone. A lost ``fence`` refuses them."""
        with fenced_write(self._metadata, fence), self._metadata.session() as s:
            check_fence(s, fence)
            if fence is None:
                bump_agents(s, agent_id)
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
                bump_agents(s, agent_id)
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
            bump_agents(s, agent_id)
            # The stored system message counts the forgotten messages: the next step builds it anew.
            s.execute(update(AgentRow).where(AgentRow.id == agent_id).values(last_system=None))
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
