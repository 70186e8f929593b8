"""Scale-out under faults, as a user deploying memgpt meets them: two `memgpt server` processes on one PostgreSQL
and one Milvus server (reached through a relay that can go away and come back on the same address, as a stopped
and restarted Milvus server does: the test server is one per machine, shared by every test session, so it is not
stopped itself), driven by letta-client and plain HTTP. What is checked after each fault is read back and counted:
nothing a success answered is lost, nothing is stored twice, and every refusal is a one-line JSON 4xx/503.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from letta_client import APIConnectionError, APIStatusError, Letta
from openai import OpenAI

from memgpt import create_client
from memgpt.client.types import UserMessage
from memgpt.errors import StorageError
from tests import web
from tests.conftest import DATA
from tests.postgres import PostgresServer
from tests.scripted_llm import ScriptedLLM
from tests.server_pair import ServerPair, _test_storage, serialized, server_pair
from tests.server_rig import ServerProcess, auth
from tests.test_milvus_outage_logs import Relay


@dataclass
class Faulty(ServerPair):
    postgres: PostgresServer
    relay: Relay


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, milvus_server: str
) -> Iterator[Faulty]:
    relay = Relay(milvus_server)
    try:
        with server_pair(
            tmp_path_factory, postgres_server, relay.uri, label="faults", workers=(1, 1), configure=serialized
        ) as parts:
            yield Faulty(*parts, postgres_server, relay)
    finally:
        relay.cut()


@pytest.fixture
def llm(faulty: Faulty) -> Iterator[ScriptedLLM]:
    faulty.llm.script.clear()
    faulty.llm.requests.clear()
    yield faulty.llm
    faulty.llm.script.clear()


def _words(message: dict[str, Any]) -> str:
    try:
        packed = json.loads(message.get("content") or "")
    except ValueError:
        return ""
    return str(packed.get("message") or "") if isinstance(packed, dict) else ""


def echo(body: dict[str, Any]) -> dict[str, Any]:
    said = next((_words(m) for m in reversed(body["messages"]) if m["role"] == "user" and _words(m)), "")
    return {"tool": "send_message", "args": {"message": f"re: {said}"}, "content": "Answer."}


def assert_one_line_error(answer: httpx.Response, *statuses: int) -> None:
    assert answer.status_code in statuses, (answer.status_code, answer.text)
    detail = answer.json()["detail"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    assert "Traceback" not in text and "\n" not in text, text


# -- one agent, folders and all, from both processes ------------------------------------------------------
def test_folders_uploaded_on_one_process_attach_and_search_on_the_other_while_it_serves_turns(
    faulty: Faulty, llm: ScriptedLLM
) -> None:
    a, b = faulty.client(faulty.a, timeout=120), faulty.client(faulty.b, timeout=120)
    agent = faulty.agent(faulty.a)
    folder = b.folders.create(name="notes")
    assert folder.id in [f.id for f in a.folders.list()]
    upload = b.folders.files.upload(folder.id, file=(DATA / "test.md").open("rb"))
    for n in range(3):  # turns on A while B loads the upload
        llm.add(echo)
        assert a.agents.messages.create(agent, input=f"turn {n}").messages[-1].content == f"re: turn {n}"
    deadline = time.monotonic() + 300
    while (done := a.folders.files.retrieve(upload.id, folder_id=folder.id)).processing_status not in (
        "completed",
        "error",
    ):
        assert time.monotonic() < deadline, done
        time.sleep(0.2)
    assert done.processing_status == "completed" and done.total_chunks > 0, done
    assert a.folders.retrieve(folder.id).passages == done.total_chunks
    assert a.agents.folders.attach(folder.id, agent_id=agent) is None
    assert [f.id for f in b.agents.folders.list(agent)] == [folder.id]
    assert b.folders.agents.list(folder.id) == [agent]
    found = b.agents.passages.search(agent, query="markdown test document")
    assert found.count > 0 and all(hit.content for hit in found.results)
    assert b.agents.folders.detach(folder.id, agent_id=agent) is None
    assert list(a.agents.folders.list(agent)) == []
    # The openai SDK on B and memgpt's own REST client on A, on the same agent.
    chat = OpenAI(base_url=f"{faulty.b.url}/openai/v1", api_key=faulty.key, max_retries=0, timeout=120)
    name = a.agents.retrieve(agent).name
    assert name in [m.id for m in chat.models.list()]
    llm.add(echo)
    answer = chat.chat.completions.create(model=name, messages=[{"role": "user", "content": "via openai"}])
    assert answer.choices[0].message.content == "re: via openai"
    own = create_client(base_url=faulty.a.url, token=faulty.key)
    try:
        assert [m.text for m in own.get_agent_archival_memory(agent)] == []
        own.insert_archival_memory(agent, "The password is swordfish.")
        assert [h.text for h in own.search_archival(agent, "password")][:1] == ["The password is swordfish."]
        assert own.get_agent_memory(agent).core_memory["human"] == "Name: Chad"
        said = [m.text for m in own.get_messages(agent) if isinstance(m, UserMessage)]
        assert said[-1] == "via openai", said
    finally:
        own.close()
    assert faulty.user_messages(agent) == ["turn 0", "turn 1", "turn 2", "via openai"]


def test_an_edit_and_a_delete_through_one_process_wait_for_the_turn_on_the_other(
    faulty: Faulty, llm: ScriptedLLM
) -> None:
    """A's turn appends to the human block; B's block edit and B's delete of the agent, sent while it runs, wait
    for it (the lease is in the database): the edit lands after the append, the delete after the turn."""
    a, b = faulty.client(faulty.a, timeout=120), faulty.client(faulty.b, timeout=120)
    agent = faulty.agent(faulty.a)
    go = threading.Event()
    note = {"name": "human", "content": "Loves sailing.", "request_heartbeat": False}
    llm.add({"tool": "core_memory_append", "args": note, "content": "Note it.", "until": go})
    turn = threading.Thread(target=a.agents.messages.create, args=(agent,), kwargs={"input": "I sail"})
    turn.start()
    while not llm.requests:
        time.sleep(0.02)
    edited: dict[str, Any] = {}
    edit = threading.Thread(
        target=lambda: edited.update(block=b.agents.blocks.update("human", agent_id=agent, value="Name: Chad B."))
    )
    edit.start()
    time.sleep(1)
    assert edit.is_alive()  # waiting for A's turn
    go.set()
    turn.join(60)
    edit.join(60)
    assert edited["block"].value == "Name: Chad B."
    assert a.agents.blocks.retrieve("human", agent_id=agent).value == "Name: Chad B."
    history = a.agents.messages.list(agent, include_return_message_types=["tool_return_message"]).items
    assert [m.status for m in history] == ["success"]  # A's append came first

    go = threading.Event()
    llm.add({**echo_args("slow"), "until": go})
    turn = threading.Thread(target=a.agents.messages.create, args=(agent,), kwargs={"input": "slow"})
    turn.start()
    while len(llm.requests) < 2:
        time.sleep(0.02)
    deleted: dict[str, Any] = {}
    gone = threading.Thread(
        target=lambda: deleted.update(answer=web.delete(f"{faulty.b.url}/v1/agents/{agent}", headers=auth(faulty.key)))
    )
    gone.start()
    time.sleep(1)
    assert gone.is_alive()
    go.set()
    turn.join(60)
    gone.join(60)
    assert deleted["answer"].status_code == 200, deleted["answer"].text
    for server in (faulty.a, faulty.b):
        assert_one_line_error(web.get(f"{server.url}/v1/agents/{agent}", headers=auth(faulty.key)), 404)
    assert faulty.user_messages(agent) == []


def echo_args(text: str) -> dict[str, Any]:
    return {"tool": "send_message", "args": {"message": f"re: {text}"}, "content": "Answer."}


# -- Milvus away and back, under load --------------------------------------------------------------------
@dataclass
class Load:
    """Passage inserts and turns sent to both processes until stopped; every answer kept."""

    faulty: Faulty
    agents: dict[str, str]  # process name -> its agent
    answers: list[tuple[str, str, int, str]] = field(default_factory=list)  # (kind, text, status, body)
    times: list[float] = field(default_factory=list)  # when each answer came
    spans: list[tuple[float, float]] = field(default_factory=list)  # when each request was sent and answered
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, name: str, server: ServerProcess, kind: str) -> None:
        """Plain HTTP (no retry) for ``passage`` and ``turn``; letta-client with its default retries (two, on a 503
        or a lost connection) for ``letta-passage`` and ``letta-turn``. The turns to agent ``name`` come through both
        processes: plain ones through its own, letta-client's through the other."""
        agent = self.agents[name]
        if kind == "letta-turn":
            server = self.faulty.b if server is self.faulty.a else self.faulty.a
        letta = Letta(base_url=server.url, api_key=self.faulty.key, timeout=120)
        n = 0
        with httpx.Client(timeout=120, headers=auth(self.faulty.key)) as http:
            while not self.stop.is_set():
                text = f"{kind}-{name}-{n}"
                n += 1
                sent = time.monotonic()
                try:
                    if kind == "passage":
                        answer = http.post(f"{server.url}/v1/agents/{agent}/archival-memory", json={"text": text})
                        status, body = answer.status_code, answer.text
                    elif kind == "turn":
                        answer = http.post(f"{server.url}/v1/agents/{agent}/messages", json={"input": text})
                        status, body = answer.status_code, answer.text
                    elif kind == "letta-passage":
                        letta.agents.passages.create(agent, text=text)
                        status, body = 200, ""
                    else:
                        letta.agents.messages.create(agent, input=text)
                        status, body = 200, ""
                except APIStatusError as exc:
                    status, body = exc.status_code, exc.response.text
                except (httpx.TransportError, APIConnectionError) as exc:
                    status, body = -1, repr(exc)
                self.answers.append((kind, text, status, body))
                self.times.append(time.monotonic())
                self.spans.append((sent, time.monotonic()))
                time.sleep(0.05)

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self.run, args=(name, server, kind))
            for name, server in (("A", self.faulty.a), ("B", self.faulty.b))
            for kind in ("passage", "turn", "letta-passage", "letta-turn")
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)


def _check_load(faulty: Faulty, load: Load) -> dict[str, Counter[int]]:
    """Every refusal a one-line JSON error; every success stored once, nothing stored twice."""
    counts: dict[str, Counter[int]] = {kind: Counter() for kind in ("passage", "turn", "letta-passage", "letta-turn")}
    for kind, _text, status, body in load.answers:
        counts[kind][status] += 1
        if status != 200:
            assert status in (503, 409), (kind, status, body)
            detail = json.loads(body)["detail"]
            assert "Traceback" not in str(detail) and "\n" not in str(detail), body
    ok = {text for kind, text, status, _ in load.answers if status == 200}
    for name, agent in load.agents.items():
        listed = web.get(
            f"{faulty.a.url}/v1/agents/{agent}/archival-memory", params={"limit": 10000}, headers=auth(faulty.key)
        ).json()
        stored = Counter(p["text"] for p in listed)
        assert all(n == 1 for n in stored.values()), [t for t, n in stored.items() if n > 1]
        sent_ok = {t for t in ok if "passage-" in t and f"-{name}-" in t}
        assert sent_ok <= set(stored), sorted(sent_ok - set(stored))
        users = Counter(faulty.user_messages(agent))
        assert all(n == 1 for n in users.values()), [t for t, n in users.items() if n > 1]
        turns_ok = {t for t in ok if "turn-" in t and f"-{name}-" in t}
        assert turns_ok <= set(users), sorted(turns_ok - set(users))
        # Turns never interleave: each stored user message is followed by its step (the reply and its return), or
        # by nothing when the outage cut its turn (the user's message is kept; that send was not answered 200).
        history = [role for role, _ in faulty.history(agent)]
        steps = "".join({"user": "u", "assistant": "a", "tool": "t"}.get(role, "?") for role in history)
        assert set(steps.split("u")[1:]) <= {"at", ""}, steps
        assert steps.count("uu") + steps.endswith("u") <= len(users) - len(turns_ok), steps
        refused = {t for _, t, status, _ in load.answers if status != 200}
        print(name, "refused but stored:", sorted(refused & (set(stored) | set(users))))
    details = Counter(json.loads(body)["detail"] for _, _, status, body in load.answers if status != 200)
    print("refusals:", details)
    return counts


def test_milvus_stopped_and_restarted_under_load_is_503_then_nothing_lost_or_twice(
    faulty: Faulty, llm: ScriptedLLM
) -> None:
    agents = {"A": faulty.agent(faulty.a), "B": faulty.agent(faulty.b)}
    for _ in range(200):
        llm.add(echo)
    with Load(faulty, agents) as load:
        time.sleep(2)
        cut = time.monotonic()
        faulty.relay.cut()
        time.sleep(4)
        down = len(load.answers)
        faulty.relay.reopen()
        back = time.monotonic()
        time.sleep(6)
    counts = _check_load(faulty, load)
    late = [t - back for t, a in zip(load.times, load.answers, strict=True) if a[2] != 200 and t > back]
    print(
        f"Milvus away: {counts} ({down} answers before it came back); refusals after it was back: {len(late)},"
        f" the last {max(late, default=0):.2f} s after"
    )
    took = [
        got - sent for (_, _, status, _), (sent, got) in zip(load.answers, load.spans, strict=True) if status != 200
    ]
    print(
        f"refusals took {min(took, default=0):.2f}-{max(took, default=0):.2f} s (cut at {cut - load.spans[0][0]:.1f} s)"
    )
    assert counts["passage"][503] > 0  # the outage was seen
    for server in (faulty.a, faulty.b):  # and both recovered
        assert (
            web.post(
                f"{server.url}/v1/agents/{agents['A']}/archival-memory",
                json={"text": "after"},
                headers=auth(faulty.key),
            ).status_code
            == 200
        )


def test_postgres_restarted_under_load_is_503_then_nothing_lost_or_twice(faulty: Faulty, llm: ScriptedLLM) -> None:
    agents = {"A": faulty.agent(faulty.a), "B": faulty.agent(faulty.b)}
    for _ in range(200):
        llm.add(echo)
    with Load(faulty, agents) as load:
        time.sleep(2)
        with faulty.postgres.down():
            time.sleep(3)
        back = time.monotonic()
        time.sleep(6)
    counts = _check_load(faulty, load)
    late = [t - back for t, a in zip(load.times, load.answers, strict=True) if a[2] != 200 and t > back]
    print(f"refusals after PostgreSQL was back: {late}")
    print(f"PostgreSQL restarted: {counts}")
    for server in (faulty.a, faulty.b):
        llm.add(echo)
        answer = faulty.client(server, timeout=120).agents.messages.create(agents["B"], input="after")
        assert answer.messages[-1].content == "re: after"


def _turn(faulty: Faulty, server: ServerProcess, agent: str, text: str) -> httpx.Response:
    return web.post(f"{server.url}/v1/agents/{agent}/messages", json={"input": text}, headers=auth(faulty.key))


def _returns(answer: httpx.Response) -> list[str]:
    return [str(m.get("tool_return")) for m in answer.json()["messages"] if m["message_type"] == "tool_return_message"]


def test_turns_while_milvus_is_away_answer_and_are_found_once_it_is_back(faulty: Faulty, llm: ScriptedLLM) -> None:
    """A turn that uses no archival tool needs no Milvus: to an agent its process keeps open, and to one it opens
    now (the archival count its prompt shows is kept in SQL: after a passage write Milvus failed, the count kept
    last); conversation_search says what SQL's word search finds.
    Once Milvus is back, what was said meanwhile is indexed and ranked by conversation_search."""
    kept, fresh = faulty.agent(faulty.a), faulty.agent(faulty.a)
    llm.add(echo)
    assert _turn(faulty, faulty.a, kept, "hello before").status_code == 200  # process a keeps it open
    word = f"zebra{uuid.uuid4().hex[:8]}"
    look = {"tool": "conversation_search", "args": {"query": word, "request_heartbeat": True}, "content": "Look."}
    faulty.relay.cut()
    try:
        llm.add(echo, echo, look, echo)
        # A passage write begun and never ended (it failed in Milvus, or its process died) leaves the count kept in
        # SQL unsure: ``fresh``, opened on b now, shows the count kept last.
        with _test_storage(faulty.config, faulty.home) as storage:
            storage.agents.archival_writing(fresh)
            assert storage.agents.archival_count(fresh)[0] is None
        for server, agent in ((faulty.a, kept), (faulty.b, fresh)):  # b never opened ``fresh``
            answer = _turn(faulty, server, agent, f"the {word} while away")
            assert answer.status_code == 200, answer.text
        answer = _turn(faulty, faulty.b, fresh, "what did I say?")
        assert answer.status_code == 200, answer.text
        assert [word in r and "Word search only" in r for r in _returns(answer)] == [True], _returns(answer)
    finally:
        faulty.relay.reopen()
    for agent in (kept, fresh):
        assert f"the {word} while away" in faulty.user_messages(agent)
    # Back as process a sees it (its gRPC channel reconnects with a backoff of its own: a call may fail meanwhile).
    deadline = time.monotonic() + 60
    url = f"{faulty.a.url}/v1/agents/{fresh}/archival-memory"
    while (listed := web.get(url, headers=auth(faulty.key))).status_code != 200:
        assert listed.status_code == 503 and time.monotonic() < deadline, listed.text
        time.sleep(0.2)
    llm.add(look, echo)
    answer = _turn(faulty, faulty.a, fresh, "and now?")
    assert answer.status_code == 200, answer.text
    found = _returns(answer)
    assert len(found) == 1 and word in found[0] and "Word search only" not in found[0], found
    with _test_storage(faulty.config, faulty.home) as storage:
        assert storage.messages.unindexed(fresh, 1000) == []


def test_an_upload_while_milvus_is_away_is_loaded_once_it_is_back(faulty: Faulty) -> None:
    """The uploaded file is kept by the server: a load that Milvus's absence stopped is tried again (as one that
    PostgreSQL's did), not left failed for the user to upload again."""
    b = faulty.client(faulty.b, timeout=120)
    folder = b.folders.create(name="blip")
    faulty.relay.cut()
    try:
        upload = b.folders.files.upload(folder.id, file=(DATA / "long_test.txt").open("rb"))
        deadline = time.monotonic() + 120
        while not (seen := b.folders.files.retrieve(upload.id, folder_id=folder.id)).error_message:
            assert time.monotonic() < deadline, seen
            time.sleep(0.1)
        # Its clients are told the storage's public line (hosts and ports stay in the server's log); the loader's
        # own line comes first, then the job's, which adds "; trying again" as it queues the load again.
        assert seen.error_message in (StorageError.public, f"{StorageError.public}; trying again"), seen
    finally:
        faulty.relay.reopen()
    while (done := b.folders.files.retrieve(upload.id, folder_id=folder.id)).processing_status not in (
        "completed",
        "error",
    ):
        assert time.monotonic() < deadline, done
        time.sleep(0.2)
    assert done.processing_status == "completed", done
    assert b.folders.retrieve(folder.id).passages == done.total_chunks == done.chunks_embedded > 0


# -- bad input on the scale backend ------------------------------------------------------------------------
def test_bad_input_and_another_users_ids_on_the_scale_backend(faulty: Faulty, llm: ScriptedLLM) -> None:
    agent = faulty.agent(faulty.a)
    with _test_storage(faulty.config, faulty.home) as storage:
        other = storage.users.ensure("other-" + agent[-6:], "other")
        other_key = storage.users.create_key(other.id)[1]
    mine, theirs = auth(faulty.key), auth(other_key)
    for server in (faulty.a, faulty.b):
        url = f"{server.url}/v1/agents/{agent}"
        bad = web.post(f"{url}/messages", content=b"{not json", headers={**mine, "content-type": "application/json"})
        assert_one_line_error(bad, 400, 422)
        wrong = web.post(f"{url}/messages", json={"input": 5}, headers=mine)
        assert_one_line_error(wrong, 400, 422)
        if server is faulty.b:  # over the 50 MB limit (refused by its length: once is enough)
            huge = web.post(f"{url}/archival-memory", content=b"x" * (51 << 20), headers=mine)
            assert_one_line_error(huge, 413)
        for path in ("", "/messages", "/archival-memory", "/core-memory/blocks/human", "/folders"):
            assert_one_line_error(web.get(f"{url}{path}", headers=theirs), 404)
            assert_one_line_error(web.get(f"{server.url}/v1/agents/agent-unknown{path}", headers=mine), 404)
        assert_one_line_error(web.post(f"{url}/messages", json={"input": "mine?"}, headers=theirs), 404)
        assert_one_line_error(web.delete(url, headers=theirs), 404)
        # Another user's folder: not seen, not filled, not attached to one's own agent.
        folder = web.post(f"{server.url}/v1/folders/", json={"name": f"theirs-{server.port}"}, headers=theirs).json()
        folder_url = f"{server.url}/v1/folders/{folder['id']}"
        assert_one_line_error(web.get(folder_url, headers=mine), 404)
        upload = web.post(f"{folder_url}/upload", files={"file": ("a.txt", b"hello")}, headers=mine)
        assert_one_line_error(upload, 404)
        assert_one_line_error(web.patch(f"{url}/folders/attach/{folder['id']}", headers=mine), 404)
        assert_one_line_error(web.delete(folder_url, headers=mine), 404)
        assert web.get(folder_url, headers=theirs).status_code == 200
    assert faulty.user_messages(agent) == [] and llm.requests == []


# -- kill -9 mid-stream and mid-upload, then restart -------------------------------------------------------
def test_kill_9_mid_stream_and_mid_upload_then_restart_loses_and_doubles_nothing(
    faulty: Faulty, llm: ScriptedLLM
) -> None:
    """Last in the module: it kills A and starts it again."""
    a = faulty.client(faulty.a, timeout=120)
    agent = faulty.agent(faulty.a)
    folder = a.folders.create(name="paper")
    upload = a.folders.files.upload(folder.id, file=(DATA / "long_test.txt").open("rb"))
    deadline = time.monotonic() + 300
    while (seen := a.folders.files.retrieve(upload.id, folder_id=folder.id)).processing_status != "embedding":
        assert seen.processing_status in ("pending", "parsing") and time.monotonic() < deadline, seen
        time.sleep(0.05)
    llm.add(
        {"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}, "content": "Look."},
        {"hang": True},
    )
    with web.stream(
        "POST", f"{faulty.a.url}/v1/agents/{agent}/messages/stream", json={"input": "keep me"}, headers=auth(faulty.key)
    ) as stream:
        first = next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert json.loads(first.removeprefix("data: "))["message_type"] == "reasoning_message"
        while len(llm.requests) < 2:
            time.sleep(0.02)
        os.kill(faulty.a.process.pid, signal.SIGKILL)
        faulty.a.process.wait(30)
    # B serves the agent at once, A is started again and serves it too; the load is finished, once.
    llm.add(echo)
    b = faulty.client(faulty.b, timeout=120)
    assert b.agents.messages.create(agent, input="on B").messages[-1].content == "re: on B"
    faulty.a.start()
    faulty.a.wait_ready()
    llm.add(echo)
    assert a.agents.messages.create(agent, input="on A").messages[-1].content == "re: on A"
    assert faulty.user_messages(agent) == ["keep me", "on B", "on A"]
    while (done := b.folders.files.retrieve(upload.id, folder_id=folder.id)).processing_status not in (
        "completed",
        "error",
    ):
        assert time.monotonic() < deadline, done
        time.sleep(0.2)
    assert done.processing_status == "completed" and done.chunks_embedded == done.total_chunks > 50, done
    assert b.folders.retrieve(folder.id).passages == done.total_chunks
