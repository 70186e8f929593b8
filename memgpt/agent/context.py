"""Turning stored state into the chat messages sent to the LLM."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from memgpt.llm.base import ChatMessage
from memgpt.types import AgentState, Message, Role

# User-role messages that the system, not the person, sent; Message.name says which.
HEARTBEAT, SYSTEM_ALERT, LOGIN = "heartbeat", "system_alert", "login"


def timestamp(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %I:%M:%S %p %Z").strip()


def user_payload(message: Message) -> str:
    """MemGPT's JSON envelope, so the model can tell the person from system events and see the time."""
    when = timestamp(message.created_at)
    if message.name == HEARTBEAT:
        body = {"type": "heartbeat", "reason": message.content, "time": when}
    elif message.name == SYSTEM_ALERT:
        body = {"type": "system_alert", "message": message.content, "time": when}
    elif message.name == LOGIN:
        body = {"type": "login", "last_login": message.content, "time": when}
    else:
        body = {"type": "user_message", "message": message.content, "time": when}
    return json.dumps(body, ensure_ascii=False)


def to_chat(message: Message) -> ChatMessage:
    if message.role is Role.USER:
        return {"role": "user", "content": user_payload(message)}
    if message.role is Role.TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    chat: ChatMessage = {"role": message.role.value, "content": message.content}
    if message.tool_calls:
        chat["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return chat


def system_message(
    state: AgentState, core: str, *, recall_count: int, archival_count: int, sources: Sequence[str], now: datetime
) -> ChatMessage:
    lines = [
        state.system_prompt.strip(),
        "",
        f"### Memory [last modified: {timestamp(now)}]",
        f"{recall_count} previous messages between you and the user are stored in recall memory "
        "(use functions to access them)",
        f"{archival_count} total memories are stored in archival memory (use functions to access them)",
    ]
    if sources:
        lines.append("Data sources attached to your archival memory: " + ", ".join(sources))
    if state.summary:
        lines += [
            "",
            "Summary of earlier conversation (moved out of your context window; search recall memory for details):",
            state.summary,
        ]
    lines += [
        "",
        "Core memory shown below (limited in size, additional information stored in archival / recall memory):",
        core,
    ]
    return {"role": "system", "content": "\n".join(lines)}
