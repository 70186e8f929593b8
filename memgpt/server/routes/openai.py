"""An OpenAI-compatible endpoint for chat UIs (Open WebUI and the like), mounted at ``/openai/v1``.

``GET /models`` lists the key's user's agents (a model id is the agent's name; its id is accepted too).
``POST /chat/completions`` talks to the agent named by ``model``. Chat UIs resend the whole conversation
every time, so only the newest user message enters the agent's memory, through the same turn runner as
``/v1`` (one turn per agent at a time); the answer is the text the agent sent with send_message, and none
of its tool use appears as ``tool_calls``. Chat UIs' background requests (titles, tags, follow-ups, summaries:
``memgpt.server.ui_tasks`` says which) are answered by the agent's LLM alone, without its memory or tools, and
never stored. Errors use OpenAI's shape, ``{"error": {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from memgpt.errors import AgentBusyError, ConfigError, LLMError, MemGPTError, NotFoundError, UserError, public_message
from memgpt.server.errors import NO_RETRY, BodyLimit, body_limit, status_of
from memgpt.server.retried import arrived
from memgpt.server.schemas.messages import Rendering
from memgpt.server.state import NO_TELEMETRY, CurrentUser, ServerState, State
from memgpt.server.turns import Turn, TurnInput, request_digest
from memgpt.server.ui_tasks import background_shape
from memgpt.storage.agents import AgentQuery
from memgpt.types import AgentState

logger = logging.getLogger(__name__)
PREFIX = "/openai/v1"
MAX_TEXT = 1_000_000  # characters of the message that enters memory
MAX_STEPS = 10
ROUTES_HINT = "the endpoint has GET /models, GET /models/{model} and POST /chat/completions"
router = APIRouter(tags=["OpenAI-compatible (chat UIs)"])


class ModelNotFoundError(NotFoundError):
    """No agent of the key's user has this name or id."""


class ChatMessageIn(BaseModel):
    """One message of the conversation a chat UI sends (content as a string or as OpenAI content parts)."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(str(part.get("text") or "") for part in self.content if part.get("type") == "text")

    def unsupported_part(self) -> str | None:
        if self.content is None or isinstance(self.content, str):
            return None
        return next((str(part.get("type")) for part in self.content if part.get("type") != "text"), None)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """``chat.completions.create``. Sampling options (temperature, max_tokens, ...) are accepted and ignored:
    the agent runs on its own settings."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None  # choices wanted: an agent answers a turn once, so only 1 is served
    response_format: dict[str, Any] | None = None  # only {"type": "text"}: the agent's reply is its own words

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ModelOut(BaseModel):
    """An agent as an OpenAI model: ``id`` is its name; ``agent_id`` is memgpt's id, which works as well."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "memgpt"
    agent_id: str
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


# -- errors in OpenAI's shape ------------------------------------------------------------------------
_KINDS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    502: "upstream_error",
    503: "server_error",
}


def openai_error(
    status: int, message: str, code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": _KINDS.get(status, "server_error"), "param": param, "code": code}}
    retry = {} if status in (409, 429, 503) else NO_RETRY
    return JSONResponse(body, status_code=status, headers={**retry, **(headers or {})})


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(AgentBusyError)
    async def _busy(_: Request, exc: AgentBusyError) -> JSONResponse:
        # the openai SDK waits Retry-After seconds and sends again by itself (twice by default)
        return openai_error(409, str(exc), "agent_busy", headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(MemGPTError)
    async def _ours(_: Request, exc: MemGPTError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc)
        code = "model_not_found" if isinstance(exc, ModelNotFoundError) else None
        return openai_error(status, public_message(exc), code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        first = problems[0] if problems else {}
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "")
            at = first.get("loc", ("body", "?"))[-1]
            return openai_error(400, f"the request body is not valid JSON ({reason} at position {at})", "invalid_json")
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        message = "; ".join(f"{'.'.join(map(str, p.get('loc', ())[1:])) or 'body'}: {p.get('msg')}" for p in problems)
        return openai_error(400, message or "invalid request", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "invalid_api_key" if exc.status_code == 401 else None
        message = str(exc.detail)
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):  # the router's own
            message = f"{message}: {request.method} {request.url.path} ({ROUTES_HINT})"
        return openai_error(exc.status_code, message, code, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return openai_error(500, f"internal server error ({type(exc).__name__}); the server log has the details")


def create_openai_app(state: ServerState) -> FastAPI:
    """The endpoint as its own app (mounted at ``PREFIX``), so that its errors take OpenAI's shape."""
    # Its routes are listed in the server's own /docs (see documented_routes), so it has no docs of its own.
    app = FastAPI(
        title="memgpt: OpenAI-compatible endpoint",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=NO_TELEMETRY,
    )
    app.state.memgpt = state
    _install_errors(app)
    app.add_middleware(BodyLimit, limit=body_limit(state.config), respond=openai_error)
    app.include_router(router)
    return app


def documented_routes() -> list[BaseRoute]:
    """The endpoint's routes under their full paths, for the server's OpenAPI schema (/docs)."""
    listed = APIRouter()
    listed.include_router(router, prefix=PREFIX)
    return list(listed.routes)


# -- models --------------------------------------------------------------------------------------------
def _model(agent: AgentState) -> ModelOut:
    created = int(agent.created_at.timestamp())
    return ModelOut(id=agent.name, created=created, agent_id=agent.id, description=agent.description)


def find_model(state: ServerState, user_id: str, model: str) -> AgentState:
    """The user's agent named ``model``, else the one with that id; 404 model_not_found otherwise."""
    ref = model.strip()
    found = state.storage.agents.get(user_id, ref) or state.storage.agents.by_id(user_id, ref)
    if found is None:
        raise ModelNotFoundError(f"the model {model!r} does not exist: no agent of yours has this name or id")
    return found


@router.get("/models", response_model=ModelList)
def list_models(state: State, user: CurrentUser) -> ModelList:
    """The key's user's agents, oldest first."""
    agents: list[AgentState] = []
    after: str | None = None
    while True:
        batch = state.storage.agents.page(user.id, AgentQuery(limit=1000, ascending=True, after=after))
        agents += batch
        if len(batch) < 1000:
            return ModelList(data=[_model(a) for a in agents])
        after = batch[-1].id


@router.get("/models/{model:path}", response_model=ModelOut)
def retrieve_model(model: Annotated[str, Path()], state: State, user: CurrentUser) -> ModelOut:
    return _model(find_model(state, user.id, model))


# -- chat ----------------------------------------------------------------------------------------------
def newest_user_text(messages: list[ChatMessageIn]) -> str:
    """The message that enters memory: the conversation's last one, which must be the user's."""
    last = messages[-1]
    if last.role != "user":
        raise UserError(
            f"messages: the last message is {last.role!r}, not 'user'; end with the user's message (only it is sent "
            "to the agent, which remembers the rest of the conversation itself)"
        )
    part = last.unsupported_part()
    if part is not None:
        raise UserError(f"messages: {part!r} content is not supported; send text")
    text = last.text()
    if not text.strip():
        raise UserError("messages: the last user message is empty")
    if len(text) > MAX_TEXT:
        raise UserError(f"messages: the last user message is longer than {MAX_TEXT:,} characters")
    return text


def _answer_task(state: ServerState, agent: AgentState, messages: list[ChatMessageIn]) -> tuple[str, dict[str, int]]:
    """A background task answered by the agent's LLM alone: no memory, no tools, nothing stored."""
    from memgpt.llm import create_llm

    try:
        llm = create_llm(state.config.llm, model=agent.llm_model, context_window=agent.context_window)
    except ConfigError as exc:
        raise LLMError(f"the server's LLM is not configured ({exc})") from exc
    completion = llm.complete([{"role": m.role, "content": m.text()} for m in messages])
    return completion.content, _usage(completion.prompt_tokens, completion.completion_tokens)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(stop_reason: str | None) -> str:
    return "length" if stop_reason == "max_steps" else "stop"


def _replies(items: list[dict[str, Any]]) -> list[str]:
    return [str(item.get("content") or "") for item in items if item.get("message_type") == "assistant_message"]


class _Reply:
    """The envelope of one answer (ids, model, time), shared by its chunks."""

    def __init__(self, run_id: str, model: str) -> None:
        self.id = f"chatcmpl-{run_id.removeprefix('run-')}"
        self.model = model
        self.created = int(time.time())

    def completion(self, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage}

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data({**self._head("chat.completion.chunk"), "choices": [choice]})

    def usage_chunk(self, usage: dict[str, int]) -> str:
        return _data({**self._head("chat.completion.chunk"), "choices": [], "usage": usage})

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "system_fingerprint": None}


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest, request: Request, state: State, user: CurrentUser
) -> JSONResponse | StreamingResponse:
    """Send the conversation's newest user message to the agent named by ``model`` and answer with what the
    agent said (streamed as chat.completion.chunk events with ``stream: true``)."""
    if body.n is not None and body.n != 1:
        message = f"n: {body.n} choices asked for; an agent answers a turn once, so only n=1 is served (leave n out)"
        return openai_error(400, message, "invalid_request", "n")
    agent = await anyio.to_thread.run_sync(find_model, state, user.id, body.model)
    if background_shape(body.messages, request.headers) is not None:
        text, usage = await anyio.to_thread.run_sync(_answer_task, state, agent, body.messages)
        reply = _Reply(f"task-{int(time.time() * 1000)}", body.model)
        if not body.stream:
            return JSONResponse(reply.completion(text, "stop", usage))
        return StreamingResponse(_task_events(reply, text, usage, body.include_usage), media_type="text/event-stream")
    kind = (body.response_format or {}).get("type", "text")
    if kind != "text":  # a chat UI's background task (above) is answered as text whatever it asks
        message = (
            f"response_format: {kind!r} is not supported: the agent answers in its own words (its send_message), so "
            "only 'text' is served; leave response_format out, or ask for JSON in the message"
        )
        return openai_error(400, message, "invalid_request", "response_format")
    text = newest_user_text(body.messages)
    retry = request.headers.get("x-stainless-retry-count", "0").strip()
    turn_input = TurnInput(
        user_id=user.id,
        agent_id=agent.id,
        text=text,
        role="user",
        max_steps=MAX_STEPS,
        digest=request_digest(user.id, agent.id, request.url.path, json.loads(await request.body() or b"{}")),
        retry=retry.isdigit() and int(retry) > 0,
        rendering=Rendering(),
        arrived=arrived(request.scope),
        collected=not body.stream,
    )
    turn = await asyncio.wrap_future(state.turns().begin(turn_input))  # on the turn's own thread (ended if collected)
    reply = _Reply(turn.run_id, body.model)
    if body.stream:
        events = _turn_events(turn, reply, body.include_usage, state.turns().timing.ping_every)
        return StreamingResponse(events, media_type="text/event-stream", headers=_HEADERS)
    if not turn.done:  # a retry that joined a running turn
        async for _ in turn.follow():
            pass
    replies = _replies(turn.items)
    if turn.error is not None and (not replies or turn.cut):
        status, code, detail = turn.failure()
        if turn.cut:  # the server stopped mid-turn: a retry (the SDK's own) answers the message
            return openai_error(status, detail, None, headers={"Retry-After": str(state.turns().timing.retry_after)})
        # The turn is recorded as failed (a lost lease too): a retry gets the same answer.
        return openai_error(status, detail, code if status == 409 else None, headers=NO_RETRY)
    usage = _usage(turn.usage.prompt_tokens, turn.usage.completion_tokens)
    return JSONResponse(reply.completion("\n\n".join(replies), _finish_reason(turn.stop_reason), usage))


async def _task_events(reply: _Reply, text: str, usage: dict[str, int], include_usage: bool) -> AsyncIterator[str]:
    yield reply.chunk({"role": "assistant", "content": ""})
    yield reply.chunk({"content": text})
    yield reply.chunk({}, "stop")
    if include_usage:
        yield reply.usage_chunk(usage)
    yield "data: [DONE]\n\n"


async def _turn_events(turn: Turn, reply: _Reply, include_usage: bool, ping_every: float) -> AsyncIterator[str]:
    """The agent's words as they are sent (each send_message call a piece), then why it stopped. A client
    that goes away only stops this: the turn runs on to its end."""
    yield reply.chunk({"role": "assistant", "content": ""})
    sent = 0
    async for item in turn.follow(ping_every):
        if item is None:
            yield ": keep-alive\n\n"
        elif item.get("message_type") == "assistant_message":
            text = str(item.get("content") or "")
            yield reply.chunk({"content": text if sent == 0 else f"\n\n{text}"})
            sent += 1
    if turn.error is not None and sent == 0:
        status, code, message = turn.failure()
        kind = _KINDS.get(status, "server_error")
        yield _data({"error": {"message": message, "type": kind, "param": None, "code": code}})
    else:
        yield reply.chunk({}, _finish_reason(turn.stop_reason))
        if include_usage:
            yield reply.usage_chunk(_usage(turn.usage.prompt_tokens, turn.usage.completion_tokens))
    yield "data: [DONE]\n\n"
