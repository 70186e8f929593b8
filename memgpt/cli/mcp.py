"""`memgpt mcp add|list|remove|serve`: MCP servers whose tools agents use (attached with /mcp attach, or
for one run with `memgpt run --mcp NAME`), and memgpt's own memory served to MCP clients."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from memgpt.cli import startup_over
from memgpt.cli.common import console, embedding_model, home_and_config, interactive

if TYPE_CHECKING:
    from memgpt.agent.agent import Agent
    from memgpt.agent.tools import Tool
    from memgpt.mcp.client import MCPClients
    from memgpt.mcp.pool import ServerPool
    from memgpt.mcp.registry import ServerSpec
    from memgpt.storage import Storage
    from memgpt.types import AgentState


def _home() -> Path:
    from memgpt.config import memgpt_home

    return memgpt_home()


def _waiting(text: str) -> Any:
    return console.status(f"[bright_black]{text}[/]", spinner="dots") if interactive() else nullcontext()


def add(
    name: str = typer.Argument(..., help="A name for the server; the model sees its tools as NAME__TOOL."),
    command: list[str] = typer.Argument(
        None, help="For a stdio server: the command and its arguments, after `--`.", show_default=False
    ),
    url: str = typer.Option("", "--url", help="For a streamable-HTTP server: its URL.", show_default=False),
    header: list[str] = typer.Option(
        None,
        "--header",
        help="HTTP header K=V sent to --url (repeatable; stored 0600, never shown).",
        show_default=False,
    ),
    env: list[str] = typer.Option(
        None,
        "--env",
        help="Environment variable K=V for the command (repeatable; stored 0600, never shown).",
        show_default=False,
    ),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds one tool call may take."),
    startup_timeout: float = typer.Option(30.0, "--startup-timeout", help="Seconds the server may take to start."),
) -> None:
    """Add an MCP server: `memgpt mcp add NAME -- COMMAND ARGS...` or `memgpt mcp add NAME --url URL`."""
    from memgpt.mcp.registry import add_server, new_spec

    spec = new_spec(
        name,
        command=command or (),
        url=url,
        env=env or (),
        headers=header or (),
        timeout_seconds=timeout,
        startup_timeout_seconds=startup_timeout,
    )
    add_server(_home(), spec)
    console.print(
        f"Added MCP server '{spec.name}' ({spec.transport}: {spec.target()}). Check it with `memgpt mcp list`; "
        f"use it with `memgpt run --mcp {spec.name}`.",
        markup=False,
    )


def remove(name: str = typer.Argument(..., help="Name of the server.")) -> None:
    """Remove an MCP server."""
    from memgpt.mcp.registry import remove_server

    remove_server(_home(), name)
    console.print(f"Removed MCP server '{name}'", markup=False)


def list_servers(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for each server to start.", min=0.1),
) -> None:
    """List MCP servers and their tools (each server is started briefly to ask it)."""
    from memgpt.mcp.client import MCPClients
    from memgpt.mcp.pool import LOGS
    from memgpt.mcp.registry import load_servers

    home = _home()
    servers = list(load_servers(home).values())
    if not servers:
        if as_json:
            console.print_json("[]")
        else:
            console.print("No MCP servers yet. Add one with `memgpt mcp add NAME -- COMMAND ARGS...`.", markup=False)
        return
    with MCPClients(servers, log_dir=home / LOGS, startup_timeout=timeout) as clients, _waiting("asking the servers"):
        failures = clients.start()
        report = [_report(spec, clients, failures.get(spec.name)) for spec in servers]
    if as_json:
        console.print_json(json.dumps(report))
        return
    for spec, entry in zip(servers, report, strict=True):
        console.print(f"{spec.name} ({spec.transport}) {spec.target()}", markup=False)
        if entry["error"]:
            console.print(f"  error: {entry['error']}", markup=False)
        elif not entry["tools"]:
            console.print("  (no tools)", markup=False)
        width = max((len(t["exposed_as"]) for t in entry["tools"]), default=0)
        for tool in entry["tools"]:
            first_line = (tool["description"].strip().splitlines() or [""])[0]
            console.print(f"  {tool['exposed_as']:<{width}}  {first_line[:100]}", markup=False)


def _report(spec: ServerSpec, clients: MCPClients, error: str | None) -> dict[str, Any]:
    from memgpt.mcp.tools import exposed_name

    taken: set[str] = set()
    tools = []
    for remote in clients.tools(spec.name):
        exposed = exposed_name(spec.name, remote.name, taken)
        taken.add(exposed)
        tools.append({"name": remote.name, "exposed_as": exposed, "description": remote.description})
    return {**spec.masked(), "tools": tools, "error": error}


@dataclass
class ChatServers:
    """The MCP servers of one `memgpt run`: those attached to the agent and those given with --mcp (for
    this run only). The chat's /mcp lists, attaches and detaches them; they stop when the run ends."""

    pool: ServerPool
    storage: Storage
    for_run: list[str]

    def start(self, state: AgentState) -> list[Tool]:
        """Start the agent's servers and return their tools; one warning line per server that cannot."""
        from memgpt.mcp.pool import attached_servers

        with _waiting("starting MCP servers"):
            tools, warnings = self.pool.tools([*attached_servers(self.storage, state), *self.for_run])
        for warning in warnings:
            console.print(f"warning: {warning}", markup=False)
        return tools

    def show(self, agent: Agent) -> None:
        """/mcp: the agent's servers and the tools each gave it."""
        from memgpt.mcp.pool import attached_servers

        attached = attached_servers(self.storage, agent.state)
        names = list(dict.fromkeys([*attached, *self.for_run]))
        if not names:
            console.print("No MCP servers. Attach one with /mcp attach NAME (see `memgpt mcp list`).", markup=False)
            return
        for name in names:
            how = "attached" if name in attached else "this run only (--mcp)"
            tools = _tools_of(agent, name)
            state = f"{len(tools)} tools: {', '.join(tools)}" if tools else "not available"
            console.print(f"{name} ({how}): {state}", markup=False)

    def attach(self, agent: Agent, name: str) -> None:
        """/mcp attach NAME: remember the server for the agent and give it the server's tools now."""
        from memgpt.mcp.pool import attach_server

        spec, fresh = attach_server(self.storage, _home(), agent.state, name)
        if not fresh:
            console.print(f"MCP server '{spec.name}' was already attached", markup=False)
            return
        with _waiting(f"starting MCP server {spec.name}"):
            tools, warnings = self.pool.tools([spec.name], reserved=set(agent.tools))
        for tool in tools:
            agent.tools.setdefault(tool.name, tool)
        for warning in warnings:
            console.print(f"warning: {warning}", markup=False)
        given = ", ".join(t.name for t in tools) or "none yet"
        console.print(
            f"Attached MCP server '{spec.name}' to agent '{agent.state.name}' (tools: {given}); "
            "it is started whenever this agent runs",
            markup=False,
        )

    def detach(self, agent: Agent, name: str) -> None:
        """/mcp detach NAME: forget the server for the agent and take its tools away now."""
        from memgpt.mcp.pool import detach_server

        name = detach_server(self.storage, agent.state, name)
        if name in self.for_run:
            console.print(f"Detached MCP server '{name}'; its tools stay for this run (--mcp {name})", markup=False)
            return
        for tool in _tools_of(agent, name):
            del agent.tools[tool]
        self.pool.stop(name)
        console.print(f"Detached MCP server '{name}' from agent '{agent.state.name}'", markup=False)

    def choices(self, agent: Agent, attaching: bool) -> list[str]:
        from memgpt.mcp.pool import attached_servers

        attached = attached_servers(self.storage, agent.state)
        if not attaching:
            return attached
        from memgpt.mcp.registry import load_servers

        return [name for name in load_servers(_home()) if name not in attached]


def _tools_of(agent: Agent, server: str) -> list[str]:
    from memgpt.mcp.tools import SEPARATOR

    prefix = f"{server}{SEPARATOR}"
    return [name for name in agent.tools if name.startswith(prefix)]


@contextmanager
def chat_servers(storage: Storage, for_run: Sequence[str]) -> Iterator[ChatServers]:
    """The MCP servers of one `memgpt run`; an unknown --mcp name stops it before anything starts, and
    every server started is stopped when it ends."""
    from memgpt.mcp.pool import ServerPool

    home = _home()
    names: list[str] = []
    if for_run:
        from memgpt.mcp.registry import load_servers, pick_servers

        names = [spec.name for spec in pick_servers(load_servers(home), for_run)]
    pool = ServerPool(home, retry_seconds=0)  # a person asked: always try again
    try:
        yield ChatServers(pool, storage, names)
    finally:
        pool.close()


class Transport(StrEnum):
    stdio = "stdio"
    http = "http"


def serve(
    agent: str | None = typer.Option(
        None, "--agent", help="Agent whose memory to serve (default: your only agent; over HTTP, ?agent=NAME)."
    ),
    transport: Transport = typer.Option(
        Transport.stdio, "--transport", help="stdio for a local MCP client; http for remote ones (API keys)."
    ),
    host: str | None = typer.Option(None, "--host", help="HTTP: address to listen on (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="HTTP: port to listen on (default 8283)."),
) -> None:
    """Serve an agent's memory to MCP clients (Claude Desktop, Cursor...): archival, recall, core memory, sources."""
    startup_over()  # a process that runs for days collects its garbage from the start
    if transport is Transport.http:
        _serve_http(agent, host, port)
        return
    if host is not None or port is not None:
        from memgpt.errors import UserError

        raise UserError("--host and --port apply to --transport http")
    _serve_stdio(agent)


def _serve_stdio(agent: str | None) -> None:
    """The home's own user over stdin/stdout. Nothing else may be written to stdout: it is the protocol."""
    import anyio

    from memgpt.agent.manager import get_agent
    from memgpt.mcp.serve import Caller, memory_server, run_stdio
    from memgpt.storage import Storage
    from memgpt.storage.milvus.client import STDIO_MCP_HOLDER, announce_holder

    home, config = home_and_config()
    announce_holder(STDIO_MCP_HOLDER)  # what `memgpt run` is told while this holds the Milvus Lite file
    with Storage(config, home) as storage:
        if agent is not None:
            agent = get_agent(storage, config.user_id, agent).name  # a wrong name fails now, in one line
        caller = Caller(config.user_id, agent, "start `memgpt mcp serve` with --agent NAME")
        server = memory_server(
            storage,
            lambda: embedding_model(config),
            lambda _ctx: caller,
            max_insert_mb=config.server.max_passage_mb,
        )
        with suppress(KeyboardInterrupt):  # Ctrl-C in a terminal: stop quietly
            anyio.run(run_stdio, server)


def _serve_http(agent: str | None, host: str | None, port: int | None) -> None:
    """Only /mcp, with the API keys of `memgpt server` (which serves /mcp beside its REST API too)."""
    import uvicorn

    from memgpt.cli.server import listen_address
    from memgpt.server.app import KEEP_ALIVE_SECONDS, URL_ENV, open_state
    from memgpt.server.routes.mcp_memory import PATH, standalone_app

    home, config, host, port, has_keys = listen_address(host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    os.environ[URL_ENV] = url
    app = standalone_app(open_state(home, config), default_agent=agent)
    console.print(
        f"memgpt MCP server on {url}{PATH} (send 'Authorization: Bearer sk-...'; pick an agent with ?agent=NAME)",
        markup=False,
    )
    if not has_keys:
        from memgpt.cli.common import err_console

        err_console.print(
            "No API keys yet: every request needs one. Create one with `memgpt key create`.", markup=False
        )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=config.server.shutdown_seconds,  # then running requests are cut (`memgpt server`'s)
    )
