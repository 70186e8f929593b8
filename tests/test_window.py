"""The context window an open agent keeps in memory: which messages it holds, and their chat form."""

from __future__ import annotations

from dataclasses import replace

from memgpt.agent.window import Window
from memgpt.llm.base import chat_json, encode_json
from memgpt.memory.messages import to_chat
from memgpt.types import Message, Role


def _message(number: int) -> Message:
    return Message(f"m{number}", "agent-1", Role.USER if number % 2 else Role.ASSISTANT, f"message {number}")


def test_the_window_knows_which_messages_it_holds_through_every_change() -> None:
    window = Window("gpt-4o-mini", [_message(n) for n in range(4)])
    assert window.holds("m0") and window.holds("m3") and not window.holds("m4")
    window.extend([_message(4), _message(5)])
    assert window.holds("m4") and window.holds("m5")
    window.evict(2)
    assert not window.holds("m0") and not window.holds("m1") and window.holds("m2")
    window.remove(["m3"])
    assert not window.holds("m3") and window.holds("m5")
    window.replace(replace(window.messages[0], content="rewritten"))
    assert window.holds("m2")
    assert [window.holds(f"m{n}") for n in range(7)] == [False, False, True, False, True, True, False]


def test_a_chat_message_keeps_its_json_text_until_the_message_is_replaced() -> None:
    window = Window("gpt-4o-mini", [_message(n) for n in range(3)])
    first = window.chats()
    assert [chat_json(chat) for chat in first] == [encode_json(to_chat(m)) for m in window.messages]
    window.replace(replace(window.messages[1], content="rewritten"))
    assert [chat_json(chat) for chat in window.chats()] == [encode_json(to_chat(m)) for m in window.messages]
    assert "rewritten" in chat_json(window.chats()[1])
