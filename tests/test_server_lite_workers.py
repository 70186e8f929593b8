"""`memgpt server --workers 2` on Milvus Lite and SQLite: one Lite server (run by the supervising process) shared
by two uvicorn worker processes, for real.

A client whose connections close after each request (so they spread over the workers) sees one agent; sends
to one agent that meet are serialized by the lease in SQLite; every message is in the recall index exactly once
whichever worker ran its turn; a worker killed mid-turn leaves the agent to the other at once; another memgpt
command is told a server runs; a supervisor killed with SIGKILL leaves nothing that stops the next start.
The server is started once for the module; every test makes agents of its own.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from letta_client import APIError, Letta

from memgpt.config import Config, save_config
from memgpt.server.state import OWNER_NAME
from memgpt.storage import Storage
from memgpt.storage.filters import all_of, eq
from memgpt.storage.milvus.lite import LiteServer
from memgpt.types import Role
from tests.conftest import run_cli
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import ServerProcess, environment, http_stack, use_scripted_llm
from tests.test_server_scale import _words, assert_meeting_sends_serialized, echo

SCRIPTED_HANDLE = "openai-compatible/scripted"
CLOSE = {"Connection": "close"}  # a new connection per request: the kernel hands each to either worker


@dataclass
class LiteWorkers:
    home: Path
    config: Config
    llm: ScriptedLLM
    key: str
    server: ServerProcess

    def client(self, **options: Any) -> Letta:
        return Letta(base_url=self.server.url, api_key=self.key, default_headers=CLOSE, **{"max_retries": 0, **options})

    def agent(self) -> str:
        blocks = [{"label": "human", "value": "Name: Chad"}, {"label": "persona", "value": "I am Sam."}]
        name = f"sam-{time.monotonic_ns()}"
        return self.client().agents.create(name=name, memory_blocks=blocks, model=SCRIPTED_HANDLE).id  # type: ignore[arg-type]

    def lease_pid(self, agent_id: str) -> int | None:
        """The pid of the process whose turn holds the agent's lease now (read from SQLite directly)."""
        with sqlite3.connect(self.home / "metadata.sqlite", timeout=30) as db:
            row = db.execute("SELECT owner FROM agent_leases WHERE agent_id = ?", (agent_id,)).fetchone()
        return int(row[0].split(":")[1]) if row else None

    def user_messages(self, agent_id: str) -> list[str]:
        with Storage(self.config, self.home) as storage:  # SQL only: the Lite file stays the server's
            return [m.content for m in storage.messages.last(agent_id, 1000) if m.role is Role.USER and not m.name]

    def history(self, agent_id: str) -> list[tuple[str, str]]:
        with Storage(self.config, self.home) as storage:
            return [(m.role.value, m.content) for m in storage.messages.last(agent_id, 1000)]


def _serialized(config: Config) -> None:
    config.server.busy_wait_seconds = 60  # sends that meet wait for each other however loaded the machine
    config.server.lease_seconds = 600  # only a dead owner frees a lease, never its expiry


def _start(home: Path, llm: ScriptedLLM) -> tuple[Config, str]:
    config = use_scripted_llm(home, llm.url)
    _serialized(config)
    save_config(config, home)
    with Storage(config, home) as storage:
        owner = storage.users.ensure(config.user_id, OWNER_NAME)
        key = storage.users.create_key(owner.id)[1]
    return config, key


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteWorkers]:
    home = tmp_path_factory.mktemp("liteworkers") / "home"
    llm = ScriptedLLM()
    tiktoken = str(tmp_path_factory.mktemp("tiktoken"))
    try:
        with environment(MEMGPT_HOME=str(home), TIKTOKEN_CACHE_DIR=tiktoken):
            config, key = _start(home, llm)
            server = ServerProcess(home, 2)
            try:
                server.wait_ready()
                yield LiteWorkers(home, config, llm, key, server)
            finally:
                server.stop()
    finally:
        llm.close()


@pytest.fixture
def llm(workers: LiteWorkers) -> Iterator[ScriptedLLM]:
    workers.llm.script.clear()
    workers.llm.requests.clear()
    yield workers.llm
    workers.llm.script.clear()


def test_connections_spread_over_both_workers_see_one_agent_indexed_exactly_once(
    workers: LiteWorkers, llm: ScriptedLLM
) -> None:
    client = workers.client(timeout=120)
    agent = workers.agent()
    ran_on: list[int | None] = []

    def noted(body: dict[str, Any]) -> dict[str, Any]:
        ran_on.append(workers.lease_pid(agent))  # asked while the turn holds the lease: its process
        return echo(body)

    said = []
    for turn in range(40):
        if turn >= 6 and len(set(ran_on)) >= 2:
            break
        llm.add(noted)
        said.append(f"codeword{turn} for the record")
        assert client.agents.messages.create(agent, input=said[-1]).messages[-1].content == f"re: {said[-1]}"
        if turn == 2:  # an edit through one connection is what the next turn (on either worker) sees
            client.agents.blocks.update("human", agent_id=agent, value="Name: Chad (edited)")
    supervisor = workers.server.process.pid
    assert None not in ran_on and supervisor not in ran_on, ran_on
    assert len(set(ran_on)) == 2, f"every turn ran on one worker: {ran_on}"
    assert "Name: Chad (edited)" in llm.requests[-1]["messages"][0]["content"]
    history = client.agents.messages.list(agent, order="asc", limit=200).items
    spoken = [(m.message_type, m.content) for m in history if m.message_type in ("user_message", "assistant_message")]
    assert spoken == [pair for text in said for pair in (("user_message", text), ("assistant_message", f"re: {text}"))]

    # Recall: each turn's indexing ended under its lease, in whichever worker ran it: every searchable message is
    # in the Lite index once (a third client of the supervisor's Lite server reads it), none is left over.
    socket = LiteServer(Path(workers.config.milvus_uri(workers.home))).socket
    with Storage(workers.config, workers.home, lite_server=f"unix:{socket}") as storage:
        state = storage.agents.by_id(workers.config.user_id, agent)
        assert state is not None
        assert storage.messages.unindexed(agent, 1000) == []
        with sqlite3.connect(workers.home / "metadata.sqlite") as db:
            rows = db.execute("SELECT id FROM messages WHERE agent_id = ? AND searchable", (agent,)).fetchall()
        passages = storage.passages(state.space)
        indexed = [p.id for p in passages.query(all_of(eq("agent_id", agent), eq("kind", "recall")), limit=1000)]
    assert sorted(indexed) == sorted(row[0] for row in rows) and len(rows) == 2 * len(said)  # the user's and the reply

    # conversation_search on a worker finds what turns on both said.
    searches = [("conversation_search", {"query": f"codeword{turn}"}) for turn in range(len(said))]
    llm.add({"calls": searches, "content": "Looking."})
    answer = client.agents.messages.create(agent, input="what codewords did I give?")
    results = [str(m.tool_return) for m in answer.messages if m.message_type == "tool_return_message"]
    for text, result in zip(said, results, strict=True):
        assert text in result, result


@pytest.mark.parametrize("round_", [1, 2])
def test_sends_to_one_agent_that_meet_are_serialized(workers: LiteWorkers, llm: ScriptedLLM, round_: int) -> None:
    """Two sends at the same moment (each on a new connection: the same worker or both): the second waits for the
    first turn, whole; nothing interleaves and nothing is lost, in storage or in the context."""
    agent = workers.agent()
    clients = [workers.client(timeout=120) for _ in range(2)]
    assert_meeting_sends_serialized(agent, clients, workers.client(timeout=120), workers.history, llm)


def test_a_cli_command_on_the_home_is_told_a_server_runs(workers: LiteWorkers, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("hello")
    load = run_cli("load", "directory", "--name", "notes", "--input-files", str(note), home=workers.home)
    assert load.returncode == 1
    assert f"a memgpt server at {workers.server.url}" in load.stderr, load.stderr
    assert f"(pid {workers.server.process.pid})" in load.stderr and "use its API" in load.stderr
    assert "Traceback" not in load.stderr


def test_each_worker_speaks_http_with_httptools_on_uvloop(workers: LiteWorkers) -> None:
    """uvicorn's workers pick its C HTTP parser and libuv event loop by themselves, as one process does."""
    spawned = [
        pid for pid in _children(workers.server.process.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert len(spawned) == 2, spawned
    assert [http_stack(pid) for pid in spawned] == [{"httptools", "uvloop"}] * 2


def test_kill_9_of_a_worker_mid_turn_the_next_turn_works(workers: LiteWorkers, llm: ScriptedLLM) -> None:
    """uvicorn starts a new worker for the killed one; it connects to the same Lite server (no second one)."""
    agent = workers.agent()
    llm.add({"hang": True})

    def send() -> None:
        with pytest.raises((APIError, httpx.HTTPError)):  # the connection dies with the worker
            workers.client(timeout=120).agents.messages.create(agent, input="keep me")

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 60
    while (victim := workers.lease_pid(agent)) is None or not llm.requests:
        assert time.monotonic() < deadline, "the turn never reached the LLM"
        time.sleep(0.02)
    os.kill(victim, signal.SIGKILL)
    sender.join(60)
    llm.add(echo)
    answer = workers.client(timeout=120).agents.messages.create(agent, input="still there?")
    assert answer.messages[-1].content == "re: still there?"
    assert workers.user_messages(agent) == ["keep me", "still there?"]
    context = [_words(m) for m in llm.requests[-1]["messages"] if m["role"] == "user" and _words(m)]
    assert context == ["keep me", "still there?"]
    binaries = subprocess.run(["pgrep", "-f", f"milvus {workers.home}"], capture_output=True, text=True).stdout
    assert len(binaries.split()) == 1, binaries  # still the supervisor's one Lite server


def test_a_supervisor_or_its_lite_server_killed_leaves_nothing_that_stops_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL to `memgpt server --workers 2`: its Lite server ends (its lock is let go), its workers stop by
    themselves (else they would keep the port), and the same command on the same port starts and serves. SIGKILL
    to its Lite server: it stops its workers and ends in one line, and the next start works again."""
    home = tmp_path / "home"
    llm = ScriptedLLM()
    monkeypatch.setenv("MEMGPT_HOME", str(home))
    try:
        key = _start(home, llm)[1]
        first = ServerProcess(home, 2)
        first.wait_ready()
        children = _children(first.process.pid)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(30)
        _all_end(children)
        again = ServerProcess(home, 2, port=first.port)
        try:
            again.wait_ready()
            _serves(again, key, llm, "after")
            children = _children(again.process.pid)
            lite = [pid for pid in children if "lib/milvus" in Path(f"/proc/{pid}/cmdline").read_text()]
            assert len(lite) == 1, children
            os.kill(lite[0], signal.SIGKILL)
            assert again.process.wait(60) == 1
            _all_end(children)
        finally:
            again.stop()
        logged = again.log.read_text(errors="replace")
        assert "error: the Milvus Lite server of" in logged and "ended unexpectedly" in logged, logged[-2000:]
        assert "Traceback" not in logged
        third = ServerProcess(home, 2, port=first.port)
        try:
            third.wait_ready()
            _serves(third, key, llm, "third")
        finally:
            third.stop()
    finally:
        llm.close()


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


def _all_end(pids: list[int]) -> None:
    """Wait until none of ``pids`` (this test's own processes) runs; those still running after a minute fail
    the test, and are killed."""
    deadline = time.monotonic() + 60
    try:
        while alive := [pid for pid in pids if _running(pid)]:
            assert time.monotonic() < deadline, f"still running after their supervisor ended: {alive}"
            time.sleep(0.1)
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def _serves(server: ServerProcess, key: str, llm: ScriptedLLM, name: str) -> None:
    llm.add(echo)
    blocks = [{"label": "human", "value": "Name: Chad"}, {"label": "persona", "value": "I am Sam."}]
    client = Letta(base_url=server.url, api_key=key, max_retries=0, timeout=120)
    agent = client.agents.create(name=name, memory_blocks=blocks, model=SCRIPTED_HANDLE)  # type: ignore[arg-type]
    assert client.agents.messages.create(agent.id, input="hi").messages[-1].content == "re: hi"


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped by init, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_environment_names_the_served_file_only(workers: LiteWorkers) -> None:
    """The supervisor tells its workers the Lite file it serves; a worker of another home opens its own."""
    from memgpt.server.app import LITE_SERVER_ENV, _served_lite

    served = {"file": workers.config.milvus_uri(workers.home), "uri": "unix:/tmp/x.sock"}
    saved = os.environ.get(LITE_SERVER_ENV)
    try:
        os.environ[LITE_SERVER_ENV] = json.dumps(served)
        assert _served_lite(workers.home, workers.config) == "unix:/tmp/x.sock"
        other = Config()
        assert _served_lite(workers.home / "elsewhere", other) == ""
    finally:
        if saved is None:
            os.environ.pop(LITE_SERVER_ENV, None)
        else:
            os.environ[LITE_SERVER_ENV] = saved


CHECK_MEETS_THE_END = """
import sys, time
from pathlib import Path
from memgpt.config import load_config
from memgpt.errors import MemGPTError
from memgpt.server import app
from memgpt.storage.milvus import lite

real = app.open_state

def checking(*args, **kwargs):  # the Lite server ends while the supervisor checks the home, before uvicorn runs
    for server in list(lite.servers._running.values()):
        server._process.kill()
    time.sleep(60)
    return real(*args, **kwargs)

app.open_state = checking
home = Path(sys.argv[1])
try:
    with app.supervising(home, load_config(home)):
        print("served")
except MemGPTError as exc:
    print(f"error: {exc}")
    sys.exit(1)
"""


def test_a_lite_server_ending_during_the_supervisors_start_up_check_is_one_line(tmp_path: Path) -> None:
    """Its end is told by SIGTERM, which before uvicorn runs would have ended the supervisor at once, saying
    nothing: now the one line, exit code 1, and the file let go."""
    home = tmp_path / "home"
    llm = ScriptedLLM()
    try:
        _start(home, llm)
        env = {**os.environ, "MEMGPT_HOME": str(home)}
        started = time.monotonic()
        ran = subprocess.run(
            [sys.executable, "-c", CHECK_MEETS_THE_END, str(home)], env=env, capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 1, (ran.returncode, ran.stdout, ran.stderr[-2000:])
        assert "ended unexpectedly" in ran.stdout and time.monotonic() - started < 50
        assert "Traceback" not in ran.stderr
        assert run_cli("list", "sources", home=home).returncode == 0  # the file was let go
    finally:
        llm.close()
