"""Two `memgpt server` processes on one PostgreSQL and one Milvus server, with a short lease: what a process
that stalls past its lease (SIGSTOP: a long GC pause, a frozen VM) may still store once it runs again. The
other process takes the expired lease over and runs the next turn; the stalled one's writes for that agent
carry its lease (the fencing token) and are refused, so its late step is never stored after the other's.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from letta_client import Letta

from memgpt.config import Config
from tests import web
from tests.postgres import PostgresServer
from tests.processes import stop
from tests.scripted_llm import ScriptedLLM
from tests.server_pair import ServerPair, server_pair
from tests.server_rig import ServerProcess, auth

LEASE = 3.0  # seconds: the shortest lease the config allows; renewed every second while a turn runs


class Pair(ServerPair):
    def client(self, server: ServerProcess, **options: Any) -> Letta:
        return super().client(server, **{"timeout": 120, **options})


def _short_lease(config: Config) -> None:
    config.server.lease_seconds = LEASE
    config.server.busy_wait_seconds = 60  # a send waits for the lease to expire rather than answer 409


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer, milvus_server: str
) -> Iterator[Pair]:
    with server_pair(
        tmp_path_factory, postgres_server, milvus_server, label="fencing", workers=(1, 1), configure=_short_lease
    ) as parts:
        yield Pair(*parts)


@pytest.fixture
def llm(pair: Pair) -> Iterator[ScriptedLLM]:
    pair.llm.script.clear()
    pair.llm.requests.clear()
    yield pair.llm
    pair.llm.script.clear()


def reply(text: str) -> dict[str, Any]:
    return {"tool": "send_message", "args": {"message": text}, "content": "Answer."}


def send_to_a(pair: Pair, agent: str, answers: dict[str, Any]) -> None:
    """A turn through A, its answer kept in ``answers["a"]``."""
    url = f"{pair.a.url}/v1/agents/{agent}/messages"
    answers["a"] = web.post(url, json={"input": "to A"}, headers=auth(pair.key), timeout=120)


def b_takes_over(pair: Pair, llm: ScriptedLLM, agent: str, **options: Any) -> None:
    """A turn through B on the agent A holds while it is stopped: it gets the agent once A's hold ends."""
    llm.add(reply("B's answer"))
    started = time.monotonic()
    answer = pair.client(pair.b, **options).agents.messages.create(agent, input="to B")
    assert answer.messages[-1].content == "B's answer"
    print(f"B took the agent over {time.monotonic() - started:.2f} s after A stopped (lease {LEASE} s)")


def test_a_process_paused_past_its_lease_stores_nothing_once_another_took_the_agent_over(
    pair: Pair, llm: ScriptedLLM
) -> None:
    agent = pair.agent(pair.a)
    stopped = threading.Event()

    def stop_a(_: dict[str, Any]) -> dict[str, Any]:
        # A waits for this answer; it is stopped before it can read it, and its lease renewer with it.
        stop(pair.a.process)
        stopped.set()
        return reply("late answer from A")

    llm.add(stop_a)
    answers: dict[str, Any] = {}

    sender = threading.Thread(target=send_to_a, args=(pair, agent, answers))
    sender.start()
    try:
        assert stopped.wait(60), "A's turn never reached the LLM"
        b_takes_over(pair, llm, agent)  # waits for A's lease to expire
    finally:
        os.kill(pair.a.process.pid, signal.SIGCONT)
    sender.join(60)

    # A read its LLM answer after B's turn: its step was refused, so the agent holds B's turn after A's message.
    stored = pair.history(agent)
    assert [role for role, _ in stored] == ["user", "user", "assistant", "tool"], stored
    assert not any("late answer from A" in text for _, text in stored), stored
    # A conflict, as a lease lost while the send took it; a retry would only be given this answer again.
    refused = answers["a"]
    assert refused.status_code == 409 and "took the agent over" in refused.json()["detail"], refused.text
    assert "the message is (the agent's next turn sees it)" in refused.json()["detail"], refused.text
    assert refused.headers["x-should-retry"] == "false"
    retried = web.post(
        f"{pair.a.url}/v1/agents/{agent}/messages",
        json={"input": "to A"},
        headers={**auth(pair.key), "X-Stainless-Retry-Count": "1"},
        timeout=60,
    )
    assert (retried.status_code, retried.json()) == (409, refused.json()), retried.text

    # A works again: its next turn sees everything, B's turn included.
    llm.add(reply("A is back"))
    assert pair.client(pair.a).agents.messages.create(agent, input="again").messages[-1].content == "A is back"
    said = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    assert any("to B" in text for text in said) and any("to A" in text for text in said)


def _until(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)
    return found


def _inserting_messages(monitor: psycopg.Connection[Any], state: str) -> Any:
    """The session whose INSERT into messages is in ``state`` ("active": waiting for a lock), or None."""
    row = monitor.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query ILIKE 'INSERT INTO messages%%' AND state = %s AND (%s <> 'active' OR wait_event_type = 'Lock')",
        (state, state),
    ).fetchone()
    return row[0] if row else None


def _ended_while_idle_in_its_transaction(monitor: psycopg.Connection[Any], postgres: PostgresServer, pid: int) -> bool:
    """Whether the stopped process's session ``pid``, whose write waited, ran it and now idles in its transaction
    (True), or was ended by PostgreSQL's idle transaction timeout once it had (the server's log says so: True), or
    still runs its write (False). That it committed instead (its process was not stopped) fails at once."""
    row = monitor.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    if row is None:
        # Only what the log gained during this test: a backend pid is reused, and the server serves the session.
        log = (postgres.directory / "server.log").read_bytes()[_log_start[postgres.directory] :]
        ended = [line for line in log.decode(errors="replace").splitlines() if f"[{pid}] FATAL:" in line]
        assert any("idle-in-transaction timeout" in line for line in ended), f"session {pid} ended: {ended}"
        return True
    state, query = row
    assert state in ("active", "idle in transaction"), f"session {pid} is {state!r} after {query!r}"
    return bool(state == "idle in transaction")


_log_start: dict[Path, int] = {}  # the size of each PostgreSQL's server.log as the running test started


@pytest.fixture(autouse=True)
def _log_from_the_start(postgres_server: PostgresServer) -> None:
    """Record where PostgreSQL's log stands as each test starts (see _ended_while_idle_in_its_transaction)."""
    _log_start[postgres_server.directory] = (postgres_server.directory / "server.log").stat().st_size


def _holds_its_lease_row(monitor: psycopg.Connection[Any], agent: str) -> None:
    """Another transaction holds the agent's lease row: a claim of it (an upsert, as a takeover's) waits. That sees
    an uncommitted insert of the row as well as a lock on a committed one (``SELECT ... FOR UPDATE NOWAIT`` sees
    only the latter); lock_timeout's end raises LockNotAvailable as NOWAIT does. The upsert is rolled back."""
    upsert = (
        "INSERT INTO agent_leases (agent_id, owner, run_id, expires_at, cancel_requested)"
        " VALUES (%s, 'monitor', 'monitor', now(), false)"
        " ON CONFLICT (agent_id) DO UPDATE SET owner = agent_leases.owner"
    )
    with monitor.transaction(force_rollback=True):
        monitor.execute("SET LOCAL lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            monitor.execute(upsert, (agent,))


def test_a_process_stopped_inside_a_transaction_on_the_lease_row_does_not_block_the_takeover(
    pair: Pair, llm: ScriptedLLM, postgres_server: PostgresServer
) -> None:
    """A holder stopped with a transaction open on its lease row holds that row's lock (or, when it inserted the
    row, its key): a takeover's claim waits on it. Here A stops inside the transaction that claims the lease and
    stores the user's message with it. The database ends such a session once it idled in its transaction for the
    lease's length, so B's claim goes on; A's claim is undone whole (its message is not stored) and, once A runs
    again, it answers that the message was not stored and is to be sent again."""
    agent = pair.agent(pair.a)
    plain = pair.config.metadata_url.replace("postgresql+psycopg://", "postgresql://")
    answers: dict[str, Any] = {}

    def backend_of_a(state: str) -> Any:
        # A's session: the one whose INSERT of the user's message (in its lease claim's transaction) waits.
        return _inserting_messages(monitor, state)

    with psycopg.connect(plain, autocommit=True) as monitor:
        sender = threading.Thread(target=send_to_a, args=(pair, agent, answers))
        try:
            with psycopg.connect(plain) as blocker:
                # Every write to messages waits while this transaction runs: A's turn stores its user's message
                # in the transaction that claims its lease (the lease row inserted, uncommitted), and waits here.
                blocker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
                sender.start()
                a_session = _until(lambda: backend_of_a("active"), "A's turn to wait for the messages table")
                _holds_its_lease_row(monitor, agent)
                stop(pair.a.process)
            # The blocker committed: A's INSERT ran, and its transaction stays open while its process is stopped
            # (until PostgreSQL ends it: seen ended or idle, not required to be caught in its seconds of idling).
            idled = _ended_while_idle_in_its_transaction
            _until(lambda: idled(monitor, postgres_server, a_session), "A's transaction to idle")
            b_takes_over(pair, llm, agent, timeout=30)
        finally:
            os.kill(pair.a.process.pid, signal.SIGCONT)
            sender.join(60)

    # A's claim was undone whole: its user's message is not stored, and A says so (a conflict: send it again).
    stored = pair.history(agent)
    assert [text for _, text in stored if "to A" in text] == [], stored
    assert [role for role, _ in stored] == ["user", "assistant", "tool"], stored
    refused = answers["a"]
    assert refused.status_code == 409 and "the message is not stored" in refused.json()["detail"], refused.text

    # A works again.
    llm.add(reply("A is back"))
    assert pair.client(pair.a).agents.messages.create(agent, input="again").messages[-1].content == "A is back"


def test_a_process_stopped_inside_its_steps_fenced_write_does_not_block_the_takeover(
    pair: Pair, llm: ScriptedLLM, postgres_server: PostgresServer
) -> None:
    """As above, but A holds the lease already and stops inside its step's fenced write (the lease row locked by
    its fence): B's claim waits on that lock until the database ends A's idle transaction; A's step is undone whole
    and, once A runs again, refused as fenced. The user's message A stored with its lease stays. The step writes
    its messages with one executemany, which psycopg pipelined, ending it with a Flush after which PostgreSQL's
    idle transaction timeout was off: B waited for as long as A stayed stopped (storage/pg_cursor.py)."""
    agent = pair.agent(pair.a)
    plain = pair.config.metadata_url.replace("postgresql+psycopg://", "postgresql://")
    answers: dict[str, Any] = {}

    with psycopg.connect(plain, autocommit=True) as monitor, psycopg.connect(plain) as blocker:

        def lock_messages(_: dict[str, Any]) -> dict[str, Any]:
            # While A waits for this answer (its lease taken): every write to messages waits, A's step's included.
            blocker.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
            return reply("late answer from A")

        def send_to_a() -> None:
            url = f"{pair.a.url}/v1/agents/{agent}/messages"
            answers["a"] = web.post(url, json={"input": "to A"}, headers=auth(pair.key), timeout=120)

        llm.add(lock_messages)
        sender = threading.Thread(target=send_to_a)
        try:
            sender.start()
            a_session = _until(
                lambda: _inserting_messages(monitor, "active"), "A's step write to wait for the messages table"
            )
            _holds_its_lease_row(monitor, agent)
            stop(pair.a.process)
            blocker.commit()  # A's INSERT runs; its transaction stays open while its process is stopped
            idled = _ended_while_idle_in_its_transaction
            _until(lambda: idled(monitor, postgres_server, a_session), "A's transaction to idle")
            llm.add(reply("B's answer"))
            started = time.monotonic()
            answer = pair.client(pair.b, timeout=30).agents.messages.create(agent, input="to B")
            assert answer.messages[-1].content == "B's answer"
            print(f"B took the agent over {time.monotonic() - started:.2f} s after A stopped (lease {LEASE} s)")
        finally:
            blocker.rollback()
            os.kill(pair.a.process.pid, signal.SIGCONT)
            sender.join(60)

    # A's step was undone whole: its user's message (stored with its lease) stays, its answer is not stored.
    stored = pair.history(agent)
    assert [role for role, _ in stored] == ["user", "user", "assistant", "tool"], stored
    assert not any("late answer from A" in text for _, text in stored), stored
    refused = answers["a"]
    assert refused.status_code == 409 and "took the agent over" in refused.json()["detail"], refused.text

    # A works again.
    llm.add(reply("A is back"))
    assert pair.client(pair.a).agents.messages.create(agent, input="again").messages[-1].content == "A is back"


def test_a_passage_inserted_through_one_process_is_found_at_once_through_the_other(pair: Pair) -> None:
    """No wait between the insert (A) and the search (B): B's search must see what A's insert returned after,
    though B's Milvus client never saw that write (a Session read sees only its own process's writes)."""
    a, b = pair.client(pair.a), pair.client(pair.b)
    agent = pair.agent(pair.a)
    assert b.agents.passages.search(agent, query="codeword").count == 0  # B has searched: its next reads are cheap
    missed = []
    for round_ in range(8):
        a.agents.passages.create(agent, text=f"Codeword {round_} is aubergine-{round_}.")
        found = b.agents.passages.search(agent, query=f"codeword {round_}", top_k=20)
        if f"Codeword {round_} is aubergine-{round_}." not in [hit.content for hit in found.results]:
            missed.append(round_)
    assert missed == [], f"B's search missed A's passage of rounds {missed}"
