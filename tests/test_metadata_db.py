"""The metadata database under several processes at once, and when it cannot be reached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from memgpt.errors import StorageError
from memgpt.memory.messages import stored
from memgpt.storage import Storage
from memgpt.storage.migrations import MIGRATIONS
from memgpt.storage.sql import MetadataStore, create_metadata_engine, parse_metadata_url
from memgpt.types import AgentState, Message, Role, Source, utc_now
from tests.conftest import REPO, cli
from tests.postgres import PASSWORD, PostgresServer
from tests.processes import stop

# Each child opens the store and writes a row, as a command would.
OPEN_STORE = """
from memgpt.storage.sql import MetadataStore
from memgpt.types import Source, utc_now

def child(n, url):
    store = MetadataStore(url)
    store.create_source(Source(f"id{n}", f"s{n}", "u", "m", 4, utc_now()))
    store.close()
"""

# Each child runs a memgpt command ("{n}" in its arguments: the child's number).
RUN_CLI = """
from memgpt.cli.app import main
# What the command loads lazily, imported before they go.
import memgpt.agent.manager, memgpt.storage.agents, memgpt.storage.migrations, memgpt.storage.milvus
import sqlalchemy.dialects.postgresql, sqlalchemy.dialects.sqlite

def child(n, *args):
    sys.argv = ["memgpt", *(arg.replace("{n}", str(n)) for arg in args)]
    main()
"""

# One process imports what the children run (CHILD: a ``child(n, *args)``), forks them and lets them all go at
# once (the end of a pipe they wait on closed). Each child is a process of its own, with its own connections,
# files and exit code; its stdout and stderr go to ``<RESULTS>.<n>.out`` and ``.err``; the exit codes are printed
# in order. The imports, most of a command's CPU, are paid once rather than once a child (eight times that took
# ~50 s of the suite on two cores), and the children meet within moments of each other, not across seconds of
# imports of their own.
TOGETHER = """
import os, sys
{child}
results, count, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
go_read, go_write = os.pipe()
children = []
for n in range(count):
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        for fd, suffix in ((1, "out"), (2, "err")):
            os.dup2(os.open(f"{{results}}.{{n}}.{{suffix}}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        os.read(go_read, 1)  # the end of the pipe: every child at once
        child(n, *args)
        sys.exit(0)
    children.append(pid)
os.close(go_read)
os.close(go_write)
for pid in children:
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def start_together(
    child: str, count: int, args: list[str], results: Path, env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """``count`` processes running ``child`` (see TOGETHER) from the same moment; their exit codes and output."""
    script = TOGETHER.format(child=child)
    forker = subprocess.run(
        [sys.executable, "-c", script, str(results), str(count), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert forker.returncode == 0, forker.stderr[-3000:]
    codes = [int(code) for code in forker.stdout.split()]
    assert len(codes) == count, forker.stdout
    return [
        subprocess.CompletedProcess(
            [str(n)], code, Path(f"{results}.{n}.out").read_text(), Path(f"{results}.{n}.err").read_text()
        )
        for n, code in enumerate(codes)
    ]


def test_eight_processes_open_a_new_database_at_the_same_moment(metadata_url: str, tmp_path: Path) -> None:
    results = start_together(OPEN_STORE, 8, [metadata_url], tmp_path / "child", dict(os.environ))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stderr == ""
    engine = create_metadata_engine(parse_metadata_url(metadata_url))
    with engine.connect() as conn:
        ledger = list(conn.scalars(text("select name from schema_migrations order by name")))
        sources = sorted(conn.scalars(text("select name from sources")))
    engine.dispose()
    assert ledger == [name for name, _ in MIGRATIONS]
    assert sources == [f"s{n}" for n in range(8)]


def test_eight_commands_on_a_new_home_all_work_as_one_user(metadata_url: str, home: Path, tmp_path: Path) -> None:
    """The issue's report: two commands at once on a new home failed with "table schema_migrations
    already exists". Every one must run, on the same user id (the config is created once)."""
    if metadata_url.startswith("sqlite"):
        assert not (home / "config.toml").exists()  # a truly new home: config and database both
    env = {**os.environ, "MEMGPT_HOME": str(home), "NO_COLOR": "1"}
    command = ["add", "human", "--name", "h{n}", "--text", "x"]
    results = start_together(RUN_CLI, 8, command, tmp_path / "child", env)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    listed = json.loads(cli("list", "humans", "--json", home=home).stdout)
    assert {f"h{n}" for n in range(8)} <= set(listed)


@pytest.fixture
def server(postgres_server: PostgresServer) -> PostgresServer:
    return postgres_server


def test_postgresql_unreachable_is_one_line(server: PostgresServer, tmp_path: Path) -> None:
    closed = PostgresServer(server.process, server.directory, port=_closed_port())
    with pytest.raises(StorageError) as caught:
        MetadataStore(closed.url())
    message = str(caught.value)
    assert message.startswith(f"cannot reach PostgreSQL at 127.0.0.1:{closed.port} (")
    assert "is it running there? Check metadata_url" in message
    assert "\n" not in message and "sqlalche.me" not in message


def test_postgresql_wrong_password_is_one_line_without_the_password(server: PostgresServer) -> None:
    with pytest.raises(StorageError) as caught:
        MetadataStore(server.url(password="not-the-password"))
    message = str(caught.value)
    assert message == (
        f"PostgreSQL at 127.0.0.1:{server.port} refused the login (password authentication failed for user "
        '"memgpt"): fix the user or password in metadata_url'
    )


def test_postgresql_missing_database_says_how_to_create_it(server: PostgresServer) -> None:
    with pytest.raises(StorageError) as caught:
        MetadataStore(server.url("no_such_db"))
    assert str(caught.value) == (
        f'PostgreSQL at 127.0.0.1:{server.port}: database "no_such_db" does not exist: create it '
        "(createdb no_such_db) or fix metadata_url"
    )


def test_the_cli_says_it_in_one_line_and_hides_the_password(server: PostgresServer, home: Path) -> None:
    from memgpt.config import load_config, save_config

    config = load_config(home)
    config.metadata_url = server.url("no_such_db").replace("+psycopg", "")  # as users paste it
    save_config(config, home)
    result = cli("list", "sources", home=home)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'error: PostgreSQL at 127.0.0.1:{server.port}: database "no_such_db" does not exist: create it '
        "(createdb no_such_db) or fix metadata_url"
    ]
    assert PASSWORD not in result.stdout + result.stderr


def test_urls_as_users_write_them(postgres_url: str) -> None:
    """``postgresql://`` and ``postgres://`` mean the psycopg 3 driver memgpt ships."""
    for scheme in ("postgresql://", "postgres://"):
        store = MetadataStore(postgres_url.replace("postgresql+psycopg://", scheme))
        assert store.engine.dialect.driver == "psycopg"
        assert store.list_sources("u") == []
        store.close()


def test_postgresql_ends_a_transaction_left_idle_for_the_lease_length_unless_the_url_says_otherwise(
    postgres_url: str,
) -> None:
    """A process stopped inside a transaction must not keep its row locks for longer than a lease lasts (see
    tests/test_lease.py and tests/test_server_fencing.py for what that unblocks); a URL's own setting wins."""
    own = f"{postgres_url}?options=-c%20idle_in_transaction_session_timeout%3D9s"
    # The tables first, without the timeout: a GC pause of this process inside the new database's migrations (one
    # transaction) took longer than 3.5 s on a loaded machine (see _storage_and_holders in tests/test_lease.py).
    MetadataStore(postgres_url).close()
    for url, expected in ((postgres_url, "3500ms"), (own, "9s")):
        store = MetadataStore(url, idle_transaction_seconds=3.5)
        with store.connection() as c:
            assert c.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == expected
        store.close()
    store = MetadataStore(postgres_url)  # none asked for: the server's own (0, never)
    with store.connection() as c:
        assert c.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "0"
    store.close()


def test_a_new_databases_migrations_outlast_a_pause_longer_than_the_lease(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sessions of a 1 s lease end transactions idle for 1 s; a new database's migrations are one transaction,
    and a pause of this process between two of its statements (a garbage collection under load) must not end it."""
    from memgpt.storage import migrations

    first_name, first = migrations.MIGRATIONS[0]

    def paused(conn: Any) -> None:
        first(conn)
        time.sleep(2.0)  # idle in the migrations' transaction, twice the sessions' limit

    monkeypatch.setattr(migrations, "MIGRATIONS", [(first_name, paused), *migrations.MIGRATIONS[1:]])
    store = MetadataStore(postgres_url, idle_transaction_seconds=1.0)
    try:
        with store.connection() as c:
            applied = c.execute(text("SELECT count(*) FROM schema_migrations")).scalar()
            assert applied == len(migrations.MIGRATIONS)
            assert c.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "1s"
    finally:
        store.close()


# Writes two rows with one call (an executemany, as a turn writes its step's messages) in a transaction, as a
# session of a server with a 1 s lease; says whether it stored them.
EXECUTEMANY_IN_A_TRANSACTION = """
import sys
from sqlalchemy import text
from memgpt.errors import StorageError
from memgpt.storage.sql import MetadataStore
store = MetadataStore(sys.argv[1], idle_transaction_seconds=1.0)
try:
    with store.connection() as c:
        c.execute(text("INSERT INTO stall_probe (id) VALUES (:id)"), [{"id": 1}, {"id": 2}])
        print("inserted", flush=True)
    print("stored", flush=True)
except StorageError as exc:
    print(f"refused: {exc}", flush=True)
"""


def test_postgresql_ends_a_transaction_stopped_inside_a_many_row_write(postgres_url: str) -> None:
    """psycopg's pipelined executemany ends with a Sync and then a Flush, and PostgreSQL's idle transaction timeout
    is off after a Flush until the next Sync: a process stopped inside such a write kept its transaction (and the
    lease row a turn's transaction locks) for as long as it stayed stopped. Here it waits for a table lock inside
    the write, is stopped there, the lock goes: its session must end once it idled for the timeout, undoing it."""
    import psycopg

    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    MetadataStore(postgres_url).close()  # the tables first: the child's own opening must not wait for the lock
    with psycopg.connect(plain, autocommit=True) as monitor, psycopg.connect(plain) as blocker:
        monitor.execute("CREATE TABLE stall_probe (id integer PRIMARY KEY)")
        blocker.execute("LOCK TABLE stall_probe IN EXCLUSIVE MODE")  # the child's INSERT waits for it
        child = subprocess.Popen(
            [sys.executable, "-c", EXECUTEMANY_IN_A_TRANSACTION, postgres_url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        session = "SELECT pid, state FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE %s"
        try:
            deadline = time.monotonic() + 60
            while not (row := monitor.execute(session + " AND wait_event_type = 'Lock'", ("INSERT%",)).fetchone()):
                assert child.poll() is None and time.monotonic() < deadline, "the child's INSERT never waited"
                time.sleep(0.05)
            backend = row[0]
            stop(child)  # every thread of it: kill() returns before that
            blocker.commit()  # its INSERT runs now; its transaction stays open while it is stopped
            stopped = time.monotonic()
            alive = "SELECT state FROM pg_stat_activity WHERE pid = %s"
            while (state := monitor.execute(alive, (backend,)).fetchone()) is not None:
                # The timeout is 1 s; the rest is for a loaded machine. Without the fix it stays forever.
                assert time.monotonic() - stopped < 15, f"the stopped child's session is still {state[0]!r}"
                time.sleep(0.1)
        finally:
            os.kill(child.pid, signal.SIGCONT)
            out, _ = child.communicate(timeout=60)
        # Undone whole: no row stored, and the child, running again, is told so.
        assert monitor.execute("SELECT count(*) FROM stall_probe").fetchone() == (0,)
    assert "stored" not in out.splitlines() and "refused: metadata database error" in out, out


def test_a_many_row_write_on_postgresql_reports_every_row_it_changed(postgres_url: str) -> None:
    """memgpt's PostgreSQL sessions run an executemany one statement at a time (above): its rowcount is still the
    sum of its statements', which SQLAlchemy checks an ORM flush of several rows against."""
    store = MetadataStore(postgres_url)
    with store.connection() as c:
        c.execute(text("CREATE TABLE probe (id integer PRIMARY KEY, v integer)"))
        c.execute(text("INSERT INTO probe (id, v) VALUES (:id, 0)"), [{"id": i} for i in range(5)])
        changed = c.execute(text("UPDATE probe SET v = 1 WHERE id = :id"), [{"id": 1}, {"id": 3}, {"id": 9}])
        assert changed.rowcount == 2
        assert c.execute(text("SELECT count(*) FROM probe WHERE v = 1")).scalar() == 2
    store.close()


def test_a_url_that_is_not_one_is_one_line() -> None:
    with pytest.raises(StorageError, match=r"^metadata_url 'not a url' is not a database URL"):
        MetadataStore("not a url")


def test_a_dropped_connection_is_replaced_before_use(server: PostgresServer, postgres_url: str) -> None:
    """A server restart or an idle timeout kills pooled connections: the next call must still work."""
    store = MetadataStore(postgres_url)
    store.create_source(Source("id", "before", "u", "m", 4, utc_now()))
    database = parse_metadata_url(postgres_url).database
    with server.admin() as admin:
        killed = admin.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = %s", (database,)
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    assert [s.name for s in store.list_sources("u")] == ["before"]
    store.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_parametrized_tests_really_use_the_database_they_name(metadata_url: str, storage: Storage) -> None:
    """Guards the fixture wiring: a "postgres" run silently on SQLite would prove nothing."""
    expected = "sqlite" if metadata_url.startswith("sqlite") else "postgresql"
    assert storage.metadata.engine.dialect.name == expected


@pytest.mark.usefixtures("metadata_url")
def test_ties_in_time_are_ordered_by_name(storage: Storage) -> None:
    """SQLite and PostgreSQL return rows with equal sort keys in different orders; lists must not."""
    agents = storage.agents
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for name in ("c", "a", "b"):
        storage.metadata.create_source(Source(f"id-{name}", name, "u", "m", 4, moment))
        agents.create(_agent(f"agent-{name}", name, moment), [])
    assert [s.name for s in storage.metadata.list_sources("u")] == ["a", "b", "c"]
    assert [a.state.name for a in agents.list("u")] == ["a", "b", "c"]


@pytest.mark.usefixtures("metadata_url")
def test_recall_word_search_takes_like_wildcards_literally(storage: Storage) -> None:
    agents, messages = storage.agents, storage.messages
    agents.create(_agent("a1", "searcher", utc_now()), [])
    texts = ["100% sure", "100 percent sure", "snake_case", "snakeXcase", r"back\slash", "backslash"]
    messages.append("a1", [stored(Message(f"m{i}", "a1", Role.USER, t)) for i, t in enumerate(texts)])

    def found(query: str) -> list[str]:
        return [m.content for m in messages.search("a1", query, offset=0, limit=10)[0]]

    assert found("100%") == ["100% sure"]
    assert found("snake_case") == ["snake_case"]
    assert found("\\") == [r"back\slash"]
    assert found("SURE") == ["100% sure", "100 percent sure"]


@pytest.mark.usefixtures("metadata_url")
def test_times_come_back_in_utc_and_date_search_crosses_zones(storage: Storage) -> None:
    agents, messages = storage.agents, storage.messages
    agents.create(_agent("a1", "clock", utc_now()), [])
    oslo = timezone(timedelta(hours=1))
    late = Message("m1", "a1", Role.USER, "late", created_at=datetime(2026, 1, 2, 0, 30, tzinfo=oslo))
    messages.append("a1", [stored(late)])
    kept = messages.last("a1", 1)[0].created_at
    assert kept == datetime(2026, 1, 1, 23, 30, tzinfo=UTC) and kept.tzinfo == UTC
    day = datetime(2026, 1, 1, tzinfo=UTC)
    hits, total = messages.between("a1", day, day + timedelta(days=1), offset=0, limit=5)
    assert total == 1 and hits[0].content == "late"


def _agent(agent_id: str, name: str, created_at: datetime) -> AgentState:
    return AgentState(agent_id, name, "u", "sam", "basic", "system", "model", 8000, "m", 4, created_at=created_at)


@pytest.mark.usefixtures("metadata_url")
def test_tool_call_ids_and_names_of_any_length_are_kept(storage: Storage) -> None:
    """They come from the LLM: a server's long ids or a model's invented function name must not fail
    the step on PostgreSQL (which enforces VARCHAR lengths) when SQLite would have kept them."""
    agents, messages = storage.agents, storage.messages
    agents.create(_agent("a1", "caller", utc_now()), [])
    long_id, long_name = "call_" + "x" * 300, "an_invented_function_" + "y" * 300
    messages.append("a1", [stored(Message("m1", "a1", Role.TOOL, "{}", tool_call_id=long_id, name=long_name))])
    kept = messages.last("a1", 1)[0]
    assert (kept.tool_call_id, kept.name) == (long_id, long_name)


@pytest.mark.usefixtures("metadata_url")
def test_every_write_to_what_an_opened_agent_holds_moves_its_version(storage: Storage) -> None:
    """A server keeps an agent open between turns only while its version stands still (server/turns.py), so each
    writer of its blocks, fields, messages, tools, attachments and archival counts must move it; a turn's own
    writes under its lease do not (taking the lease does)."""
    from memgpt.storage.agents import StepChanges, StepEffect
    from memgpt.storage.turns import Fence, new_owner
    from memgpt.types import Block, Document

    agents, messages = storage.agents, storage.messages
    agents.create(_agent("a1", "versioned", utc_now()), [Block("human", "Name: Chad", 100)])
    storage.metadata.create_source(Source("s1", "docs", "u", "m", 4, utc_now()))

    def version() -> int:
        with storage.metadata.session() as s:
            return int(s.execute(text("select version from agents where id = 'a1'")).scalar_one())

    def note(number: int) -> Message:
        return Message(f"m{number}", "a1", Role.USER, f"note {number}")

    document = Document("d1", "s1", "/f.txt", "f.txt", "0" * 64, 1, None, 1, "sig")
    writers = {
        "update": lambda: agents.update("a1", description="new"),
        "save_block": lambda: agents.save_block("a1", Block("human", "Name: Chad B.", 100)),
        "swap_block_value": lambda: agents.swap_block_value("a1", "human", "Name: Chad B.", "Name: C."),
        "commit_step": lambda: agents.commit_step("a1", StepChanges(messages=[stored(note(1))])),
        "record_effects": lambda: agents.record_effects("a1", [StepEffect("step-1", "passage", "p1")]),
        "drop_effects": lambda: agents.drop_effects("a1", ["step-1"]),
        "forget_steps": lambda: agents.forget_steps("a1", message_ids=["m1"], step_ids=[], blocks=[]),
        "touch": lambda: agents.touch("a1"),
        "messages.append": lambda: messages.append("a1", [stored(note(2))]),
        "messages.replace": lambda: messages.replace(stored(note(2))),
        "messages.remove": lambda: messages.remove("a1", ["m2"]),
        "attach": lambda: storage.attachments.attach("a1", "s1"),
        "publish": lambda: (storage.metadata.add_pending([document]), storage.metadata.publish(["d1"], [])),
        "mark_source_deleting": lambda: storage.metadata.mark_source_deleting("s1"),
        "detach": lambda: storage.attachments.detach("a1", "s1"),
        "mcp attach": lambda: storage.mcp_servers.attach("a1", "everything"),
        "mcp detach": lambda: storage.mcp_servers.detach("a1", "everything"),
    }
    for name, write in writers.items():
        before = version()
        write()
        assert version() > before, name
    storage.attachments.attach("a1", "s1")
    before = version()
    storage.metadata.delete_source("s1")
    assert version() > before, "delete_source"

    owner = new_owner()
    grant = storage.turns.acquire("a1", owner, "run-1", 60)
    assert grant is not None and grant.version == version()  # taking the lease moves it, and says to what
    fence = Fence("a1", owner)
    messages.append("a1", [stored(note(3))], fence=fence)
    agents.commit_step("a1", StepChanges(messages=[stored(note(4))], summary="s"), fence=fence)
    agents.record_effects("a1", [StepEffect("step-2", "passage", "p2")], fence=fence)
    messages.replace(stored(note(3)), fence=fence)  # a cancelled turn's note over its heartbeat
    assert version() == grant.version  # the turn's own writes: its open agent holds them already
    storage.turns.release("a1", owner)


@pytest.mark.usefixtures("metadata_url")
def test_a_fenced_message_edit_is_refused_once_another_owner_took_the_agent_over(storage: Storage) -> None:
    """A turn that stalled past its lease, was taken over, then saw its cancel (the lease renewer's) writes a note
    over its last heartbeat: that edit must be refused like its steps' writes, leaving the message and the
    agent's version as the new owner's turn knows them."""
    from memgpt.errors import LeaseLostError
    from memgpt.storage.turns import Fence, new_owner

    storage.agents.create(_agent("a1", "fenced", utc_now()), [])
    storage.messages.append("a1", [stored(Message("h1", "a1", Role.USER, "heartbeat", name="heartbeat"))])
    stalled = new_owner()
    assert storage.turns.acquire("a1", stalled, "run-1", 0.05) is not None
    time.sleep(0.3)
    newcomer = new_owner()
    assert storage.turns.acquire("a1", newcomer, "run-2", 60) is not None

    def version() -> int:
        with storage.metadata.session() as s:
            return int(s.execute(text("select version from agents where id = 'a1'")).scalar_one())

    before = version()
    note = Message("h1", "a1", Role.USER, "cancelled", name="heartbeat")
    with pytest.raises(LeaseLostError, match="took the agent over"):
        storage.messages.replace(stored(note), fence=Fence("a1", stalled))
    assert [m.content for m in storage.messages.last("a1", 1)] == ["heartbeat"]
    assert version() == before


def test_a_delete_while_a_step_commits_waits_for_it_on_postgresql(postgres_url: str, home: Path) -> None:
    """A step takes the agents row first, then writes its messages and evicts older ones; a delete must take
    the agents row first too. It once deleted the messages first: then the step waited on a message row the
    delete held, the delete on the agents row the step held, and PostgreSQL aborted one as a deadlock."""
    import threading

    from sqlalchemy import event

    from memgpt.config import load_config, save_config
    from memgpt.storage.agents import StepChanges
    from memgpt.types import Block

    config = load_config(home)
    config.metadata_url = postgres_url
    save_config(config, home)
    with Storage(config, home) as storage:
        agents = storage.agents
        agents.create(_agent("a1", "doomed", utc_now()), [Block("human", "Name: Chad", 100)])
        storage.messages.append("a1", [stored(Message("m0", "a1", Role.USER, "old news"))])
        evicting, go = threading.Event(), threading.Event()

        def pause_before_eviction(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if threading.current_thread().name == "step" and statement.startswith("UPDATE messages"):
                evicting.set()  # the step holds the agents row now
                go.wait(30)

        errors: list[BaseException] = []

        def run(work: Callable[[], None]) -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                errors.append(exc)

        changes = StepChanges(messages=[stored(Message("m1", "a1", Role.ASSISTANT, "new"))], evicted_ids=["m0"])
        step = threading.Thread(target=run, args=(lambda: agents.commit_step("a1", changes),), name="step")
        deleter = threading.Thread(target=run, args=(lambda: agents.delete("a1"),), name="delete")
        engine = storage.metadata.engine
        event.listen(engine, "before_cursor_execute", pause_before_eviction)
        try:
            step.start()
            assert evicting.wait(30), "the step never reached its eviction"
            deleter.start()
            deadline = time.monotonic() + 30
            while not _waiting_on_a_lock(storage) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _waiting_on_a_lock(storage), "the delete never waited for the step"
        finally:
            go.set()
            step.join(60)
            deleter.join(60)
            event.remove(engine, "before_cursor_execute", pause_before_eviction)
        assert not errors, errors  # no "deadlock detected"
        assert agents.by_id("u", "a1") is None
        with storage.metadata.session() as s:
            assert s.execute(text("select count(*) from messages where agent_id = 'a1'")).scalar_one() == 0


def test_a_delete_beside_a_turns_fenced_write_is_no_deadlock_on_postgresql(postgres_url: str, home: Path) -> None:
    """A delete outside a lease (`memgpt delete agent` while a server runs a turn of the agent) takes the agents row
    first; the turn's write holds the lease row, then needs the agents row. The delete also deletes the agent's
    lease: waiting for that row there was a deadlock (PostgreSQL aborts one). It leaves a lease another transaction
    holds to its holder, whose release deletes it; the turn's write fails as it did before (the agent is gone)."""
    import threading

    from sqlalchemy import event

    from memgpt.config import load_config, save_config
    from memgpt.storage.agents import StepChanges
    from memgpt.storage.turns import Fence, new_owner

    config = load_config(home)
    config.metadata_url = postgres_url
    save_config(config, home)
    with Storage(config, home) as storage:
        agents = storage.agents
        agents.create(_agent("a1", "doomed", utc_now()), [])
        owner = new_owner()
        assert storage.turns.acquire("a1", owner, "run-1", 60) is not None
        fenced, go = threading.Event(), threading.Event()

        def pause_after_the_fence(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
            if threading.current_thread().name == "step" and statement.startswith("INSERT INTO messages"):
                fenced.set()  # the step holds the lease row now, not yet the agents row
                go.wait(30)

        errors: dict[str, BaseException] = {}

        def run(name: str, work: Callable[[], None]) -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                errors[name] = exc

        changes = StepChanges(messages=[stored(Message("m1", "a1", Role.ASSISTANT, "new"))])
        step_work = lambda: agents.commit_step("a1", changes, fence=Fence("a1", owner))  # noqa: E731
        step = threading.Thread(target=run, args=("step", step_work), name="step")
        deleter = threading.Thread(target=run, args=("delete", lambda: agents.delete("a1")), name="delete")
        engine = storage.metadata.engine
        event.listen(engine, "before_cursor_execute", pause_after_the_fence)
        try:
            step.start()
            assert fenced.wait(30), "the step never reached its messages"
            deleter.start()
            deleter.join(5)  # it waits for nothing the step holds
        finally:
            go.set()
            step.join(60)
            deleter.join(60)
            event.remove(engine, "before_cursor_execute", pause_after_the_fence)
        assert "delete" not in errors, errors
        assert "deadlock" not in str(errors.get("step", "")).lower(), errors
        assert agents.by_id("u", "a1") is None
        storage.turns.release("a1", owner)
        with storage.metadata.session() as s:
            for table in ("messages", "agent_leases", "agent_runs"):
                assert s.execute(text(f"select count(*) from {table} where agent_id = 'a1'")).scalar_one() == 0, table


def _waiting_on_a_lock(storage: Storage) -> bool:
    with storage.metadata.session() as s:
        query = "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
        return bool(s.execute(text(query)).scalar_one())


def test_a_new_database_another_process_is_writing_is_waited_for(tmp_path: Path) -> None:
    """SQLite refuses to switch a database to WAL at once, without waiting as other statements do, while another
    connection holds a write lock on it in the old journal mode (eight processes opening a new home together
    failed so once); the store waits as for any other lock."""
    import sqlite3
    import threading
    import time

    from memgpt.storage.sql import MetadataStore

    path = tmp_path / "metadata.sqlite"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other (x)")
    writer.execute("BEGIN IMMEDIATE")  # a write lock, still in the rollback journal mode
    writer.execute("INSERT INTO other VALUES (1)")
    ended = threading.Timer(0.5, lambda: writer.execute("COMMIT"))
    started = time.monotonic()  # before the timer's start: a pause between the two must not shorten the wait seen
    ended.start()
    try:
        store = MetadataStore(f"sqlite:///{path}")
        store.engine.dispose()
    finally:
        ended.join()
        writer.close()
    assert time.monotonic() - started >= 0.4  # it waited for the writer, rather than not meeting it at all


def test_a_sqlite_files_plain_transactions_keep_one_connection_and_a_failed_one_lets_it_go(tmp_path: Path) -> None:
    """``MetadataStore.connection`` on a SQLite file: the transactions of every thread run on one connection kept
    open (no pool checkout each: ~100 µs, more than a turn's statements), committed for the other connections, each
    undone whole when it fails; after a failure the next runs on a fresh connection, and one begun inside another
    gets a connection of its own."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import event

    metadata = MetadataStore(f"sqlite:///{tmp_path / 'metadata.sqlite'}")
    checkouts: list[object] = []
    counted = checkouts.append  # one bound method, to remove the very listener added
    try:
        with metadata.connection() as c:
            c.execute(text("create table t (a integer primary key)"))
        event.listen(metadata.engine, "checkout", lambda dbapi, *_: counted(dbapi))

        def insert(a: int) -> None:
            with metadata.connection() as c:
                c.execute(text("insert into t values (:a)"), {"a": a})

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(insert, range(20)))
        assert checkouts == []
        with metadata.session() as s:  # another connection sees every commit
            assert s.execute(text("select count(*) from t")).scalar() == 20
        checkouts.clear()

        failed: list[object] = []

        def refused() -> None:
            with metadata.connection() as c:
                failed.append(c.connection.dbapi_connection)
                c.execute(text("insert into t values (20)"))
                c.execute(text("insert into t values (0)"))  # refused: the transaction is undone, 20 with it

        with pytest.raises(StorageError, match="UNIQUE"):
            refused()
        with metadata.connection() as c:
            with metadata.connection() as inner:  # nested: a connection of its own
                assert inner is not c
            assert c.execute(text("select count(*) from t where a = 20")).scalar() == 0
        assert len(checkouts) == 2  # a fresh one after the failure, one for the nested transaction
        with metadata.session() as s, metadata.session() as again:  # (every connection the pool holds now)
            s.execute(text("select 1")), again.execute(text("select 1"))
        # The failed one was discarded, not given back to the pool: its state (a read snapshot) is never reused.
        assert failed and failed[0] not in checkouts
    finally:
        metadata.close()


def test_a_locked_database_looks_for_its_holder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Telling "database is locked" as a MetadataBusyError scans /proc for the lock's holder (``lock_holders``) once,
    not once for the line and again for its class."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from memgpt.errors import MetadataBusyError
    from memgpt.storage import sql

    metadata = MetadataStore(f"sqlite:///{tmp_path / 'metadata.sqlite'}")
    scans: list[list[Path]] = []

    def holders(paths: list[Path]) -> list[int]:
        scans.append(paths)
        return [os.getppid()]  # a live process, as if it held the lock

    monkeypatch.setattr(sql, "lock_holders", holders)
    try:
        error = metadata._error(OperationalError("insert", {}, sqlite3.OperationalError("database is locked")))
        assert isinstance(error, MetadataBusyError) and f"held by process {os.getppid()}" in str(error)
        assert len(scans) == 1
    finally:
        metadata.close()
