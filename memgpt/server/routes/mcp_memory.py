"""``/mcp``: memgpt's memory as a streamable-HTTP MCP server, for the users of this server.

Every request carries an API key (``Authorization: Bearer sk-...``, like the REST API); its user is the
caller, so another user's agent is "not found" exactly as on the REST API. Which agent: ``?agent=NAME``
(or id) in the URL, else the user's only agent (else the default given to `memgpt mcp serve --agent`).
Mounted in `memgpt server` (one process owns Milvus Lite), or served alone by
`memgpt mcp serve --transport http`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memgpt import __version__
from memgpt.server import errors
from memgpt.server.state import BAD_KEY, MISSING_KEY, ServerState
from memgpt.types import User

if TYPE_CHECKING:
    from memgpt.mcp.serve import Caller

PATH = "/mcp"
_USER = "memgpt.user"  # the ASGI scope key the caller's user travels in, from _KeyAuth to the tools
AGENT_PARAMETER = "agent"
UNAUTHORIZED = -32001  # the JSON-RPC error code of a refused key (a server-defined one: JSON-RPC has none for it)
INVALID_REQUEST, INTERNAL_ERROR = -32600, -32603  # JSON-RPC's own: the request's fault (4xx), or the server's (5xx)


def _as_jsonrpc(detail: str, code: int) -> dict[str, Any]:
    """An error ``detail`` as the REST API says it (``{"detail"}``) and as a JSON-RPC error, which the mcp SDK's client
    reads from an error status's JSON body and shows (else it says "Server returned an error response"). The
    request's id is not known (its body may not have been read): ``null``, which the SDK allows."""
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": detail}, "detail": detail}


def _refused(detail: str) -> ASGIApp:
    """The 401 of a missing or bad key (the body is not read before the key is checked)."""
    body = _as_jsonrpc(detail, UNAUTHORIZED)
    return JSONResponse(body, status_code=401, headers={**errors.NO_RETRY, "WWW-Authenticate": "Bearer"})


class _JsonRpcErrors:
    """Outside the app's other middleware, for ``/mcp`` only: an error status answered in the REST API's shape
    (``{"detail": ...}``: a body over the size limit, 413; a database that is down, 503; ...) also carries the detail
    as a JSON-RPC error, as a refused key's 401 does, so the mcp SDK's client shows it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != PATH:
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # an error's start, held until its body is known
        body = b""

        async def sending(message: Message) -> None:
            nonlocal held, body
            if message["type"] == "http.response.start" and message["status"] >= 400:
                kind = dict(message.get("headers") or []).get(b"content-type", b"")
                if kind.startswith(b"application/json"):
                    held = message
                    return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            body = _with_jsonrpc_error(body, held["status"])
            headers = [(k, v) for k, v in held.get("headers") or [] if k != b"content-length"]
            await send({**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, sending)


def _with_jsonrpc_error(body: bytes, status: int) -> bytes:
    """``body`` with the JSON-RPC error added when it is the REST API's ``{"detail": ...}`` (and not one already)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if not isinstance(parsed, dict) or "detail" not in parsed or "jsonrpc" in parsed:
        return body
    detail = parsed["detail"]
    message = detail if isinstance(detail, str) else json.dumps(detail)
    return json.dumps(_as_jsonrpc(message, INTERNAL_ERROR if status >= 500 else INVALID_REQUEST)).encode()


class _KeyAuth:
    """The request's API key decides the user; no key, or a bad one, is a 401 before MCP sees anything."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        user = None
        if scheme.lower() == "bearer" and token:
            user = await anyio.to_thread.run_sync(self.state.users.authenticate, token)
        if user is None:
            detail = BAD_KEY if token and scheme.lower() == "bearer" else MISSING_KEY
            await _refused(detail)(scope, receive, send)
            return
        await self.app({**scope, _USER: user}, receive, send)


def _caller_of(default_agent: str | None) -> Callable[[Any], Caller]:
    from memgpt.mcp.serve import Caller

    def caller(ctx: Any) -> Caller:
        request = ctx.request_context.request
        user: User = request.scope[_USER]
        agent = request.query_params.get(AGENT_PARAMETER) or default_agent
        return Caller(user.id, agent, f"add ?{AGENT_PARAMETER}=NAME to the MCP server's URL")

    return caller


def mount(app: FastAPI, state: ServerState, *, default_agent: str | None = None) -> None:
    """Serve the memory tools at ``/mcp`` on ``app``; the SDK's request handling runs with the app's lifespan."""
    from memgpt.mcp.serve import http_endpoint, memory_server

    server = memory_server(
        state.storage,
        state.embedding,
        _caller_of(default_agent),
        max_insert_mb=state.config.server.max_passage_mb,
        guard=lambda agent_id: state.turns().holding(agent_id),  # block edits wait for the agent's turn
        stopping=state.stopping,  # an insert being split or embedded ends when the server stops
        public_errors=True,  # an API key's holder is told what REST tells it, not hosts, paths or pids
    )
    endpoint, running = http_endpoint(server)
    app.router.routes.append(Route(PATH, endpoint=_KeyAuth(endpoint, state)))
    # Added after the app's BodyLimit: the last added is the outermost, so it sees BodyLimit's 413 too.
    app.add_middleware(_JsonRpcErrors)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with running(), inner(application) as value:
            yield value

    app.router.lifespan_context = lifespan


def standalone_app(state: ServerState, *, default_agent: str | None = None) -> FastAPI:
    """Only ``/mcp`` (for `memgpt mcp serve --transport http`); the state closes with the app. Told to stop, it
    stops as `memgpt server` does: an insert being split or embedded ends at once, storing nothing, and uvicorn cuts
    what still runs after ``server.shutdown_seconds``."""
    from memgpt.server.app import stopping_on_signals

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            stopping_on_signals(state.stopping)
            yield
        finally:
            state.stopping.set()
            await anyio.to_thread.run_sync(state.close)

    app = FastAPI(title="memgpt MCP", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.memgpt = state
    errors.install(app)
    app.add_middleware(errors.BodyLimit, limit=int(state.config.server.max_upload_mb * 1_000_000))
    mount(app, state, default_agent=default_agent)
    return app
