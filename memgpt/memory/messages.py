"""What a message says, decided in one place.

Every reading of a stored ``Message`` comes from here: the chat message the model sees (MemGPT's JSON
envelope around what the user and the system say), the text recall search matches (the Milvus index and
the SQL word search get the same text), the line a summary gets and the line the chat shows. Storage
keeps what it is handed and knows nothing of the tool protocol.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from memgpt.llm.base import ChatMessage
from memgpt.storage.messages import StoredMessage
from memgpt.types import Message, Role

# User-role messages that the system, not the person, sent; Message.name says which.
HEARTBEAT, SYSTEM_ALERT, LOGIN = "heartbeat", "system_alert", "login"
# The one tool through which the agent talks to the person.
SEND_MESSAGE = "send_message"


def timestamp(moment: datetime) -> str:
    """A moment as the model reads it, in the local time zone."""
    return moment.astimezone().strftime("%Y-%m-%d %I:%M:%S %p %Z").strip()


def is_conversational(message: Message) -> bool:
    """What the person typed and what the agent answered: the messages recall search returns.
    Heartbeats, alerts and logins are user-role messages with a name; tool results are not conversation."""
    return (message.role is Role.USER and not message.name) or message.role is Role.ASSISTANT


def said(message: Message) -> str:
    """What an assistant message told the person through send_message ("" when it told nothing)."""
    parts = []
    for call in message.tool_calls:
        if call.name != SEND_MESSAGE:
            continue
        try:
            arguments = json.loads(call.arguments)
        except json.JSONDecodeError:
            arguments = None
        parts.append(str(arguments.get("message", "")) if isinstance(arguments, dict) else call.arguments)
    return " ".join(p for p in parts if p)


def readable(message: Message) -> str:
    """What a person would remember of a message: the words, not the JSON around them. For the agent:
    its inner thought, then what it said."""
    if message.role is not Role.ASSISTANT:
        return message.content
    words = said(message)
    return f"{message.content} | said: {words}".strip(" |") if words else message.content


def search_text(message: Message) -> str:
    """The text recall search matches, by words and by meaning: readable text for conversational
    messages, "" for the rest."""
    return readable(message) if is_conversational(message) else ""


# How much of the message before it an indexed message carries: its end, where the question it answers is.
_CONTEXT_CHARS = 1000


def day(moment: datetime) -> str:
    """The UTC day of a moment in words, as recall indexes it: "Thursday 14 March 2024"."""
    utc = moment.astimezone(UTC)
    return f"{utc:%A} {utc.day} {utc:%B %Y}"


def indexed_text(message: Message, previous: Message | None) -> str:
    """What recall's word search matches for a conversational message: its day, the end of the message
    before it, then its own words. A reply ("About five years now.") shares no words with the question
    that finds it ("How long have I been climbing?"); the message it answers does, and dates otherwise
    live only in timestamps ("What did I cook on 14 March?"). A message without words (the agent only called
    a tool) is not indexed (recall's ``_worded``)."""
    before = search_text(previous)[-_CONTEXT_CHARS:] if previous is not None else ""
    return "\n".join(part for part in (day(message.created_at), before, search_text(message)) if part)


def stored(message: Message) -> StoredMessage:
    """The message as storage should keep it: with its search text and whether recall search sees it."""
    return StoredMessage(message, search_text(message), is_conversational(message))


def _envelope(message: Message) -> str:
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
    """The message as the model sees it in its context window."""
    if message.role is Role.USER:
        return {"role": "user", "content": _envelope(message)}
    if message.role is Role.TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    chat: ChatMessage = {"role": message.role.value, "content": message.content}
    if message.tool_calls:
        chat["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    return chat


def summary_line(message: Message) -> str:
    """One line of an excerpt the summarizer folds into the running summary."""
    if message.role is Role.USER:
        who = "user" if not message.name else "system"
        content = f"last login: {message.content}" if message.name == LOGIN else message.content
    else:
        who, content = message.role.value, message.content
    calls = " ".join(f"[called {c.name} {c.arguments}]" for c in message.tool_calls)
    return f"{who}: {content} {calls}".strip()


def describe(message: Message) -> str:
    """A user or assistant message as recall search results and the chat show it."""
    stamp = message.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    who = "user" if message.role is Role.USER else "assistant"
    words = readable(message)
    if not words and message.tool_calls:  # no thought, nothing said: which tools it called is all there is
        words = f"(called {', '.join(c.name for c in message.tool_calls)})"
    return f"[{stamp}] {who}: {words}"
