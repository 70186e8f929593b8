"""MCP servers over the API, in Letta's shapes (``/v1/mcp-servers/``, letta-client's ``mcp_servers``).

Letta sends a server's settings as ``config`` with ``mcp_server_type`` ``stdio``, ``sse`` or
``streamable_http`` (the client may leave the type out). Answers never carry a secret: environment
and header values come back as ``***``, the ``auth_token`` never.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from memgpt.mcp.registry import MASK, ServerSpec

STDIO = "stdio"
HTTP = "streamable_http"


class MCPServerConfig(BaseModel):
    """Either a command to run (stdio) or a URL (streamable HTTP)."""

    mcp_server_type: Literal["stdio", "sse", "streamable_http"] | None = None
    command: str | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = None
    server_url: str | None = None
    auth_header: str | None = Field(default=None, description="Header for auth_token (default Authorization)")
    auth_token: str | None = Field(
        default=None, description="Sent in auth_header; under Authorization a bare token is sent as 'Bearer TOKEN'"
    )
    custom_headers: dict[str, str] | None = None
    # memgpt's own settings (Letta has none)
    timeout_seconds: float | None = Field(default=None, description="Seconds one tool call may take (default 60)")
    startup_timeout_seconds: float | None = Field(default=None, description="Seconds it may take to start (30)")


class MCPServerCreate(BaseModel):
    server_name: str
    config: MCPServerConfig


class MCPServerUpdate(BaseModel):
    config: MCPServerConfig
    server_name: str | None = None


class MCPServerOut(BaseModel):
    """A server as Letta's ``StdioMcpServer`` or ``StreamableHTTPMcpServer``; the id is its name."""

    id: str
    server_name: str
    mcp_server_type: str
    command: str | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = None
    server_url: str | None = None
    custom_headers: dict[str, str] | None = None
    timeout_seconds: float
    startup_timeout_seconds: float

    @classmethod
    def of(cls, spec: ServerSpec) -> MCPServerOut:
        common = {
            "id": spec.name,
            "server_name": spec.name,
            "timeout_seconds": spec.timeout_seconds,
            "startup_timeout_seconds": spec.startup_timeout_seconds,
        }
        if spec.transport == "http":
            headers = dict.fromkeys(spec.headers, MASK)
            return cls(**common, mcp_server_type=HTTP, server_url=spec.url, custom_headers=headers)
        env = dict.fromkeys(spec.env, MASK)
        return cls(**common, mcp_server_type=STDIO, command=spec.command, args=spec.args, env=env)


class MCPToolOut(BaseModel):
    """One tool of an MCP server as Letta's ``Tool`` (``external_mcp``), named as agents see it."""

    id: str
    name: str
    description: str | None = None
    tool_type: str = "external_mcp"
    json_schema: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict, serialization_alias="metadata_")


class AgentMCPServers(BaseModel):
    """The MCP servers attached to one agent (their tools are the agent's at every turn)."""

    agent_id: str
    mcp_servers: list[MCPServerOut]
    missing: list[str] = Field(
        default_factory=list, description="Attached names no longer registered: detach them or register them again"
    )
