"""MCP tools as memgpt ``Tool``s: what the model sees and how its call reaches the server.

Each tool is named ``SERVER__TOOL`` (cut to OpenAI's ``^[a-zA-Z0-9_-]{1,64}$`` with a short hash when
needed), keeps the server's description and JSON input schema, and gains MemGPT's
``request_heartbeat`` argument. The arguments go to the server as the model wrote them: the server
validates them against its own schema, and its complaint comes back to the model as the result.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from memgpt.agent.tools import REQUEST_HEARTBEAT, REQUEST_HEARTBEAT_DOC, Tool
from memgpt.errors import ToolError

if TYPE_CHECKING:
    from memgpt.mcp.client import MCPClients, RemoteTool

MAX_NAME = 64
SEPARATOR = "__"
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")
VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _PassThrough(BaseModel):
    """Accepts any arguments (the server checks them) and reads MemGPT's heartbeat flag."""

    model_config = ConfigDict(extra="allow")
    request_heartbeat: bool = False


def exposed_name(server: str, tool: str, taken: set[str]) -> str:
    """``server__tool`` with characters outside ``[a-zA-Z0-9_-]`` replaced, unique among ``taken``.

    A name too long, or one that clashes after the replacement, ends in 8 hex digits of a hash of the
    real name, so the same server always gives a tool the same name.
    """
    name = f"{server}{SEPARATOR}{_INVALID.sub('_', tool)}"
    if len(name) <= MAX_NAME and name not in taken:
        return name
    digest = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()
    for start in range(0, len(digest) - 8):
        suffix = "_" + digest[start : start + 8]
        candidate = name[: MAX_NAME - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
    raise ValueError(f"cannot name tool {tool!r} of MCP server {server!r} uniquely")  # needs a 2^-32 clash 50 times


def _parameters(schema: dict[str, Any]) -> dict[str, Any]:
    parameters = copy.deepcopy(schema)
    parameters.pop("$schema", None)
    parameters["type"] = "object"
    properties = parameters.setdefault("properties", {})
    properties[REQUEST_HEARTBEAT] = {"type": "boolean", "description": REQUEST_HEARTBEAT_DOC}
    parameters["required"] = [*(r for r in parameters.get("required", []) if r != REQUEST_HEARTBEAT), REQUEST_HEARTBEAT]
    return parameters


def adapt(clients: MCPClients, remote: RemoteTool, name: str) -> Tool:
    """One MCP tool as a memgpt Tool named ``name``."""

    def call(**arguments: Any) -> str:
        output = clients.call(remote.server, remote.name, arguments)
        if output.is_error:
            raise ToolError(output.text)
        return output.text

    description = remote.description.strip() or f"Tool {remote.name} of the MCP server {remote.server}."
    return Tool(name, description, _parameters(remote.input_schema), lambda: _PassThrough, call)


def mcp_tools(
    clients: MCPClients, reserved: set[str], servers: Sequence[str] | None = None
) -> tuple[list[Tool], list[str]]:
    """The tools of every started server (or of ``servers`` only), and a warning for each one that
    cannot be offered."""
    tools: list[Tool] = []
    warnings: list[str] = []
    taken = set(reserved)
    remotes = clients.tools() if servers is None else [t for name in servers for t in clients.tools(name)]
    for remote in remotes:
        if REQUEST_HEARTBEAT in remote.input_schema.get("properties", {}):
            warnings.append(
                f"MCP server {remote.server!r}: tool {remote.name!r} has its own {REQUEST_HEARTBEAT} argument, "
                "which MemGPT reserves; skipped"
            )
            continue
        name = exposed_name(remote.server, remote.name, taken)
        taken.add(name)
        tools.append(adapt(clients, remote, name))
    return tools, warnings
