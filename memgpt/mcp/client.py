"""Sessions with MCP servers for the synchronous agent loop.

The only module that imports the ``mcp`` SDK (about 0.8 s of imports, so callers import this module
lazily). The SDK is async and the agent is not: one asyncio loop runs in a daemon thread for the
whole process, each server's session lives in a task on it for as long as the ``MCPClients`` that
opened it, and the agent's thread waits on futures with a deadline. Closing ends the sessions the
way the SDK does (stdin closed, then SIGTERM/SIGKILL of the server's process group), so no stdio
server outlives its run; an ``atexit`` hook closes whatever a caller forgot to.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading
import weakref
from collections.abc import Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import mcp
import mcp_types
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from memgpt import __version__
from memgpt.errors import MCPServerError
from memgpt.mcp.registry import ServerSpec

logger = logging.getLogger(__name__)
# The SDK logs a server's stray stdout lines with a traceback at ERROR level. We report failures as one
# line ourselves, so without logging configured by the application its records go nowhere rather than
# to Python's last-resort stderr handler in the middle of a chat.
logging.getLogger("mcp").addHandler(logging.NullHandler())

MAX_RESULT_CHARS = 12_000  # a tool result longer than this is cut: it would crowd out the context window
_GRACE_SECONDS = 10.0  # how much longer than the SDK's own timeouts the agent's thread waits
_CLOSE_SECONDS = 15.0  # the SDK's stdio shutdown is bounded at about 6.5 s
_MAX_PAGES = 100  # tools/list pages; a server that never stops paginating cannot hang a start
_T = TypeVar("_T")


@dataclass(frozen=True)
class RemoteTool:
    """A tool as an MCP server lists it."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolOutput:
    """One call's result as text for the model; ``is_error`` when the server says the tool failed."""

    text: str
    is_error: bool = False


# -- the process's event loop -------------------------------------------------------------------
class _Loop:
    _lock = threading.Lock()
    _instance: _Loop | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="memgpt-mcp", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> _Loop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run ``coroutine`` on the loop and wait for it; TimeoutError after ``timeout`` seconds."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except BaseException:  # a timeout, or Ctrl-C in the agent's thread: stop the work too
            future.cancel()
            raise


# -- one server ---------------------------------------------------------------------------------
class _Connection:
    """A session with one server, held open by a task on the loop until ``close``."""

    def __init__(self, spec: ServerSpec, log_dir: Path | None, startup_timeout: float) -> None:
        self.spec = spec
        self.startup_timeout = startup_timeout
        self.tools: list[RemoteTool] = []
        self._log_path = log_dir / f"mcp-{spec.name}.log" if log_dir else None
        self._client: mcp.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._http_refusal = ""  # the last HTTP error status: the SDK's error for it does not name it
        self._restarting = asyncio.Lock()  # several agents' calls may find it dead at once: start it once

    async def open(self) -> None:
        ready: asyncio.Future[list[RemoteTool]] = asyncio.get_running_loop().create_future()
        # Mark its exception as seen even when nobody waits any more (a timeout), or asyncio prints it.
        ready.add_done_callback(lambda done: done.cancelled() or done.exception())
        log_start = self._log_size()
        self._http_refusal = ""
        self._task = asyncio.create_task(self._hold(ready), name=f"mcp-{self.spec.name}")
        try:
            async with asyncio.timeout(self.startup_timeout):
                self.tools = await asyncio.shield(ready)
        except TimeoutError:
            await self.close()
            raise MCPServerError(
                f"did not answer within {self.startup_timeout:g} s{self._stderr_hint(log_start)}"
            ) from None
        except Exception as exc:
            await self.close()
            why = _describe_start(self.spec, exc, self._http_refusal)
            raise MCPServerError(f"{why}{self._stderr_hint(log_start)}") from exc

    async def _hold(self, ready: asyncio.Future[list[RemoteTool]]) -> None:
        client: mcp.Client | None = None
        try:
            with anyio.CancelScope() as self._scope:
                async with AsyncExitStack() as stack:
                    client = await stack.enter_async_context(self._new_client(stack))
                    tools = await _list_tools(client, self.spec.name)
                    self._client = client
                    ready.set_result(tools)
                    await anyio.sleep_forever()
        except Exception as exc:  # noqa: BLE001 - whoever waits on `ready` reports it as one line
            if not ready.done():
                ready.set_exception(exc)
            else:
                logger.debug("MCP server %s: session ended: %s", self.spec.name, type(exc).__name__)
        finally:
            if self._client is client:  # not a newer session's, started after this one was given up
                self._client = None
            if not ready.done():
                ready.set_exception(MCPServerError("closed while starting"))

    def _new_client(self, stack: AsyncExitStack) -> mcp.Client:
        spec = self.spec
        info = mcp_types.Implementation(name="memgpt", version=__version__)
        if spec.transport == "stdio":
            params = StdioServerParameters(command=spec.command, args=spec.args, env=spec.env or None)
            transport = stdio_client(params, errlog=stack.enter_context(self._errlog()))
        else:
            http = create_mcp_http_client(headers=spec.headers or None)

            async def note_refusal(response: Any) -> None:
                if response.status_code >= 400:
                    self._http_refusal = f"HTTP {response.status_code} {response.reason_phrase}".strip()

            http.event_hooks = {**http.event_hooks, "response": [*http.event_hooks.get("response", []), note_refusal]}
            transport = streamable_http_client(spec.url, http_client=http)
            stack.push_async_callback(http.aclose)
        return mcp.Client(transport, read_timeout_seconds=spec.timeout_seconds, client_info=info, cache=None)

    def _errlog(self) -> IO[str]:
        """Where a stdio server's stderr goes: its log file in the memgpt home, never the chat."""
        if self._log_path is None:
            return open(os.devnull, "w", encoding="utf-8")
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        return open(self._log_path, "a", encoding="utf-8")

    def _log_size(self) -> int:
        try:
            return self._log_path.stat().st_size if self._log_path else 0
        except OSError:
            return 0

    def _stderr_hint(self, start: int) -> str:
        """The last line the server wrote to stderr since ``start``, and where the rest is."""
        if self._log_path is None or self.spec.transport != "stdio":
            return ""
        try:
            with open(self._log_path, "rb") as handle:
                handle.seek(start)
                written = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in written.splitlines() if line.strip()]
        return f"; it said: {lines[-1][:300]} (its stderr is in {self._log_path})" if lines else ""

    async def call(self, tool: str, arguments: dict[str, Any]) -> ToolOutput:
        if self._client is None:  # it died during an earlier call: start it again
            async with self._restarting:
                if self._client is None:
                    await self.close()
                    try:
                        await self.open()
                    except MCPServerError as exc:
                        raise MCPServerError(
                            f"MCP server {self.spec.name!r} could not be started again: {exc}"
                        ) from exc
        client = self._client
        if client is None:
            raise MCPServerError(f"MCP server {self.spec.name!r} is not running")
        timeout = self.spec.timeout_seconds
        try:
            result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED and exc.message == "Connection closed":
                self._client = None
                raise MCPServerError(
                    f"MCP server {self.spec.name!r} closed the connection during {tool} (it may have crashed; "
                    "it is started again on the next call)"
                ) from exc
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise MCPServerError(
                    f"MCP server {self.spec.name!r} did not answer {tool} within {timeout:g} s"
                ) from exc
            raise MCPServerError(f"MCP server {self.spec.name!r} refused {tool}: {exc.message}") from exc
        except ValidationError as exc:
            raise MCPServerError(
                f"MCP server {self.spec.name!r} sent a malformed answer to {tool}: {_first(exc)}"
            ) from exc
        except RuntimeError as exc:  # the SDK's check of structured content against the tool's output schema
            raise MCPServerError(f"MCP server {self.spec.name!r} answered {tool} wrongly: {exc}") from exc
        return ToolOutput(render_result(result), bool(result.is_error))

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._scope is not None:
            self._scope.cancel()  # the SDK's transports then shut down inside their own shields
        else:
            task.cancel()  # not started yet: nothing to shut down
        self._scope = None
        await asyncio.wait({task}, timeout=_CLOSE_SECONDS)


async def _list_tools(client: mcp.Client, server: str) -> list[RemoteTool]:
    tools: list[RemoteTool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += [
            RemoteTool(server, t.name, t.description or t.title or "", dict(t.input_schema or {})) for t in page.tools
        ]
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


# -- rendering results and errors ---------------------------------------------------------------
def _size(base64_data: str) -> str:
    size = len(base64_data) * 3 // 4
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} bytes"


def _render_block(block: Any) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return f"[{block.type}: {block.mime_type}, {_size(block.data)}, not shown]"
    if isinstance(block, mcp_types.ResourceLink):
        return f"[resource link: {block.uri}" + (f" ({block.name})" if block.name else "") + "]"
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return resource.text
        return f"[resource: {resource.uri}, {resource.mime_type or 'binary'}, {_size(resource.blob)}, not shown]"
    return f"[{getattr(block, 'type', 'unknown')} content, not shown]"


def render_result(result: mcp_types.CallToolResult) -> str:
    """The text the model reads: text blocks as they are, placeholders for media, and the structured
    content as JSON when no text came with it (servers usually send both, the text being the JSON)."""
    parts = [_render_block(block) for block in result.content]
    has_text = any(isinstance(b, mcp_types.TextContent | mcp_types.EmbeddedResource) for b in result.content)
    if result.structured_content is not None and not has_text:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts) if parts else "(no output)"
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[... {len(text) - MAX_RESULT_CHARS} more characters cut]"
    return text


def _first(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc']) or 'result'}: {error['msg']}"


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from the SDK's task groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe_start(spec: ServerSpec, error: BaseException, http_refusal: str = "") -> str:
    exc = _leaf(error)
    if http_refusal and isinstance(exc, MCPError):
        advice = "; check its --header values" if http_refusal.startswith(("HTTP 401", "HTTP 403")) else ""
        return f"{spec.url} answered {http_refusal}{advice}"
    if isinstance(exc, FileNotFoundError) and spec.transport == "stdio":
        return f"cannot start {spec.command!r}: no such command or file"
    if isinstance(exc, PermissionError) and spec.transport == "stdio":
        return f"cannot start {spec.command!r}: permission denied"
    if isinstance(exc, MCPError):
        if exc.code == mcp_types.CONNECTION_CLOSED:
            return (
                "exited or closed the connection before it answered"
                if spec.transport == "stdio"
                else (f"closed the connection before it answered ({exc.message})")
            )
        if exc.code == mcp_types.REQUEST_TIMEOUT:  # the handshake ran into the per-request timeout
            return f"did not answer within {spec.timeout_seconds:g} s"
        return f"refused the connection: {exc.message}"
    if isinstance(exc, ValidationError):
        return f"answered with something that is not MCP ({_first(exc)})"
    name = type(exc).__name__
    if spec.transport == "http":
        return f"cannot connect to {spec.url}: {name}" + (f": {exc}" if str(exc) else "")
    return f"failed to start: {name}" + (f": {exc}" if str(exc) else "")


# -- the public manager -------------------------------------------------------------------------
_OPEN: weakref.WeakSet[MCPClients] = weakref.WeakSet()


@atexit.register
def _close_forgotten() -> None:
    for clients in list(_OPEN):
        clients.close()


@dataclass(eq=False)  # identity: kept in a WeakSet
class MCPClients:
    """Sessions with a set of MCP servers, safe to call from several threads at once.

    ``start`` connects to every server at once and returns a one-line reason for each that could not
    start (its tools are then missing, the others work); ``add`` and ``remove`` change the set later
    (a chat's /mcp attach and detach). A server that dies mid-call costs that call an error and is
    started again on its next call.
    """

    specs: Sequence[ServerSpec]
    log_dir: Path | None = None
    startup_timeout: float | None = None  # overrides each server's own (``memgpt mcp list --timeout``)
    _connections: dict[str, _Connection] = field(default_factory=dict, init=False)
    _loop: _Loop = field(default_factory=_Loop.get, init=False)

    def __post_init__(self) -> None:
        _OPEN.add(self)
        for spec in self.specs:
            timeout = self.startup_timeout or spec.startup_timeout_seconds
            self._connections[spec.name] = _Connection(spec, self.log_dir, timeout)

    def __enter__(self) -> MCPClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> dict[str, str]:
        """Connect to every server; returns {server: why it could not start} for those that failed."""
        return self._open(list(self._connections.values()))

    def add(self, specs: Sequence[ServerSpec]) -> dict[str, str]:
        """Start more servers (each name once; a running one is left alone); returns failures like ``start``."""
        fresh = []
        for spec in specs:
            if spec.name not in self._connections:
                timeout = self.startup_timeout or spec.startup_timeout_seconds
                self._connections[spec.name] = connection = _Connection(spec, self.log_dir, timeout)
                fresh.append(connection)
        return self._open(fresh)

    def remove(self, name: str) -> None:
        """Stop one server (a stdio server's process ends); its tools fail from now on."""
        connection = self._connections.pop(name, None)
        if connection is not None:
            self._close([connection])

    def names(self) -> list[str]:
        return list(self._connections)

    def spec(self, name: str) -> ServerSpec | None:
        connection = self._connections.get(name)
        return connection.spec if connection else None

    def _open(self, connections: list[_Connection]) -> dict[str, str]:
        if not connections:
            return {}

        async def open_all() -> list[BaseException | None]:
            return await asyncio.gather(*(c.open() for c in connections), return_exceptions=True)

        longest = max(c.startup_timeout for c in connections)
        outcomes = self._loop.run(open_all(), longest + _GRACE_SECONDS)
        failures: dict[str, str] = {}
        for connection, outcome in zip(connections, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failures[connection.spec.name] = (
                    str(outcome) if isinstance(outcome, MCPServerError) else repr(outcome)
                )
        return failures

    def tools(self, server: str | None = None) -> list[RemoteTool]:
        return [t for c in list(self._connections.values()) if server in (None, c.spec.name) for t in c.tools]

    def call(self, server: str, tool: str, arguments: dict[str, Any]) -> ToolOutput:
        """Run one tool; MCPServerError (one line) when the server fails, hangs or answers junk."""
        connection = self._connections.get(server)
        if connection is None:
            raise MCPServerError(f"no MCP server named {server!r} is attached")
        limit = connection.spec.timeout_seconds + connection.startup_timeout + _GRACE_SECONDS
        try:
            return self._loop.run(connection.call(tool, arguments), limit)
        except TimeoutError:
            raise MCPServerError(f"MCP server {server!r} did not answer {tool} within {limit:g} s") from None

    def close(self) -> None:
        """End every session; stdio servers are stopped (stdin closed, then their process group killed)."""
        connections = list(self._connections.values())
        self._connections.clear()
        _OPEN.discard(self)
        self._close(connections)

    def _close(self, connections: list[_Connection]) -> None:
        if not connections:
            return

        async def close_all() -> None:
            await asyncio.gather(*(c.close() for c in connections))

        try:
            self._loop.run(close_all(), _CLOSE_SECONDS + _GRACE_SECONDS)
        except TimeoutError:
            logger.warning(
                "MCP servers did not stop within %s s: %s", _CLOSE_SECONDS, [c.spec.name for c in connections]
            )
