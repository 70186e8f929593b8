"""`memgpt server` while what it stands on fails: PostgreSQL stopped and started again between turns and in the
middle of one, driven by letta-client against a real server, a real PostgreSQL and the scripted LLM."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from letta_client import APIStatusError, Letta
from mcp.shared.exceptions import MCPError
from sqlalchemy import event

from memgpt.config import load_config, save_config
from memgpt.data import filerecords
from memgpt.memory.archival import ArchivalMemory
from memgpt.storage.filters import eq
from memgpt.types import Role
from tests import web
from tests.conftest import DATA
from tests.postgres import PostgresServer
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, auth, use_scripted_llm
from tests.test_mcp_serve import http, leaves

HANDLE = "openai-compatible/scripted"


@pytest.fixture
def server(home: Path, llm: ScriptedLLM, postgres_url: str) -> Iterator[LiveServer]:
    config = use_scripted_llm(home, llm.url)
    config.metadata_url = postgres_url
    save_config(config, home)
    running = LiveServer(home, load_config(home))
    # A send waits up to busy_wait for the agent's lease: 10 s, so a lease given back a few seconds after the
    # database is back is waited for, while one left to expire (30 s) still fails the `< 10` checks below.
    running.timing(busy_wait=10.0, retry_after=1, ping_every=0.3)
    yield running
    running.stop()


@pytest.fixture
def letta(server: LiveServer) -> Letta:
    return Letta(base_url=server.url, api_key=server.key(), _strict_response_validation=True, max_retries=0)


@pytest.fixture
def agent_id(letta: Letta) -> str:
    blocks = [{"label": "human", "value": "Name: Chad"}, {"label": "persona", "value": "I am Sam."}]
    return letta.agents.create(name="sam", memory_blocks=blocks, model=HANDLE).id  # type: ignore[arg-type]


def user_messages(server: LiveServer, agent: str) -> list[str]:
    return [m.content for m in server.state.storage.messages.last(agent, 1000) if m.role is Role.USER and not m.name]


def _send_held(
    letta: Letta, agent_id: str, llm: ScriptedLLM, reply: str, go_on: threading.Event, answer: dict[str, object]
) -> threading.Thread:
    """A send in a thread whose LLM answer ``reply`` waits for ``go_on``; returned once the LLM was asked. ``answer``
    gets "ok" (the turn) or "error" (status, body) and "retry" (the x-should-retry header)."""
    llm.reply(reply, until=go_on)

    def send() -> None:
        try:
            answer["ok"] = letta.agents.messages.create(agent_id, input="during")
        except APIStatusError as exc:
            answer["error"] = (exc.status_code, exc.body)
            answer["retry"] = exc.response.headers.get("x-should-retry")

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 20
    while not llm.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    return sender


def test_postgres_restarted_between_turns(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, postgres_server: PostgresServer
) -> None:
    llm.reply("one")
    assert letta.agents.messages.create(agent_id, input="first").messages[-1].content == "one"
    with postgres_server.down():
        with pytest.raises(APIStatusError) as down:
            letta.agents.messages.create(agent_id, input="while down")
        assert down.value.status_code == 503
    llm.reply("two")
    assert letta.agents.messages.create(agent_id, input="second").messages[-1].content == "two"
    assert user_messages(server, agent_id) == ["first", "second"]


def test_postgres_restarted_while_the_llm_thinks(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, postgres_server: PostgresServer
) -> None:
    go_on, answer = threading.Event(), {}
    sender = _send_held(letta, agent_id, llm, "answered", go_on, answer)
    with postgres_server.down():
        pass
    go_on.set()
    sender.join(60)
    assert not sender.is_alive()
    if "ok" in answer:  # the pool's connections were made again: the turn went on
        assert answer["ok"].messages[-1].content == "answered"  # type: ignore[attr-defined]
    else:  # or it could not store its step: a 503 that says the message was kept
        status, body = answer["error"]  # type: ignore[misc]
        assert status == 503, body
        assert "your message was stored" in str(body), body
    llm.reply("after")
    after = letta.agents.messages.create(agent_id, input="next")
    assert after.messages[-1].content == "after"
    assert user_messages(server, agent_id) == ["during", "next"]


def test_postgres_down_as_a_step_is_stored_answers_503_and_frees_the_agent_once_it_is_back(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, postgres_server: PostgresServer
) -> None:
    """The turn cannot store its step nor give its lease back: the send says so with a 503 (a dependency is down,
    not a bug), and the lease is given back as soon as PostgreSQL answers again, not left to expire (30 s), by the
    storage's background releases: the turn's thread is free for the next turn at once, not busy retrying."""
    go_on, answer = threading.Event(), {}
    sender = _send_held(letta, agent_id, llm, "never stored", go_on, answer)
    with postgres_server.down():
        go_on.set()
        sender.join(60)
        threads = server.state.turns()._threads  # the turn's thread: idle again (waiting for a next turn) ...
        deadline = time.monotonic() + 5
        while threads._idle < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threads._idle == 1, "the turn's thread is still busy"  # ... while PostgreSQL is still down
    status, body = answer["error"]  # type: ignore[misc]
    assert status == 503, body
    assert answer["retry"] == "false"  # the turn is recorded as failed: a retry would get the same answer
    assert "your message was stored" in str(body) and "metadata database" in str(body)
    llm.reply("after")
    back = time.monotonic()
    assert letta.agents.messages.create(agent_id, input="next").messages[-1].content == "after"
    assert time.monotonic() - back < 10  # not the 30 s of a lease left to expire
    assert user_messages(server, agent_id) == ["during", "next"]
    assert "never stored" not in str(server.state.storage.messages.last(agent_id, 100))  # its step was not stored


def test_postgres_down_mid_stream_ends_the_stream_with_an_error_then_the_agent_works(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, postgres_server: PostgresServer
) -> None:
    go_on = threading.Event()
    llm.add({"tool": "archival_memory_search", "args": {"query": "tea", "request_heartbeat": True}, "content": "Look."})
    llm.reply("never stored", until=go_on)
    lines: list[str] = []
    with web.stream(
        "POST",
        f"{server.url}/v1/agents/{agent_id}/messages/stream",
        json={"input": "go"},
        headers=auth(letta.api_key),
        timeout=60,
    ) as stream:
        events = stream.iter_lines()
        for line in events:
            lines.append(line)
            if len(llm.requests) >= 2:
                break
        with postgres_server.down():
            go_on.set()
            lines += [line for line in events if line]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: {")]
    assert lines[-1] == "data: [DONE]"
    assert {"message_type": "stop_reason", "stop_reason": "error"} in data
    assert data[-1]["message_type"] == "error_message" and "metadata database" in data[-1]["message"]
    llm.reply("after")
    back = time.monotonic()
    assert letta.agents.messages.create(agent_id, input="next").messages[-1].content == "after"
    assert time.monotonic() - back < 10
    assert user_messages(server, agent_id) == ["go", "next"]


def test_postgres_restarted_while_an_upload_loads_then_the_load_is_done_again_once_each(
    server: LiveServer, letta: Letta, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background load cannot record how it ended while PostgreSQL is down: it is loaded again once the
    database answers (as a load a dead process left is), not left showing `embedding` for as long as the server
    runs; each of its passages is stored once. The load is held at its first progress write (after its first batch
    of embeddings, more to come) until PostgreSQL is down: mid-load whatever the machine's speed, so a small file
    does (the 650 KB paper took 26 s alone, over 120 s at load 25)."""
    monkeypatch.setattr(filerecords, "_PROGRESS_EVERY", 0.0)  # a progress write after each batch
    engine = server.state.storage.metadata.engine
    reached, stopped = threading.Event(), threading.Event()

    def before(conn: object, cursor: object, statement: str, *args: object) -> None:
        progress = statement.lstrip().upper().startswith("UPDATE FILES") and "status" not in statement
        if progress and "chunks_embedded" in statement and not reached.is_set():
            reached.set()
            stopped.wait(60)  # (the statement then runs on a connection PostgreSQL closed)

    event.listen(engine, "before_cursor_execute", before)
    try:
        folder = letta.folders.create(name="docs").id
        upload = letta.folders.files.upload(folder, file=(DATA / "long_test.txt").open("rb"))
        assert reached.wait(120), "the load never wrote its progress"
        with postgres_server.down():
            stopped.set()
            time.sleep(2)
    finally:
        stopped.set()
        event.remove(engine, "before_cursor_execute", before)
    deadline = time.monotonic() + 120
    while (file := letta.folders.files.retrieve(upload.id, folder_id=folder)).processing_status != "completed":
        assert file.processing_status != "error" and time.monotonic() < deadline, file
        time.sleep(0.2)
    source = server.state.storage.metadata.source_with_id(folder)
    assert source is not None
    stored = server.state.storage.passages(source.space).count(eq("source_id", folder))
    assert stored == file.total_chunks == file.chunks_embedded
    assert file.total_chunks > 8  # more than the batch held: the load was stopped part way


def test_postgres_down_as_the_agent_opens_answers_503_and_frees_the_agent_once_it_is_back(
    server: LiveServer, letta: Letta, agent_id: str, llm: ScriptedLLM, postgres_server: PostgresServer
) -> None:
    """PostgreSQL stops after a send took the agent's lease, as the agent is read to open it: the run cannot be
    forgotten nor the lease given back. The send gets a 503 naming the database (not the failed release's error),
    and the lease is given back as soon as PostgreSQL answers again (``release_later``), not left to expire (30 s)."""
    engine = server.state.storage.metadata.engine
    reached, stopped = threading.Event(), threading.Event()

    def before(conn: object, cursor: object, statement: str, *args: object) -> None:
        if not reached.is_set() and statement.lstrip().upper().startswith("SELECT") and "FROM agents" in statement:
            reached.set()
            stopped.wait(60)  # (the statement then runs on a connection PostgreSQL closed)

    answer: dict[str, object] = {}

    def send() -> None:
        try:
            answer["ok"] = letta.agents.messages.create(agent_id, input="during")
        except APIStatusError as exc:
            answer["error"] = (exc.status_code, exc.body)

    event.listen(engine, "before_cursor_execute", before)
    try:
        sender = threading.Thread(target=send)
        sender.start()
        assert reached.wait(30), "the send never read its agent"
        with postgres_server.down():
            stopped.set()
            sender.join(60)
            assert not sender.is_alive()
    finally:
        stopped.set()
        event.remove(engine, "before_cursor_execute", before)
    status, body = answer["error"]  # type: ignore[misc]
    assert status == 503, body
    assert "metadata database" in str(body), body
    assert not llm.requests  # the agent never opened
    llm.reply("after")
    back = time.monotonic()
    assert letta.agents.messages.create(agent_id, input="next").messages[-1].content == "after"
    assert time.monotonic() - back < 10  # not the 30 s of a lease left to expire


def test_mcp_while_postgres_is_down_says_why_in_the_sdk(server: LiveServer, postgres_server: PostgresServer) -> None:
    """A key not yet trusted cannot be checked while PostgreSQL is down: /mcp answers 503 as the REST API does, and
    the mcp SDK's client shows why (it said "Server returned an error response"), from the JSON-RPC error the body
    carries too; once PostgreSQL is back the same key works."""
    key, url = server.key(), f"{server.url}/mcp"

    async def connect() -> list[str]:
        said: list[str] = []
        try:
            async with http(url, key) as session:
                await session.client.list_tools()
        except* MCPError as refused:  # (in the SDK's task groups' exception groups)
            said = [error.message for error in leaves(refused)]
        return said

    with postgres_server.down():
        said = anyio.run(connect)
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        answer = web.post(url, json=ping, headers={**auth(key), "Accept": "application/json, text/event-stream"})
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert answer.json() == {
        "detail": detail,
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32603, "message": detail},
    }
    print(detail)
    assert said == [detail] and "Server returned an error response" not in detail
    assert anyio.run(connect) == []


def test_postgres_down_once_a_passage_is_stored_answers_it_and_it_is_stored_once(
    server: LiveServer, letta: Letta, agent_id: str, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insert's passages are stored; only its run's record (for a client's retry) cannot be: a 503 there told a
    client that resends on a 503 (curl, a plain HTTP client) to store the text a second time. It answers the
    passages it stored, and the run's record is written once PostgreSQL is back."""
    key = auth(server.key())
    original, outage = ArchivalMemory.add, postgres_server.down()

    def add_then_lose_postgres(self: ArchivalMemory, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)
        outage.__enter__()
        return made

    monkeypatch.setattr(ArchivalMemory, "add", add_then_lose_postgres)
    try:
        answer = web.post(f"{server.url}/v1/agents/{agent_id}/archival-memory", json={"text": "kept"}, headers=key)
    finally:
        outage.__exit__(None, None, None)
    monkeypatch.undo()
    assert answer.status_code == 200, answer.text
    assert [p["text"] for p in answer.json()] == ["kept"]
    assert [p.text for p in letta.agents.passages.list(agent_id)] == ["kept"]
    # Its record was written once PostgreSQL was back: a client's retry of it is answered with it, not stored again.
    retry = {**key, "x-stainless-retry-count": "1"}
    again = web.post(f"{server.url}/v1/agents/{agent_id}/archival-memory", json={"text": "kept"}, headers=retry)
    assert again.status_code == 200, again.text
    assert [(p["id"], p["text"]) for p in again.json()] == [(p["id"], p["text"]) for p in answer.json()]
    assert [p.text for p in letta.agents.passages.list(agent_id)] == ["kept"]
