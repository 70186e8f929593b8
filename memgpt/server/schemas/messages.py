"""Messages and turns as Letta's API shows them: what a send carries, how a stored message reads as Letta's
typed messages, and the answer to a turn (``LettaResponse``, or the same items streamed as SSE events).

One stored assistant message becomes several Letta messages that share its id: its inner thoughts
(``reasoning_message``), then one ``assistant_message`` per send_message call or ``tool_call_message`` per
other call. A tool's result is a ``tool_return_message``; send_message's own result says nothing and is not
shown. ``otid`` tells the items of one message apart.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memgpt.llm.arguments import load_arguments
from memgpt.memory.messages import SEND_MESSAGE, to_chat
from memgpt.types import Message, Role

StopReason = Literal["end_turn", "error", "llm_api_error", "max_steps", "cancelled"]
MessageType = Literal[
    "system_message",
    "user_message",
    "assistant_message",
    "reasoning_message",
    "hidden_reasoning_message",
    "tool_call_message",
    "tool_return_message",
    "approval_request_message",
    "approval_response_message",
    "summary_message",
    "event_message",
]
_OTIDS = uuid.UUID("6d656d67-7074-4000-8000-6f7469647321")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "text"
    text: str | None = None


class MessageIn(BaseModel):
    """One input message (Letta's ``MessageCreate``): a user's words, or a system event the agent should see."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "system"] = "user"
    content: str | list[TextPart]
    name: str | None = None
    otid: str | None = None
    type: str | None = None

    def text(self) -> str:
        """The words, from a string or from text parts; other parts (images) are refused by the caller."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content if part.type == "text")

    def unsupported_part(self) -> str | None:
        if isinstance(self.content, str):
            return None
        return next((part.type for part in self.content if part.type != "text"), None)


class SendRequest(BaseModel):
    """``agents.messages.create`` and ``.stream``. Advanced Letta options memgpt does not have (override_model,
    enable_thinking, client_tools, background, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    messages: list[MessageIn] | None = None
    input: str | list[TextPart] | None = None
    streaming: bool = False
    stream_tokens: bool = False  # memgpt streams whole steps (Letta falls back to this too)
    include_pings: bool = False
    max_steps: int = Field(10, ge=1, le=100)
    use_assistant_message: bool = True
    assistant_message_tool_name: str = SEND_MESSAGE
    assistant_message_tool_kwarg: str = "message"
    include_return_message_types: list[MessageType] | None = None

    def inputs(self) -> list[MessageIn]:
        if self.messages:
            return list(self.messages)
        if self.input is not None:
            return [MessageIn(role="user", content=self.input)]
        return []


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_ids: list[str] | None = None


class _Base(BaseModel):
    id: str
    date: datetime
    otid: str | None = None
    name: str | None = None
    run_id: str | None = None
    step_id: str | None = None


class SystemMessage(_Base):
    message_type: Literal["system_message"] = "system_message"
    content: str


class UserMessage(_Base):
    message_type: Literal["user_message"] = "user_message"
    content: str


class ReasoningMessage(_Base):
    message_type: Literal["reasoning_message"] = "reasoning_message"
    reasoning: str
    source: Literal["non_reasoner_model"] = "non_reasoner_model"


class ToolCall(BaseModel):
    name: str
    arguments: str
    tool_call_id: str


class ToolCallMessage(_Base):
    message_type: Literal["tool_call_message"] = "tool_call_message"
    tool_call: ToolCall


class ToolReturnMessage(_Base):
    message_type: Literal["tool_return_message"] = "tool_return_message"
    tool_return: str
    status: Literal["success", "error"]
    tool_call_id: str
    stdout: list[str] | None = None
    stderr: list[str] | None = None


class AssistantMessage(_Base):
    message_type: Literal["assistant_message"] = "assistant_message"
    content: str


LettaMessage = Annotated[
    SystemMessage | UserMessage | ReasoningMessage | ToolCallMessage | ToolReturnMessage | AssistantMessage,
    Field(discriminator="message_type"),
]


class StopReasonOut(BaseModel):
    message_type: Literal["stop_reason"] = "stop_reason"
    stop_reason: StopReason


class Usage(BaseModel):
    message_type: Literal["usage_statistics"] = "usage_statistics"
    completion_tokens: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int = 0
    step_count: int = 0
    run_ids: list[str] = Field(default_factory=list)


class LettaResponse(BaseModel):
    messages: list[LettaMessage]
    stop_reason: StopReasonOut
    usage: Usage


class Rendering(BaseModel):
    """How tool calls read: send_message calls as ``assistant_message`` (Letta's ``use_assistant_message``).
    Frozen: one is shared by every send that asks the same (``routes.messages._rendering``)."""

    model_config = ConfigDict(frozen=True)

    use_assistant_message: bool = True
    tool_name: str = SEND_MESSAGE
    tool_kwarg: str = "message"


def _otid(message_id: str, index: int) -> str:
    return str(uuid.uuid5(_OTIDS, f"{message_id}/{index}"))


def _status(envelope: str) -> Literal["success", "error"]:
    """A tool result's status from MemGPT's envelope ({"status": "OK" | "Failed", ...})."""
    try:
        status = json.loads(envelope).get("status")
    except (json.JSONDecodeError, AttributeError):
        return "success"
    return "error" if status == "Failed" else "success"


def letta_messages(message: Message, rendering: Rendering | None = None, **extra: Any) -> list[LettaMessage]:
    """What one stored message shows as in Letta's API (``extra``: run_id, step_id)."""
    rendering = rendering or Rendering()
    common = {"id": message.id, "date": message.created_at, **extra}
    items: list[Any] = []
    if message.role is Role.USER:
        # What the person typed as typed; heartbeats, alerts and logins as the JSON the agent sees.
        content = message.content if not message.name else str(to_chat(message)["content"])
        items.append(UserMessage(content=content, **common))
    elif message.role is Role.SYSTEM:
        items.append(SystemMessage(content=message.content, **common))
    elif message.role is Role.TOOL:
        if message.name != rendering.tool_name or not rendering.use_assistant_message:
            items.append(
                ToolReturnMessage(
                    tool_return=message.content,
                    status=_status(message.content),
                    tool_call_id=message.tool_call_id,
                    **common,
                )
            )
    elif not message.tool_calls:
        if message.content.strip():  # an answer without a function call still reaches the person
            items.append(AssistantMessage(content=message.content, **common))
    else:
        if message.content.strip():
            items.append(ReasoningMessage(reasoning=message.content, **common))
        for call in message.tool_calls:
            arguments = load_arguments(call.arguments)
            if rendering.use_assistant_message and call.name == rendering.tool_name and arguments is not None:
                items.append(AssistantMessage(content=str(arguments.get(rendering.tool_kwarg, "")), **common))
            else:
                tool_call = ToolCall(name=call.name, arguments=call.arguments, tool_call_id=call.id)
                items.append(ToolCallMessage(tool_call=tool_call, **common))
    for index, item in enumerate(items):
        item.otid = _otid(message.id, index)
    return items
