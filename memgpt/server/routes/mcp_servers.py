"""``/v1/mcp-servers/`` (Letta's routes, letta-client's ``mcp_servers``) and the MCP servers of an agent.

Who may do what: registering, changing and removing a server is for the server's owner only. A stdio
server is a command the server machine runs as the server's own OS user, and an HTTP server makes the
server machine connect to any URL (its loopback and private network included) with credentials kept in
the server's home; neither may be handed to every holder of an API key. Registered servers are
server-wide, like the ones `memgpt mcp add` adds on that machine (the same mcp.toml): every user can
list them (secrets masked), see their tools and attach them to their own agents, whose turns then call
them with the owner's credentials.

An agent's servers: ``GET /v1/agents/{agent_id}/mcp-servers``, ``PATCH .../mcp-servers/attach/{id}`` and
``.../detach/{id}`` (Letta attaches MCP tools one by one through the agent's tool routes; memgpt attaches
a whole server, whose tools then follow the server). A server's id is its name.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import ValidationError

from memgpt.agent.manager import get_agent
from memgpt.errors import MCPServerError, UserError
from memgpt.mcp.pool import attach_server, attached_servers, detach_server
from memgpt.mcp.registry import (
    ServerSpec,
    add_server,
    get_server,
    load_servers,
    remove_server,
    replace_server,
)
from memgpt.server.schemas.mcp import (
    AgentMCPServers,
    MCPServerConfig,
    MCPServerCreate,
    MCPServerOut,
    MCPServerUpdate,
    MCPToolOut,
)
from memgpt.server.state import CurrentUser, MCPAdminUser, ServerState, State

router = APIRouter(tags=["mcp"])


def _transport_problem(config: MCPServerConfig) -> str | None:
    """What makes ``config`` neither a command nor a URL, in the API's field names (the registry's own checks name
    the CLI's flags: --url, --env, --header)."""
    command, url = bool(config.command), bool((config.server_url or "").strip())
    if not command and not url:
        return "config: give the command that starts the server (command, with args and env) or its server_url"
    if command and url:
        return "config: give a command or a server_url, not both"
    if url and (config.args or config.env):
        return "config: args and env apply to a command (stdio), not to a server_url"
    if command and (config.custom_headers or config.auth_token):
        return "config: custom_headers and auth_token apply to a server_url, not to a command"
    return None


def to_spec(name: str, config: MCPServerConfig) -> ServerSpec:
    """Letta's server config as ours; one line naming the field when it does not make a server."""
    if config.mcp_server_type == "sse":
        raise UserError("SSE MCP servers are not supported: use the server's streamable HTTP URL (streamable_http)")
    problem = _transport_problem(config)
    if problem:
        raise UserError(problem)
    headers = dict(config.custom_headers or {})
    if config.auth_token:
        header = (config.auth_header or "Authorization").strip()
        token = config.auth_token.strip()
        bare = header.lower() == "authorization" and " " not in token
        headers[header] = f"Bearer {token}" if bare else token
    fields = {
        "name": name,
        "command": config.command or "",
        "args": config.args or [],
        "env": config.env or {},
        "url": (config.server_url or "").strip(),
        "headers": headers,
    }
    for key in ("timeout_seconds", "startup_timeout_seconds"):
        value = getattr(config, key)
        if value is not None:
            fields[key] = value
    try:
        return ServerSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise UserError(f"{where}: {message}" if where else message) from exc


@router.get("/v1/mcp-servers/", response_model=list[MCPServerOut])
@router.get("/v1/mcp-servers", response_model=list[MCPServerOut], include_in_schema=False)
def list_servers(state: State, _: CurrentUser) -> list[MCPServerOut]:
    return [MCPServerOut.of(spec) for spec in load_servers(state.home).values()]


@router.post("/v1/mcp-servers/", response_model=MCPServerOut)
@router.post("/v1/mcp-servers", response_model=MCPServerOut, include_in_schema=False)
def create_server(body: MCPServerCreate, state: State, _: MCPAdminUser) -> MCPServerOut:
    """Register a server (owner only: it runs commands on, or connects from, the server machine)."""
    spec = to_spec(body.server_name, body.config)
    add_server(state.home, spec)
    return MCPServerOut.of(spec)


@router.get("/v1/mcp-servers/{server_id}", response_model=MCPServerOut)
def retrieve_server(server_id: str, state: State, _: CurrentUser) -> MCPServerOut:
    return MCPServerOut.of(get_server(state.home, server_id))


@router.patch("/v1/mcp-servers/{server_id}", response_model=MCPServerOut)
def update_server(server_id: str, body: MCPServerUpdate, state: State, _: MCPAdminUser) -> MCPServerOut:
    """Change a server's settings; the agents that use it get the new ones at their next turn."""
    current = get_server(state.home, server_id)
    if body.server_name is not None and body.server_name != current.name:
        raise UserError(
            "a server's name is its id and agents attach it by name: register it under the new name and remove "
            "this one instead"
        )
    spec = to_spec(current.name, body.config)
    replace_server(state.home, spec)
    return MCPServerOut.of(spec)


@router.delete("/v1/mcp-servers/{server_id}", status_code=204)
def delete_server(server_id: str, state: State, _: MCPAdminUser) -> Response:
    """Remove a server. Agents keep its name attached (and get a warning) until it is registered again or
    they detach it."""
    remove_server(state.home, server_id)
    state.mcp().stop(server_id)
    return Response(status_code=204)


@router.get("/v1/mcp-servers/{server_id}/tools", response_model=list[MCPToolOut])
def list_server_tools(server_id: str, state: State, _: CurrentUser) -> list[MCPToolOut]:
    """The server's tools as agents see them (the server is started if it is not running)."""
    spec = get_server(state.home, server_id)
    tools, warnings = state.mcp().tools([spec.name])
    if warnings and not tools:
        raise MCPServerError(warnings[0])
    return [
        MCPToolOut(
            id=tool.name,
            name=tool.name,
            description=tool.description,
            json_schema={"name": tool.name, "description": tool.description, "parameters": tool.parameters},
            tags=["mcp", f"mcp:{spec.name}"],
            metadata={"mcp_server": spec.name},
        )
        for tool in tools
    ]


def _agent_servers(state: ServerState, agent_id: str, names: list[str]) -> AgentMCPServers:
    registry = load_servers(state.home)
    return AgentMCPServers(
        agent_id=agent_id,
        mcp_servers=[MCPServerOut.of(registry[n]) for n in names if n in registry],
        missing=[n for n in names if n not in registry],
    )


@router.get("/v1/agents/{agent_id}/mcp-servers", response_model=AgentMCPServers)
def list_agent_servers(agent_id: str, state: State, user: CurrentUser) -> AgentMCPServers:
    agent = get_agent(state.storage, user.id, agent_id)
    return _agent_servers(state, agent.id, attached_servers(state.storage, agent))


@router.patch("/v1/agents/{agent_id}/mcp-servers/attach/{server_id}", response_model=AgentMCPServers)
def attach_agent_server(agent_id: str, server_id: str, state: State, user: CurrentUser) -> AgentMCPServers:
    """Give the agent a registered server's tools from its next turn on (attaching twice changes nothing)."""
    agent = get_agent(state.storage, user.id, agent_id)
    attach_server(state.storage, state.home, agent, server_id)
    return _agent_servers(state, agent.id, attached_servers(state.storage, agent))


@router.patch("/v1/agents/{agent_id}/mcp-servers/detach/{server_id}", response_model=AgentMCPServers)
def detach_agent_server(agent_id: str, server_id: str, state: State, user: CurrentUser) -> AgentMCPServers:
    agent = get_agent(state.storage, user.id, agent_id)
    detach_server(state.storage, agent, server_id)
    return _agent_servers(state, agent.id, attached_servers(state.storage, agent))
