"""The MCP servers agents use: attached per agent, started on first use, shared within a process.

`memgpt server` opens an agent for every turn; starting a stdio server each time would cost a second
or more per turn, so one pool per process keeps each server's session for as long as the process runs
and every agent with the server attached shares it (the SDK multiplexes calls over one session).
`memgpt run` uses a pool too, so the chat's /mcp attach and detach start and stop servers mid-chat.

The registry (mcp.toml) is read at every use: a server changed there is restarted, one removed there
is stopped and its agents get a warning instead of its tools. A server that failed to start is tried
again after ``retry_seconds`` rather than at every turn (a start may take its whole startup timeout).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memgpt.errors import ConfigError, UserError

if TYPE_CHECKING:
    from memgpt.agent.tools import Tool
    from memgpt.mcp.client import MCPClients
    from memgpt.mcp.registry import ServerSpec
    from memgpt.storage import Storage
    from memgpt.types import AgentState

LOGS = "logs"  # stdio servers' stderr goes to <home>/logs/mcp-NAME.log, never into a chat or a server's log
RETRY_SECONDS = 30.0
_WAIT_GRACE = 15.0  # how much longer than a server's startup timeout to wait for another thread starting it


# -- which servers an agent uses ----------------------------------------------------------------
def attached_servers(storage: Storage, state: AgentState) -> list[str]:
    """The names of the MCP servers attached to the agent, in the order they were attached."""
    return storage.mcp_servers.names(state.id)


def attach_server(storage: Storage, home: Path, state: AgentState, name: str) -> tuple[ServerSpec, bool]:
    """Attach an added MCP server to the agent; (its spec, False) when it was attached already."""
    from memgpt.mcp.registry import load_servers, pick_servers

    spec = pick_servers(load_servers(home), [name.strip()])[0]
    return spec, storage.mcp_servers.attach(state.id, spec.name)


def detach_server(storage: Storage, state: AgentState, name: str) -> str:
    """Detach an MCP server from the agent (also one no longer added); returns its name."""
    name = name.strip()
    if not storage.mcp_servers.detach(state.id, name):
        attached = ", ".join(attached_servers(storage, state)) or "none"
        raise UserError(f"MCP server {name!r} is not attached to agent {state.name!r} (attached: {attached})")
    return name


# -- the running servers ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Failure:
    spec: ServerSpec
    at: float
    why: str


class ServerPool:
    """Running MCP servers by name, for every agent of one process. Thread-safe."""

    def __init__(
        self, home: Path, *, retry_seconds: float = RETRY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.home = home
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._clients: MCPClients | None = None
        self._failed: dict[str, _Failure] = {}
        self._starting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _sessions(self) -> MCPClients:
        with self._lock:
            if self._clients is None:
                from memgpt.mcp.client import MCPClients  # the SDK: imported only once a server is wanted

                self._clients = MCPClients([], log_dir=self.home / LOGS)
            return self._clients

    def agent_tools(self, storage: Storage, state: AgentState) -> tuple[list[Tool], list[str]]:
        """The tools of the servers attached to the agent, for ``open_agent(extra_tools=...)``, and one
        warning per server that is not available (the agent runs without its tools)."""
        return self.tools(attached_servers(storage, state))

    def tools(self, names: Iterable[str], reserved: Iterable[str] = ()) -> tuple[list[Tool], list[str]]:
        """The tools of the named servers (started now when needed) and a one-line warning for each
        server that cannot be offered."""
        wanted = list(dict.fromkeys(names))
        if not wanted:  # most agents have no servers: the registry's and the tools' modules stay unimported
            return [], []
        from memgpt.mcp.registry import load_servers
        from memgpt.mcp.tools import mcp_tools

        try:
            registry = load_servers(self.home)
        except ConfigError as exc:
            return [], [f"MCP servers are not available: {exc}"]
        warnings: list[str] = []
        specs: list[ServerSpec] = []
        for name in wanted:
            if name in registry:
                specs.append(registry[name])
            else:
                warnings.append(
                    f"MCP server {name!r} is attached but no longer added (add it again with `memgpt mcp add "
                    f"{name} ...`, or detach it with /mcp detach {name})"
                )
        available, unavailable = self._ensure(specs)
        warnings += [f"MCP server {name!r} is not available: {why}" for name, why in unavailable.items()]
        tools, skipped = mcp_tools(self._sessions(), set(reserved), servers=available)
        return tools, warnings + skipped

    def _ensure(self, specs: Sequence[ServerSpec]) -> tuple[list[str], dict[str, str]]:
        """Start what is not running; returns the running names and why each other one is not."""
        sessions = self._sessions()
        stale: list[str] = []
        start: list[ServerSpec] = []
        waits: dict[str, threading.Event] = {}
        unavailable: dict[str, str] = {}
        with self._lock:
            if self._closed:
                raise UserError("the MCP servers of this process were stopped")
            for spec in specs:
                running = sessions.spec(spec.name)
                if spec.name in self._starting:
                    waits[spec.name] = self._starting[spec.name]
                    continue
                if running == spec:
                    continue
                if running is not None:
                    stale.append(spec.name)  # changed in mcp.toml: start it again as it is now
                failure = self._failed.get(spec.name)
                if failure and failure.spec == spec and self._clock() - failure.at < self.retry_seconds:
                    unavailable[spec.name] = failure.why
                    continue
                self._starting[spec.name] = threading.Event()
                start.append(spec)
        failures: dict[str, str] = {}
        try:
            for name in stale:
                sessions.remove(name)
            failures = sessions.add(start)
            for name in failures:
                sessions.remove(name)  # tried again after retry_seconds, not at its next call
        finally:
            with self._lock:
                for spec in start:
                    if spec.name in failures:
                        self._failed[spec.name] = _Failure(spec, self._clock(), failures[spec.name])
                    else:
                        self._failed.pop(spec.name, None)
                    self._starting.pop(spec.name).set()
        unavailable.update(failures)
        for name, started in waits.items():
            spec = next(s for s in specs if s.name == name)
            started.wait(spec.startup_timeout_seconds + _WAIT_GRACE)
            with self._lock:
                if sessions.spec(name) is None:
                    failure = self._failed.get(name)
                    unavailable[name] = failure.why if failure else "it is still starting"
        return [s.name for s in specs if s.name not in unavailable], unavailable

    def stop(self, name: str) -> None:
        """Stop one server (a chat's /mcp detach); it starts again when an agent asks for it."""
        with self._lock:
            self._failed.pop(name, None)
        if self._clients is not None:
            self._clients.remove(name)

    def running(self) -> list[str]:
        return self._clients.names() if self._clients is not None else []

    def close(self) -> None:
        """Stop every server (stdio servers' processes end)."""
        with self._lock:
            self._closed = True
        if self._clients is not None:
            self._clients.close()
