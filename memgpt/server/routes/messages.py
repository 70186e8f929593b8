"""``/v1/agents/{agent_id}/messages``: send a message (a turn, collected or streamed as SSE), read the
history, cancel a running turn. Turns themselves live in ``memgpt.server.turns``."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from memgpt.errors import NotFoundError, UserError
from memgpt.server import errors
from memgpt.server.retried import arrived
from memgpt.server.routes.agents import find_agent
from memgpt.server.schemas.agents import Order
from memgpt.server.schemas.messages import (
    CancelRequest,
    LettaMessage,
    LettaResponse,
    MessageType,
    Rendering,
    SendRequest,
    letta_messages,
)
from memgpt.server.state import CurrentUser, ServerState, State, served
from memgpt.server.turns import Turn, TurnInput, request_digest
from memgpt.types import utc_now

router = APIRouter(prefix="/v1/agents/{agent_id}/messages", tags=["messages"])
MAX_TEXT = 1_000_000  # characters of one message


def _text(body: SendRequest) -> tuple[str, str]:
    """The one message of a send, as (role, text); UserError (400) saying what is wrong otherwise."""
    inputs = body.inputs()
    if not inputs:
        raise HTTPException(422, "messages: send one message (or input); the request has none")
    if len(inputs) > 1:
        raise UserError(f"messages: send one message per request (this one has {len(inputs)})")
    message = inputs[0]
    part = message.unsupported_part()
    if part is not None:
        raise UserError(f"messages: {part!r} content is not supported; send text")
    text = message.text()
    if not text.strip():
        raise UserError("messages: the message is empty")
    if len(text) > MAX_TEXT:
        raise UserError(f"messages: the message is longer than {MAX_TEXT:,} characters")
    try:
        text.encode("utf-8")  # checked here: a turn that fails to store it would be an LLM-side failure
    except UnicodeEncodeError as exc:
        raise UserError(f"messages: {errors.not_unicode(exc)}") from exc
    return message.role, text


async def _start(
    request: Request, agent_id: str, body: SendRequest, state: ServerState, user_id: str, *, collected: bool = False
) -> Turn:
    """The turn for this send (a new one, or the one a retried request started). It starts on the turn's own
    thread, since it may wait for the agent's running turn and opens the agent from storage; another user's
    agent is a 404 (read with the agent's lease). ``collected``: answered once the turn is over (not streamed),
    which is when a new turn is returned (``TurnInput.collected``)."""
    role, text = _text(body)
    raw = await request.json()  # as FastAPI parsed it for ``body`` (kept by the request): not parsed again
    retry = request.headers.get("x-stainless-retry-count", "0").strip()
    turn_input = TurnInput(
        user_id=user_id,
        agent_id=agent_id,
        text=text,
        role=role,
        max_steps=body.max_steps,
        digest=request_digest(user_id, agent_id, request.scope["path"], raw),  # (``request.url`` builds a URL)
        retry=retry.isdigit() and int(retry) > 0,
        rendering=_rendering(
            body.use_assistant_message, body.assistant_message_tool_name, body.assistant_message_tool_kwarg
        ),
        arrived=arrived(request.scope),
        collected=collected,
    )
    return await asyncio.wrap_future(state.turns().begin(turn_input))


@functools.lru_cache(maxsize=64)
def _rendering(use: bool, name: str, kwarg: str) -> Rendering:
    """Made once for each (use, name, kwarg) a send asks (a pydantic model's construction cost the event loop ~7 µs
    a send; nearly every send asks the defaults)."""
    return Rendering(use_assistant_message=use, tool_name=name, tool_kwarg=kwarg)


def _wanted(types: list[MessageType] | None) -> Callable[[dict[str, Any]], bool]:
    allowed = set(types) if types else None
    return lambda item: allowed is None or item.get("message_type") in allowed


@router.post("", response_model=LettaResponse)
@router.post("/", response_model=LettaResponse, include_in_schema=False)
async def send_message(
    agent_id: str, body: SendRequest, request: Request, user: CurrentUser
) -> LettaResponse | Response:
    """Send a message and get the agent's turn: reasoning, tool calls and returns, assistant messages, usage and
    why it stopped. With ``streaming: true`` the same arrive as server-sent events, each step as it happens."""
    state = served(request)
    turn = await _start(request, agent_id, body, state, user.id, collected=not body.streaming)
    if body.streaming:
        return _stream(turn, body, state)
    if not turn.done:  # a retry that joined a running turn
        async for _ in turn.follow():
            pass
    if turn.error is not None and (not turn.items or turn.cut):
        status, _, detail = turn.failure()
        if turn.cut:  # the server stopped mid-turn: a retry of the send (letta-client's own) answers the message
            return errors.error(status, detail, {"Retry-After": str(state.turns().timing.retry_after)})
        # The turn is recorded as failed (a lost lease too): a retry of the send gets the same answer.
        return errors.error(status, detail, errors.NO_RETRY)
    if turn.answer is not None and not body.include_return_message_types:
        return Response(turn.answer, media_type="application/json")  # as stored with the run
    answer = turn.body()  # a LettaResponse as JSON: not validated once more on the way out
    answer["messages"] = [item for item in answer["messages"] if _wanted(body.include_return_message_types)(item)]
    return JSONResponse(answer)


@router.post("/stream", response_class=StreamingResponse)
async def stream_message(agent_id: str, body: SendRequest, request: Request, user: CurrentUser) -> StreamingResponse:
    """Send a message and follow the turn as server-sent events (Letta's ``agents.messages.stream``)."""
    state = served(request)
    return _stream(await _start(request, agent_id, body, state, user.id), body, state)


def _stream(turn: Turn, body: SendRequest, state: ServerState) -> StreamingResponse:
    wanted = _wanted(body.include_return_message_types)
    every = state.turns().timing.ping_every

    async def events() -> AsyncIterator[str]:
        async for item in turn.follow(every):
            if item is None:  # quiet for a while: keep the client's read timeout from firing
                if body.include_pings:
                    ping = {"id": f"ping-{uuid.uuid4()}", "date": utc_now().isoformat(), "message_type": "ping"}
                    yield _data({**ping, "run_id": turn.run_id})
                else:
                    yield ": keep-alive\n\n"
            elif wanted(item):
                yield _data(item)
        final = turn.body()
        yield _data(final["stop_reason"])
        yield _data(final["usage"])
        if turn.error is not None:
            kind, message = turn.error
            detail = {"message_type": "error_message", "error_type": kind, "message": message, "run_id": turn.run_id}
            yield f"event: error\ndata: {json.dumps(detail)}\n\n"
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@router.get("", response_model=list[LettaMessage])
@router.get("/", response_model=list[LettaMessage], include_in_schema=False)
def list_messages(
    agent_id: str,
    state: State,
    user: CurrentUser,
    after: str | None = None,
    before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Order = "desc",
    include_return_message_types: Annotated[list[MessageType] | None, Query()] = None,
    use_assistant_message: bool = True,
    assistant_message_tool_name: str = "send_message",
    assistant_message_tool_kwarg: str = "message",
) -> list[LettaMessage]:
    """The agent's history as Letta messages, newest first unless ``order=asc``. ``after``/``before`` are
    message ids; the items of one stored message (which share its id) are never split between pages."""
    agent = find_agent(state, user.id, agent_id)
    rendering = _rendering(use_assistant_message, assistant_message_tool_name, assistant_message_tool_kwarg)
    wanted = set(include_return_message_types) if include_return_message_types else None
    ascending = order == "asc"
    backwards = before is not None and after is None  # the page nearest to ``before``
    groups: list[list[LettaMessage]] = []
    count = 0
    lower, upper = after, before
    while count < limit:
        batch = state.storage.messages.page(agent.id, limit=limit, ascending=ascending, after=lower, before=upper)
        for message in reversed(batch) if backwards else batch:
            items = [i for i in letta_messages(message, rendering) if wanted is None or i.message_type in wanted]
            if items:
                groups.append(items if ascending else items[::-1])
                count += len(items)
            if count >= limit:
                break
        if len(batch) < limit or count >= limit:
            break
        lower, upper = (lower, batch[0].id) if backwards else (batch[-1].id, upper)
    if not groups:  # a cursor that is not one of the agent's messages is a 404 (as Letta's), not the end of history
        _check_cursors(state, agent.id, after=after, before=before)
    return [item for group in (groups[::-1] if backwards else groups) for item in group]


def _check_cursors(state: ServerState, agent_id: str, **cursors: str | None) -> None:
    given = {name: cursor for name, cursor in cursors.items() if cursor is not None}
    found = state.storage.messages.by_id(agent_id, list(given.values())) if given else {}
    for name, cursor in given.items():
        if cursor not in found:
            raise NotFoundError(f"{name}={cursor!r}: no message of this agent has that id")


@router.post("/cancel")
def cancel(agent_id: str, state: State, user: CurrentUser, body: CancelRequest | None = None) -> dict[str, str]:
    """Stop the agent's running turn after its current step (never in the middle of one); ``{}`` when
    nothing runs. The turn then ends with stop_reason ``cancelled``."""
    find_agent(state, user.id, agent_id)
    return state.turns().cancel(agent_id, body.run_ids if body is not None else None)
