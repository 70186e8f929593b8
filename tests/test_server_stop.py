"""A `memgpt server` told to stop (SIGTERM, as Ctrl-C, a service manager or uvicorn's supervisor send) while a turn
waits on a slow LLM: it exits within ``server.shutdown_seconds``, the user's message stays stored, nothing of the cut
step is, the agent's lease is given back, and letta-client's own retry of the send, to the restarted server, gets the
message answered once. Real server processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from letta_client import Letta
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from memgpt.config import load_config, save_config
from memgpt.server import turns as server_turns
from memgpt.server.state import OWNER_NAME
from memgpt.storage import Storage
from memgpt.storage import turns as storage_turns
from memgpt.types import Role
from tests import web
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, ServerProcess, auth, use_scripted_llm

pytestmark = pytest.mark.usefixtures("metadata_url")

HANDLE = "openai-compatible/scripted"
SHUTDOWN_SECONDS = 10.0  # the default
LLM_TIMEOUT = 120.0  # the default: the stop used to wait for it


def keyed_server(home: Path, llm: ScriptedLLM, workers: int = 1) -> tuple[ServerProcess, str]:
    config = use_scripted_llm(home, llm.url, timeout=LLM_TIMEOUT)
    config.server.shutdown_seconds = SHUTDOWN_SECONDS
    save_config(config, home)
    with Storage(config, home) as storage:
        owner = storage.users.ensure(config.user_id, OWNER_NAME)
        key = storage.users.create_key(owner.id)[1]
    server = ServerProcess(home, workers)
    server.wait_ready()
    return server, key


def stopped_in_bound(server: ServerProcess, meanwhile: Callable[[], None] = lambda: None) -> float:
    """SIGTERM to the server (its supervisor, with workers), as a service manager sends it, then ``meanwhile()``: the
    seconds it took to exit, which must be within ``shutdown_seconds`` and its own teardown, with no traceback in its
    log."""
    told = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    meanwhile()
    try:
        server.process.wait(timeout=LLM_TIMEOUT + 30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        pytest.fail(f"memgpt server did not exit:\n{server.log.read_text()[-3000:]}")
    took = time.monotonic() - told
    print(f"exited {took:.1f} s after SIGTERM (shutdown_seconds {SHUTDOWN_SECONDS})")
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert took < SHUTDOWN_SECONDS + 3, log[-3000:]  # the process's own teardown after uvicorn's wait: ~1 s
    return took


def lease_pids(home: Path, agent_ids: list[str]) -> dict[str, int]:
    """The pid of the process whose turn holds each agent's lease now (the lease owner is host:pid:token)."""
    with Storage(load_config(home), home) as storage, storage.metadata.connection() as c:
        rows = c.exec_driver_sql("SELECT agent_id, owner FROM agent_leases").fetchall()
    return {agent: int(owner.split(":")[1]) for agent, owner in rows if agent in agent_ids}


def kept_then_answered_after_a_restart(
    home: Path, server: ServerProcess, llm: ScriptedLLM, agent_ids: list[str], headers: dict[str, str]
) -> None:
    """After a stop that cut a turn of each of ``agent_ids``: each agent has the user's message stored alone and its
    lease free, and once ``server`` is started again the first agent's next send is answered."""
    with Storage(load_config(home), home) as storage:
        for agent_id in agent_ids:
            assert [(m.role, m.content) for m in storage.messages.last(agent_id, 100)] == [(Role.USER, "keep me")]
            assert storage.turns.holder(agent_id) is None

    llm.script.clear()
    llm.reply("Answered.")
    server.start()
    try:
        server.wait_ready()
        url = f"{server.url}/v1/agents/{agent_ids[0]}/messages"
        again = web.post(url, json={"input": "hello"}, headers=headers)
        assert again.status_code == 200, again.text
        said = [m["content"] for m in again.json()["messages"] if m["message_type"] == "assistant_message"]
        assert said == ["Answered."]
    finally:
        server.stop()


def test_a_stop_with_workers_cuts_every_workers_turns_and_exits_within_the_bound(home: Path, llm: ScriptedLLM) -> None:
    """`memgpt server --workers 2` told to stop while turns hang on the LLM in both workers: the supervisor exits
    within ``shutdown_seconds``, every send gets 503 (``server_stopping``), each message stays stored with nothing
    else, every lease is given back, and the agents answer once the server is back."""
    server, key = keyed_server(home, llm, workers=2)
    close = {**auth(key), "Connection": "close"}  # a connection per request: the kernel hands each to either worker
    answers: list[httpx.Response] = []
    agents: list[str] = []
    try:
        letta = Letta(base_url=server.url, api_key=key, max_retries=0, default_headers={"Connection": "close"})
        # Sends until turns hang in both workers (which worker takes a connection is the kernel's choice).
        while len(set(lease_pids(home, agents).values())) < 2:
            assert len(agents) < 12, f"every send went to one worker: {lease_pids(home, agents)}"
            agent_id = letta.agents.create(name=f"a{len(agents)}", model=HANDLE).id
            llm.add({"delay": 100.0, "tool": "send_message", "args": {"message": "Too late."}})
            url = f"{server.url}/v1/agents/{agent_id}/messages"
            threading.Thread(
                target=lambda url=url: answers.append(web.post(url, json={"input": "keep me"}, headers=close)),
                daemon=True,
            ).start()
            agents.append(agent_id)
            deadline = time.monotonic() + 60
            while agent_id not in lease_pids(home, agents) or len(llm.requests) < len(agents):
                assert time.monotonic() < deadline, "the turn never asked the LLM"
                time.sleep(0.05)
        stopped_in_bound(server)
    finally:
        server.stop()
    deadline = time.monotonic() + 30
    while len(answers) < len(agents) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [a.status_code for a in answers] == [503] * len(agents), [a.text for a in answers]
    assert all("server_stopping" in a.text or "your message is stored" in a.text for a in answers), answers[0].text
    kept_then_answered_after_a_restart(home, server, llm, agents, close)


def lite_pid(pid: int) -> int:
    """The Milvus Lite server process that `memgpt server` (pid) runs for its home."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if "milvus" in Path(f"/proc/{child}/cmdline").read_text(errors="replace"):
            return int(child)
    raise AssertionError(f"memgpt server {pid} runs no Milvus Lite process")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_request_with_no_stop_check_of_its_own_is_cut_within_the_bound_with_a_json_503(
    home: Path, llm: ScriptedLLM, method: str
) -> None:
    """A passages search waiting on a stalled Milvus (its Lite process stopped with SIGSTOP) as the server is told to
    stop: uvicorn cuts it after ``shutdown_seconds``; the client gets a 503 in JSON saying the server stopped (send
    again), the process exits within the bound, and the log holds no traceback. It was: a plain-text 500 "Internal
    Server Error" and the cancel's traceback in the log. A write (POST: an insert waiting on the stalled Milvus) may
    still finish in its thread, so its 503 says check first and carries ``x-should-retry: false``: letta-client's
    own resend could otherwise make a second one."""
    server, key = keyed_server(home, llm)
    answers: list[httpx.Response] = []
    lite = 0
    try:
        letta = Letta(base_url=server.url, api_key=key, max_retries=0)
        agent_id = letta.agents.create(name="sam", model=HANDLE).id
        passages = f"{server.url}/v1/agents/{agent_id}/archival-memory"
        assert web.post(passages, json={"text": "The sky is blue."}, headers=auth(key)).status_code == 200
        lite = lite_pid(server.process.pid)
        os.kill(lite, signal.SIGSTOP)

        def request() -> None:
            if method == "GET":
                answers.append(web.get(f"{passages}/search", params={"query": "sky"}, headers=auth(key)))
            else:
                answers.append(web.post(passages, json={"text": "The sky is green."}, headers=auth(key)))

        search = threading.Thread(target=request, daemon=True)
        search.start()
        time.sleep(1.0)  # (the search waits on Milvus whenever the signal lands: the server cuts it at the bound)

        def answered() -> None:  # then Milvus may go on: the server's teardown waits 2 s for a Lite process to end
            search.join(timeout=SHUTDOWN_SECONDS + 30)
            os.kill(lite, signal.SIGCONT)

        took = stopped_in_bound(server, answered)
    finally:
        with contextlib.suppress(ProcessLookupError):
            if lite:
                os.kill(lite, signal.SIGCONT)
        server.stop()
    assert took >= SHUTDOWN_SECONDS - 1, took  # cut by the bound, not answered before it
    (answer,) = answers
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/json" and answer.headers.get("retry-after") == "2"
    assert "server stopped before this request finished" in answer.json()["detail"], answer.text
    if method == "GET":
        assert "x-should-retry" not in answer.headers
    else:
        assert answer.headers.get("x-should-retry") == "false" and "check before" in answer.json()["detail"]


def test_a_cut_streaming_send_ends_with_an_error_event_and_the_agent_answers_after_a_restart(
    home: Path, llm: ScriptedLLM
) -> None:
    """A streamed send whose turn the stop cuts: the stream ends with its stop reason, an ``error`` event saying
    ``server_stopping`` (the message stored, send again) and ``[DONE]``, not a dropped connection; the message stays
    stored alone, the lease is given back, and the agent's next turn after a restart answers it."""
    server, key = keyed_server(home, llm)
    events: list[str] = []
    try:
        agent_id = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
        llm.add({"delay": 100.0, "tool": "send_message", "args": {"message": "Too late."}})
        url = f"{server.url}/v1/agents/{agent_id}/messages/stream"

        def follow() -> None:
            with httpx.stream("POST", url, json={"input": "keep me"}, headers=auth(key), timeout=web.TIMEOUT) as r:
                events.append(str(r.status_code))
                events.extend(r.iter_lines())

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not llm.requests:
            assert time.monotonic() < deadline, "the turn never asked the LLM"
            time.sleep(0.05)
        stopped_in_bound(server)
        reader.join(timeout=30)
    finally:
        server.stop()
    lines = [line for line in events if line]
    assert lines[0] == "200", lines
    datas = [json.loads(line.removeprefix("data: ")) for line in lines[1:-1] if line.startswith("data: {")]
    assert {"message_type": "stop_reason", "stop_reason": "error"} in datas, lines
    assert lines[-3:-1] == ["event: error", lines[-2]] and lines[-1] == "data: [DONE]", lines
    error = json.loads(lines[-2].removeprefix("data: "))
    assert error["error_type"] == "server_stopping" and "your message is stored" in error["message"], error
    kept_then_answered_after_a_restart(home, server, llm, [agent_id], auth(key))


def test_a_stop_mid_turn_ends_in_bounded_time_and_letta_clients_retry_gets_the_message_answered_once(
    home: Path, llm: ScriptedLLM
) -> None:
    server, key = keyed_server(home, llm)
    statuses: list[int] = []
    hooks: dict[str, Any] = {"response": [lambda r: statuses.append(r.status_code)]}
    answers: list[Any] = []
    try:
        agent_id = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
        llm.add({"delay": 100.0, "tool": "send_message", "args": {"message": "Too late."}})
        # letta-client as an application uses it, retrying by itself (tries enough to span a restart on a busy machine).
        letta = Letta(base_url=server.url, api_key=key, max_retries=30, http_client=httpx.Client(event_hooks=hooks))

        def send() -> None:
            try:
                answers.append(letta.agents.messages.create(agent_id, input="keep me"))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                answers.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline = time.monotonic() + 60
        while not llm.requests:
            assert time.monotonic() < deadline, "the turn never asked the LLM"
            time.sleep(0.05)
        told = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=LLM_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"memgpt server did not exit:\n{server.log.read_text()[-3000:]}")
        took = time.monotonic() - told
    finally:
        if server.process.poll() is None:
            server.process.kill()
    print(f"exited {took:.1f} s after SIGTERM (shutdown_seconds {SHUTDOWN_SECONDS})")
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert took < SHUTDOWN_SECONDS + 3, log[-3000:]  # the process's own teardown after uvicorn's wait: ~1 s
    assert statuses == [503], statuses  # told to send again, not cut off
    config = load_config(home)
    with Storage(config, home) as storage:
        # The message stays, nothing of the cut step is stored, and the agent is free for any process at once.
        assert [(m.role, m.content) for m in storage.messages.last(agent_id, 100)] == [(Role.USER, "keep me")]
        assert storage.turns.holder(agent_id) is None

    llm.script.clear()
    llm.reply("Answered once.")
    server.start()  # the same port: letta-client's next try reaches it
    try:
        server.wait_ready()
        sender.join(timeout=120)
        assert len(answers) == 1 and not isinstance(answers[0], Exception), answers
        assert [m.content for m in answers[0].messages if m.message_type == "assistant_message"] == ["Answered once."]
        assert statuses[0] == 503 and statuses[-1] == 200, statuses
    finally:
        server.stop()
    with Storage(config, home) as storage:
        stored = [(m.role, m.content) for m in storage.messages.last(agent_id, 100) if m.role is not Role.TOOL]
        typed = [content for role, content in stored if role is Role.USER and "keep me" in content]
        assert typed == ["keep me"]
        assert sum(1 for role, _ in stored if role is Role.ASSISTANT) == 1, stored
    said = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    assert sum("keep me" in str(c) for c in said) == 1, said


@pytest.mark.parametrize("route", ["letta", "openai"])
def test_a_cut_turns_send_is_a_503_to_send_again_and_a_send_after_the_stop_stores_nothing(
    home: Path, llm: ScriptedLLM, route: str
) -> None:
    """The answers of the stop above, on both endpoints, in-process (``TurnRunner.stop`` as the signal calls it)."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        key = server.key()
        agent_id = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
        llm.add({"delay": 30.0, "tool": "send_message", "args": {"message": "Too late."}})
        if route == "letta":
            url, body = f"{server.url}/v1/agents/{agent_id}/messages", {"input": "keep me"}
        else:
            url = f"{server.url}/openai/v1/chat/completions"
            body = {"model": agent_id, "messages": [{"role": "user", "content": "keep me"}]}
        answers: list[httpx.Response] = []
        sent = auth(key)
        sender = threading.Thread(target=lambda: answers.append(web.post(url, json=body, headers=sent, timeout=60)))
        sender.start()
        deadline = time.monotonic() + 30
        while not llm.requests:
            assert time.monotonic() < deadline, "the turn never asked the LLM"
            time.sleep(0.05)
        server.state.turns().stop(0.5)
        sender.join(timeout=30)
        (answer,) = answers
        assert answer.status_code == 503, answer.text
        assert answer.headers.get("retry-after") == "2" and "x-should-retry" not in answer.headers
        assert "your message is stored" in answer.text and "again" in answer.text
        assert server.state.storage.turns.holder(agent_id) is None
        later = web.post(url, json=body, headers=auth(key), timeout=60)
        assert later.status_code == 503 and "nothing was stored" in later.text, later.text
        stored = [(m.role, m.content) for m in server.state.storage.messages.last(agent_id, 100)]
        assert stored == [(Role.USER, "keep me")]
    finally:
        server.stop()


def test_a_stop_landing_after_the_last_steps_commit_leaves_the_answered_turn_alone(
    home: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The turn's last step's commit recorded its run's end and gave the lease back (``_Ending``); the stop lands
    before the turn's thread ends it: the send gets its answer, not a 503 for a message that was answered."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        key = server.key()
        agent_id = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
        llm.reply("Answered.")
        add_step = server_turns.Turn.add_step

        def stepped(turn: Any, messages: Any, items: Any = None, **last: Any) -> None:
            add_step(turn, messages, items, **last)
            if last.get("recorded"):  # the last step, committed with the run's end and the lease
                server.state.turns().stop(0)  # the signal's stop, landing now (on a thread of its own in a server)

        monkeypatch.setattr(server_turns.Turn, "add_step", stepped)
        answer = httpx.post(
            f"{server.url}/v1/agents/{agent_id}/messages", json={"input": "hi"}, headers=auth(key), timeout=60
        )
        assert answer.status_code == 200, answer.text
        answered_and_ended(server, agent_id, answer, "Answered.", "end_turn")
    finally:
        server.stop()


def answered_and_ended(server: LiveServer, agent_id: str, answer: httpx.Response, said: str, stop: str) -> None:
    """The send was answered ``said``, its run recorded FINISHED with ``stop`` as the only run, the lease free."""
    assert [m["content"] for m in answer.json()["messages"] if m["message_type"] == "assistant_message"] == [said]
    with server.state.storage.metadata.connection() as c:
        runs = c.exec_driver_sql("SELECT status, stop_reason FROM agent_runs").fetchall()
    assert [tuple(r) for r in runs] == [(storage_turns.FINISHED, stop)]
    assert server.state.storage.turns.holder(agent_id) is None


def cut_during(runner: Any, hold: Any) -> tuple[Any, Callable[[], list[Any]]]:
    """A wrapper of ``hold`` (a callable of the turn's thread) that, on its first call, stops the server (``stop(0)``,
    on a thread of its own as the signal's) and holds the turn's thread until the stop has looked at the turn, then
    goes on: the stop lands at that instant whatever the machine's speed. Returns it and what the stop saw of the
    turn (its verdicts, ``_cut_turn``'s), read once it looked: the send may be answered before that is recorded (a
    turn the stop answers gets its answer from ``_cut_turn`` itself, on the stop's thread, which records the verdict
    only after; a loaded machine let the test read nothing there)."""
    cut_turn = runner._cut_turn
    looked, verdicts = threading.Event(), []

    def watched(turn: Any, **how: Any) -> Any:
        verdict = cut_turn(turn, **how)
        verdicts.append(verdict)
        looked.set()
        return verdict

    runner._cut_turn = watched

    def held(*args: Any, **kwargs: Any) -> Any:
        result = hold(*args, **kwargs)
        if not runner._stopped.is_set():  # (the first call)
            threading.Thread(target=runner.stop, args=(0,), daemon=True).start()
            assert looked.wait(30), "the stop never looked at the turn"
        return result

    def seen() -> list[Any]:
        looked.wait(30)  # (set by then unless the stop never looked: ``held`` failed the turn already)
        return list(verdicts)

    return held, seen


def test_a_stop_landing_while_the_last_steps_commit_takes_effect_answers_the_stored_answer(
    home: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop lands after the last step's commit (the run's end and the lease with it) took effect in the database
    and before the turn's thread heard of it: the send gets the answer stored, not a 503. It was: the stop saw the turn
    unrecorded, cut it (503: "send again") while its answer was stored."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        key = server.key()
        agent_id = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
        llm.reply("Answered.")
        agents = server.state.storage.agents
        commit_step = agents.commit_step
        held, seen = cut_during(server.state.turns(), commit_step)
        last = lambda *a, **k: (held if k.get("finished") else commit_step)(*a, **k)  # noqa: E731 - (its run's end)
        monkeypatch.setattr(agents, "commit_step", last)
        answer = httpx.post(
            f"{server.url}/v1/agents/{agent_id}/messages", json={"input": "hi"}, headers=auth(key), timeout=60
        )
        assert seen()[:1] == ["committing"], "the stop did not land in the commit"
        assert answer.status_code == 200, answer.text
        answered_and_ended(server, agent_id, answer, "Answered.", "end_turn")
    finally:
        server.stop()


def test_a_stop_landing_as_a_turn_out_of_steps_records_its_end_answers_the_stored_answer(
    home: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn that ended without its last step recording the run's end (out of steps here; cancelled, or on a shared
    index, alike) records it with the lease after the turn (``_release(finished)``); the stop lands just before that:
    the send gets the answer its steps stored, and the run's end is recorded. It was: cut, 503, and the turn's thread
    recorded the answer right after."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        key = server.key()
        agent_id = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
        llm.add({"tool": "send_message", "args": {"message": "Step one.", "request_heartbeat": True}})
        runner = server.state.turns()
        release = runner._release
        held, seen = cut_during(runner, lambda: None)

        def released(agent_id: str, owner: str, finished: Any = None, forget: Any = None) -> None:
            if finished is not None:  # the run's end, recorded with the lease (the turn's thread's call; the stop's)
                held()
            release(agent_id, owner, finished, forget)

        monkeypatch.setattr(runner, "_release", released)
        answer = httpx.post(
            f"{server.url}/v1/agents/{agent_id}/messages",
            json={"input": "hi", "max_steps": 1},
            headers=auth(key),
            timeout=60,
        )
        verdicts = seen()
        assert verdicts, f"the stop did not land before the run's end was recorded: {answer.text}"
        # the stop answered the turn with the answer its steps stored (a Run), not cut it ("cut")
        assert [getattr(v, "stop_reason", v) for v in verdicts[:1]] == ["max_steps"], verdicts
        assert answer.status_code == 200, answer.text
        assert answer.json()["stop_reason"]["stop_reason"] == "max_steps"
        answered_and_ended(server, agent_id, answer, "Step one.", "max_steps")
    finally:
        server.stop()


def test_an_llm_answering_after_the_cut_stores_nothing_of_the_503s_turn(
    home: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LLM answers after the stop cut the turn (its send told 503) and before the stop gave the lease back: the
    step that would end the turn is not stored, so a 503 always means the answer is not (a retry answers the message
    once). It was: that last step committed under the lease still held, an answer stored for a send told 503."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        key = server.key()
        agent_id = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
        answering = threading.Event()
        llm.add({"until": answering, "tool": "send_message", "args": {"message": "Too late."}})
        runner = server.state.turns()
        replied, give_back = threading.Event(), runner._give_back_cut
        stepped = server_turns._replied
        monkeypatch.setattr(server_turns, "_replied", lambda *a: (stepped(*a), replied.set())[0])

        def given_back(leases: Any) -> None:  # the LLM answers now, and the turn's thread is done with it
            answering.set()
            assert replied.wait(30)
            give_back(leases)

        monkeypatch.setattr(runner, "_give_back_cut", given_back)
        answers: list[httpx.Response] = []
        url, sent = f"{server.url}/v1/agents/{agent_id}/messages", auth(key)
        sender = threading.Thread(target=lambda: answers.append(web.post(url, json={"input": "keep me"}, headers=sent)))
        sender.start()
        deadline = time.monotonic() + 30
        while not llm.requests:
            assert time.monotonic() < deadline, "the turn never asked the LLM"
            time.sleep(0.05)
        runner.stop(0)
        sender.join(timeout=30)
        assert [a.status_code for a in answers] == [503], [a.text for a in answers]
        stored = [(m.role, m.content) for m in server.state.storage.messages.last(agent_id, 100)]
        assert stored == [(Role.USER, "keep me")]
        assert server.state.storage.turns.holder(agent_id) is None
        with server.state.storage.metadata.connection() as c:
            runs = c.exec_driver_sql("SELECT status FROM agent_runs").fetchall()
        assert storage_turns.FINISHED not in [r[0] for r in runs], runs
    finally:
        server.stop()


SLOW = 2.0  # seconds a lease's release waits for the database before it fails (a connect timeout, 10 s, shortened)


def test_a_stop_answers_every_cut_turn_first_and_waits_one_failed_release_at_most(home: Path, llm: ScriptedLLM) -> None:
    """Three turns cut while the database is away (each try of a release waits, then fails): every send is answered
    (503) at once, before any release is tried, and the stop tries one release, not one per turn: the others are left
    to the background, which gives them all back once the database answers. It was: each cut turn answered after
    its own release, the last one after three timeouts."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        key = server.key()
        letta = Letta(base_url=server.url, api_key=key, max_retries=0)
        agents = [letta.agents.create(name=f"a{i}", model=HANDLE).id for i in range(3)]
        for _ in agents:
            llm.add({"delay": 30.0, "tool": "send_message", "args": {"message": "Too late."}})
        answered: list[tuple[float, int]] = []

        def send(agent_id: str) -> None:
            url = f"{server.url}/v1/agents/{agent_id}/messages"
            status = httpx.post(url, json={"input": "x"}, headers=auth(key), timeout=60).status_code
            answered.append((time.monotonic(), status))

        senders = [threading.Thread(target=send, args=(a,)) for a in agents]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 30
        while len(llm.requests) < len(agents):
            assert time.monotonic() < deadline, "the turns never asked the LLM"
            time.sleep(0.05)
        engine = server.state.storage.metadata.engine
        tries: list[float] = []

        def away(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if "DELETE FROM agent_leases" in statement:
                tries.append(time.monotonic())
                time.sleep(SLOW)
                raise OperationalError(statement, {}, Exception("timeout expired"))

        event.listen(engine, "before_cursor_execute", away)
        try:
            told = time.monotonic()
            server.state.turns().stop(0)
            stopped = time.monotonic() - told
            for sender in senders:
                sender.join(30)
            stop_tries = [t for t in tries if t - told < stopped]
        finally:
            event.remove(engine, "before_cursor_execute", away)
        assert [status for _, status in answered] == [503] * len(agents)
        assert max(at - told for at, _ in answered) < SLOW, [at - told for at, _ in answered]
        assert len(stop_tries) == 1 and stopped < 2 * SLOW, (len(stop_tries), stopped)
        deadline = time.monotonic() + 30  # given back by the background once the database answers
        while any(server.state.storage.turns.holder(a) is not None for a in agents):
            assert time.monotonic() < deadline, "a cut turn's lease was never given back"
            time.sleep(0.05)
    finally:
        server.stop()


def test_a_send_waiting_for_the_agent_when_the_server_stops_is_refused_with_nothing_stored(
    home: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second send waits for the agent's lease while the first turn runs; the stop cuts that turn and gives its lease
    back: the waiting send is refused (503, nothing stored), not given the lease to store its message and be cut."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        key = server.key()
        agent_id = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(name="sam", model=HANDLE).id
        llm.add({"delay": 30.0, "tool": "send_message", "args": {"message": "Too late."}})
        runner = server.state.turns()
        waiting = threading.Event()
        await_release = runner._await_release

        def awaiting(seconds: float) -> None:
            waiting.set()
            await_release(seconds)

        monkeypatch.setattr(runner, "_await_release", awaiting)
        url = f"{server.url}/v1/agents/{agent_id}/messages"
        answers: dict[str, httpx.Response] = {}

        def send(text: str) -> None:
            answers[text] = httpx.post(url, json={"input": text}, headers=auth(key), timeout=60)

        first = threading.Thread(target=send, args=("keep me",))
        first.start()
        deadline = time.monotonic() + 30
        while not llm.requests:
            assert time.monotonic() < deadline, "the turn never asked the LLM"
            time.sleep(0.05)
        second = threading.Thread(target=send, args=("and me?",))
        second.start()
        assert waiting.wait(30), "the second send never waited for the agent"
        runner.stop(0)
        first.join(30)
        second.join(30)
        assert answers["keep me"].status_code == 503 and "your message is stored" in answers["keep me"].text
        assert answers["and me?"].status_code == 503, answers["and me?"].text
        assert "nothing was stored" in answers["and me?"].text, answers["and me?"].text
        stored = [(m.role, m.content) for m in server.state.storage.messages.last(agent_id, 100)]
        assert stored == [(Role.USER, "keep me")]
        assert server.state.storage.turns.holder(agent_id) is None
    finally:
        server.stop()
