"""Scale-out: `memgpt server` processes on one PostgreSQL and one Milvus server, behind no balancer.

Process A is `memgpt server`, B is `memgpt server --workers 2` (two uvicorn worker processes): real child
processes on one home config. A letta-client alternating between them sees one agent; sends to one agent
that meet (in one process or two) are serialized by the lease in the database; a process killed mid-turn
leaves the agent to the others at once; PostgreSQL stopping under them is a one-line 503 until it is back.
The servers are started once for the module (a start costs seconds); every test makes agents of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from letta_client import APIError, Letta

from tests import web
from tests.postgres import PostgresServer
from tests.scripted_llm import ScriptedLLM
from tests.server_pair import ServerPair, serialized, server_pair
from tests.server_rig import auth

STEP = 0.4  # seconds the scripted LLM takes per step where turns must overlap to be tested
HOLD = 3.0  # how long the first step of two sends that meet waits for the other's (it comes only without a lease)


@dataclass
class Cluster(ServerPair):
    postgres: PostgresServer


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, milvus_server: str
) -> Iterator[Cluster]:
    with server_pair(
        tmp_path_factory, postgres_server, milvus_server, label="scale", workers=(1, 2), configure=serialized
    ) as parts:
        yield Cluster(*parts, postgres_server)


@pytest.fixture
def llm(cluster: Cluster) -> Iterator[ScriptedLLM]:
    cluster.llm.script.clear()
    cluster.llm.requests.clear()
    yield cluster.llm
    cluster.llm.script.clear()


def said(body: dict[str, Any]) -> str:
    """The words of the user message a request to the LLM answers (the newest one; heartbeats have none)."""
    return _words(body["messages"][_newest_user(body)])


def echo(body: dict[str, Any]) -> dict[str, Any]:
    return {"tool": "send_message", "args": {"message": f"re: {said(body)}"}, "content": "Answer."}


# -- one agent, seen alike from every process -----------------------------------------------------------
def test_a_client_alternating_between_processes_sees_one_agent(cluster: Cluster, llm: ScriptedLLM) -> None:
    a, b = cluster.client(cluster.a), cluster.client(cluster.b)
    agent = cluster.agent(cluster.a)
    assert agent in [found.id for found in b.agents.list()]
    assert b.agents.retrieve(agent).name == a.agents.retrieve(agent).name

    llm.add(echo)
    assert b.agents.messages.create(agent, input="hello from B").messages[-1].content == "re: hello from B"
    history = a.agents.messages.list(agent, order="asc").items
    assert [(m.message_type, m.content) for m in history if m.message_type != "reasoning_message"] == [
        ("user_message", "hello from B"),
        ("assistant_message", "re: hello from B"),
    ]

    b.agents.blocks.update("human", agent_id=agent, value="Name: Chad (edited on B)")
    assert a.agents.blocks.retrieve("human", agent_id=agent).value == "Name: Chad (edited on B)"
    llm.add(echo)
    a.agents.messages.create(agent, input="who am I?")
    assert "Name: Chad (edited on B)" in llm.requests[-1]["messages"][0]["content"]  # the turn on A saw the edit

    # A process's first search is Strong (it sees every earlier write); later ones are Session reads: its own
    # writes at once, another process's as soon as Milvus has applied them (a time tick: 20 ms on the test
    # server, 200 ms by default). B has searched, so A's passage reaches B's searches after at most that.
    assert b.agents.passages.search(agent, query="codeword").count == 0
    a.agents.passages.create(agent, text="The codeword is aubergine.")
    inserted, deadline = time.monotonic(), time.monotonic() + 2
    while not (found := b.agents.passages.search(agent, query="codeword")).count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [hit.content for hit in found.results] == ["The codeword is aubergine."]
    print(f"A's passage was found by B's search after {time.monotonic() - inserted:.3f} s")


def test_a_turn_on_the_other_process_between_two_turns_here_reaches_the_next_prompt(
    cluster: Cluster, llm: ScriptedLLM
) -> None:
    """A keeps the agent open after its turn; B's turn in between moves the agent's version, so A's next turn
    opens it afresh and its prompt holds B's messages too."""
    a, b = cluster.client(cluster.a), cluster.client(cluster.b)
    agent = cluster.agent(cluster.a)
    for client, text in ((a, "first on A"), (b, "then on B"), (a, "again on A")):
        llm.add(echo)
        client.agents.messages.create(agent, input=text)
    said = [json.loads(m["content"]) for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    assert [m["message"] for m in said if m["type"] == "user_message"] == ["first on A", "then on B", "again on A"]


# -- one turn at a time per agent -------------------------------------------------------------------------
class TwoStepTurns:
    """A scripted LLM answer for turns of two slow steps (an archival search asking for a heartbeat, then a
    reply to the user's words); it notes when each step ran, to show that an agent's steps never overlap."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self.calls = 0
        self.second_call = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        start = time.monotonic()
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            # The first step waits for a second caller, or long enough for the other send to have arrived: were
            # the turns not serialized, the other turn's first step would come now and overlap this one.
            self.second_call.wait(HOLD)
        else:
            self.second_call.set()
        time.sleep(STEP)
        self.spans.append((start, time.monotonic()))
        if any(m["role"] == "tool" for m in body["messages"][_newest_user(body) :]):
            return {"tool": "send_message", "args": {"message": f"re: {said(body)}"}, "content": "Reply."}
        query = {"query": said(body), "request_heartbeat": True}
        return {"tool": "archival_memory_search", "args": query, "content": "Look first."}


def _newest_user(body: dict[str, Any]) -> int:
    for index in range(len(body["messages"]) - 1, -1, -1):
        message = body["messages"][index]
        if message["role"] == "user" and _words(message):
            return index
    return 0


def _words(message: dict[str, Any]) -> str:
    try:
        packed = json.loads(message.get("content") or "")
    except ValueError:
        return ""
    return str(packed.get("message") or "") if isinstance(packed, dict) else ""


@pytest.mark.parametrize("pair", ["A+A", "A+B", "B+B"])
def test_sends_to_one_agent_that_meet_are_serialized(cluster: Cluster, llm: ScriptedLLM, pair: str) -> None:
    """Two sends at the same moment, to one process (B+B: either of B's two workers) or to two: the second
    waits for the first turn, whole; nothing interleaves and nothing is lost, in storage or in the context."""
    servers = [cluster.a if name == "A" else cluster.b for name in pair.split("+")]
    agent = cluster.agent(cluster.a)
    clients = [cluster.client(server, timeout=120) for server in servers]
    then = cluster.client(servers[-1] if servers[0] is cluster.a else cluster.a)  # the next turn: the other process
    assert_meeting_sends_serialized(agent, clients, then, cluster.history, llm)


def assert_meeting_sends_serialized(
    agent: str, clients: Sequence[Letta], then: Letta, history: Callable[[str], list[tuple[str, str]]], llm: ScriptedLLM
) -> None:
    """Two sends to ``agent`` at the same moment, one through each of ``clients``: the second waits for the first
    turn, whole; nothing interleaves and nothing is lost, in storage (``history``) or in the context that the next
    turn (sent through ``then``) gives the LLM."""
    turns = TwoStepTurns()
    llm.add(*[turns] * 4)
    start = threading.Barrier(2)
    answers: dict[str, str] = {}

    def send(client: Letta, text: str) -> None:
        start.wait()
        answers[text] = client.agents.messages.create(agent, input=text).messages[-1].content

    threads = [threading.Thread(target=send, args=(c, t)) for c, t in zip(clients, ("first", "second"), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert answers == {"first": "re: first", "second": "re: second"}
    spans = sorted(turns.spans)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans)), spans
    # Stored: each turn whole (its user message, the search, the heartbeat, the reply), one after the other.
    stored = history(agent)
    starts = [i for i, (role, text) in enumerate(stored) if role == "user" and text in answers]
    assert len(starts) == 2 and starts[0] == 0, stored
    turns_stored = [stored[starts[0] : starts[1]], stored[starts[1] :]]
    for turn in turns_stored:
        assert [role for role, _ in turn] == ["user", "assistant", "tool", "user", "assistant", "tool"], stored
    # And in the agent's context: the next turn sends the LLM both, in stored order.
    llm.add(echo)
    then.agents.messages.create(agent, input="third")
    context = [_words(m) for m in llm.requests[-1]["messages"] if m["role"] == "user" and _words(m)]
    assert context == [turns_stored[0][0][1], turns_stored[1][0][1], "third"]


# -- faults ------------------------------------------------------------------------------------------------
def test_a_client_leaving_mid_stream_on_one_process_leaves_the_agent_to_the_other(
    cluster: Cluster, llm: ScriptedLLM
) -> None:
    agent = cluster.agent(cluster.a)
    llm.add(TwoStepTurns(), TwoStepTurns())  # each answers its first call with a search, so: search, then a reply
    llm.script[1] = echo
    key = auth(cluster.key)
    with web.stream(
        "POST", f"{cluster.a.url}/v1/agents/{agent}/messages/stream", json={"input": "go"}, headers=key, timeout=60
    ) as stream:
        first = next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["message_type"] == "reasoning_message"
    llm.add(echo)
    answer = cluster.client(cluster.b, timeout=120).agents.messages.create(agent, input="still there?")
    assert answer.messages[-1].content == "re: still there?"  # B waited for A's turn to end, then ran its own
    assert cluster.user_messages(agent) == ["go", "still there?"]


def test_postgres_stopping_under_the_servers_is_a_503_then_they_recover(cluster: Cluster, llm: ScriptedLLM) -> None:
    agent = cluster.agent(cluster.b)
    key = auth(cluster.key)
    with cluster.postgres.down():
        for server in (cluster.a, cluster.b):
            answer = web.get(f"{server.url}/v1/agents/", headers=key, timeout=60)
            assert answer.status_code == 503, answer.text
            detail = answer.json()["detail"]
            assert "\\n" not in detail and "metadata database" in detail, detail
        sent = web.post(f"{cluster.a.url}/v1/agents/{agent}/messages", json={"input": "lost?"}, headers=key)
        assert sent.status_code == 503 and sent.headers.get("x-should-retry") != "false"
    assert llm.requests == []
    for server in (cluster.a, cluster.b):  # pool_pre_ping replaces the connections PostgreSQL closed
        assert agent in [found["id"] for found in web.get(f"{server.url}/v1/agents/", headers=key).json()]
    llm.add(echo)
    assert cluster.client(cluster.a).agents.messages.create(agent, input="back?").messages[-1].content == "re: back?"
    assert cluster.user_messages(agent) == ["back?"]


def test_kill_9_of_a_process_mid_turn_the_other_serves_the_agent_at_once(cluster: Cluster, llm: ScriptedLLM) -> None:
    """Last in the module: it kills A. The lease A's dead turn left (600 s to expire) is taken over at once,
    since its owner is a process of this host that no longer runs."""
    agent = cluster.agent(cluster.a)
    llm.add({"hang": True})

    def send() -> None:
        with pytest.raises(APIError):  # the connection dies with the server
            cluster.client(cluster.a, timeout=120).agents.messages.create(agent, input="keep me")

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 60
    while not llm.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert llm.requests, "the turn never reached the LLM"
    os.kill(cluster.a.process.pid, signal.SIGKILL)
    cluster.a.process.wait(30)
    sender.join(30)
    llm.add(echo)
    started = time.monotonic()
    answer = cluster.client(cluster.b, timeout=120).agents.messages.create(agent, input="still there?")
    waited = time.monotonic() - started
    assert answer.messages[-1].content == "re: still there?"
    assert waited < cluster.config.server.busy_wait_seconds  # not a wait for the lease to expire
    print(f"the next turn on B took {waited:.2f} s after A was killed mid-turn")
    assert cluster.user_messages(agent) == ["keep me", "still there?"]
    context = [_words(m) for m in llm.requests[-1]["messages"] if m["role"] == "user" and _words(m)]
    assert context == ["keep me", "still there?"]
