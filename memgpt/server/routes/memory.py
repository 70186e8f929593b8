"""``GET /v1/agents/{agent_id}/memory``: the agent's three memories at a glance (memgpt's own route; pymemgpt
0.3's ``get_agent_memory`` read the same): core memory by block label, how many messages recall memory
holds, and how many archival passages the agent can search (its own and its attached folders')."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from memgpt.agent.manager import archival_memory
from memgpt.server.routes.agents import find_agent
from memgpt.server.state import CurrentUser, State

router = APIRouter(prefix="/v1/agents/{agent_id}/memory", tags=["agents"])


class MemorySummary(BaseModel):
    core_memory: dict[str, str]
    recall_memory: int
    archival_memory: int


@router.get("", response_model=MemorySummary)
def memory_summary(agent_id: str, state: State, user: CurrentUser) -> MemorySummary:
    """Core memory (label: value), the number of messages in recall memory and of archival passages."""
    agent = find_agent(state, user.id, agent_id)
    storage = state.storage
    return MemorySummary(
        core_memory={b.label: b.value for b in storage.agents.blocks(agent.id)},
        recall_memory=storage.messages.count(agent.id),
        archival_memory=archival_memory(storage, agent, state.embedding()).count(),
    )
