"""Which sources are attached to which agent's archival memory: a link, nothing is copied."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ForeignKey, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from memgpt.storage.orm import Base
from memgpt.storage.sql import MetadataStore, UTCDateTime, bump_agents
from memgpt.types import utc_now


class AgentSourceRow(Base):
    __tablename__ = "agent_sources"

    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    source_id: Mapped[str] = mapped_column(String(64), ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)
    attached_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AttachmentStore:
    """Agent-source links. Every method is one transaction."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def attach(self, agent_id: str, source_id: str) -> bool:
        """Link a source; False when it was already attached."""
        with self._metadata.session() as s:
            bump_agents(s, agent_id)  # the agents row first, as every writer
            if s.get(AgentSourceRow, (agent_id, source_id)) is not None:
                return False
            s.add(AgentSourceRow(agent_id=agent_id, source_id=source_id, attached_at=utc_now()))
            return True

    def detach(self, agent_id: str, source_id: str) -> bool:
        """Unlink a source; False when it was not attached."""
        with self._metadata.session() as s:
            bump_agents(s, agent_id)
            result = s.execute(
                delete(AgentSourceRow).where(AgentSourceRow.agent_id == agent_id, AgentSourceRow.source_id == source_id)
            )
            return bool(result.rowcount)

    def source_ids(self, agent_id: str) -> list[str]:
        """The agent's attached sources, in the order they were attached (read at every turn: a Core query)."""
        table = AgentSourceRow.__table__
        with self._metadata.session() as s:
            return list(
                s.scalars(
                    select(table.c.source_id)
                    .where(table.c.agent_id == agent_id)
                    .order_by(table.c.attached_at, table.c.source_id)
                )
            )

    def source_ids_of(self, agent_ids: Sequence[str]) -> dict[str, list[str]]:
        """The attached sources of each of these agents, in the order they were attached, in one query."""
        found: dict[str, list[str]] = {agent_id: [] for agent_id in agent_ids}
        with self._metadata.session() as s:
            rows = s.execute(
                select(AgentSourceRow.agent_id, AgentSourceRow.source_id)
                .where(AgentSourceRow.agent_id.in_(list(agent_ids)))
                .order_by(AgentSourceRow.attached_at, AgentSourceRow.source_id)
            )
            for agent_id, source_id in rows:
                found[agent_id].append(source_id)
        return found

    def agent_ids(self, source_id: str) -> list[str]:
        """The agents a source is attached to, in the order they were attached."""
        with self._metadata.session() as s:
            return list(
                s.scalars(
                    select(AgentSourceRow.agent_id)
                    .where(AgentSourceRow.source_id == source_id)
                    .order_by(AgentSourceRow.attached_at, AgentSourceRow.agent_id)
                )
            )
