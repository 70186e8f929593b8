"""The application factory: ``create_app()`` opens the home's storage once and mounts every router.

`memgpt server` builds the app itself (one process) or lets uvicorn call ``create_app`` in each worker
(``--workers N``); either way the home comes from ``$MEMGPT_HOME`` unless given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from memgpt import __version__
from memgpt.config import Config, load_config, memgpt_home
from memgpt.server import errors
from memgpt.server.state import OWNER_NAME, ServerState

logger = logging.getLogger(__name__)
URL_ENV = "MEMGPT_SERVER_URL"  # set by `memgpt server` so the Milvus Lite lock can say where the API is
THREADS = 200  # sync routes and agent turns run in worker threads; a turn holds one for its whole length
# A checked API key is trusted this long without reading it again: a key revoked through this server stops
# working at once, one revoked by another process (`memgpt key revoke`, another server) within this bound.
KEY_TRUST_SECONDS = 5.0


def open_state(home: Path, config: Config, *, holder: str | None = None) -> ServerState:
    """Open the home's storage for serving. Milvus Lite is opened now, so the server owns the file (and its
    lock says so, or names ``holder``) from the start rather than at the first request that needs it."""
    from memgpt.storage import Storage
    from memgpt.storage.milvus.client import announce_holder

    announce_holder(holder or f"memgpt server at {os.environ.get(URL_ENV, 'this machine')}")
    storage = Storage(config, home)
    storage.users.trust_seconds = KEY_TRUST_SECONDS
    try:
        owner = storage.users.ensure(config.user_id, OWNER_NAME)
        storage.vectors  # noqa: B018 - connect now: fail at start-up, and hold the Lite file while running
    except BaseException:
        storage.close()
        raise
    return ServerState(home=home, config=config, storage=storage, owner=owner)


def create_app(home: Path | None = None, config: Config | None = None, *, state: ServerState | None = None) -> FastAPI:
    """The API on ``home`` (default ``$MEMGPT_HOME``); pass an opened ``state`` to share one."""
    from memgpt.server.jobs import FileJobs
    from memgpt.server.routes import (
        admin,
        agentfile,
        agents,
        folders,
        health,
        mcp_memory,
        mcp_servers,
        memory,
        messages,
        openai,
        passages,
    )

    if state is None:
        home = home or memgpt_home()
        state = open_state(home, config or load_config(home))
    opened = state
    jobs = FileJobs(state)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        try:
            await anyio.to_thread.run_sync(jobs.start)  # loads an earlier process left unfinished
            yield
        finally:
            await anyio.to_thread.run_sync(jobs.stop)
            opened.close()

    app = FastAPI(
        title="memgpt",
        version=__version__,
        description="Stateful LLM agents with tiered memory (Letta's /v1 API shape; an OpenAI-compatible endpoint).",
        lifespan=lifespan,
    )
    app.state.memgpt = state
    app.state.file_jobs = jobs
    errors.install(app)
    # The OpenAI endpoint limits bodies itself, to answer in OpenAI's error shape.
    app.add_middleware(errors.BodyLimit, limit=errors.body_limit(state.config), skip=(openai.PREFIX,))
    for module in (health, admin, agentfile, agents, passages, messages, folders, memory, mcp_servers):
        app.include_router(module.router)
    mcp_memory.mount(app, state)  # /mcp: the memory tools for MCP clients
    app.mount(openai.PREFIX, openai.create_openai_app(state))
    _document(app, openai.documented_routes())
    return app


def _document(app: FastAPI, extra: list[BaseRoute]) -> None:
    """List ``extra`` routes (those of a mounted app, which FastAPI leaves out) in the app's OpenAPI schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*app.routes, *extra],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
