"""Every failure becomes a JSON error in Letta's shape, ``{"detail": ...}``, never a traceback.

Our exception tree says who must act (``memgpt.errors``); here it becomes a status code. Letta's client
retries 408/409/429/5xx by itself, so answers that another try cannot fix carry ``x-should-retry: false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from memgpt.errors import (
    ERROR_CLASS_HEADER,
    AgentBusyError,
    AlreadyExistsError,
    BackendError,
    ConflictError,
    LLMError,
    MemGPTError,
    NotFoundError,
    StorageLockedError,
    UnsupportedFileTypeError,
    UserError,
    public_message,
)

if TYPE_CHECKING:
    from memgpt.config import Config

logger = logging.getLogger(__name__)
NO_RETRY = {"x-should-retry": "false"}


def error(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    retry = {} if status in (409, 429, 503) else NO_RETRY
    return JSONResponse({"detail": detail}, status_code=status, headers={**retry, **(headers or {})})


def status_of(exc: MemGPTError) -> int:
    """The HTTP status for one of our own errors (most specific class first)."""
    for kind, status in (
        (NotFoundError, 404),
        (ConflictError, 409),
        (StorageLockedError, 503),
        (UnsupportedFileTypeError, 415),
        (UserError, 400),
        (LLMError, 502),
        (BackendError, 503),
    ):
        if isinstance(exc, kind):
            return status
    return 500


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's list of problems, without echoing whole request bodies back."""
    problems = []
    for item in exc.errors():
        problem = {k: item[k] for k in ("type", "loc", "msg") if k in item}
        if "input" in item and isinstance(item["input"], str | int | float | bool) and len(str(item["input"])) <= 200:
            problem["input"] = item["input"]
        problems.append(problem)
    return problems


def install(app: FastAPI) -> None:
    @app.exception_handler(AgentBusyError)
    async def _busy(_: Request, exc: AgentBusyError) -> JSONResponse:
        # Letta's client waits Retry-After seconds and sends again by itself (twice by default).
        detail = {"code": "AGENT_BUSY", "message": str(exc)}
        return error(409, detail, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(MemGPTError)
    async def _ours(_: Request, exc: MemGPTError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc)
        headers = {ERROR_CLASS_HEADER: type(exc).__name__, **(NO_RETRY if isinstance(exc, AlreadyExistsError) else {})}
        return error(status, public_message(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _validation_detail(exc))

    @app.exception_handler(UnicodeEncodeError)
    async def _not_unicode(_: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # JSON allows a lone surrogate escape ("\\ud800"), which decodes to no Unicode text: no database or
        # file can store it, and the first write refuses it (before anything of the request is stored).
        return error(400, not_unicode(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):  # the router's own
            detail = f"{detail}: {request.method} {request.url.path} ({_route_hint(request.url.path, exc.status_code)})"
        return error(exc.status_code, detail, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, f"internal server error ({type(exc).__name__}); the server log has the details")


def not_unicode(exc: UnicodeEncodeError) -> str:
    """What is wrong with text that has a lone surrogate, as one line."""
    bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
    return f"the request holds text that is not valid Unicode (a lone surrogate, {bad}); send UTF-8 text"


def _route_hint(path: str, status: int) -> str:
    hint = "no such route" if status == 404 else "the route takes other methods"
    hint += "; the API's routes are listed at /docs"
    if path.startswith("/v1/v1/"):  # a client given ".../v1" as its base URL, as OpenAI's SDK wants
        hint += "; the base URL is the server's address, without /v1"
    return hint


def body_limit(config: Config) -> int:
    """The largest request body the server takes, in bytes."""
    return int(config.server.max_upload_mb * 1_000_000)


def _too_large(limit: int) -> StarletteHTTPException:
    return StarletteHTTPException(
        413,
        f"request body is larger than the server's limit of {limit / 1_000_000:g} MB "
        "(server.max_upload_mb in the server's config.toml)",
    )


STOPPED = (
    "the server stopped before this request finished (it ran past server.shutdown_seconds): send it again when the"
    " server is back"
)


STOPPED_WRITE = (
    "the server stopped before this request finished (it ran past server.shutdown_seconds); it may still have been"
    " done: check before sending it again when the server is back"
)


class CutAtStop:
    """A request still running ``server.shutdown_seconds`` after the server was told to stop (``stopping``), one with
    no stop check of its own (a slow upload, a search waiting on a stalled Milvus), is cancelled by uvicorn: it answers
    503 in this module's shape, with Retry-After (and logs one line, no traceback). It was: uvicorn's own 500 "Internal
    Server Error" in plain text and the cancel's traceback in the log. A request whose answer had begun (a stream) just
    ends. The outermost middleware: a coroutine frame more per request, nothing else."""

    def __init__(self, app: ASGIApp, stopping: threading.Event) -> None:
        self.app = app
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if scope["type"] != "http" or not self.stopping.is_set():
                raise
            logger.warning("%s %s: cut, still running as the server stopped", scope.get("method"), scope.get("path"))
            if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
                response = error(503, STOPPED, {"Retry-After": "2", "Connection": "close"})
            else:
                # A write (create an agent, an upload) may still finish in its thread: a client's automatic resend
                # could make a second one, so letta-client / stainless are told not to (x-should-retry: false).
                response = error(503, STOPPED_WRITE, {**NO_RETRY, "Retry-After": "2", "Connection": "close"})
            with contextlib.suppress(RuntimeError):  # its answer had begun: the connection closes
                await response(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, whether or not a Content-Length is sent.

    A body that grows past the limit while being read raises an HTTPException from ``receive``, which
    FastAPI passes through its body parsing untouched, so the error handlers of the app that reads it
    answer it. A declared length over the limit is answered at once, by ``respond`` (an error in this
    module's shape unless told). Paths under ``skip`` are left to a mounted app with its own BodyLimit."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        respond: Callable[[int, str], Response] | None = None,
        skip: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.limit = limit
        self.respond = respond or error
        self.skip = tuple(skip)

    def _skipped(self, path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.skip)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._skipped(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            exc = _too_large(self.limit)
            await self.respond(exc.status_code, exc.detail)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _too_large(self.limit)
            return message

        await self.app(scope, counted, send)
