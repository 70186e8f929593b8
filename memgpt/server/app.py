"""The application factory: ``create_app()`` opens the home's storage once and mounts every router.

`memgpt server` builds the app itself (one process) or lets uvicorn call ``create_app`` in each worker
(``--workers N``); either way the home comes from ``$MEMGPT_HOME`` unless given. With workers, the supervising
process holds what only one process may (``supervising``: the Milvus Lite file and its server) and tells its
workers through the environment where to connect and whom to outlive no longer.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from memgpt import __version__
from memgpt.config import Config, display_path, load_config, memgpt_home
from memgpt.errors import MemGPTError, StorageError
from memgpt.server import collector, errors
from memgpt.server.state import NO_TELEMETRY, OWNER_NAME, ServerState

logger = logging.getLogger(__name__)
URL_ENV = "MEMGPT_SERVER_URL"  # set by `memgpt server` so the Milvus Lite lock can say where the API is
# Set by `memgpt server --workers N` for its workers: the Milvus Lite server it runs ({"file", "uri"}), and its pid.
LITE_SERVER_ENV = "MEMGPT_LITE_SERVER"
SUPERVISOR_ENV = "MEMGPT_SERVER_SUPERVISOR"
_SUPERVISOR_POLL = 0.5  # seconds between a worker's looks at whether its supervisor still runs
THREADS = 200  # sync routes and agent turns run in worker threads; a turn holds one for its whole length
# A checked API key is trusted this long without reading it again: a key revoked through this server stops
# working at once, one revoked by another process (`memgpt key revoke`, another server) within this bound.
KEY_TRUST_SECONDS = 5.0
# Seconds an idle client connection stays open (uvicorn's timeout_keep_alive, for every server memgpt runs).
# Longer than httpx's own 5 s (letta-client's, the openai SDK's, the mcp SDK's): with uvicorn's default, also 5 s,
# a client that reused a connection just as the server closed it got a reset and its message was never read
# (seen under load in bench/server_bench.py, as errors and lost messages).
KEEP_ALIVE_SECONDS = 75
YOUNG_COLLECTION = 10_000  # allocations between collections of the youngest generation in a server (``freeze_startup``)


def open_state(home: Path, config: Config, *, holder: str | None = None, lite_server: str = "") -> ServerState:
    """Open the home's storage for serving. Milvus Lite is opened now, so the server owns the file (and its
    lock says so, or names ``holder``) from the start rather than at the first request that needs it; or,
    in a worker, connects to the Lite server its supervisor runs (``lite_server``, its socket)."""
    from memgpt.storage import Storage
    from memgpt.storage.milvus.client import announce_holder

    announce_holder(holder or f"memgpt server at {os.environ.get(URL_ENV, 'this machine')}")
    storage = Storage(config, home, lite_server=lite_server)
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
    from memgpt.server.retried import Arrivals
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
        models,
        openai,
        passages,
    )

    if state is None:  # a worker of `memgpt server --workers N` (or a caller of its own)
        home = home or memgpt_home()
        config = config or load_config(home)
        _end_with_supervisor()
        state = open_state(home, config, lite_server=_served_lite(home, config))
        worker = True
    else:
        worker = False  # the caller's app (`memgpt server` with one process freezes after this, tests do not)
    opened = state
    jobs = FileJobs(state)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        try:
            await anyio.to_thread.run_sync(jobs.start)  # loads an earlier process left unfinished
            stopping_on_signals(opened.stopping)
            threading.Thread(target=opened.stop_turns_when_told, name="stop-turns", daemon=True).start()
            yield
        finally:
            opened.stopping.set()  # an insert still splitting or embedding ends at once, so the process can exit
            await anyio.to_thread.run_sync(jobs.stop)
            opened.close()

    app = FastAPI(
        title="memgpt",
        version=__version__,
        description="Stateful LLM agents with tiered memory (Letta's /v1 API shape; an OpenAI-compatible endpoint).",
        lifespan=lifespan,
        telemetry=NO_TELEMETRY,
    )
    app.state.memgpt = state
    app.state.file_jobs = jobs
    errors.install(app)
    # The OpenAI endpoint limits bodies itself, to answer in OpenAI's error shape.
    app.add_middleware(errors.BodyLimit, limit=errors.body_limit(state.config), skip=(openai.PREFIX,))
    app.add_middleware(Arrivals)  # when a request arrived, for a first try its retry overtook
    app.add_middleware(errors.CutAtStop, stopping=state.stopping)  # the outermost: a 503 for what uvicorn cuts
    # A request is matched against the routes in this order, router by router: sends, the busiest, come first
    # (after the health check), not after the 23 routes of five routers: matching a send took 50 µs, now 12.
    # Those two routers' routes go on the app's own router (``_add_routes``), the others are included.
    for module in (health, messages):
        _add_routes(app, module.router)
    for module in (admin, agentfile, agents, passages, folders, memory, mcp_servers, models):
        app.include_router(module.router)
    mcp_memory.mount(app, state)  # /mcp: the memory tools for MCP clients
    app.mount(openai.PREFIX, openai.create_openai_app(state))
    _document(app, openai.documented_routes())
    if worker:
        freeze_startup()
    return app


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """``router``'s routes on the app's own router, as if declared with ``@app.get``/``@app.post``, where
    ``app.include_router`` would put them under one route standing for the router (FastAPI >= 0.165): a request then
    went through that router's routes twice, once to find the route and again to handle it, with bookkeeping in the
    request's scope each time (~8% of the event loop's CPU per send at 50 clients, py-spy). The routes, and so the
    OpenAPI schema, are the same: ``include_router`` without arguments adds nothing to a route (its router's prefix
    and tags are in it already). ``app.dependency_overrides`` does not reach these routes (nothing here uses it)."""
    app.router.routes.extend(router.routes)


def freeze_startup() -> None:
    """A server's start-up is over (its storage open, its app built): what it made so far stays for the process's
    life, so no later garbage collection walks it (``gc.freeze``; `memgpt server` froze what its imports made,
    ``startup_over``, before it opened the home). And the youngest generation is collected every YOUNG_COLLECTION
    allocations instead of Python's 700, and the oldest (a walk of all that lives) comes as many times more seldom.
    Measured at 50 clients (bench/server_bench.py, one run each on a busy machine,
    provisional): the server's garbage collections took 0.72 s of CPU over a run of ~550 turns, 0.60 s with the
    freeze, 0.39 s with both (a full collection took ~130-160 ms each time). The GIL's switch interval stays
    Python's 5 ms: set to 0.2 ms in the server (issue 9's GIL convoy hypothesis) it gave p50 added 65-150 ms
    (median 101 over 11 runs) against 43-153 (median 93 over 12) at 50 clients, alternating, at the same server CPU
    a turn, with the turn threads preempted more often (busy machine, load 4-12, 2026-11-28, provisional)."""
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION, middle, oldest)
    collector.install()  # with MEMGPT_GC_STATS=<file>: what its collections cost, written there


class _LiteEnded(Exception):
    """Raised in the supervisor's main thread when its Milvus Lite server ended outside uvicorn's run."""


@contextmanager
def supervising(home: Path, config: Config) -> Iterator[None]:
    """In `memgpt server --workers N`'s own process, while its workers run: hold the home's Milvus Lite file
    and run its server (other memgpt commands are told a server runs), and tell the workers (through the
    environment they inherit) its socket and this process's pid. The home is opened once first, through that
    socket, so that what is wrong with it is one line before anything listens. A Milvus server needs nothing
    held: each worker connects by itself."""
    from memgpt.storage import serving_lite
    from memgpt.storage.milvus.client import announce_holder

    ended: list[int | None] = []

    def lite_ended(code: int | None) -> None:  # the workers cannot serve without it: stop them all
        ended.append(code)
        logger.error("the Milvus Lite server ended (exit code %s): stopping the workers", code)
        os.kill(os.getpid(), signal.SIGTERM)  # as a Ctrl-C would: uvicorn stops its workers and returns

    def terminated(signum: int, _frame: object) -> None:
        # SIGTERM while uvicorn's own handler is not in place (the check below, uvicorn starting or done): for
        # the Lite server's end, the one line below; else what SIGTERM does by default, ending the process.
        if ended:
            raise _LiteEnded
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    announce_holder(f"memgpt server at {os.environ.get(URL_ENV, 'this machine')}")
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        with serving_lite(config, home, lite_ended) as lite_server:
            told = {SUPERVISOR_ENV: str(os.getpid())}
            if lite_server:
                told[LITE_SERVER_ENV] = json.dumps({"file": config.milvus_uri(home), "uri": lite_server})
            os.environ.update(told)
            try:
                open_state(home, config, lite_server=lite_server or "").storage.close()
                yield
            finally:
                for name in told:
                    os.environ.pop(name, None)
    except _LiteEnded:
        pass
    except MemGPTError:
        if not ended:
            raise  # else the check failed because the Lite server ended: said below
    finally:
        signal.signal(signal.SIGTERM, previous)
    if ended:
        raise StorageError(
            f"the Milvus Lite server of {display_path(config.milvus_uri(home))} ended unexpectedly (exit code "
            f"{ended[0]}), so the workers were stopped: start `memgpt server` again"
        )


def _served_lite(home: Path, config: Config) -> str:
    """The socket of the Milvus Lite server the supervisor runs for this home's file, or "" (no supervisor, a
    Milvus server, or another file: the worker then opens its storage as one process would)."""
    found = os.environ.get(LITE_SERVER_ENV)
    try:
        served = json.loads(found) if found else None
    except ValueError:
        served = None
    if not isinstance(served, dict) or served.get("file") != config.milvus_uri(home):
        return ""
    return str(served.get("uri") or "")


def stopping_on_signals(stopping: threading.Event) -> None:
    """Set ``stopping`` the moment uvicorn is told to stop (SIGINT, SIGTERM), before it waits for the requests still
    running: an insert being split or embedded ends at once with a 503 and nothing stored, rather than holding the
    server (it held one 16 minutes) or being cut by the shutdown timeout with a traceback in the log. Called during
    startup, when uvicorn's own handlers are in place; an app served from a thread other than the main one (as in
    tests) takes no signals."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(number: int, frame: Any, previous: Callable[[int, Any], Any] = previous) -> None:
            stopping.set()
            previous(number, frame)

        signal.signal(signum, handler)


def _end_with_supervisor() -> None:
    """In a worker: stop (as on SIGTERM) once the supervisor that started it is gone. uvicorn's workers do not
    notice by themselves: a supervisor killed with SIGKILL left them serving the port, on a Milvus Lite server
    that had ended with it, and the next `memgpt server` could not listen."""
    found = os.environ.get(SUPERVISOR_ENV, "")
    parent = os.getppid()
    if not found.isdigit() or int(found) != parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_SUPERVISOR_POLL)
        logger.warning("memgpt server's supervising process (pid %d) is gone: this worker stops", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


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
