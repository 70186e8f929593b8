"""The Python client's methods, written once. A client is one way to carry out an operation of memgpt's /v1
API (``call``): over HTTP (``RESTClient``) or in this process on the local home (``LocalClient``, which
runs the same route functions and turn runner the server runs). Both hand back the API's JSON, which the
methods here turn into the types of ``memgpt.client.types``. Method names are pymemgpt 0.3's."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, overload

from memgpt.client.types import (
    AgentInfo,
    AgentMemory,
    ArchivalHit,
    ArchivalPassage,
    FileJob,
    MessageEvent,
    SourceInfo,
    TurnEnd,
    TurnResponse,
    Usage,
    message_event,
    message_events,
    turn_response,
)
from memgpt.errors import InputFileError, NotFoundError, UserError

PAGE = 1000  # items per request when a method reads a whole list
StreamEvent = MessageEvent | TurnEnd


class Client(ABC):
    """pymemgpt-style access to one user's agents and sources (see ``memgpt.create_client``)."""

    @abstractmethod
    def call(
        self, op: str, ids: dict[str, str] | None = None, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """Carry out one API operation (named like letta-client's methods: ``agents.create``,
        ``agents.messages.stream``, ...) on the objects ``ids`` names (path parameters) with query
        ``params`` and ``body``; returns the route's JSON (an iterator of SSE items for streams, the text
        for ``agents.export_file``). Raises errors of ``memgpt.errors``."""

    def close(self) -> None:  # noqa: B027 - a client without anything to let go of needs no close
        """Let go of the connection (REST) or of the home's storage (local)."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- agents ------------------------------------------------------------------------------------
    def create_agent(
        self,
        name: str | None = None,
        *,
        persona: str | None = None,
        human: str | None = None,
        memory: dict[str, str] | None = None,
        system: str | None = None,
        model: str | None = None,
        tools: list[str] | None = None,
        include_base_tools: bool = True,
        description: str | None = None,
        tags: list[str] | None = None,
    ) -> AgentInfo:
        """A new agent. ``persona`` and ``human`` are the texts of those core memory blocks (the configured
        templates when not given); ``memory`` adds blocks (label: value); ``tools`` names extra tools;
        ``model`` is an LLM handle of the server ("provider/model") or a model name."""
        blocks = [{"label": label, "value": value} for label, value in (memory or {}).items()]
        for label, value in (("persona", persona), ("human", human)):
            if value is not None:
                blocks.append({"label": label, "value": value})
        body: dict[str, Any] = {"name": name, "memory_blocks": blocks, "include_base_tools": include_base_tools}
        for key, value in (("system", system), ("model", model), ("tools", tools), ("description", description)):
            if value is not None:
                body[key] = value
        if tags is not None:
            body["tags"] = tags
        return AgentInfo.from_api(self.call("agents.create", body=body))

    def list_agents(self) -> list[AgentInfo]:
        """Every agent of the user, oldest first."""
        return [AgentInfo.from_api(a) for a in self._all("agents.list", {}, {"order": "asc"})]

    def get_agent(self, agent_id: str) -> AgentInfo:
        return AgentInfo.from_api(self.call("agents.retrieve", {"agent_id": agent_id}))

    def get_agent_id(self, agent_name: str) -> str:
        """The id of the user's agent named ``agent_name``; NotFoundError when there is none."""
        found = self.call("agents.list", params={"name": agent_name, "limit": 1})
        if not found:
            raise NotFoundError(f"no agent named {agent_name!r}")
        return str(found[0]["id"])

    def agent_exists(self, agent_id: str | None = None, agent_name: str | None = None) -> bool:
        try:
            if agent_id is not None:
                self.get_agent(agent_id)
            elif agent_name is not None:
                self.get_agent_id(agent_name)
            else:
                raise UserError("agent_exists: give agent_id or agent_name")
        except NotFoundError:
            return False
        return True

    def update_agent(
        self,
        agent_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        system: str | None = None,
        model: str | None = None,
        tags: list[str] | None = None,
    ) -> AgentInfo:
        """Change only what is given (None leaves a field as it is)."""
        body = _given({"name": name, "description": description, "system": system, "model": model, "tags": tags})
        return AgentInfo.from_api(self.call("agents.update", {"agent_id": agent_id}, body=body))

    def rename_agent(self, agent_id: str, new_name: str) -> AgentInfo:
        return self.update_agent(agent_id, name=new_name)

    def delete_agent(self, agent_id: str) -> None:
        """Delete the agent with its messages and its own archival passages (attached sources stay)."""
        self.call("agents.delete", {"agent_id": agent_id})

    # -- messages ----------------------------------------------------------------------------------
    @overload
    def send_message(
        self, agent_id: str, message: str, role: str = "user", *, stream: Literal[False] = False, max_steps: int = 10
    ) -> TurnResponse: ...

    @overload
    def send_message(
        self, agent_id: str, message: str, role: str = "user", *, stream: Literal[True], max_steps: int = 10
    ) -> Iterator[StreamEvent]: ...

    def send_message(
        self, agent_id: str, message: str, role: str = "user", *, stream: bool = False, max_steps: int = 10
    ) -> TurnResponse | Iterator[StreamEvent]:
        """Send ``message`` (role "user", or "system" for an event the agent should know of) and run the
        agent's turn. With ``stream=True``, a generator of the turn's messages as each step is stored,
        ending with a ``TurnEnd``; otherwise the whole turn once it is over."""
        body = {"messages": [{"role": role, "content": message}], "max_steps": max_steps}
        ids = {"agent_id": agent_id}
        if stream:
            return _stream_events(self.call("agents.messages.stream", ids, body={**body, "streaming": True}))
        return turn_response(self.call("agents.messages.create", ids, body=body))

    @overload
    def user_message(self, agent_id: str, message: str, *, stream: Literal[False] = False) -> TurnResponse: ...

    @overload
    def user_message(self, agent_id: str, message: str, *, stream: Literal[True]) -> Iterator[StreamEvent]: ...

    def user_message(
        self, agent_id: str, message: str, *, stream: bool = False
    ) -> TurnResponse | Iterator[StreamEvent]:
        """``send_message`` with role "user"."""
        if stream:
            return self.send_message(agent_id, message, stream=True)
        return self.send_message(agent_id, message)

    def get_messages(
        self, agent_id: str, before: str | None = None, after: str | None = None, limit: int = 1000
    ) -> list[MessageEvent]:
        """The agent's history, oldest first: the newest ``limit`` items, or those just before the message
        ``before``, or (from there on) those just after the message ``after``. The items of one stored
        message share its id and are never split."""
        ids = {"agent_id": agent_id}
        if after is not None:
            params = _given({"order": "asc", "limit": limit, "after": after, "before": before})
            return message_events(self.call("agents.messages.list", ids, params=params))
        params = _given({"order": "desc", "limit": limit, "after": before})  # cursors follow the order: newest first
        return message_events(self.call("agents.messages.list", ids, params=params)[::-1])

    # -- core memory -------------------------------------------------------------------------------
    def get_agent_memory(self, agent_id: str) -> AgentMemory:
        return AgentMemory.from_api(self.call("agents.memory", {"agent_id": agent_id}))

    def update_agent_core_memory(self, agent_id: str, new_memory_contents: dict[str, str]) -> AgentMemory:
        """Set the value of core memory blocks (label: new value); each is checked against its limit and
        the agent's next step sees it. Returns the memory afterwards."""
        for label, value in new_memory_contents.items():
            self.call("agents.blocks.update", {"agent_id": agent_id, "block_label": label}, body={"value": value})
        return self.get_agent_memory(agent_id)

    # -- archival memory ---------------------------------------------------------------------------
    def insert_archival_memory(self, agent_id: str, memory: str) -> list[ArchivalPassage]:
        """Store text in the agent's archival memory (split into passages when long); returns them."""
        made = self.call("agents.passages.create", {"agent_id": agent_id}, body={"text": memory})
        return [ArchivalPassage.from_api(p) for p in made]

    def get_agent_archival_memory(
        self, agent_id: str, before: str | None = None, after: str | None = None, limit: int = 1000
    ) -> list[ArchivalPassage]:
        """The agent's own passages, oldest first (``after``/``before`` are passage ids)."""
        params = _given({"before": before, "after": after, "limit": limit, "ascending": True})
        found = self.call("agents.passages.list", {"agent_id": agent_id}, params=params)
        return [ArchivalPassage.from_api(p) for p in found]

    get_archival_memory = get_agent_archival_memory  # pymemgpt 0.3.2x's name

    def delete_archival_memory(self, agent_id: str, memory_id: str) -> None:
        self.call("agents.passages.delete", {"agent_id": agent_id, "memory_id": memory_id})

    def search_archival(self, agent_id: str, query: str, limit: int = 10) -> list[ArchivalHit]:
        """The best passages for ``query`` where the agent's own search looks (its passages and its
        sources'), by meaning and by words; best first."""
        found = self.call("agents.passages.search", {"agent_id": agent_id}, params={"query": query, "top_k": limit})
        return [ArchivalHit.from_api(h) for h in found["results"]]

    # -- sources -----------------------------------------------------------------------------------
    def create_source(self, name: str, description: str | None = None) -> SourceInfo:
        """An empty source on the embedding model of the home (or server); load files into it."""
        return SourceInfo.from_api(self.call("folders.create", body={"name": name, "description": description}))

    def list_sources(self) -> list[SourceInfo]:
        return [SourceInfo.from_api(s) for s in self._all("folders.list", {}, {"order": "asc"})]

    def get_source(self, source_id: str) -> SourceInfo:
        return SourceInfo.from_api(self.call("folders.retrieve", {"folder_id": source_id}))

    def get_source_id(self, source_name: str) -> str:
        found = self.call("folders.list", params={"name": source_name})
        if not found:
            raise NotFoundError(f"no source named {source_name!r}")
        return str(found[0]["id"])

    def delete_source(self, source_id: str) -> None:
        """Delete the source with its files and passages; agents it was attached to lose the link."""
        self.call("folders.delete", {"folder_id": source_id})

    def load_file_into_source(
        self, filename: str | Path, source_id: str, blocking: bool = True, timeout: float = 3600.0
    ) -> FileJob:
        """Load a file into the source with the loader `memgpt load` uses. With ``blocking`` (the default)
        wait until it is loaded (an InputFileError when it cannot be); otherwise return the pending job,
        which ``get_job`` follows."""
        path = Path(filename)
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise InputFileError(str(path), exc.strerror or str(exc)) from exc
        job = FileJob.from_api(self.call("folders.files.upload", {"folder_id": source_id}, body=(path.name, content)))
        deadline = time.monotonic() + timeout
        pause = 0.05
        while blocking and not job.finished:
            if time.monotonic() > deadline:
                raise UserError(f"{path}: still loading after {timeout:g} s; follow it with get_job({job.id!r}, ...)")
            time.sleep(pause)
            pause = min(1.0, pause * 2)
            job = self.get_job(job.id, source_id)
        if blocking and job.status == "error":
            raise InputFileError(str(path), job.error or "the file could not be loaded")
        return job

    def get_job(self, job_id: str, source_id: str) -> FileJob:
        """Where the loading of a file (``job_id`` is the file's id) into the source is."""
        return FileJob.from_api(self.call("folders.files.retrieve", {"folder_id": source_id, "file_id": job_id}))

    def attach_source_to_agent(
        self, agent_id: str, source_id: str | None = None, *, source_name: str | None = None
    ) -> None:
        """Link the source (by id or name) to the agent's archival memory; nothing is copied."""
        ids = {"agent_id": agent_id, "folder_id": self._source_ref(source_id, source_name)}
        self.call("agents.folders.attach", ids)

    def detach_source(self, agent_id: str, source_id: str | None = None, *, source_name: str | None = None) -> None:
        ids = {"agent_id": agent_id, "folder_id": self._source_ref(source_id, source_name)}
        self.call("agents.folders.detach", ids)

    detach_source_from_agent = detach_source  # the local client's name in pymemgpt 0.3

    def list_attached_sources(self, agent_id: str) -> list[SourceInfo]:
        attached = self._all("agents.folders.list", {"agent_id": agent_id}, {"order": "asc"})
        return [SourceInfo.from_api(s) for s in attached]

    # -- agent files -------------------------------------------------------------------------------
    def export_agent(self, agent_id: str, path: str | Path | None = None) -> str:
        """The agent as an Agent File (.af JSON text), also written to ``path`` when given."""
        text = str(self.call("agents.export_file", {"agent_id": agent_id}))
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def import_agent(self, agent_file: str | Path, *, name: str | None = None) -> AgentInfo:
        """A new agent from an Agent File (a path, or the JSON text itself; Letta's files work too), named
        ``name`` (refused when taken) or, as Letta's import names it, the file's name with ``_copy`` (``_copy_2``
        when that is taken), whether or not the file's own name is free."""
        text = str(agent_file)
        if not text.lstrip().startswith("{"):
            path = Path(agent_file)
            try:
                content, file_name = path.read_bytes(), path.name
            except OSError as exc:
                raise InputFileError(str(path), exc.strerror or str(exc)) from exc
        else:
            content, file_name = text.encode("utf-8"), "agent.af"
        options = {"override_name": name, "append_copy_suffix": False, "on_name_clash": "error"} if name else {}
        result = self.call("agents.import_file", params=options, body=(file_name, content))
        return self.get_agent(result["agent_ids"][0])

    # -- helpers -----------------------------------------------------------------------------------
    def _all(self, op: str, ids: dict[str, str], params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every item of a list, a page at a time."""
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            batch = self.call(op, ids, params=_given({**params, "limit": PAGE, "after": after}))
            items += batch
            if len(batch) < PAGE:
                return items
            after = batch[-1]["id"]

    def _source_ref(self, source_id: str | None, source_name: str | None) -> str:
        if source_id is not None:
            return source_id
        if source_name is None:
            raise UserError("give source_id or source_name")
        return self.get_source_id(source_name)


def _given(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _stream_events(items: Iterator[dict[str, Any]]) -> Iterator[StreamEvent]:
    """A stream's items as typed events, ending with one TurnEnd."""
    stop, usage, error = "error", Usage(), None
    for item in items:
        kind = item.get("message_type")
        if kind == "stop_reason":
            stop = str(item["stop_reason"])
        elif kind == "usage_statistics":
            usage = Usage.from_api(item)
        elif kind == "error_message":
            error = str(item.get("message") or "the turn failed")
        else:
            event = message_event(item)
            if event is not None:
                yield event
    yield TurnEnd(stop, usage, error)
