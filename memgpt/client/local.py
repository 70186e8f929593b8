"""The client on the local home, in this process: every operation runs the server's own route function (which
calls the domain functions `memgpt` uses) as the home's own user, and messages go through the same turn
runner, so the local client and a server answer alike. It holds the home's Milvus Lite file while open,
as `memgpt run` does; close it (or use ``with``) to let a CLI or a server have it."""

from __future__ import annotations

import inspect
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Response, UploadFile
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from memgpt.client.base import Client
from memgpt.config import Config, load_config, memgpt_home
from memgpt.errors import BackendError, LLMError, NotFoundError, UserError
from memgpt.server.routes import agentfile, agents, folders, memory, messages, passages
from memgpt.server.schemas.agents import AgentCreate, AgentUpdate, BlockUpdate
from memgpt.server.schemas.folders import FolderCreate
from memgpt.server.schemas.messages import SendRequest
from memgpt.server.schemas.passages import PassageCreate
from memgpt.server.turns import Turn, TurnInput, request_digest

POLL = 0.02  # seconds between looks at a running turn


def _route(function: Callable[..., Any], body: type[BaseModel] | None = None) -> Callable[..., Any]:
    """An operation that calls ``function`` with the ids and params as its keyword arguments."""

    # A route that reads its request (when it arrived: ``memgpt.server.retried.arrived``) gets one that just did.
    wants_request = "request" in inspect.signature(function).parameters

    def run(client: LocalClient, ids: dict[str, str], params: dict[str, Any], payload: Any) -> Any:
        extra: dict[str, Any] = {"body": body.model_validate(payload)} if body is not None else {}
        if wants_request:
            extra["request"] = _arriving()
        return function(**ids, **params, **extra, state=client.state, user=client.user)

    return run


ROUTES: dict[str, Callable[..., Any]] = {
    "agents.create": _route(agents.create_agent, AgentCreate),
    "agents.list": _route(agents.list_agents),
    "agents.retrieve": _route(agents.retrieve_agent),
    "agents.delete": _route(agents.delete_agent),
    "agents.update": _route(agents.update_agent, AgentUpdate),
    "agents.memory": _route(memory.memory_summary),
    "agents.blocks.update": _route(agents.update_block, BlockUpdate),
    "agents.messages.list": _route(messages.list_messages),
    "agents.passages.create": _route(passages.create_passage, PassageCreate),
    "agents.passages.list": _route(passages.list_passages),
    "agents.passages.search": _route(passages.search_passages),
    "agents.passages.delete": _route(passages.delete_passage),
    "agents.folders.attach": _route(folders.attach_folder),
    "agents.folders.detach": _route(folders.detach_folder),
    "agents.folders.list": _route(folders.list_agent_folders),
    "folders.create": _route(folders.create_folder, FolderCreate),
    "folders.list": _route(folders.list_folders),
    "folders.retrieve": _route(folders.retrieve_folder),
    "folders.files.retrieve": _route(folders.retrieve_file),
}


class LocalClient(Client):
    """The home's own user's agents and sources, on the home's storage (``$MEMGPT_HOME`` unless given)."""

    def __init__(self, home: Path | None = None, config: Config | None = None) -> None:
        from memgpt.server.app import open_state
        from memgpt.server.jobs import FileJobs

        home = home or memgpt_home()
        self.state = open_state(home, config or load_config(home), holder="a memgpt Python client")
        self.user = self.state.owner
        self.jobs = FileJobs(self.state)
        self._open = True
        try:
            self.jobs.start()  # loads this process left unfinished
        except BaseException:
            self.state.close()
            raise

    def close(self) -> None:
        if self._open:
            self._open = False
            self.jobs.stop()
            self.state.close()

    def call(
        self, op: str, ids: dict[str, str] | None = None, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        ids, params = dict(ids or {}), dict(params or {})
        special = {
            "agents.messages.create": self._send,
            "agents.messages.stream": self._stream,
            "folders.files.upload": self._upload,
            "folders.delete": self._delete_folder,
            "agents.export_file": self._export,
            "agents.import_file": self._import,
        }
        try:
            if op in special:
                return special[op](ids, params, body)
            answer = ROUTES[op](self, ids, params, body)
            if isinstance(answer, Response):  # a route that serializes its own answer (agents.list)
                return json.loads(answer.body)
            return jsonable_encoder(answer)
        except HTTPException as exc:  # what a route refuses itself, as the REST client would raise it
            raise (NotFoundError if exc.status_code == 404 else UserError)(str(exc.detail)) from exc
        except ValidationError as exc:  # a body FastAPI would have refused with 422
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise UserError(problems) from exc

    # -- turns -------------------------------------------------------------------------------------
    def _turn(self, agent_id: str, payload: dict[str, Any]) -> Turn:
        request = SendRequest.model_validate(payload)
        role, text = messages._text(request)  # the route's own checks of a send
        agents.find_agent(self.state, self.user.id, agent_id)
        turn_input = TurnInput(
            user_id=self.user.id,
            agent_id=agent_id,
            text=text,
            role=role,
            max_steps=request.max_steps,
            digest=request_digest(self.user.id, agent_id, "local", payload),
            retry=False,
            rendering=messages._rendering(
                request.use_assistant_message, request.assistant_message_tool_name, request.assistant_message_tool_kwarg
            ),
        )
        return self.state.turns().start(turn_input)

    def _send(self, ids: dict[str, str], _: dict[str, Any], payload: Any) -> Any:
        turn = self._turn(ids["agent_id"], payload)
        for _item in _follow(turn):
            pass
        if turn.error is not None and not turn.items:
            kind = LLMError if turn.stop_reason == "llm_api_error" else BackendError
            raise kind(f"{turn.error[1]} (your message was stored; the agent has not answered it)")
        return turn.response().model_dump(mode="json")

    def _stream(self, ids: dict[str, str], _: dict[str, Any], payload: Any) -> Iterator[dict[str, Any]]:
        turn = self._turn(ids["agent_id"], payload)  # refused sends raise here, before the first item

        def items() -> Iterator[dict[str, Any]]:
            yield from _follow(turn)
            final = turn.response()
            yield final.stop_reason.model_dump()
            yield final.usage.model_dump()
            if turn.error is not None:
                yield {"message_type": "error_message", "error_type": turn.error[0], "message": turn.error[1]}

        return items()

    # -- files -------------------------------------------------------------------------------------
    def _upload(self, ids: dict[str, str], params: dict[str, Any], payload: Any) -> Any:
        name, content = payload
        upload = UploadFile(io.BytesIO(content), filename=name)
        out = folders.upload_file(ids["folder_id"], self.state, self.user, self.jobs, Response(), upload, **params)
        return jsonable_encoder(out)

    def _delete_folder(self, ids: dict[str, str], _: dict[str, Any], __: Any) -> None:
        folders.delete_folder(ids["folder_id"], self.state, self.user, self.jobs)

    def _export(self, ids: dict[str, str], params: dict[str, Any], _: Any) -> str:
        answer = agentfile.export_file(ids["agent_id"], self.state, self.user, **params)
        return bytes(answer.body).decode("utf-8")

    def _import(self, _: dict[str, str], params: dict[str, Any], payload: Any) -> Any:
        name, content = payload
        upload = UploadFile(io.BytesIO(content), filename=name)
        imported = agentfile.import_file(
            request=_arriving(), state=self.state, user=self.user, jobs=self.jobs, file=upload, **params
        )
        return jsonable_encoder(imported)


def _arriving() -> Request:
    """A request for a route that reads when its request arrived (``memgpt.server.retried.arrived``): now."""
    return Request({"type": "http", "headers": []})


def _follow(turn: Turn) -> Iterator[dict[str, Any]]:
    """The turn's items as its steps store them, until it is over (it runs in the runner's thread)."""
    sent = 0
    while True:
        over = turn.done  # read before the items: once it is over, every item is there
        fresh = turn.items[sent:]
        yield from fresh
        sent += len(fresh)
        if over:
            return
        time.sleep(POLL)
