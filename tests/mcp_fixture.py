"""A small MCP server built with the SDK's MCPServer, for the MCP tests, that can misbehave on request.

    python tests/mcp_fixture.py stdio [--tag TAG] [--start exit|hang] [--linger]
    python tests/mcp_fixture.py http PORT [--api-key KEY]

``--tag`` only marks the command line, so a test can find the process; ``--start`` makes it exit or
hang before it answers anything; ``--linger`` keeps it alive for a minute after its stdin closes (a
server slow to exit, which only a signal stops); ``--api-key`` makes the HTTP server refuse requests without the
header ``X-Api-Key: KEY`` (401).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from typing import Any

import anyio
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult
from pydantic import BaseModel

# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


class Total(BaseModel):
    total: int


def build() -> MCPServer:
    server = MCPServer("fixture")
    _add_good_tools(server)
    _add_bad_tools(server)
    return server


def _add_good_tools(server: MCPServer) -> None:
    @server.tool()
    def echo(text: str) -> str:
        """Repeat the text back."""
        return text

    @server.tool()
    def add(a: int, b: int) -> Total:
        """Add two integers."""
        return Total(total=a + b)

    @server.tool()
    def structured_only() -> CallToolResult:
        """Answer with structured content and no text."""
        return CallToolResult(content=[], structured_content={"answer": 42})

    @server.tool()
    def picture() -> Image:
        """A tiny PNG image."""
        return Image(data=PNG, format="png")

    @server.tool(name="look.up/item")
    def look_up(item: str) -> str:
        """A tool whose name OpenAI would not accept as it is."""
        return f"found {item}"

    @server.tool()
    def long_text(chars: int) -> str:
        """Return that many characters."""
        return "x" * chars

    @server.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    @server.tool()
    def env(name: str) -> str:
        """The value of an environment variable in the server's process."""
        return os.environ.get(name, "(unset)")

    @server.tool()
    def secret_header(ctx: Context) -> str:
        """Whether the request carried the X-Api-Key header (HTTP only)."""
        headers = ctx.headers or {}
        return "has key" if headers.get("x-api-key") else "no key"


def _add_bad_tools(server: MCPServer) -> None:
    @server.tool()
    def fail(reason: str) -> str:
        """Always fails with the reason (an isError result)."""
        raise ToolError(reason)

    @server.tool()
    def refuse() -> str:
        """Answers with a JSON-RPC error instead of a result."""
        raise MCPError(code=-32042, message="refusing on purpose")

    @server.tool()
    def crash() -> str:
        """The server process dies while running this."""
        os._exit(7)

    @server.tool()
    async def hang(seconds: float) -> str:
        """Sleep, then answer."""
        await anyio.sleep(seconds)
        return "woke up"

    @server.tool()
    def chatter() -> str:
        """Writes a line that is not JSON-RPC into the protocol stream, then answers normally."""
        os.write(_wire(), b"this line is not JSON-RPC\n")
        return "answered after the chatter"

    @server.tool()
    def garble(ctx: Context) -> str:
        """Answers first with a result that is not a tool result (then the real one, too late)."""
        wrong = {"jsonrpc": "2.0", "id": _wire_id(ctx.request_id), "result": {"content": "not a list"}}
        os.write(_wire(), json.dumps(wrong).encode() + b"\n")
        return "too late"


def _wire() -> int:
    """The descriptor the stdio transport writes messages to: the SDK points fd 1 at stderr while it
    serves, so that a stray print cannot corrupt the protocol; misbehaving on purpose needs the real one."""
    from mcp.server import stdio

    claim = stdio._claims.get(1)
    return claim.private_fd if claim is not None and claim.private_fd is not None else 1


def _wire_id(request_id: str) -> Any:
    return int(request_id) if request_id.isdigit() else request_id


def _require_key(app: Any, key: str) -> Any:
    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"x-api-key") != key.encode():
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"missing or wrong X-Api-Key"})
            return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("port", nargs="?", type=int, default=0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--start", choices=["exit", "hang"], default=None)
    parser.add_argument("--linger", action="store_true")
    parser.add_argument("--api-key", default="")
    args = parser.parse_args()
    if args.start == "exit":
        print("fixture: told to exit at start", file=sys.stderr)
        sys.exit(3)
    if args.start == "hang":
        time.sleep(3600)
    server = build()
    if args.transport == "stdio":
        server.run()
        if args.linger:
            time.sleep(60)
        return
    import uvicorn

    app: Any = server.streamable_http_app()
    if args.api_key:
        app = _require_key(app, args.api_key)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
