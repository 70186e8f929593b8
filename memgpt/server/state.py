"""What one server process holds for its lifetime, and the request dependencies that reach it.

Nothing here knows who is asking: the user comes from the request's API key alone (``current_user``),
and every route passes that user's id down explicitly.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio.to_thread
from fastapi import Depends, HTTPException, Request

from memgpt.config import Config
from memgpt.types import User

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig  # FastAPI >= 0.16x; older ones take telemetry= as an extra

    from memgpt.agent.tools import Tool
    from memgpt.embeddings.base import EmbeddingModel
    from memgpt.mcp.pool import ServerPool
    from memgpt.server.models import ServedModels
    from memgpt.server.turns import TurnRunner
    from memgpt.storage import Storage
    from memgpt.storage.users import UserStore

OWNER_NAME = "owner"  # the name the home's own user gets in the users table
MISSING_KEY = (
    "missing API key: send 'Authorization: Bearer sk-...' (create a key with `memgpt key create` or "
    "`memgpt user create NAME` on the server's machine)"
)
BAD_KEY = "invalid or revoked API key"
# FastAPI's OpenTelemetry spans and metrics, off: memgpt sets up no OpenTelemetry provider, so they recorded nothing,
# yet FastAPI asked the global providers whether one was set up on every request (~4% of the event loop's CPU at
# 50 clients, py-spy). For the app (``create_app``) and the OpenAI-compatible app it mounts. MEMGPT_SERVER_TELEMETRY=1
# keeps FastAPI's own (for a process that sets up an OpenTelemetry provider of its own, e.g. by auto-instrumentation).
NO_TELEMETRY: TelemetryConfig = (
    {} if os.environ.get("MEMGPT_SERVER_TELEMETRY") == "1" else {"tracing": False, "metrics": False, "logs": False}
)
# Seconds of ``server.shutdown_seconds`` (at most a quarter) kept, once running turns are cut, to answer their
# requests; and the most a stopping server then waits for its recall indexing.
STOP_MARGIN = 2.0


@dataclass
class ServerState:
    """The server's one storage (shared by every request and thread), config and the home's own user."""

    home: Path
    config: Config
    storage: Storage
    owner: User
    _embedding: EmbeddingModel | None = field(default=None, repr=False)
    _mcp: ServerPool | None = field(default=None, repr=False)
    _models: ServedModels | None = field(default=None, repr=False)
    _turns: TurnRunner | None = field(default=None, repr=False)
    _catalog: tuple[Hashable, list[Tool]] | None = field(default=None, repr=False)  # (tools folder signature, tools)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _key_checks: dict[str, Future[User | None]] = field(default_factory=dict, repr=False)  # API key -> its check
    # Set when the server stops (its requests' time is up): long work in request threads checks it and ends.
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def users(self) -> UserStore:
        return self.storage.users

    def embedding(self) -> EmbeddingModel:
        """The configured embedding model, loaded once per process on first use."""
        with self._guard:
            if self._embedding is None:
                from memgpt.embeddings import embedding_model

                self._embedding = embedding_model(self.config.embedding)
            return self._embedding

    def models(self) -> ServedModels:
        """What agents here can run on: the LLM endpoint's models and the embedding space."""
        with self._guard:
            if self._models is None:
                from memgpt.server.models import ServedModels

                self._models = ServedModels(self.config)
            return self._models

    def tool_catalog(self) -> list[Tool]:
        """Every function an agent here can have (``manager.tool_catalog``), loaded again only when the user
        tools folder changed."""
        from memgpt.agent.manager import tool_catalog
        from memgpt.agent.tools import folder_signature

        folder = self.home / "tools"
        signature = folder_signature(folder)
        with self._guard:
            if self._catalog is not None and self._catalog[0] == signature:
                return self._catalog[1]
        catalog = tool_catalog(folder)[0]
        with self._guard:
            self._catalog = (signature, catalog)
        return catalog

    def turns(self) -> TurnRunner:
        """This process's agent turns (started on first use)."""
        with self._guard:
            if self._turns is None:
                from memgpt.server.turns import TurnRunner

                self._turns = TurnRunner(self)
                _warm_tokenizer(self.config.llm.model)
            return self._turns

    def turn_grace(self) -> float:
        """How long a stopping server lets running turns end by themselves before it cuts them (``TurnRunner.stop``):
        ``server.shutdown_seconds`` (uvicorn's wait for running requests) less the time to answer their requests."""
        seconds = self.config.server.shutdown_seconds
        return seconds - min(STOP_MARGIN, seconds / 4)

    def stop_turns_when_told(self) -> None:
        """Wait until the server is told to stop (``stopping``), then stop its turns (``TurnRunner.stop``), while
        uvicorn waits for the requests that follow them: so they are answered within ``server.shutdown_seconds``."""
        self.stopping.wait()
        with self._guard:
            turns = self._turns
        if turns is not None:
            turns.stop(self.turn_grace())

    async def check_key(self, token: str) -> User | None:
        """``users.authenticate(token)`` on a worker thread, one check of a key at a time: the requests that come
        while it runs wait for its answer. When a key's trust (``trust_seconds``) lapsed under load, every request
        in flight with it read the key on a thread of its own (37 reads in one profiled 50-client run)."""
        with self._guard:
            running = self._key_checks.get(token)
            if running is None:
                self._key_checks[token] = mine = Future()
                mine.set_running_or_notify_cancel()  # a waiter that goes away cannot cancel it for the others
        if running is not None:
            return await asyncio.wrap_future(running)
        # The thread answers the check for every waiter, even if this request is cancelled meanwhile.
        await anyio.to_thread.run_sync(self._check_key, token, mine)
        return mine.result()

    def _check_key(self, token: str, check: Future[User | None]) -> None:
        try:
            check.set_result(self.users.authenticate(token))
        except BaseException as exc:  # noqa: BLE001 - every waiter raises it
            check.set_exception(exc)
        finally:
            with self._guard:
                self._key_checks.pop(token, None)

    def close(self) -> None:
        """Stop running turns (unless done already: ``stop_turns_when_told``), stop the agents' MCP servers, then
        close storage."""
        with self._guard:
            turns, self._turns = self._turns, None
        if turns is not None:
            turns.close(self.turn_grace(), settle=STOP_MARGIN)
        self.stop_mcp()
        self.storage.close()

    def mcp(self) -> ServerPool:
        """The MCP servers agents use, started on first use and shared by every turn of this process. A
        turn opens its agent with ``open_agent(..., extra_tools=state.mcp().agent_tools(storage, agent)[0])``."""
        with self._guard:
            if self._mcp is None:
                from memgpt.mcp.pool import ServerPool

                self._mcp = ServerPool(self.home)
            return self._mcp

    def stop_mcp(self) -> None:
        """Stop the MCP servers started for agents (at shutdown)."""
        with self._guard:
            pool, self._mcp = self._mcp, None
        if pool is not None:
            pool.close()


# The dependencies are coroutines: FastAPI runs a plain function dependency in its thread pool, a hop per
# dependency per request that cost more than what they do (all of it in memory but a key's check every
# KEY_TRUST_SECONDS, which goes to a thread).
async def server_state(request: Request) -> ServerState:
    return served(request)


def served(request: Request) -> ServerState:
    """The server's state, for a route that reads it itself rather than through the ``State`` dependency: a send
    (the busiest route), where each dependency FastAPI resolves costs the event loop more than what it does."""
    return request.app.state.memgpt  # type: ignore[no-any-return]


async def current_user(request: Request) -> User:
    """The user the request's API key belongs to; 401 without a valid key."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, MISSING_KEY, headers={"WWW-Authenticate": "Bearer"})
    state: ServerState = request.app.state.memgpt
    user = state.users.trusted(token) or await state.check_key(token)
    if user is None:
        raise HTTPException(401, BAD_KEY, headers={"WWW-Authenticate": "Bearer"})
    return user  # type: ignore[no-any-return]


def owner_only(what: str) -> Callable[..., Awaitable[User]]:
    """A dependency that lets only the home's own user (who runs `memgpt` on the server's machine) through;
    anyone else gets a 403 saying what only the owner may do (``what``, e.g. "manage users and keys")."""

    async def owner(user: Annotated[User, Depends(current_user)], request: Request) -> User:
        if user.id != request.app.state.memgpt.owner.id:
            raise HTTPException(403, f"only the server's owner (the home's own user) may {what}")
        return user

    return owner


State = Annotated[ServerState, Depends(server_state)]
CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(owner_only("manage users and keys"))]
# A stdio server runs a command on the server's machine and an HTTP one makes it connect anywhere.
MCP_OWNERS_ONLY = "register, change or remove MCP servers (they run commands or reach URLs from this machine)"
MCPAdminUser = Annotated[User, Depends(owner_only(MCP_OWNERS_ONLY))]


def _warm_tokenizer(model: str) -> None:
    """Load the tokenizer of the server's default model (``tokens.encoding_for_model``) on a thread of its own, at
    the first turn. A turn needs it once an agent's context nears its window (before that the free bound settles
    it), and loading it holds the GIL ~0.4 s: every request of the process waited that long, mid-load."""
    from memgpt.tokens import encoding_for_model

    threading.Thread(target=encoding_for_model, args=(model,), name="tokenizer warm-up", daemon=True).start()
