"""``/v1/agents/``: create, list, retrieve, update and delete agents, and edit their core memory blocks.

Every route works on the key's user's agents only: another user's agent is a 404 like a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import TypeAdapter

from memgpt.agent import manager
from memgpt.agent.tools import Tool, builtin_tools
from memgpt.errors import NotFoundError, UserError
from memgpt.memory.core import DEFAULT_LIMIT
from memgpt.server.schemas.agents import (
    UPDATE_REFUSED,
    AgentCreate,
    AgentOut,
    AgentUpdate,
    BlockIn,
    BlockOut,
    BlockUpdate,
    Deleted,
    Order,
    ResetMessages,
    block_id,
    refused,
)
from memgpt.server.schemas.common import SourceOut, ToolOut, tool_id
from memgpt.server.state import CurrentUser, ServerState, State
from memgpt.storage.agents import AgentQuery
from memgpt.types import AgentState, Block

router = APIRouter(prefix="/v1/agents", tags=["agents"])


def find_agent(state: ServerState, user_id: str, agent_id: str) -> AgentState:
    """The user's agent with this id; a NotFoundError (404) for anyone else's, exactly as for a missing one."""
    found = state.storage.agents.by_id(user_id, agent_id)
    if found is None:
        raise _missing(agent_id)
    return found


def _missing(agent_id: str) -> NotFoundError:
    return NotFoundError(f"no agent with id {agent_id!r}")


class _View:
    """Turns agents into ``AgentOut``, loading what every agent of a response shares only once."""

    def __init__(self, state: ServerState, user_id: str, agents: Sequence[AgentState] = ()) -> None:
        self.state = state
        self.catalog: list[Tool] = state.tool_catalog()
        builtin = {t.name for t in builtin_tools()}
        # Built once per response: every agent of a list shows the same few functions.
        self.tools = {
            t.name: ToolOut.of(t.name, t.description, t.parameters, builtin=t.name in builtin) for t in self.catalog
        }
        self.sources = {s.id: s for s in state.storage.metadata.list_sources(user_id)}
        ids = [agent.id for agent in agents]  # a list's blocks and attachments: two queries, not two per agent
        self.blocks = state.storage.agents.blocks_of(ids) if ids else {}
        self.attached = state.storage.attachments.source_ids_of(ids) if ids else {}

    def __call__(self, agent: AgentState) -> AgentOut:
        storage, models = self.state.storage, self.state.models()
        tools = [self.tools[t.name] for t in manager.chosen_tools(agent, self.catalog)]
        source_ids = self.attached[agent.id] if agent.id in self.attached else storage.attachments.source_ids(agent.id)
        attached = [self.sources[i] for i in source_ids if i in self.sources]
        return AgentOut.of(
            agent,
            blocks=self.blocks[agent.id] if agent.id in self.blocks else storage.agents.blocks(agent.id),
            tools=tools,
            sources=[SourceOut.of(s, self.state.config.embedding) for s in attached],
            llm_config=models.llm_config(agent),
            embedding_config=models.embedding_config(agent.space),
        )


def _tool_names(state: ServerState, names: list[str] | None, ids: list[str] | None) -> list[str] | None:
    """Tool names from names and/or Letta tool ids (ids are derived from names); None when neither is sent."""
    if names is None and ids is None:
        return None
    catalog = state.tool_catalog()
    by_id = {tool_id(t.name): t.name for t in catalog}
    unknown = [i for i in ids or [] if i not in by_id]
    if unknown:
        raise UserError(f"tool_ids: no tool with id {unknown[0]!r}; see the tools of agents.retrieve")
    return manager.check_tool_names([*(names or []), *(by_id[i] for i in ids or [])], tools_folder=state.home / "tools")


def _blocks(body: AgentCreate) -> list[Block]:
    """The new agent's blocks: memory_blocks, then persona and human when sent as texts of their own (a block
    of the same label in memory_blocks too is refused by ``manager.check_blocks``)."""
    texts = {"persona": body.persona, "human": body.human}
    given = [*(body.memory_blocks or []), *(BlockIn(label=k, value=v) for k, v in texts.items() if v is not None)]
    return [
        Block(
            b.label,
            b.value,
            b.limit if b.limit is not None else max(DEFAULT_LIMIT, len(b.value)),
            b.description or "",
            b.read_only,
        )
        for b in given
    ]


@router.post("/", response_model=AgentOut)
@router.post("", response_model=AgentOut, include_in_schema=False)
def create_agent(body: AgentCreate, state: State, user: CurrentUser) -> AgentOut:
    """Create an agent. memory_blocks become its core memory (persona and human default to the server's
    templates); model is a handle of this server's LLM; embedding must be this server's embedding model."""
    problem = refused(body)
    if problem:
        raise UserError(problem)
    models = state.models()
    handle = body.model or (body.llm_config.model if body.llm_config else None)
    model = models.model_for(handle) if handle else models.llm().model
    window = body.context_window_limit or (body.llm_config.context_window if body.llm_config else None)
    models.check_embedding(body.embedding, body.embedding_config)
    tools = _tool_names(state, body.tools, body.tool_ids)
    if not body.include_base_tools:
        tools = tools or []
    elif tools is not None:
        tools = [t.name for t in builtin_tools()] + tools
    name = body.name if body.name is not None else manager.friendly_name(state.storage.agents.names(user.id))
    created = manager.create_agent(
        state.storage,
        user_id=user.id,
        name=name,
        persona=state.config.default_persona,
        human=state.config.default_human,
        model=model,
        context_window=window or models.llm().context_window,
        embedding=models.embedding_space(),
        blocks=_blocks(body),
        system=body.system,
        description=body.description or "",
        tags=body.tags or [],
        metadata=body.metadata,
        tools=tools,
        tools_folder=state.home / "tools",
    )
    return _View(state, user.id)(created)


_AGENT_LIST = TypeAdapter(list[AgentOut])


@router.get("/", response_model=list[AgentOut])
@router.get("", response_model=list[AgentOut], include_in_schema=False)
def list_agents(
    state: State,
    user: CurrentUser,
    after: str | None = None,
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    order: Order | None = None,
    ascending: bool | None = None,
    name: str | None = None,
    query_text: str | None = None,
    tags: Annotated[list[str] | None, Query()] = None,
    match_all_tags: bool = False,
) -> Response:
    """The user's agents, newest first unless ``order=asc``; ``after``/``before`` are agent ids."""
    query = AgentQuery(
        limit=limit,
        ascending=order == "asc" if order is not None else bool(ascending),
        after=after,
        before=before,
        name=name,
        query_text=query_text,
        tags=tags or [],
        match_all_tags=match_all_tags,
    )
    agents = state.storage.agents.page(user.id, query)
    view = _View(state, user.id, agents)
    # Serialized here, in the request's worker thread, once: FastAPI would validate the page again against
    # response_model, turn it into dicts and render those with json.dumps on the event loop (~14 KB an agent,
    # most of it the tools' schemas: 30 of the 45 ms a page of 37 took, and the event loop blocked for half).
    body = _AGENT_LIST.dump_json([view(agent) for agent in agents], by_alias=True)
    return Response(body, media_type="application/json")


@router.get("/{agent_id}", response_model=AgentOut)
def retrieve_agent(agent_id: str, state: State, user: CurrentUser) -> AgentOut:
    return _View(state, user.id)(find_agent(state, user.id, agent_id))


@router.patch("/{agent_id}", response_model=AgentOut)
def update_agent(agent_id: str, body: AgentUpdate, state: State, user: CurrentUser) -> AgentOut:
    """Change only the fields sent (name, system, description, tags, metadata, model, tool_ids, ...)."""
    problem = refused(body, UPDATE_REFUSED)
    if problem:
        raise UserError(problem)
    agent = find_agent(state, user.id, agent_id)
    models = state.models()
    handle = body.model or (body.llm_config.model if body.llm_config else None)
    if body.embedding is not None or body.embedding_config is not None:
        models.check_embedding(body.embedding, body.embedding_config)
    window = body.context_window_limit or (body.llm_config.context_window if body.llm_config else None)
    updated = manager.update_agent(
        state.storage,
        agent,
        name=body.name,
        model=models.model_for(handle) if handle else None,
        context_window=window,
        system=body.system,
        description=body.description,
        tags=body.tags,
        metadata=body.metadata,
        tools=_tool_names(state, None, body.tool_ids),
        tools_folder=state.home / "tools",
    )
    return _View(state, user.id)(updated)


@router.delete("/{agent_id}", response_model=Deleted)
def delete_agent(agent_id: str, state: State, user: CurrentUser) -> Deleted:
    """Delete the agent with its messages and its own archival passages (attached folders stay)."""
    agent = find_agent(state, user.id, agent_id)
    with state.turns().holding(agent.id):
        manager.delete_agent(state.storage, agent)
    return Deleted(message=f"Agent id={agent.id} successfully deleted")


@router.patch("/{agent_id}/reset-messages", response_model=AgentOut)
def reset_messages(agent_id: str, state: State, user: CurrentUser, body: ResetMessages | None = None) -> AgentOut:
    """Letta's ``messages.reset``: the agent's context starts over as a new agent's; its messages stay in recall
    (``manager.reset_messages``). A new memgpt agent has no initial messages, so ``add_default_initial_messages``
    adds none. Waits for a running turn of the agent."""
    agent = find_agent(state, user.id, agent_id)
    with state.turns().holding(agent.id):
        manager.reset_messages(state.storage, agent)
    return _View(state, user.id)(find_agent(state, user.id, agent_id))


# -- core memory ------------------------------------------------------------------------------------
@router.get("/{agent_id}/core-memory/blocks", response_model=list[BlockOut])
def list_blocks(
    agent_id: str,
    state: State,
    user: CurrentUser,
    after: str | None = None,
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Order = "desc",
) -> list[BlockOut]:
    """The agent's core memory blocks; ``after``/``before`` are block ids."""
    agent = find_agent(state, user.id, agent_id)
    shown = [BlockOut.of(agent.id, b) for b in state.storage.agents.blocks(agent.id)]
    shown = shown if order == "asc" else shown[::-1]
    ids = [b.id for b in shown]
    start, stop = 0, len(shown)
    for cursor, later in ((after, True), (before, False)):
        if cursor is not None:
            if cursor not in ids:
                return []
            start, stop = (max(start, ids.index(cursor) + 1), stop) if later else (start, min(stop, ids.index(cursor)))
    window = shown[start:stop]
    return window[-limit:] if before is not None and after is None else window[:limit]


@router.get("/{agent_id}/core-memory/blocks/{block_label}", response_model=BlockOut)
def retrieve_block(agent_id: str, block_label: str, state: State, user: CurrentUser) -> BlockOut:
    agent = find_agent(state, user.id, agent_id)
    return BlockOut.of(agent.id, manager.get_block(state.storage, agent, _label(agent, block_label, state)))


@router.patch("/{agent_id}/core-memory/blocks/{block_label}", response_model=BlockOut)
def update_block(agent_id: str, block_label: str, body: BlockUpdate, state: State, user: CurrentUser) -> BlockOut:
    """Change a block's value, limit, description or read-only flag; the agent's next step sees it.
    Waits for a running turn of the agent so that neither edit is lost."""
    agent = find_agent(state, user.id, agent_id)
    label = _label(agent, block_label, state)
    if body.label is not None and body.label != label:
        raise UserError("label: blocks cannot be renamed here; the agent knows them by label")
    with state.turns().holding(agent.id):
        block = manager.update_block(
            state.storage,
            agent,
            label,
            value=body.value,
            limit=body.limit,
            description=body.description,
            read_only=body.read_only,
        )
    return BlockOut.of(agent.id, block)


def _label(agent: AgentState, label_or_id: str, state: ServerState) -> str:
    """Blocks are addressed by label; a block id is accepted as well."""
    if label_or_id.startswith("block-"):
        for block in state.storage.agents.blocks(agent.id):
            if block_id(agent.id, block.label) == label_or_id:
                return block.label
    return label_or_id
