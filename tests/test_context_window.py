"""A long scripted conversation in a small window: warned at 75%, summarized before overflowing,
nothing lost from recall."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from memgpt.agent.events import SystemNotice
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import LLMError
from memgpt.llm.base import ToolSpec
from memgpt.storage import Storage
from memgpt.tokens import count_tokens
from tests.agent_rig import Rig, tool_results
from tests.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL

WINDOW = 6000


@pytest.fixture
def rig(storage: Storage, model: LocalMiniLM) -> Iterator[Rig]:
    server = ScriptedLLM()
    yield Rig(storage, model, server)
    server.close()


def request_tokens(body: dict) -> int:
    tools = [
        ToolSpec(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
        for t in body.get("tools", [])
    ]
    return count_tokens("scripted", body["messages"], tools)


def test_long_conversation_stays_in_the_window_and_loses_nothing(rig: Rig) -> None:
    agent = rig.create(context_window=WINDOW)
    notices: list[str] = []
    turns = 40
    for turn in range(turns):
        codeword = "the first codeword is AQUAMARINE. " if turn == 0 else ""
        rig.llm.reply(f"Noted, message {turn}.")
        text = f"Message {turn}: {codeword}" + "Here is a long story about sailing and weather. " * 20
        notices += [e.text for e in agent.send(text) if isinstance(e, SystemNotice)]

    assert max(request_tokens(r) for r in rig.llm.requests) <= WINDOW
    assert any("memory pressure" in n for n in notices)
    assert any("summarized" in n for n in notices)
    assert rig.llm.summaries, "the summarizer was never called"
    assert any(
        json.loads(m["content"]).get("type") == "system_alert"
        for r in rig.llm.requests
        for m in r["messages"]
        if m["role"] == "user"
    )
    assert rig.llm.summary_text in rig.llm.requests[-1]["messages"][0]["content"]
    first = rig.llm.requests[-1]["messages"][1]
    assert first["role"] != "tool"  # never a tool result without its call

    stored = rig.storage.messages.count(agent.state.id)
    assert stored >= turns * 3
    assert len(rig.storage.messages.in_context(agent.state.id)) < stored

    rig.llm.add({"tool": "conversation_search", "args": {"query": "aquamarine", "request_heartbeat": True}})
    rig.llm.reply("It was aquamarine.")
    list(agent.send("What was the first codeword?"))
    found = tool_results(rig.llm.requests[-1])[-1]["message"]
    assert "AQUAMARINE" in found.splitlines()[1]  # the best match, though long evicted from the window


def test_provider_overflow_error_triggers_a_summary_and_a_retry(rig: Rig) -> None:
    agent = rig.create(context_window=WINDOW)
    for turn in range(6):
        rig.llm.reply(f"ok {turn}")
        list(agent.send(f"turn {turn} " + "filler words " * 30))
    rig.llm.add(
        {
            "status": 400,
            "message": "This model's maximum context length is 4096 tokens",
            "code": "context_length_exceeded",
        }
    )
    rig.llm.reply("still here")
    events = list(agent.send("are you still there?"))
    assert any(isinstance(e, SystemNotice) and "summarized" in e.text for e in events)
    assert rig.llm.summaries
    assert len(rig.llm.requests[-1]["messages"]) < len(rig.llm.requests[-2]["messages"])


def test_summary_survives_a_restart(rig: Rig) -> None:
    agent = rig.create(context_window=WINDOW)
    for turn in range(30):
        rig.llm.reply("ok")
        list(agent.send(f"turn {turn} " + "more filler text here " * 25))
    assert rig.llm.summaries
    reopened = rig.open(context_window=WINDOW)
    assert reopened.state.summary == rig.llm.summary_text
    messages = rig.storage.messages
    assert len(messages.in_context(agent.state.id)) == len(messages.in_context(reopened.state.id))


def test_unrecoverable_overflow_is_a_clear_error(rig: Rig) -> None:
    agent = rig.create(context_window=WINDOW)
    rig.llm.add(*[{"status": 400, "message": "maximum context length exceeded"}] * 3)
    with pytest.raises(LLMError, match="nothing left to summarize"):
        list(agent.send("short"))
    assert rig.storage.messages.in_context(agent.state.id)[-1].content == "short"  # the message stays
