"""Turns through `memgpt server`: messages.create (collected and streamed), the history, cancel, one turn per
agent across processes, retries, disconnects, LLM failures and a kill -9, driven by letta-client 1.12.1."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from letta_client import APIError, APIStatusError, ConflictError, InternalServerError, Letta, NotFoundError
from openai import InternalServerError as OpenAIServerError
from openai import OpenAI
from sqlalchemy import event, text

from memgpt import tokens
from memgpt.agent.agent import CANCELLED_NOTE
from memgpt.agent.manager import update_agent, update_block
from memgpt.config import load_config, save_config
from memgpt.errors import BackendError, StorageError
from memgpt.memory.messages import stored
from memgpt.server import turns
from memgpt.server.schemas.messages import Rendering
from memgpt.server.turns import TurnInput
from memgpt.storage import Storage
from memgpt.types import AgentState, Message, Role
from tests import web
from tests.agent_rig import tool_results
from tests.conftest import _opened_on_metadata_backend, run_cli
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, ServerProcess, auth, overtaken_send, use_scripted_llm

HANDLE = "openai-compatible/scripted"


@pytest.fixture
def server(request: pytest.FixtureRequest, home: Path, llm: ScriptedLLM) -> Iterator[LiveServer]:
    _opened_on_metadata_backend(request)
    running = LiveServer(home, use_scripted_llm(home, llm.url))
    running.timing(busy_wait=5.0, retry_after=1, ping_every=0.3)
    yield running
    running.stop()


def client(server: LiveServer, user: str | None = None, **options: Any) -> Letta:
    options = {"_strict_response_validation": True, "max_retries": 0, **options}
    return Letta(base_url=server.url, api_key=server.key(user), **options)


@pytest.fixture
def letta(server: LiveServer) -> Letta:
    return client(server)


@pytest.fixture
def agent_id(letta: Letta) -> str:
    blocks = [{"label": "human", "value": "Name: Chad"}, {"label": "persona", "value": "I am Sam."}]
    return letta.agents.create(name="sam", memory_blocks=blocks, model=HANDLE).id  # type: ignore[arg-type]


def search_then_reply(llm: ScriptedLLM, reply: str = "Chad likes tea.", *, delay: float = 0) -> None:
    """A two-step turn: archival search asking for a heartbeat, then a reply (after ``delay`` seconds)."""
    llm.add(
        {
            "tool": "archival_memory_search",
            "args": {"query": "tea", "request_heartbeat": True},
            "content": "Let me look.",
        }
    )
    llm.reply(reply, thought="Found nothing; answer anyway.", delay=delay)


def stored_roles(server: LiveServer, agent: str) -> list[tuple[str, str]]:
    return [(m.role.value, m.content) for m in server.state.storage.messages.last(agent, 1000)]


def user_messages(server: LiveServer, agent: str) -> list[str]:
    return [m.content for m in server.state.storage.messages.last(agent, 1000) if m.role is Role.USER and not m.name]


# -- one turn ---------------------------------------------------------------------------------------
def test_a_turn_answers_with_typed_messages_usage_and_a_stop_reason(
    letta: Letta, agent_id: str, llm: ScriptedLLM, server: LiveServer
) -> None:
    search_then_reply(llm)
    response = letta.agents.messages.create(agent_id, messages=[{"role": "user", "content": "what do I like?"}])
    kinds = [m.message_type for m in response.messages]
    assert kinds == [
        "reasoning_message",
        "tool_call_message",
        "tool_return_message",
        "reasoning_message",
        "assistant_message",
    ]
    first, call, result, thought, reply = response.messages
    assert first.reasoning == "Let me look." and first.id == call.id and first.id.startswith("message-")
    assert call.tool_call.name == "archival_memory_search"
    assert json.loads(call.tool_call.arguments) == {"query": "tea", "request_heartbeat": True}
    assert result.status == "success" and result.tool_call_id == call.tool_call.tool_call_id
    assert json.loads(result.tool_return)["status"] == "OK"
    assert reply.content == "Chad likes tea." and reply.id == thought.id != first.id
    assert len({m.otid for m in response.messages}) == 5
    assert {m.run_id for m in response.messages} == set(response.usage.run_ids)
    assert response.stop_reason.stop_reason == "end_turn"
    usage = response.usage
    assert (usage.step_count, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 2, 2, 4)
    # The user's message is in the history, not in the answer.
    assert user_messages(server, agent_id) == ["what do I like?"]
    history = letta.agents.messages.list(agent_id, order="asc").items
    assert history[0].message_type == "user_message" and history[0].content == "what do I like?"
    assert [m.id for m in history if m.message_type != "user_message"] == [m.id for m in response.messages]


def test_input_and_text_parts_and_system_events(
    letta: Letta, agent_id: str, llm: ScriptedLLM, server: LiveServer
) -> None:
    llm.reply("One.").reply("Two.").reply("Noted.")
    assert letta.agents.messages.create(agent_id, input="first").messages[-1].content == "One."
    parts = [{"type": "text", "text": "second"}, {"type": "text", "text": "part"}]
    assert (
        letta.agents.messages.create(agent_id, messages=[{"role": "user", "content": parts}]).messages[-1].content
        == "Two."
    )
    letta.agents.messages.create(agent_id, messages=[{"role": "system", "content": "The user went offline."}])
    assert user_messages(server, agent_id) == ["first", "second\npart"]
    seen = json.loads(llm.requests[-1]["messages"][-1]["content"])
    assert seen["type"] == "system_alert" and seen["message"] == "The user went offline."
    only = letta.agents.messages.create  # include_return_message_types filters the answer
    llm.reply("Filtered.", thought="a thought")
    assert [
        m.message_type for m in only(agent_id, input="x", include_return_message_types=["assistant_message"]).messages
    ] == ["assistant_message"]


def test_max_steps_ends_a_turn_that_keeps_asking_for_heartbeats(letta: Letta, agent_id: str, llm: ScriptedLLM) -> None:
    for _ in range(3):
        llm.add({"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}})
    response = letta.agents.messages.create(agent_id, input="loop", max_steps=2)
    assert response.stop_reason.stop_reason == "max_steps" and response.usage.step_count == 2
    assert len(llm.requests) == 2


def test_a_send_that_is_not_streamed_is_handed_its_turn_once_it_is_over(
    server: LiveServer, agent_id: str, llm: ScriptedLLM
) -> None:
    """A streamed send gets its turn as soon as it starts, to follow its steps; one that is not streamed gets it
    when it is over, so the request's event loop wakes once for the turn (not also when it starts and at each
    step: under load each wake-up also waits for the GIL)."""
    runner = server.state.turns()
    user = server.state.owner.id
    for collected in (False, True):
        search_then_reply(llm, delay=0.5)
        digest = f"digest-{collected}"
        send = TurnInput(user, agent_id, "tea?", "user", 10, digest, False, Rendering(), collected=collected)
        turn = runner.begin(send).result(timeout=30)
        assert turn.done is collected, f"collected={collected}: handed the turn {'before' if collected else 'after'}"
        if not collected:
            while not turn.done:
                time.sleep(0.05)
        assert turn.stop_reason == "end_turn" and turn.steps == 2
    # letta-client's send and the openai SDK's completion, neither streamed, answer with the whole turn.
    search_then_reply(llm, "Chad likes tea.")
    answer = client(server).agents.messages.create(agent_id, input="what do I like?")
    assert [m.message_type for m in answer.messages][-1] == "assistant_message", answer.messages
    assert answer.messages[-1].content == "Chad likes tea." and answer.usage.step_count == 2
    llm.reply("Green, mostly.")
    openai = OpenAI(base_url=f"{server.url}/openai/v1", api_key=server.key(), max_retries=0)
    completion = openai.chat.completions.create(model=agent_id, messages=[{"role": "user", "content": "which tea?"}])
    assert completion.choices[0].message.content == "Green, mostly."


def test_the_first_turn_loads_the_tokenizer_on_a_thread_of_its_own(
    scripted_server: LiveServer, llm: ScriptedLLM
) -> None:
    """A server needs its model's tokenizer once an agent's context nears its window; loading it holds the GIL
    ~0.4 s, so it is loaded in the background at the process's first turn, not by a turn under load that happens
    to need it first. (The first turn here is far from its window: without the warm-up it never loads.)"""
    tokens.encoding_for_model.cache_clear()  # as in a new server process
    letta = Letta(base_url=scripted_server.url, api_key=scripted_server.key(), max_retries=0)
    agent = letta.agents.create(name="sam", model=HANDLE).id  # type: ignore[arg-type]
    assert tokens.encoding_for_model.cache_info().currsize == 0, "creating an agent loaded the tokenizer"
    llm.reply("Hi.")
    assert letta.agents.messages.create(agent, input="hello").stop_reason.stop_reason == "end_turn"
    deadline = time.monotonic() + 30
    while tokens.encoding_for_model.cache_info().currsize == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tokens.encoding_for_model.cache_info().currsize == 1, "the server's tokenizer was not loaded"
    assert tokens.encoding_for_model("scripted") is tokens.encoding_for_model("scripted")


# -- streaming ------------------------------------------------------------------------------------
def test_streaming_sends_each_step_as_it_is_stored(letta: Letta, agent_id: str, llm: ScriptedLLM) -> None:
    search_then_reply(llm, delay=2.0)
    start = time.monotonic()
    arrivals: list[tuple[str, float]] = []
    for item in letta.agents.messages.create(agent_id, input="what do I like?", streaming=True):
        arrivals.append((item.message_type, time.monotonic() - start))
    kinds = [k for k, _ in arrivals]
    assert kinds == [
        "reasoning_message",
        "tool_call_message",
        "tool_return_message",
        "reasoning_message",
        "assistant_message",
        "stop_reason",
        "usage_statistics",
    ]
    # The first step's messages came while the slow second step was still waiting for the LLM.
    assert arrivals[3][1] - arrivals[2][1] >= 1.5, arrivals

    # The other entry point, and the wire format itself.
    llm.reply("Again.", thought="t")
    with pytest.warns(DeprecationWarning, match="deprecated"):  # letta-client marks the older entry point deprecated
        stream = letta.agents.messages.stream(agent_id, messages=[{"role": "user", "content": "again"}])
    with stream:
        assert [i.message_type for i in stream][-3:] == ["assistant_message", "stop_reason", "usage_statistics"]
    llm.reply("Raw.")
    raw = web.post(
        f"{str(letta.base_url).rstrip('/')}/v1/agents/{agent_id}/messages",
        json={"input": "raw", "streaming": True},
        headers={"Authorization": f"Bearer {letta.api_key}"},
        timeout=30,
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert [json.loads(e.removeprefix("data: "))["message_type"] for e in events[-3:-1]] == [
        "stop_reason",
        "usage_statistics",
    ]


def test_pings_keep_a_slow_turn_alive(letta: Letta, agent_id: str, llm: ScriptedLLM, server: LiveServer) -> None:
    llm.reply("Slow.", delay=1.5)
    kinds = [
        i.message_type for i in letta.agents.messages.create(agent_id, input="hi", streaming=True, include_pings=True)
    ]
    assert kinds.count("ping") >= 2
    assert [k for k in kinds if k != "ping"] == ["assistant_message", "stop_reason", "usage_statistics"]
    llm.reply("Slow again.", delay=1.0)
    raw = web.post(
        f"{server.url}/v1/agents/{agent_id}/messages/stream",
        json={"input": "hi"},
        headers=auth(letta.api_key),
        timeout=30,
    )
    assert ": keep-alive" in raw.text and '"ping"' not in raw.text  # a comment the client skips


# -- history --------------------------------------------------------------------------------------
def test_history_pages_by_message_id_without_splitting_a_message(letta: Letta, agent_id: str, llm: ScriptedLLM) -> None:
    for word in ("one", "two", "three"):
        llm.reply(f"You said {word}.", thought=f"About {word}.")
        letta.agents.messages.create(agent_id, input=word)
    everything = letta.agents.messages.list(agent_id, limit=100).items
    assert len(everything) == 9  # per turn: user, reasoning, assistant
    assert [m.message_type for m in everything[:3]] == ["assistant_message", "reasoning_message", "user_message"]
    assert everything[0].content == "You said three."  # newest first
    assert [m.otid for m in letta.agents.messages.list(agent_id, limit=2)] == [m.otid for m in everything]
    first = letta.agents.messages.list(agent_id, limit=1).items
    assert [m.message_type for m in first] == ["assistant_message", "reasoning_message"]  # one message, whole
    ascending = letta.agents.messages.list(agent_id, order="asc", limit=4).items
    assert [m.message_type for m in ascending] == [
        "user_message",
        "reasoning_message",
        "assistant_message",
        "user_message",
    ]
    after = letta.agents.messages.list(agent_id, order="asc", after=ascending[-1].id, limit=2).items
    assert [m.message_type for m in after] == ["reasoning_message", "assistant_message"]
    before = letta.agents.messages.list(agent_id, order="asc", before=ascending[-1].id, limit=2).items
    assert [m.message_type for m in before] == ["reasoning_message", "assistant_message"]
    assert [m.content for m in letta.agents.messages.list(agent_id, include_return_message_types=["user_message"])] == [
        "three",
        "two",
        "one",
    ]
    # The end of the history is an empty page; a mistyped cursor is a 404 naming it (as Letta's), not the end.
    assert letta.agents.messages.list(agent_id, order="asc", after=everything[0].id).items == []
    for cursor in ("after", "before"):
        with pytest.raises(NotFoundError) as missing:
            letta.agents.messages.list(agent_id, **{cursor: "message-unknown"})  # type: ignore[arg-type]
        assert missing.value.body == {"detail": f"{cursor}='message-unknown': no message of this agent has that id"}
    as_calls = letta.agents.messages.list(agent_id, limit=2, use_assistant_message=False).items
    assert [m.message_type for m in as_calls] == ["tool_return_message", "tool_call_message", "reasoning_message"]


# -- cancel ---------------------------------------------------------------------------------------
def test_cancel_stops_the_turn_at_the_next_step(
    letta: Letta, agent_id: str, llm: ScriptedLLM, server: LiveServer
) -> None:
    assert letta.agents.messages.cancel(agent_id) == {}  # nothing runs
    llm.add({"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}, "delay": 1.5})
    llm.reply("never sent")
    answers: list[Any] = []
    sender = threading.Thread(target=lambda: answers.append(letta.agents.messages.create(agent_id, input="go")))
    sender.start()
    deadline = time.monotonic() + 10
    while not llm.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    cancelled = letta.agents.messages.cancel(agent_id)
    assert list(cancelled.values()) == ["cancelled"] and next(iter(cancelled)).startswith("run-")
    sender.join(30)
    response = answers[0]
    assert response.stop_reason.stop_reason == "cancelled"
    assert [m.message_type for m in response.messages] == ["tool_call_message", "tool_return_message"]  # step 1 whole
    assert len(llm.requests) == 1 and response.usage.run_ids == list(cancelled)
    llm.script.clear()
    llm.reply("Back.")
    assert letta.agents.messages.create(agent_id, input="next").messages[-1].content == "Back."


def test_the_turn_after_a_cancel_sees_the_unanswered_heartbeat_marked_cancelled(
    letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    """The cancel is seen by the write of the heartbeat the next step would answer, so that heartbeat is stored. The
    next turn's prompt must not hand the agent control it never took: the heartbeat says the turn was cancelled."""
    llm.add({"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}, "delay": 1.5})
    llm.reply("never sent")
    sender = threading.Thread(target=lambda: letta.agents.messages.create(agent_id, input="go"))
    sender.start()
    deadline = time.monotonic() + 10
    while not llm.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(letta.agents.messages.cancel(agent_id).values()) == ["cancelled"]
    sender.join(30)
    llm.script.clear()
    llm.reply("Back.")
    assert letta.agents.messages.create(agent_id, input="next").messages[-1].content == "Back."
    prompt = llm.requests[-1]["messages"]
    assert [m["role"] for m in prompt[-5:]] == ["user", "assistant", "tool", "user", "user"]
    heartbeat, sent = json.loads(prompt[-2]["content"]), json.loads(prompt[-1]["content"])
    assert heartbeat["type"] == "heartbeat" and heartbeat["reason"] == CANCELLED_NOTE
    assert (sent["type"], sent["message"]) == ("user_message", "next")
    assert not any("returning control" in str(m.get("content")) for m in prompt)


# -- one turn per agent -------------------------------------------------------------------------------
@pytest.mark.usefixtures("metadata_url")
def test_two_sends_to_one_agent_are_serialized_never_interleaved(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    # The second send waits for the first turn; under a loaded machine that turn can outlast the 5 s default
    # (a 409 then is right, but not what this test is about).
    server.timing(busy_wait=60.0, retry_after=1, ping_every=0.3)
    spans: list[tuple[float, float]] = []

    def slow(body: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        time.sleep(0.8)
        spans.append((start, time.monotonic()))
        said = json.loads(body["messages"][-1]["content"])["message"]
        return {"tool": "send_message", "args": {"message": f"re: {said}"}}

    llm.add(slow, slow)
    answers: dict[str, str] = {}

    def send(text: str) -> None:
        answers[text] = letta.agents.messages.create(agent_id, input=text).messages[-1].content

    threads = [threading.Thread(target=send, args=(t,)) for t in ("first", "second")]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(30)
    assert answers == {"first": "re: first", "second": "re: second"}
    assert spans[0][1] <= spans[1][0]  # the LLM never ran two steps of the agent at once
    roles = stored_roles(server, agent_id)
    firsts = [i for i, (role, text) in enumerate(roles) if role == "user" and text == "first"]
    seconds = [i for i, (role, text) in enumerate(roles) if role == "user" and text == "second"]
    # user, assistant, tool; then the other turn whole. Which send reaches the agent first is the threads' race
    # (the 0.1 s head start is not a promise under load): the turns must not interleave, in either order.
    assert sorted([firsts, seconds]) == [[0], [3]]
    # The message that waited is stored with the lease it waited for, and dated then: after the other turn's.
    dates = [m.created_at for m in server.state.storage.messages.last(agent_id, 1000)]
    assert dates == sorted(dates)


@pytest.mark.usefixtures("metadata_url")
def test_a_send_held_up_before_its_claim_is_dated_after_the_turn_it_waited_for(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The waiting send's claim may succeed long after it was made (on PostgreSQL it blocks on the lease row while
    # the other turn's last step commits and gives the lease back; any process may be descheduled meanwhile): the
    # second send is held up here in its claim until the first turn has stored its steps (dated after) and ended.
    server.timing(busy_wait=60.0, retry_after=1, ping_every=0.3)
    runner = server.state.turns()
    claim = runner._turns.acquire
    claiming, first_done = threading.Event(), threading.Event()

    def held_up(agent: str, *args: Any, **kwargs: Any) -> Any:
        record = kwargs.get("message")
        if record is not None and record.message.content == "second":
            claiming.set()
            assert first_done.wait(30)
        return claim(agent, *args, **kwargs)

    monkeypatch.setattr(runner._turns, "acquire", held_up)
    go = threading.Event()
    llm.reply("re: first", until=go).reply("re: second")
    answers: dict[str, Any] = {}

    def send(text: str) -> None:
        answers[text] = letta.agents.messages.create(agent_id, input=text).messages

    first = threading.Thread(target=send, args=("first",))
    first.start()
    while not llm.requests:  # the first turn's message is stored, its step is at the LLM
        time.sleep(0.02)
    second = threading.Thread(target=send, args=("second",))
    second.start()
    assert claiming.wait(30)
    go.set()  # the first turn's step is dated from here on, after the second send's claim began
    first.join(30)
    first_done.set()
    second.join(30)
    assert [m[-1].content for m in (answers["first"], answers["second"])] == ["re: first", "re: second"]
    stored_messages = server.state.storage.messages.last(agent_id, 1000)
    assert [(m.role.value, m.content) for m in stored_messages if m.role is Role.USER] == [
        ("user", "first"),
        ("user", "second"),
    ]
    dates = [m.created_at for m in stored_messages]
    assert dates == sorted(dates)
    # The turn answers the message as stored: the second turn's steps are dated after it.
    opened = next(m for m in stored_messages if m.content == "second")
    assert all(m.date >= opened.created_at for m in answers["second"])


@pytest.mark.usefixtures("metadata_url")
def test_a_send_while_a_long_turn_runs_gets_409_agent_busy(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    server.timing(busy_wait=0.3, retry_after=1, ping_every=0.3)
    # The first turn lasts until the refused sends are done: a fixed delay was outrun under load (the third
    # send's retries then found the agent free and started a turn the script had no answer for).
    done_refusing = threading.Event()
    llm.reply("Slow answer.", until=done_refusing)
    sender = threading.Thread(target=lambda: letta.agents.messages.create(agent_id, input="slow one"))
    sender.start()
    while not llm.requests:
        time.sleep(0.02)
    raw = web.post(f"{server.url}/v1/agents/{agent_id}/messages", json={"input": "second"}, headers=auth(letta.api_key))
    assert raw.status_code == 409 and raw.headers["retry-after"] == "1"
    assert raw.json()["detail"]["code"] == "AGENT_BUSY"
    retrying = client(server, max_retries=2)
    start = time.monotonic()
    with pytest.raises(ConflictError) as busy:
        retrying.agents.messages.create(agent_id, input="third")
    assert time.monotonic() - start >= 2  # it waited Retry-After and tried again, twice
    assert busy.value.body["detail"]["code"] == "AGENT_BUSY"  # type: ignore[index]
    done_refusing.set()
    sender.join(30)
    assert user_messages(server, agent_id) == ["slow one"]  # the refused ones were never stored
    llm.reply("Free again.")
    assert letta.agents.messages.create(agent_id, input="now").messages[-1].content == "Free again."


def test_sends_past_the_opening_limit_are_refused_at_once_not_given_a_waiting_thread(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    """Each send opens its turn on a thread of its own, which may wait for a busy agent: past the limit of turns
    being opened at once a send is a 503 at once (here the limit is 1: one send waits for the busy agent)."""
    runner = server.state.turns()
    runner._opening_slots = threading.BoundedSemaphore(1)
    server.timing(busy_wait=20, retry_after=1, ping_every=0.3)
    first_done = threading.Event()
    llm.reply("Slow answer.", until=first_done)
    llm.reply("Second answer.")
    first = threading.Thread(target=lambda: letta.agents.messages.create(agent_id, input="one"))
    first.start()
    while not llm.requests:
        time.sleep(0.02)
    answers: list[httpx.Response] = []
    url, headers = f"{server.url}/v1/agents/{agent_id}/messages", auth(letta.api_key)
    second = threading.Thread(
        target=lambda: answers.append(web.post(url, json={"input": "two"}, headers=headers, timeout=60))
    )
    second.start()
    deadline = time.monotonic() + 30
    while runner._opening_slots._value:  # type: ignore[attr-defined]  # free: the second send is not waiting yet
        assert time.monotonic() < deadline
        time.sleep(0.02)
    refused = web.post(url, json={"input": "three"}, headers=headers, timeout=60)
    assert refused.status_code == 503 and "turns already" in refused.json()["detail"]
    first_done.set()
    first.join(30)
    second.join(30)
    assert answers[0].status_code == 200
    assert user_messages(server, agent_id) == ["one", "two"]  # the refused one was never stored


def test_a_turn_longer_than_its_lease_keeps_renewing_it(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    server.timing(lease_ttl=1.0, renew_every=0.2, busy_wait=0.2, retry_after=1, ping_every=0.3)
    answered = threading.Event()  # the turn lasts until the late send is refused, however slow the machine
    llm.reply("Slow answer.", until=answered)
    sender = threading.Thread(target=letta.agents.messages.create, args=(agent_id,), kwargs={"input": "slow"})
    sender.start()
    while not llm.requests:
        time.sleep(0.02)
    time.sleep(1.5)  # past the lease's first expiry
    late = web.post(f"{server.url}/v1/agents/{agent_id}/messages", json={"input": "late"}, headers=auth(letta.api_key))
    answered.set()
    assert late.status_code == 409
    sender.join(30)
    assert user_messages(server, agent_id) == ["slow"]


def test_a_renewal_that_finds_a_lease_given_back_meanwhile_is_not_a_lost_lease(
    server: LiveServer, agent_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The renewer lists the running turns, then renews their leases one by one: a turn that gave its lease back
    in between is not one whose lease was lost (was: an error logged and its cancel set, under load every round)."""
    runner = server.state.turns()
    storage = server.state.storage
    ending = turns.Turn("run-ending", agent_id, "digest")
    ending.releasing = True  # as ``_run`` marks it before its release; the row is gone, the entry not yet
    lost = turns.Turn("run-lost", agent_id + "-gone", "digest")  # a turn whose lease nobody holds any more
    owner = turns.new_owner()
    assert storage.turns.acquire(agent_id, owner, ending.run_id, 30) is not None
    storage.turns.release(agent_id, owner)
    with runner._guard:
        runner._active[agent_id] = (ending, owner)
        runner._active[lost.agent_id] = (lost, turns.new_owner())
    try:
        with caplog.at_level("ERROR", logger="memgpt.server.turns"):
            server.timing(lease_ttl=30.0, renew_every=0.05, busy_wait=5.0, retry_after=2, ping_every=20.0)
            deadline = time.monotonic() + 30
            while not lost.cancel.is_set():  # a lease gone while its turn still holds it: lost, as before
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.2)  # a few more rounds
    finally:
        with runner._guard:
            for turn in (ending, lost):
                runner._active.pop(turn.agent_id, None)
    assert not ending.cancel.is_set()
    assert [r.getMessage() for r in caplog.records if "run-ending" in r.getMessage()] == []
    assert any("run-lost" in r.getMessage() for r in caplog.records)


def test_a_block_edit_during_a_turn_waits_for_it_and_is_not_overwritten(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    note = {"name": "human", "content": "Loves sailing.", "request_heartbeat": False}
    llm.add({"tool": "core_memory_append", "args": note, "content": "Note it.", "delay": 1.5})
    sender = threading.Thread(target=letta.agents.messages.create, args=(agent_id,), kwargs={"input": "I sail"})
    sender.start()
    while not llm.requests:
        time.sleep(0.02)
    edited = letta.agents.blocks.update("human", agent_id=agent_id, value="Name: Chad B.")
    assert server.state.storage.turns.running_run(agent_id) is None  # it waited for the turn to end
    sender.join(30)
    assert edited.value == "Name: Chad B."
    assert letta.agents.blocks.retrieve("human", agent_id=agent_id).value == "Name: Chad B."
    history = letta.agents.messages.list(agent_id, include_return_message_types=["tool_return_message"]).items
    assert history[0].status == "success"  # the agent's append happened first


# -- the agent kept open between turns ----------------------------------------------------------------
def test_an_agent_stays_open_between_turns_while_nothing_else_changes_it(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real = turns.open_agent

    def counted(storage: Storage, state: AgentState, **options: Any) -> Any:
        opened.append(state.id)
        return real(storage, state, **options)

    monkeypatch.setattr(turns, "open_agent", counted)
    for number in range(3):
        llm.reply(f"Reply {number}.")
        letta.agents.messages.create(agent_id, input=f"message {number}")
    assert opened == [agent_id]  # once, for the first turn
    said = [json.loads(m["content"]) for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    assert [m["message"] for m in said if m["type"] == "user_message"] == [f"message {n}" for n in range(3)]
    letta.agents.blocks.update("human", agent_id=agent_id, value="Name: Chad B.")  # a change: opened again
    llm.reply("Hello Chad B.")
    letta.agents.messages.create(agent_id, input="who am I?")
    assert opened == [agent_id, agent_id]
    assert "Name: Chad B." in llm.requests[-1]["messages"][0]["content"]
    # The message is stored with the lease, before the agent is opened: the reopened agent has it once.
    said = [json.loads(m["content"]) for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    mine = [m["message"] for m in said if m["type"] == "user_message"]
    assert mine == [*(f"message {n}" for n in range(3)), "who am I?"]


def test_a_turns_last_step_records_its_answer_and_gives_the_lease_back_in_its_own_commit(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    """A turn of an agent kept open makes two transactions: the lease taken with its run and its message, then its
    step stored with the run's answer and the lease given back (no third for the release). From that commit on the
    run is finished and the agent free: a process killed right after it leaves no running run for a retry to
    answer a second time."""
    llm.reply("Warm.")
    letta.agents.messages.create(agent_id, input="warm up")  # opens the agent (its reads are not a turn's)
    engine = server.state.storage.metadata.engine
    commits: list[str] = []

    def committed(_conn: Any) -> None:
        if threading.current_thread().name == "turn":
            commits.append("commit")

    event.listen(engine, "commit", committed)
    try:
        llm.reply("Hi.")
        response = letta.agents.messages.create(agent_id, input="hello")
    finally:
        event.remove(engine, "commit", committed)
    assert len(commits) == 2, commits
    run = server.state.storage.turns.run(response.usage.run_ids[0])
    assert run is not None and run.status == "finished" and run.stop_reason == "end_turn"
    stored_answer = json.loads(run.response)
    assert [m["id"] for m in stored_answer["messages"]] == [m.id for m in response.messages]
    assert stored_answer["usage"]["step_count"] == response.usage.step_count == 1
    assert server.state.storage.turns.holder(agent_id) is None


def test_a_send_whose_agent_cannot_be_opened_stores_no_message(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = turns.open_agent

    def broken(storage: Storage, state: AgentState, **options: Any) -> Any:
        raise BackendError("the embedding model cannot be loaded")

    monkeypatch.setattr(turns, "open_agent", broken)
    with pytest.raises(APIStatusError):
        letta.agents.messages.create(agent_id, input="hello")
    assert user_messages(server, agent_id) == []  # stored with the lease, forgotten with the run
    monkeypatch.setattr(turns, "open_agent", real)
    llm.reply("Hi.")
    letta.agents.messages.create(agent_id, input="hello")  # the client sends it again: stored once
    assert user_messages(server, agent_id) == ["hello"]


@pytest.mark.usefixtures("metadata_url")
def test_a_send_whose_agent_cannot_be_opened_while_the_database_is_away_leaves_no_message_once_it_is_back(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent cannot be opened, and the database is away while the turn is undone: its run, its message and its
    lease go together once the database answers (the lease still this process's), not the lease alone."""
    metadata, runner = server.state.storage.metadata, server.state.turns()
    away: set[int] = set()  # the threads that find the database away
    real_connection, real_session = metadata.connection, metadata.session

    @contextlib.contextmanager
    def connection() -> Iterator[Any]:
        if threading.get_ident() in away:
            raise StorageError("metadata database error: connection refused")
        with real_connection() as c:
            yield c

    @contextlib.contextmanager
    def session() -> Iterator[Any]:
        if threading.get_ident() in away:
            raise StorageError("metadata database error: connection refused")
        with real_session() as s:
            yield s

    def broken(storage: Storage, state: AgentState, **options: Any) -> Any:
        away.add(threading.get_ident())  # the turn's thread: the database is away until the turn is undone
        raise BackendError("the embedding model cannot be loaded")

    not_opened = runner._not_opened

    def undone(*args: Any) -> None:
        try:
            not_opened(*args)
        finally:
            away.discard(threading.get_ident())

    monkeypatch.setattr(metadata, "connection", connection)
    monkeypatch.setattr(metadata, "session", session)
    monkeypatch.setattr(turns, "open_agent", broken)
    runner._not_opened = undone  # type: ignore[method-assign]
    with pytest.raises(APIStatusError):
        letta.agents.messages.create(agent_id, input="hello")
    deadline = time.monotonic() + 20
    while server.state.storage.turns.holder(agent_id) is not None:  # given back in the background
        assert time.monotonic() < deadline, "the lease was not given back"
        time.sleep(0.05)
    assert user_messages(server, agent_id) == []  # forgotten with the run, in the release's transaction
    with server.state.storage.metadata.connection() as c:
        assert c.execute(text("select count(*) from agent_runs where agent_id = :a"), {"a": agent_id}).scalar() == 0


def test_changes_made_by_another_process_between_turns_reach_the_next_prompt(
    server: LiveServer, home: Path, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    """The CLI (another process, its own Storage on the same home) edits a block, the system prompt and adds a
    message between two turns of an agent the server keeps open: the next turn's prompt has all three."""
    llm.reply("Hi.")
    letta.agents.messages.create(agent_id, input="hello")
    with Storage(load_config(home), home) as elsewhere:
        state = elsewhere.agents.by_id(server.state.owner.id, agent_id)
        assert state is not None
        update_block(elsewhere, state, "human", value="Name: Chad. Drinks green tea.")
        update_agent(elsewhere, state, system="You are Sam, a tea expert.")
        note = Message(id="message-outside", agent_id=agent_id, role=Role.USER, content="a note from the CLI")
        elsewhere.messages.append(agent_id, [stored(note)])
    llm.reply("Green tea, then.")
    letta.agents.messages.create(agent_id, input="what do I drink?")
    prompt = llm.requests[-1]["messages"]
    assert prompt[0]["content"].startswith("You are Sam, a tea expert.")
    assert "Drinks green tea." in prompt[0]["content"]
    assert any("a note from the CLI" in (m.get("content") or "") for m in prompt)
    history = [m.content for m in server.state.storage.messages.last(agent_id, 100) if m.role is Role.USER]
    assert history.index("a note from the CLI") < len(history) - 1  # kept in order, not lost


def test_different_agents_run_at_the_same_time(server: LiveServer, letta: Letta, llm: ScriptedLLM) -> None:
    spans: list[tuple[float, float]] = []

    def slow(_: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        time.sleep(1.5)
        spans.append((start, time.monotonic()))
        return {"tool": "send_message", "args": {"message": "done"}}

    llm.add(slow, slow)
    ids = [letta.agents.create(name=n, model=HANDLE).id for n in ("a", "b")]
    threads = [threading.Thread(target=letta.agents.messages.create, args=(i,), kwargs={"input": "go"}) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(spans) == 2
    (a_start, a_end), (b_start, b_end) = spans
    assert a_start < b_end and b_start < a_end  # the two turns overlapped


# -- retries, disconnects, failures ---------------------------------------------------------------
def test_a_clients_retry_gets_the_turn_it_started_not_a_second_one(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    llm.reply("Only once.")
    body = {"messages": [{"role": "user", "content": "hello"}]}
    url, headers = f"{server.url}/v1/agents/{agent_id}/messages", auth(letta.api_key)
    first = web.post(url, json=body, headers=headers, timeout=60).json()  # a first turn: seconds under load
    again = web.post(url, json=body, headers={**headers, "X-Stainless-Retry-Count": "1"}).json()
    assert again == first and len(llm.requests) == 1 and user_messages(server, agent_id) == ["hello"]

    # A client that times out while the turn runs resends; the resends join the turn, then read its answer.
    llm.reply("Took a while.", delay=2.5)
    impatient = client(server, timeout=1.0, max_retries=3)
    response = impatient.agents.messages.create(agent_id, input="slow")
    assert response.messages[-1].content == "Took a while."
    assert len(llm.requests) == 2 and user_messages(server, agent_id) == ["hello", "slow"]

    # Sending the same words again on purpose (no retry header) is a new message.
    llm.reply("Twice.")
    web.post(url, json=body, headers=headers)
    assert user_messages(server, agent_id) == ["hello", "slow", "hello"]


def test_a_retry_that_arrives_while_the_first_try_opens_the_agent_joins_its_turn(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    """The first try holds the lease and is still loading the agent (a slow MCP server, a cold cache) when the
    client gives up and resends: the resend joins that turn, rather than waiting for the lease and getting 409."""
    server.timing(busy_wait=0.5, retry_after=1, ping_every=0.3)
    runner = server.state.turns()
    opening, go_on = threading.Event(), threading.Event()
    open_agent = runner._open

    def slow_open(request: Any, grant: Any) -> Any:  # the first try pauses here, holding the lease, till the retry came
        opening.set()
        go_on.wait(30)
        return open_agent(request, grant)

    runner._open = slow_open  # type: ignore[method-assign]
    llm.reply("Only once.")
    body = {"messages": [{"role": "user", "content": "hello"}]}
    url, headers = f"{server.url}/v1/agents/{agent_id}/messages", auth(letta.api_key)
    answers: dict[str, httpx.Response] = {}

    def send(name: str, extra: dict[str, str]) -> None:
        answers[name] = web.post(url, json=body, headers={**headers, **extra}, timeout=60)

    first = threading.Thread(target=send, args=("first", {}))
    first.start()
    assert opening.wait(30)
    retry = threading.Thread(target=send, args=("retry", {"X-Stainless-Retry-Count": "1"}))
    retry.start()
    retry.join(3 * 0.5)  # longer than a send waits for the lease (busy_wait)
    go_on.set()
    first.join(30)
    retry.join(30)
    assert answers["retry"].status_code == 200, answers["retry"].text
    assert answers["retry"].json() == answers["first"].json()
    assert len(llm.requests) == 1 and user_messages(server, agent_id) == ["hello"]


def _data_lines(answer: httpx.Response) -> list[str]:
    """A stream's events (not its keep-alive comments), or a JSON answer's body."""
    if answer.headers["content-type"].startswith("text/event-stream"):
        return [line for line in answer.text.splitlines() if line.startswith("data: ")]
    return [json.dumps(answer.json(), sort_keys=True)]


@pytest.mark.usefixtures("metadata_url")  # the waiting run and its taking, on SQLite and on PostgreSQL
@pytest.mark.parametrize("path", ["messages", "messages/stream"])
def test_a_retry_that_overtakes_its_first_try_sends_the_message_once(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, path: str
) -> None:
    """The first try is held up before it records its run (a busy server, past the client's timeout); the client
    sends it again and the retry, finding no run, runs the turn. The first try, going on, answers with that turn
    instead of storing the message a second time. The order is set by events, not by time."""
    llm.reply("Only once.")
    url, headers = f"{server.url}/v1/agents/{agent_id}/{path}", auth(letta.api_key)
    body = {"messages": [{"role": "user", "content": "hello"}]}
    first, again = overtaken_send(server, url, body, headers)
    assert "Only once." in again.text and _data_lines(first) == _data_lines(again)
    assert len(llm.requests) == 1 and user_messages(server, agent_id) == ["hello"]


def test_a_client_that_leaves_mid_stream_does_not_break_the_agent(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    search_then_reply(llm, "Finished anyway.", delay=1.0)
    with web.stream(
        "POST",
        f"{server.url}/v1/agents/{agent_id}/messages/stream",
        json={"input": "go"},
        headers=auth(letta.api_key),
        timeout=30,
    ) as stream:
        first = next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["message_type"] == "reasoning_message"
    deadline = time.monotonic() + 20
    while server.state.storage.turns.running_run(agent_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    history = letta.agents.messages.list(agent_id).items
    assert history[0].message_type == "assistant_message" and history[0].content == "Finished anyway."
    llm.reply("Still here.")
    assert letta.agents.messages.create(agent_id, input="hi").messages[-1].content == "Still here."


def test_an_llm_failure_keeps_the_message_and_the_next_turn_works(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    retrying = client(server, max_retries=2)
    llm.add({"status": 401, "message": "bad key"})
    with pytest.raises(InternalServerError) as failed:
        retrying.agents.messages.create(agent_id, input="are you there?")
    assert failed.value.status_code == 502 and len(llm.requests) == 1  # not resent: x-should-retry false
    assert "refused the API key" in str(failed.value) and "your message was stored" in str(failed.value)
    assert user_messages(server, agent_id) == ["are you there?"]

    # Failing after a first step: that step's messages and stop_reason llm_api_error.
    llm.add({"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}})
    llm.add({"status": 401, "message": "bad key"})
    partial = letta.agents.messages.create(agent_id, input="search")
    assert partial.stop_reason.stop_reason == "llm_api_error"
    assert [m.message_type for m in partial.messages] == ["tool_call_message", "tool_return_message"]

    # Streaming: the steps that happened, then the stop reason, usage and an error event.
    llm.add({"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}})
    llm.add({"status": 401, "message": "bad key"})
    seen: list[str] = []
    stream = letta.agents.messages.create(agent_id, input="stream", streaming=True)
    with pytest.raises(APIStatusError, match="refused the API key"):
        seen.extend(item.message_type for item in stream)
    assert seen == ["tool_call_message", "tool_return_message", "stop_reason", "usage_statistics"]

    llm.reply("Working again.")
    assert letta.agents.messages.create(agent_id, input="now?").messages[-1].content == "Working again."
    assert user_messages(server, agent_id) == ["are you there?", "search", "stream", "now?"]


def test_a_failed_turn_tells_its_client_the_errors_public_line_and_logs_the_detail(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, caplog: pytest.LogCaptureFixture
) -> None:
    """A turn's failure reached the client as the error's own text: the LLM endpoint's URL and what it answered
    (a busy database's holder, with its pid and command line, likewise). The client gets the class's fixed line
    (streamed or not, and on the OpenAI endpoint); the server's log has the detail."""
    secret = "key sk-live-1234 is not valid for org acme-internal"
    caplog.set_level(logging.WARNING, logger="memgpt.server")
    told: list[str] = []
    llm.add({"status": 401, "message": secret})
    with pytest.raises(InternalServerError) as failed:
        letta.agents.messages.create(agent_id, input="are you there?")
    told.append(str(failed.value.body))
    llm.add({"status": 401, "message": secret})
    streamed = web.post(
        f"{server.url}/v1/agents/{agent_id}/messages/stream", json={"input": "hi"}, headers=auth(server.key())
    )
    errors = [line for line in streamed.text.splitlines() if line.startswith("data: {") and "error_type" in line]
    assert len(errors) == 1, streamed.text
    told.append(errors[0])
    llm.add({"status": 401, "message": secret})
    openai = OpenAI(base_url=f"{server.url}/openai/v1", api_key=server.key(), max_retries=0)
    with pytest.raises(OpenAIServerError) as refused:
        openai.chat.completions.create(model=agent_id, messages=[{"role": "user", "content": "hello?"}])
    told.append(str(refused.value))
    for line in told:
        assert "the server's LLM endpoint refused the API key" in line, told
        assert secret not in line and llm.url not in line and "127.0.0.1" not in line, told
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert logged.count(secret) >= 3, logged


def test_an_llm_4xx_the_client_can_fix_tells_it_the_status_and_the_model_not_the_endpoint(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    """The LLM endpoint's 404 for the model set on the agent: the client is told the status and the model (which it
    set and can change), not the endpoint's URL nor its reply."""
    llm.add({"status": 404, "message": "model 'scripted' not found at /srv/models"})
    with pytest.raises(APIStatusError) as failed:
        letta.agents.messages.create(agent_id, input="are you there?")
    told = str(failed.value.body)
    assert "answered 404 for model 'scripted': check the agent's model" in told, told
    assert llm.url not in told and "127.0.0.1" not in told and "/srv/models" not in told, told


def test_a_message_larger_than_the_window_is_refused_with_400_and_not_stored(
    server: LiveServer, letta: Letta, llm: ScriptedLLM
) -> None:
    """Stored and answered, it went over the window, got the LLM's 400, then sat in every later turn's window."""
    made = letta.agents.create(name="small", model=HANDLE, context_window_limit=6000)  # type: ignore[arg-type]
    url, headers = f"{server.url}/v1/agents/{made.id}/messages", auth(letta.api_key)
    answer = web.post(url, json={"input": "lorem ipsum dolor " * 3000}, headers=headers, timeout=60)
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert "more than the context window" in detail and "6,000 tokens" in detail and "it was not sent" in detail
    assert "upload it to a folder" in detail  # what an API user can do (was only `memgpt load`, a CLI command)
    assert llm.requests == [] and server.state.storage.messages.count(made.id) == 0
    llm.reply("ok")
    assert letta.agents.messages.create(made.id, input="a short one").messages[-1].content == "ok"
    assert user_messages(server, made.id) == ["a short one"]


def test_bad_message_requests_are_4xx_and_store_nothing(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    url = f"{server.url}/v1/agents/{agent_id}/messages"
    headers = {**auth(letta.api_key), "content-type": "application/json"}
    cases = [
        (b'{"input": ', 422),
        (b'{"messages": "hi"}', 422),
        (b'{"messages": [{"role": "user"}]}', 422),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 422),
        (b"{}", 422),
        (b'{"messages": []}', 422),
        (b'{"input": "hi", "max_steps": 0}', 422),
        (b'{"input": "   "}', 400),
        (b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}', 400),
        (b'{"messages": [{"role": "user", "content": [{"type": "image", "source": {"url": "http://x"}}]}]}', 400),
    ]
    for body, status in cases:
        answer = web.post(url, content=body, headers=headers)
        assert answer.status_code == status, (body, answer.text)
        assert "detail" in answer.json()
    unknown = web.post(f"{server.url}/v1/agents/agent-nope/messages", json={"input": "hi"}, headers=headers)
    assert unknown.status_code == 404
    with pytest.raises(NotFoundError):
        letta.agents.messages.list("agent-nope")
    assert server.state.storage.messages.count(agent_id) == 0 and llm.requests == []


# -- kill -9 ----------------------------------------------------------------------------------------
def keyed_server(home: Path, llm: ScriptedLLM) -> tuple[ServerProcess, str]:
    """A server process on ``home``, ready, whose leases only a dead owner frees (not an expiry), and an API key."""
    config = use_scripted_llm(home, llm.url)
    config.server.lease_seconds = 600  # so only the dead owner, not an expiry, can free the agent
    save_config(config, home)
    made = run_cli("key", "create", home=home)
    assert made.returncode == 0, made.stderr
    key = next(w for w in made.stdout.split() if w.startswith("sk-"))
    server = ServerProcess(home)
    server.wait_ready()
    return server, key


def kill_9_in_a_turn(
    process: subprocess.Popen[bytes], llm: ScriptedLLM, send: Callable[[], None], steps_before: int
) -> None:
    """``send`` on a thread; once the turn has asked the LLM past ``steps_before`` steps (the next one hangs),
    kill -9 the server ``process``, then wait for it and for the sender."""
    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 30
    while len(llm.requests) <= steps_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(llm.requests) > steps_before, "the turn never reached the hanging step"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    sender.join(30)


def restart(server: ServerProcess, llm: ScriptedLLM) -> None:
    """The killed server started again, on the same port, without what was left of the LLM's script (the hang)."""
    llm.script.clear()
    server.start()  # the same port again
    server.wait_ready()


def reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(30)


@pytest.mark.usefixtures("metadata_url")
def test_kill_9_mid_turn_then_restart_keeps_the_message_and_the_agent_works(home: Path, llm: ScriptedLLM) -> None:
    server, key = keyed_server(home, llm)
    process = server.process
    try:
        letta = Letta(base_url=server.url, api_key=key, max_retries=0)
        agent = letta.agents.create(name="survivor", model=HANDLE).id
        llm.add({"hang": True})

        def send() -> None:
            with pytest.raises(APIError):  # the connection dies with the server
                letta.agents.messages.create(agent, input="keep me")

        kill_9_in_a_turn(process, llm, send, steps_before=0)
    finally:
        reap(process)
    restart(server, llm)
    try:
        letta = Letta(base_url=server.url, api_key=key, max_retries=0)
        history = letta.agents.messages.list(agent, order="asc").items
        assert [(m.message_type, m.content) for m in history] == [("user_message", "keep me")]
        with Storage(load_config(home), home) as storage, storage.metadata.session() as session:
            left = session.execute(text("select expires_at from agent_leases where agent_id = :a"), {"a": agent}).all()
        # The dead turn's lease is still there and not expired yet: only its dead owner makes it stale.
        assert len(left) == 1
        expires = left[0][0] if isinstance(left[0][0], datetime) else datetime.fromisoformat(str(left[0][0]))
        assert (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) > datetime.now(UTC)
        llm.reply("I am back.")
        answer = letta.agents.messages.create(agent, input="still there?")  # a 409 after 5 s if the lease blocked it
        assert answer.messages[-1].content == "I am back."
        assert [
            m.content for m in letta.agents.messages.list(agent, include_return_message_types=["user_message"])
        ] == [
            "still there?",
            "keep me",
        ]
    finally:
        server.stop()
    with Storage(load_config(home), home) as storage:
        assert storage.turns.running_run(agent) is None


@pytest.mark.usefixtures("metadata_url")
@pytest.mark.parametrize("steps_stored", [0, 1])
def test_a_retry_after_kill_9_mid_turn_answers_the_stored_message_not_a_second_copy(
    home: Path, llm: ScriptedLLM, steps_stored: int
) -> None:
    """Killed in its first step, or after a step was stored (the retry goes on from it)."""
    server, key = keyed_server(home, llm)
    process = server.process
    body = {"input": "keep me once"}
    try:
        agent = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="once", model=HANDLE).id
        url = f"{server.url}/v1/agents/{agent}/messages"
        if steps_stored:
            llm.add({"tool": "archival_memory_search", "args": {"query": "tea", "request_heartbeat": True}})
        llm.add({"hang": True})

        def send() -> None:
            with pytest.raises(httpx.HTTPError):  # the connection dies with the server
                web.post(url, json=body, headers=auth(key), timeout=120)

        kill_9_in_a_turn(process, llm, send, steps_before=steps_stored)
    finally:
        reap(process)
    restart(server, llm)
    try:
        llm.reply("Answered once.")
        # letta-client's retry of the send whose connection died: the same body with X-Stainless-Retry-Count.
        retried = web.post(url, json=body, headers={**auth(key), "X-Stainless-Retry-Count": "1"}, timeout=120)
        assert retried.status_code == 200, retried.text
        assert retried.json()["messages"][-1]["content"] == "Answered once."
        with Storage(load_config(home), home) as storage:
            mine = [m for m in storage.messages.last(agent, 1000) if m.role is Role.USER and not m.name]
            assert [m.content for m in mine] == ["keep me once"]
            # The prompt of the retried turn held the message once too.
            said = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "user"]
            assert sum("keep me once" in str(c) for c in said) == 1, said
    finally:
        server.stop()


def test_reset_starts_the_context_over_and_recall_keeps_every_message(
    letta: Letta, agent_id: str, llm: ScriptedLLM
) -> None:
    """letta-client's messages.reset (was: 404): the next turn's request holds no earlier message (the server kept
    the agent open since its last turn: it reads it again), and recall still has them all."""
    llm.reply("Noted: tea.").reply("Hello again.")
    letta.agents.messages.create(agent_id, input="remember that I like tea")
    assert any("I like tea" in str(m.get("content")) for m in llm.requests[-1]["messages"])
    reset = letta.agents.messages.reset(agent_id, add_default_initial_messages=True)
    assert reset is not None and reset.id == agent_id
    letta.agents.messages.create(agent_id, input="hi")
    sent = llm.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"] and "I like tea" not in json.dumps(sent)
    said = [m.content for m in letta.agents.messages.list(agent_id, order="asc") if m.message_type == "user_message"]
    assert said == ["remember that I like tea", "hi"]
    with pytest.raises(NotFoundError):
        letta.agents.messages.reset("agent-00000000-0000-4000-8000-000000000000")


def test_a_tools_failure_of_ours_reaches_the_llm_and_the_client_by_its_public_line(
    letta: Letta, llm: ScriptedLLM, server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A StorageError inside a tool names a host: a server writes its public line into the tool message (sent to
    the LLM, stored, returned to the client) and logs the detail; the CLI shows it all (test_cli_agents)."""
    tools = server.state.home / "tools"
    tools.mkdir(parents=True, exist_ok=True)
    (tools / "lookup.py").write_text(
        "from memgpt.errors import StorageError\n\n"
        "def lookup(key: str) -> str:\n"
        '    """Look a key up.\n\n    Args:\n        key: The key.\n    """\n'
        '    raise StorageError("postgresql://memgpt@10.9.8.7:5432/meta refused the connection")\n'
    )
    agent = letta.agents.create(name="looker", model=HANDLE).id  # type: ignore[arg-type]
    llm.add({"tool": "lookup", "args": {"key": "k", "request_heartbeat": True}})
    llm.reply("It failed.")
    with caplog.at_level(logging.WARNING):
        response = letta.agents.messages.create(agent, input="look k up")
    result = next(m for m in response.messages if m.message_type == "tool_return_message")
    told = f"Error: {StorageError.public}"
    assert json.loads(result.tool_return)["message"] == told
    assert tool_results(llm.requests[1])[-1]["message"] == told
    assert "10.9.8.7" not in json.dumps([m.content for m in server.state.storage.messages.last(agent, 100)])
    assert "10.9.8.7" in caplog.text  # the server's log has the detail
