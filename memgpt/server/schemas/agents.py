"""Agents and their core memory blocks, as Letta's API shows them (``AgentState``, ``Block``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memgpt.server.schemas.common import INT_MAX, EmbeddingConfig, LlmConfig, SourceOut, ToolOut
from memgpt.types import AgentState, Block

AGENT_TYPE = "memgpt_agent"
_BLOCK_IDS = uuid.UUID("6d656d67-7074-4000-8000-626c6f636b73")  # namespace of the stable ids of blocks


def block_id(agent_id: str, label: str) -> str:
    """A block's id: blocks are the agent's and known by label, so the id is derived from both."""
    return f"block-{uuid.uuid5(_BLOCK_IDS, f'{agent_id}/{label}')}"


class BlockOut(BaseModel):
    """One core memory block (Letta's ``Block``; ``BlockResponse`` on the blocks routes)."""

    id: str
    label: str
    value: str
    limit: int
    description: str | None = None
    read_only: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    is_template: bool = False
    hidden: bool = False

    @classmethod
    def of(cls, agent_id: str, block: Block) -> BlockOut:
        return cls(
            id=block_id(agent_id, block.label),
            label=block.label,
            value=block.value,
            limit=block.limit,
            description=block.description or None,
            read_only=block.read_only,
        )


class Memory(BaseModel):
    blocks: list[BlockOut]
    file_blocks: list[Any] = Field(default_factory=list)
    prompt_template: str = ""
    agent_type: str = AGENT_TYPE


class AgentOut(BaseModel):
    """Letta's ``AgentState``: every field it requires, and what memgpt keeps beside them."""

    id: str
    name: str
    agent_type: str = AGENT_TYPE
    system: str
    description: str | None = None
    tags: list[str]
    metadata: dict[str, Any] = Field(default_factory=dict)
    blocks: list[BlockOut]
    memory: Memory
    llm_config: LlmConfig
    embedding_config: EmbeddingConfig
    model: str | None = Field(None, description="The LLM handle, provider/model")
    embedding: str | None = Field(None, description="The embedding handle, provider/model")
    tools: list[ToolOut]
    sources: list[SourceOut]
    tool_rules: list[Any] = Field(default_factory=list)
    timezone: str = "UTC"
    created_at: datetime
    updated_at: datetime | None = None

    @classmethod
    def of(
        cls,
        state: AgentState,
        *,
        blocks: list[Block],
        tools: list[ToolOut],
        sources: list[SourceOut],
        llm_config: LlmConfig,
        embedding_config: EmbeddingConfig,
    ) -> AgentOut:
        shown = [BlockOut.of(state.id, b) for b in blocks]
        return cls(
            id=state.id,
            name=state.name,
            system=state.system_prompt,
            description=state.description or None,
            tags=list(state.tags),
            metadata=state.metadata,
            blocks=shown,
            memory=Memory(blocks=shown),
            llm_config=llm_config,
            embedding_config=embedding_config,
            model=llm_config.handle,
            embedding=embedding_config.handle,
            tools=tools,
            sources=sources,
            created_at=state.created_at,
            updated_at=state.updated_at or state.created_at,
        )


class BlockIn(BaseModel):
    """A block of a new agent (Letta's ``CreateBlock``); other keys Letta knows are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    label: str
    value: str
    limit: int | None = Field(
        None, le=INT_MAX, description="Characters the block may hold; default 2000 (or the value's length)"
    )
    description: str | None = None
    read_only: bool = False


class LlmConfigIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    context_window: int | None = Field(None, le=INT_MAX)


class AgentCreate(BaseModel):
    """``agents.create``. Keys Letta knows that memgpt has no use for (timezone, hidden, ...) are ignored; those
    that would change what the agent is or does (block_ids, tool_rules, agent_type other than memgpt_agent, ...)
    are refused in ``refused``."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    memory_blocks: list[BlockIn] | None = None
    # pymemgpt's create_agent(persona=, human=), which letta-client 1.12.1 sends only as extra_body: the texts
    # of those blocks, as if given in memory_blocks.
    persona: str | None = None
    human: str | None = None
    model: str | None = None
    embedding: str | None = None
    llm_config: LlmConfigIn | None = None
    embedding_config: dict[str, Any] | None = None
    context_window_limit: int | None = Field(None, ge=1024, le=INT_MAX)
    system: str | None = None
    tools: list[str] | None = None
    tool_ids: list[str] | None = None
    include_base_tools: bool = True
    tags: list[str] | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    agent_type: str | None = None


class AgentUpdate(BaseModel):
    """``agents.update``: only the keys sent change; ``null`` leaves a field as it is."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    system: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    model: str | None = None
    llm_config: LlmConfigIn | None = None
    embedding: str | None = None
    embedding_config: dict[str, Any] | None = None
    context_window_limit: int | None = Field(None, ge=1024, le=INT_MAX)
    tool_ids: list[str] | None = None


# Letta keys that would change an agent in ways memgpt does not do: refused rather than silently dropped.
REFUSED = {
    "block_ids": "shared blocks are not supported: give the agent its own memory_blocks",
    "source_ids": "attach folders after creating the agent (agents.folders.attach)",
    "folder_ids": "attach folders after creating the agent (agents.folders.attach)",
    "initial_message_sequence": "an agent starts with an empty history here",
    "message_ids": "the context window is managed by the agent itself",
    "tool_rules": "not supported: the agent chooses its tools as MemGPT does (send_message answers, a heartbeat "
    "request goes on); leave tool_rules out",
    "response_format": "not supported: the agent answers in its own words (send_message); leave it out",
}


# An update that sends the blocks' content: Letta's UpdateAgent has no such field and drops it without a word, so
# the caller would believe the agent's memory changed. Blocks are set at creation; a block's value changes by label.
UPDATE_REFUSED = {
    **REFUSED,
    "memory_blocks": "an agent's blocks are set when it is created; change one with agents.blocks.update(label, ...)",
    "persona": "an agent's blocks are set when it is created; change it with agents.blocks.update('persona', ...)",
    "human": "an agent's blocks are set when it is created; change it with agents.blocks.update('human', ...)",
}


def refused(body: BaseModel, refusals: dict[str, str] = REFUSED) -> str | None:
    """The first key of ``body`` (sent with a value) that memgpt refuses, with why, as one line: an agent_type
    other than the one memgpt runs is one (Letta's letta_v1_agent, react_agent, ... run other loops)."""
    kind = getattr(body, "agent_type", None) or (body.model_extra or {}).get("agent_type")
    if kind is not None and kind != AGENT_TYPE:
        return f"agent_type: {kind!r} is not supported: this server runs MemGPT agents ({AGENT_TYPE!r}); leave it out"
    extra = body.model_extra or {}
    for key, why in refusals.items():
        if extra.get(key):
            return f"{key}: {why}"
    return None


class BlockUpdate(BaseModel):
    """``agents.blocks.update``: only the keys sent change."""

    model_config = ConfigDict(extra="ignore")

    value: str | None = None
    limit: int | None = Field(None, le=INT_MAX)
    description: str | None = None
    read_only: bool | None = None
    label: str | None = None


class Deleted(BaseModel):
    message: str


Order = Literal["asc", "desc"]


class ResetMessages(BaseModel):
    model_config = ConfigDict(extra="ignore")

    add_default_initial_messages: bool = False  # a new memgpt agent has none: nothing is added
