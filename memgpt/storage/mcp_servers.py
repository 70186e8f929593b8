"""Which MCP servers an agent uses: their names, linked to the agent. The servers themselves (commands,
URLs, secrets) stay in the home's mcp.toml, so a server removed there and added again under the same
name is attached again."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from memgpt.storage.orm import Base
from memgpt.storage.sql import MetadataStore, UTCDateTime, bump_agents
from memgpt.types import utc_now


class AgentMCPServerRow(Base):
    __tablename__ = "agent_mcp_servers"

    agent_id: Mapped[str] = mapped_column(String(64), ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    server_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    attached_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AgentMCPServerStore:
    """Agent-MCP server links. Every method is one transaction; callers found the agent for its user."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._metadata = metadata

    def attach(self, agent_id: str, server_name: str) -> bool:
        """Link a server; False when it was attached already."""
        with self._metadata.session() as s:
            bump_agents(s, agent_id)  # the agents row first, as every writer
            if s.get(AgentMCPServerRow, (agent_id, server_name)) is not None:
                return False
            s.add(AgentMCPServerRow(agent_id=agent_id, server_name=server_name, attached_at=utc_now()))
            return True

    def detach(self, agent_id: str, server_name: str) -> bool:
        """Unlink a server; False when it was not attached."""
        with self._metadata.session() as s:
            bump_agents(s, agent_id)
            result = s.execute(
                delete(AgentMCPServerRow).where(
                    AgentMCPServerRow.agent_id == agent_id, AgentMCPServerRow.server_name == server_name
                )
            )
            return bool(result.rowcount)

    def names(self, agent_id: str) -> list[str]:
        """The agent's servers, in the order they were attached."""
        with self._metadata.session() as s:
            return list(
                s.scalars(
                    select(AgentMCPServerRow.server_name)
                    .where(AgentMCPServerRow.agent_id == agent_id)
                    .order_by(AgentMCPServerRow.attached_at, AgentMCPServerRow.server_name)
                )
            )
