"""What the Python client returns, the same from the local and the REST client: small frozen dataclasses
made from the JSON of memgpt's /v1 API (the local client produces that JSON in-process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass(frozen=True)
class AgentInfo:
    """An agent: its settings and core memory (block label: value)."""

    id: str
    name: str
    description: str
    system: str
    model: str | None
    created_at: datetime
    tags: list[str]
    tools: list[str]
    memory: dict[str, str]
    source_ids: list[str]

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> AgentInfo:
        return cls(
            id=data["id"],
            name=data["name"],
            description=data.get("description") or "",
            system=data.get("system") or "",
            model=data.get("model"),
            created_at=_time(data["created_at"]),
            tags=list(data.get("tags") or []),
            tools=[t["name"] for t in data.get("tools") or []],
            memory={b["label"]: b["value"] for b in data.get("blocks") or []},
            source_ids=[s["id"] for s in data.get("sources") or []],
        )


@dataclass(frozen=True)
class AgentMemory:
    """pymemgpt 0.3's ``get_agent_memory``: core memory (label: value), the number of messages in recall
    memory and of archival passages the agent can search."""

    core_memory: dict[str, str]
    recall_memory: int
    archival_memory: int

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> AgentMemory:
        return cls(dict(data["core_memory"]), int(data["recall_memory"]), int(data["archival_memory"]))


# -- messages: one class per kind, as Letta names them ------------------------------------------------
@dataclass(frozen=True)
class MessageEvent:
    """One item of an agent's history or turn. Items of one stored message share its ``id``."""

    id: str
    date: datetime


@dataclass(frozen=True)
class UserMessage(MessageEvent):
    text: str


@dataclass(frozen=True)
class SystemMessage(MessageEvent):
    text: str


@dataclass(frozen=True)
class ReasoningMessage(MessageEvent):
    """The agent's inner thoughts (what it thinks before calling a function)."""

    text: str


@dataclass(frozen=True)
class ToolCallMessage(MessageEvent):
    name: str
    arguments: str  # JSON text, as the model wrote it
    call_id: str


@dataclass(frozen=True)
class ToolReturnMessage(MessageEvent):
    result: str
    status: str  # "success" or "error"
    call_id: str


@dataclass(frozen=True)
class AssistantMessage(MessageEvent):
    """What the agent said to the user (its send_message calls)."""

    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    step_count: int = 0

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Usage:
        return cls(
            int(data.get("prompt_tokens") or 0),
            int(data.get("completion_tokens") or 0),
            int(data.get("total_tokens") or 0),
            int(data.get("step_count") or 0),
        )


@dataclass(frozen=True)
class TurnEnd:
    """The last event of a streamed turn: why it stopped (end_turn, max_steps, cancelled, error, ...)
    and the tokens it used; ``error`` says what failed, if anything did."""

    stop_reason: str
    usage: Usage
    error: str | None = None


@dataclass(frozen=True)
class TurnResponse:
    """A whole turn (pymemgpt's ``MemGPTResponse``): its messages, tokens and why it stopped."""

    messages: list[MessageEvent]
    usage: Usage
    stop_reason: str

    @property
    def assistant_messages(self) -> list[str]:
        """What the agent said to the user this turn."""
        return [m.text for m in self.messages if isinstance(m, AssistantMessage)]


def message_event(data: dict[str, Any]) -> MessageEvent | None:
    """One Letta message item as our type; None for kinds the client does not show (pings)."""
    head = {"id": data["id"], "date": _time(data["date"])}
    kind = data.get("message_type")
    if kind == "user_message":
        return UserMessage(**head, text=data["content"])
    if kind == "system_message":
        return SystemMessage(**head, text=data["content"])
    if kind == "reasoning_message":
        return ReasoningMessage(**head, text=data["reasoning"])
    if kind == "assistant_message":
        return AssistantMessage(**head, text=data["content"])
    if kind == "tool_call_message":
        call = data["tool_call"]
        return ToolCallMessage(**head, name=call["name"], arguments=call["arguments"], call_id=call["tool_call_id"])
    if kind == "tool_return_message":
        result, status = data["tool_return"], data["status"]
        return ToolReturnMessage(**head, result=result, status=status, call_id=data["tool_call_id"])
    return None


def message_events(items: list[dict[str, Any]]) -> list[MessageEvent]:
    return [event for event in map(message_event, items) if event is not None]


def turn_response(data: dict[str, Any]) -> TurnResponse:
    return TurnResponse(
        messages=message_events(data["messages"]),
        usage=Usage.from_api(data["usage"]),
        stop_reason=data["stop_reason"]["stop_reason"],
    )


# -- archival memory and sources ------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchivalPassage:
    id: str
    text: str
    created_at: datetime
    tags: list[str] = field(default_factory=list)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> ArchivalPassage:
        return cls(data["id"], data["text"], _time(data["created_at"]), list(data.get("tags") or []))


@dataclass(frozen=True)
class ArchivalHit:
    """A search result; ``score`` is higher for better matches (reciprocal-rank fusion of meaning and words,
    about 0.01-0.04). ``source_id`` is set for passages of an attached source."""

    id: str
    text: str
    score: float
    tags: list[str]
    source_id: str | None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> ArchivalHit:
        tags = list(data.get("tags") or [])
        return cls(data["id"], data["content"], float(data["score"]), tags, data.get("source_id"))


@dataclass(frozen=True)
class SourceInfo:
    """A source (a server calls it a folder): files loaded into passages that agents it is attached to search."""

    id: str
    name: str
    description: str
    created_at: datetime | None
    documents: int
    passages: int

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> SourceInfo:
        return cls(
            id=data["id"],
            name=data["name"],
            description=data.get("description") or "",
            created_at=_time(data["created_at"]) if data.get("created_at") else None,
            documents=int(data.get("documents") or 0),
            passages=int(data.get("passages") or 0),
        )


@dataclass(frozen=True)
class FileJob:
    """A file loading into a source: ``status`` is pending, parsing, embedding, completed or error."""

    id: str
    source_id: str
    file_name: str
    status: str
    error: str | None
    total_chunks: int
    chunks_embedded: int

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "error")

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> FileJob:
        return cls(
            id=data["id"],
            source_id=data["source_id"],
            file_name=data["file_name"],
            status=data["processing_status"],
            error=data.get("error_message"),
            total_chunks=int(data.get("total_chunks") or 0),
            chunks_embedded=int(data.get("chunks_embedded") or 0),
        )
