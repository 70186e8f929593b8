"""`memgpt mcp add|list|remove`: MCP servers whose tools an agent can use with `memgpt run --mcp NAME`."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from memgpt.cli.common import console, interactive

if TYPE_CHECKING:
    from memgpt.agent.tools import Tool
    from memgpt.mcp.client import MCPClients
    from memgpt.mcp.registry import ServerSpec

LOGS = "logs"  # stdio servers' stderr goes to <home>/logs/mcp-NAME.log, never into the chat


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


@contextmanager
def tools_for_run(names: Sequence[str]) -> Iterator[list[Tool]]:
    """Start the named servers for one `memgpt run` and yield their tools; they stop when it ends.

    An unknown name stops the run before anything starts; a server that fails to start costs a warning.
    """
    if not names:
        yield []
        return
    from memgpt.mcp.client import MCPClients
    from memgpt.mcp.registry import load_servers, pick_servers
    from memgpt.mcp.tools import mcp_tools

    home = _home()
    specs = pick_servers(load_servers(home), names)
    with MCPClients(specs, log_dir=home / LOGS) as clients:
        with _waiting("starting MCP servers"):
            failures = clients.start()
        for name, why in failures.items():
            console.print(f"warning: MCP server '{name}' is not available: {why}", markup=False)
        tools, warnings = mcp_tools(clients, set())
        for warning in warnings:
            console.print(f"warning: {warning}", markup=False)
        yield tools
