"""A long scripted conversation in a small window: warned at 75%, summarized before overflowing,
nothing lost from recall."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from memgpt import tokens
from memgpt.agent.events import SystemNotice
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import LLMError, UserError
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
    made = Rig(storage, model, server)
    yield made
    made.close()
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


def test_a_message_larger_than_the_window_is_refused_before_it_is_sent(rig: Rig) -> None:
    """Sent, it came back as the server's 400 with "/retry to try again", and /retry sent it again."""
    agent = rig.create(context_window=WINDOW)
    rig.llm.reply("ok")
    refused = r"more than the context window of agent .* leaves for the conversation .*it was not sent"
    with pytest.raises(UserError, match=refused):
        list(agent.send("lorem ipsum dolor " * 3000))
    assert not rig.llm.requests
    events = list(agent.send("a short one"))
    assert [e.text for e in events if hasattr(e, "text")][-1] == "ok"
    context = rig.storage.messages.in_context(agent.state.id)
    typed = [m.content for m in context if m.role.value == "user" and not m.name]
    assert typed == ["a short one"]  # the refused message was not stored


def server_counting_more(window: int, factor: float, overflows: list[int]) -> Callable[[dict[str, Any]], dict]:
    """A model server whose tokenizer counts ``factor`` times ours (llama.cpp counted ~1.22x): it reports
    that count as usage.prompt_tokens and refuses a prompt over ``window`` as a real server does."""

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        theirs = round(request_tokens(body) * factor)
        if theirs > window:
            overflows.append(theirs)
            return {"status": 400, "message": f"the request exceeds the available context size ({theirs} tokens)"}
        return {"tool": "send_message", "args": {"message": "Noted."}, "prompt_tokens": theirs}

    return answer


def test_counts_are_calibrated_from_the_server_so_eviction_comes_before_its_400(rig: Rig) -> None:
    agent = rig.create(context_window=WINDOW)
    overflows: list[int] = []
    rig.llm.add(*[server_counting_more(WINDOW, 1.25, overflows)] * 200)
    for turn in range(40):
        list(agent.send(f"Message {turn}: " + "Here is a long story about sailing and weather. " * 20))
    assert rig.llm.summaries, "the conversation never needed a summary"
    assert overflows == []  # our own check evicted first, every time
    ours = request_tokens(rig.llm.requests[-1])
    assert agent.context_tokens() == pytest.approx(1.25 * agent.assemble().tokens, rel=0.01)
    assert ours * 1.25 <= WINDOW
    reopened = rig.open(context_window=WINDOW)  # the ratio is kept with the agent, for this model
    assert reopened.context_tokens() == pytest.approx(1.25 * reopened.assemble().tokens, rel=0.01)


def test_a_window_too_small_for_the_fixed_prompt_is_refused_in_one_line(rig: Rig) -> None:
    with pytest.raises(UserError) as refused:
        rig.create(context_window=3000)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("the context window of agent 'tester' (3,000 tokens) is too small: its system prompt")
    assert "`memgpt run --context-window N`" in message


def test_the_window_a_refusal_suggests_is_enough(rig: Rig) -> None:
    """The room kept for the answer grows with the window, so the suggestion must count it at its own size
    (it once said "at least 3,616" and then refused 3,616, asking for 3,693)."""
    with pytest.raises(UserError) as refused:
        rig.create(context_window=3000)
    suggested = int(re.search(r"give it at least ([\d,]+)", str(refused.value)).group(1).replace(",", ""))
    with pytest.raises(UserError, match=f"give it at least {suggested:,} "):
        rig.create(name="one-less", context_window=suggested - 1)
    assert rig.create(name="enough", context_window=suggested).state.context_window == suggested


def test_eviction_in_a_small_window_keeps_half_the_room_and_does_not_warn_again_at_once(rig: Rig) -> None:
    window = 4096
    agent = rig.create(context_window=window)
    events_per_turn = []
    for turn in range(30):
        rig.llm.reply(f"Noted {turn}.")
        events_per_turn.append(list(agent.send(f"Turn {turn}: " + "a long line about the weather " * 12)))
    notices = [[e.text for e in events if isinstance(e, SystemNotice)] for events in events_per_turn]
    summarized = [i for i, texts in enumerate(notices) if any("summarized" in t for t in texts)]
    assert summarized, "never summarized"
    for turn in summarized:
        after = notices[turn + 1] if turn + 1 < len(notices) else []
        assert not any("memory pressure" in t for t in after), (turn, notices)
        assert not any("summarized" in t for t in after), (turn, notices)
    assert len(rig.storage.messages.in_context(agent.state.id)) > 3  # more than the newest message is kept


def test_the_stored_alert_flag_follows_the_alerts_and_the_summaries(rig: Rig) -> None:
    """Stored with the agent for the next process: set with the memory-pressure alert, cleared by a summary."""
    agent = rig.create(context_window=4096)
    expected, seen = False, []
    for turn in range(30):
        rig.llm.reply(f"Noted {turn}.")
        for event in agent.send(f"Turn {turn}: " + "a long line about the weather " * 12):
            if isinstance(event, SystemNotice) and ("memory pressure" in event.text or "summarized" in event.text):
                expected = "memory pressure" in event.text
                seen.append(expected)
        assert rig.storage.agents.step_facts(agent.state.id).pressure_alerted is expected, turn
    assert True in seen and False in seen, seen


def test_a_reopened_agent_does_not_count_the_system_message_it_last_sent_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server opens an agent anew for each turn; the system message is most often the one the last turn sent,
    and counting it again cost a step near the window ~0.18 ms. Its count is kept (the same exact count)."""
    agent = rig.create(context_window=WINDOW)
    rig.llm.reply("Noted.")
    list(agent.send("hello"))
    system = agent.assemble().messages[0]["content"]
    fixed = agent.assemble().fixed
    encoding = tokens.encoding_for_model("scripted")
    encoded: list[str] = []
    real = encoding.encode

    def spying(text: str, **options: Any) -> list[int]:
        encoded.append(text)
        return real(text, **options)

    monkeypatch.setattr(encoding, "encode", spying)
    reopened = rig.open(context_window=WINDOW)
    assembled = reopened.assemble()
    assert assembled.messages[0]["content"] == system  # the same message, as the last step sent it
    assert assembled.fixed == fixed
    assert system not in encoded, "the system message was counted again"
