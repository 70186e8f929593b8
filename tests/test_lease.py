"""The agent lease (storage/turns.py) at the moments that decide it, on SQLite and PostgreSQL.

Each interleaving is made to happen, not hoped for: SQLAlchemy's own events pause the real code right after
the statement or commit that matters, and the other party acts there (in the same thread: which thread acts
does not matter to a lease, only what the database holds when it does). A lease must be granted to one owner
at a time, whatever happens in between: another thread of the process, the holder renewing while a newcomer
decides it expired, a holder killed with -9, a process that reuses a dead holder's pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from letta_client import Letta
from sqlalchemy import event, text, update

from memgpt.cli.common import TurnWait
from memgpt.config import load_config
from memgpt.errors import LeaseLostError
from memgpt.memory.messages import stored
from memgpt.memory.recall import RecallMemory
from memgpt.server.schemas.messages import Rendering
from memgpt.server.turns import TurnInput, TurnRunner
from memgpt.storage import Storage, expiring
from memgpt.storage import turns as storage_turns
from memgpt.storage.agents import StepEffect
from memgpt.storage.expiring import HOST, new_owner
from memgpt.storage.turns import Fence, LeaseRow, Run
from memgpt.types import AgentState, Message, Role
from tests.conftest import _opened_on_metadata_backend
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, use_scripted_llm

pytestmark = pytest.mark.usefixtures("metadata_url")


@pytest.fixture(params=["upsert", "insert"])
def claims(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """How a lease is claimed: SQLite's and PostgreSQL's one INSERT .. ON CONFLICT, or what another database
    gets (an INSERT refused while the row exists, then an UPDATE of an expired row)."""
    if request.param == "insert":
        monkeypatch.setattr(expiring, "_ON_CONFLICT", {})
        storage_turns._prepared.cache_clear()  # the statements are built once per dialect, from expiring._ON_CONFLICT
    yield str(request.param)
    storage_turns._prepared.cache_clear()


@contextmanager
def after_commit_of(storage: Storage, statement: str, action: Callable[[], None]) -> Iterator[None]:
    """Call ``action`` once, right after the first transaction that ran a statement starting with ``statement``
    has committed (before the code that committed it goes on)."""
    metadata = storage.metadata
    seen = {"ran": False, "committing": False, "done": False}

    def executed(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if not seen["done"] and sql.lstrip().upper().startswith(statement):
            seen["ran"] = True

    def committed(_session: Any) -> None:
        if seen["ran"] and not seen["done"]:
            seen["done"] = True
            action()

    def committing(_conn: Any) -> None:  # a transaction outside a session: its COMMIT (not a rollback) ...
        seen["committing"] = seen["ran"]

    plain = metadata.connection

    @contextmanager
    def connection() -> Iterator[Any]:  # ... done as the transaction's block is left (SQLite's connection is kept)
        with plain() as c:
            yield c
        if seen["committing"]:
            committed(None)

    event.listen(metadata.engine, "after_cursor_execute", executed)
    event.listen(metadata._sessions, "after_commit", committed)
    event.listen(metadata.engine, "commit", committing)
    setattr(metadata, "connection", connection)  # noqa: B010 (the store's own method, for this block)
    try:
        yield
    finally:
        event.remove(metadata.engine, "after_cursor_execute", executed)
        event.remove(metadata._sessions, "after_commit", committed)
        event.remove(metadata.engine, "commit", committing)
        delattr(metadata, "connection")
    assert seen["done"], f"no transaction ran {statement!r}"


CLAIMS = ("UPDATE AGENT_LEASES SET OWNER", "ON CONFLICT (AGENT_ID) DO UPDATE")  # what takes an existing lease


@contextmanager
def before_a_claim(storage: Storage, action: Callable[[], None]) -> Iterator[None]:
    """Call ``action`` once, right before the first statement that would take over an existing lease runs:
    whatever its process read or decided before, the database state it meets is the one ``action`` leaves."""
    engine = storage.metadata.engine
    seen = {"done": False}

    def executing(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        said = " ".join(sql.split()).upper()
        if not seen["done"] and any(claim in said for claim in CLAIMS):
            seen["done"] = True
            action()

    event.listen(engine, "before_cursor_execute", executing)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", executing)
    assert seen["done"], "no statement tried to take the lease over"


def lease_owner(storage: Storage, agent_id: str) -> str | None:
    with storage.metadata.session() as s:
        return s.execute(text("select owner from agent_leases where agent_id = :a"), {"a": agent_id}).scalar()


@pytest.mark.usefixtures("claims")
def test_a_lease_just_taken_is_not_taken_again_by_another_thread_of_the_process(storage: Storage) -> None:
    """Between the commit that takes the lease and acquire() returning, another send to the agent in the same
    process finds the lease held by a live owner (not one a crashed turn left) and its run running."""
    turns = storage.turns
    first, second = new_owner(), new_owner()
    meanwhile: dict[str, Any] = {}

    def another_send() -> None:
        meanwhile["grant"] = turns.acquire("a1", second, "run-2", 60, run=Run("run-2", "a1", "d2"))
        meanwhile["running"] = turns.running_run("a1")

    with after_commit_of(storage, "INSERT INTO AGENT_RUNS", another_send):  # the run is recorded with the lease
        grant = turns.acquire("a1", first, "run-1", 60, run=Run("run-1", "a1", "d1"))
    assert grant is not None
    assert meanwhile["grant"] is None, "two owners were granted the lease at once"
    assert meanwhile["running"] == "run-1", "a retry would take the running turn for a dead one and send again"
    assert lease_owner(storage, "a1") == first
    assert turns.renew("a1", first, 60) and not turns.renew("a1", second, 60)
    turns.release("a1", second)  # not its lease: nothing happens
    assert lease_owner(storage, "a1") == first
    turns.release("a1", first)
    assert lease_owner(storage, "a1") is None


def test_a_message_taken_with_the_lease_is_dated_then_and_never_before_the_agents_latest(storage: Storage) -> None:
    """The message a turn stores with its lease is dated in that transaction (not when it was handed over, which may
    be long before a claim that waited), and never before the agent's latest message, which another process, its
    clock ahead of this one's, may have dated: the agent's messages' dates never go backwards in stored order."""
    storage.agents.create(AgentState("a1", "a1", "u", "sam", "basic", "s", "m", 8000, "m", 4), [])
    handed = datetime.now(UTC) - timedelta(hours=1)  # made long before the claim
    message = Message("m-1", "a1", Role.USER, "hi", handed)
    before = datetime.now(UTC)
    owner = new_owner()
    grant = storage.turns.acquire("a1", owner, "run-1", 60, run=Run("run-1", "a1", "d1"), message=stored(message))
    assert grant is not None and grant.dated is not None and grant.dated >= before
    first = grant.dated
    storage.turns.release("a1", owner)
    ahead = datetime.now(UTC) + timedelta(hours=1)  # another process's clock, an hour ahead
    storage.messages.append("a1", [stored(Message("m-2", "a1", Role.ASSISTANT, "hello", ahead))])
    owner, later = new_owner(), stored(Message("m-3", "a1", Role.USER, "again", datetime.now(UTC)))
    grant = storage.turns.acquire("a1", owner, "run-2", 60, run=Run("run-2", "a1", "d2"), message=later)
    assert grant is not None and grant.dated == ahead
    storage.turns.release("a1", owner)
    stored_dates = [(m.id, m.created_at) for m in storage.messages.last("a1", 10)]
    assert stored_dates == [("m-1", first), ("m-2", ahead), ("m-3", ahead)]


def test_a_lease_held_for_a_turn_of_memgpt_run_is_renewed_while_held_and_given_back_after(storage: Storage) -> None:
    """`memgpt run` holds the agent's lease for each turn with ``TurnStore.holding(renew_every=...)``: a turn that
    runs longer than the lease keeps it (a newcomer finds it held, never a second turn between its steps), and it is
    given back when the turn ends."""
    turns = storage.turns
    with turns.holding("a1", 1.0, 0, renew_every=0.2) as held:
        time.sleep(2.5)
        assert turns.acquire("a1", new_owner(), "", 60) is None
        assert lease_owner(storage, "a1") == held.owner
    assert lease_owner(storage, "a1") is None


def test_a_lease_taken_with_one_statement_on_a_free_agent(storage: Storage) -> None:
    """Taking a free lease is one transaction: no second one that another owner could come between."""
    commits: list[object] = []
    committed = commits.append  # one bound method, to remove the very listener added
    event.listen(storage.metadata.engine, "commit", committed)  # a session's or a plain connection's
    try:
        owner = new_owner()
        assert storage.turns.acquire("a1", owner, "run-1", 60, run=Run("run-1", "a1", "d1")) is not None
    finally:
        event.remove(storage.metadata.engine, "commit", committed)
    assert len(commits) == 1
    assert storage.turns.acquire("a1", new_owner(), "run-2", 60) is None
    assert lease_owner(storage, "a1") == owner


@pytest.mark.usefixtures("claims")
def test_a_lease_its_owner_renews_after_a_newcomer_read_it_expired_stays_the_owners(storage: Storage) -> None:
    """The newcomer found the lease expired; its owner renewed it before the newcomer's claim: the claim must
    fail (the database decides, at the claim), or both believe they hold the agent."""
    turns = storage.turns
    first, second = new_owner(), new_owner()
    assert turns.acquire("a1", first, "run-1", 0.2) is not None
    time.sleep(0.3)
    renewed: dict[str, bool] = {}

    def owner_renews() -> None:
        renewed["first"] = turns.renew("a1", first, 60)

    with before_a_claim(storage, owner_renews):  # the newcomer found the lease expired
        taken = turns.acquire("a1", second, "run-2", 60)
    assert renewed["first"] is True
    assert taken is None, "a lease its owner had just renewed was taken over"
    assert lease_owner(storage, "a1") == first
    turns.release("a1", first)


@pytest.mark.usefixtures("claims")
def test_an_expired_lease_goes_to_exactly_one_newcomer(storage: Storage) -> None:
    turns = storage.turns
    assert turns.acquire("a1", new_owner(), "run-1", 0.1) is not None
    time.sleep(0.2)
    late: dict[str, Any] = {}

    def third_comes() -> None:
        late["grant"] = turns.acquire("a1", new_owner(), "run-3", 60)

    second = new_owner()
    with before_a_claim(storage, third_comes):  # both newcomers found it expired
        granted = turns.acquire("a1", second, "run-2", 60)
    assert (granted is None) != (late["grant"] is None)
    if granted is not None:
        assert lease_owner(storage, "a1") == second


def test_another_databases_lease_is_taken_by_statements_built_once(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database other than SQLite or PostgreSQL (this one, told it is another: no ON CONFLICT, this process's
    clock) takes a free lease, an expired one and a released one with statements built at its first lease only."""
    monkeypatch.setattr(storage_turns.TurnStore, "_dialect", property(lambda _self: "another"))
    storage_turns._prepared.cache_clear()
    built = {"statements": 0}

    def counted(build: Callable[..., Any]) -> Callable[..., Any]:
        def counting(*args: Any, **kwargs: Any) -> Any:
            built["statements"] += 1
            return build(*args, **kwargs)

        return counting

    for name in ("sql_insert", "update"):
        monkeypatch.setattr(storage_turns, name, counted(getattr(storage_turns, name)))
    turns = storage.turns
    try:
        assert turns.acquire("a1", new_owner(), "run-1", 0.1) is not None
        first = built["statements"]
        time.sleep(0.2)
        second = new_owner()
        assert turns.acquire("a1", second, "run-2", 60) is not None  # expired
        assert turns.acquire("a1", new_owner(), "run-3", 60) is None  # held
        turns.release("a1", second)
        third = new_owner()
        assert turns.acquire("a1", third, "run-4", 60) is not None  # free again
        assert lease_owner(storage, "a1") == third
        assert built["statements"] == first, "the fallback built its lease statements again"
    finally:
        storage_turns._prepared.cache_clear()


def _sam(server: LiveServer) -> tuple[Letta, str]:
    """letta-client on ``server`` (no retries: each test decides what is sent again) and a new agent "sam"."""
    letta = Letta(base_url=server.url, api_key=server.key(), max_retries=0)
    blocks = [{"label": "human", "value": "Name: Chad"}, {"label": "persona", "value": "I am Sam."}]
    agent = letta.agents.create(name="sam", memory_blocks=blocks, model="openai-compatible/scripted")  # type: ignore[arg-type]
    return letta, agent.id


def _holder(home: Path, agent_id: str, ttl: float) -> subprocess.Popen[str]:
    """Another process that takes the agent's lease and sleeps holding it."""
    code = (
        "import sys, time\n"
        "from memgpt.config import load_config\n"
        "from memgpt.storage import Storage\n"
        "from memgpt.storage.turns import new_owner\n"
        "from pathlib import Path\n"
        "home = Path(sys.argv[1])\n"
        "storage = Storage(load_config(home), home)\n"
        "owner = new_owner()\n"
        f"assert storage.turns.acquire({agent_id!r}, owner, 'run-held', {ttl})\n"
        "print(owner, flush=True)\n"
        "time.sleep(600)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(home)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def test_a_lease_of_a_live_process_is_kept_and_taken_at_once_after_kill_9(storage: Storage, home: Path) -> None:
    holder = _holder(home, "a1", 60)
    try:
        owner = holder.stdout.readline().strip() if holder.stdout else ""
        assert owner, "the holder process did not take the lease"
        assert storage.turns.acquire("a1", new_owner(), "run-2", 60) is None  # alive: held
        assert storage.turns.running_run("a1") == "run-held"
    finally:
        holder.kill()
        holder.wait()
    mine = new_owner()
    assert storage.turns.running_run("a1") is None
    assert storage.turns.acquire("a1", mine, "run-2", 60) is not None  # dead: taken at once, not after 60 s
    assert lease_owner(storage, "a1") == mine


def test_a_lease_left_by_an_earlier_process_with_this_pid_is_taken_at_once(storage: Storage) -> None:
    """A server restarted in the same pid namespace may get the pid its killed predecessor had (pids wrap
    around): that predecessor's lease is not this process's, though the pid is the same. (A container restarted
    gets a new pid namespace, so its predecessor's leases count as another host's and expire.)"""
    mine = new_owner()
    host, pid, *_ = mine.split(":")
    far = datetime(2999, 1, 1, tzinfo=UTC)
    earlier = f"{HOST}:{os.getpid()}:0:{'0' * 32}"  # this pid, started at another time (boot)
    assert (host, pid) == (HOST, str(os.getpid()))
    with storage.metadata.session() as s:
        s.add(LeaseRow(agent_id="a1", owner=earlier, run_id="run-0", expires_at=far, cancel_requested=False))
    assert storage.turns.running_run("a1") is None
    assert storage.turns.acquire("a1", mine, "run-1", 60) is not None
    assert lease_owner(storage, "a1") == mine


def test_a_lease_of_another_hosts_process_is_kept_until_it_expires(storage: Storage) -> None:
    """No process of another host can be seen: its lease (a holder killed there too) waits for the expiry.

    Its expiry is an hour away while the test checks that it holds (it was 1 s away: a loaded machine's pause
    of a second before those checks expired it), then brought to a moment away, and waited out."""
    elsewhere = "elsewhere:1:1:token"
    with storage.metadata.session() as s:
        far = datetime.now(UTC) + timedelta(hours=1)
        s.add(LeaseRow(agent_id="a1", owner=elsewhere, run_id="run-0", expires_at=far, cancel_requested=False))
    assert storage.turns.running_run("a1") == "run-0"
    assert storage.turns.acquire("a1", new_owner(), "run-1", 60) is None
    with storage.metadata.session() as s:
        expires = datetime.now(UTC) + timedelta(seconds=0.3)
        s.execute(update(LeaseRow).where(LeaseRow.agent_id == "a1").values(expires_at=expires))
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
    assert storage.turns.running_run("a1") is None
    mine = new_owner()
    assert storage.turns.acquire("a1", mine, "run-1", 60) is not None
    assert lease_owner(storage, "a1") == mine


def test_a_wait_for_a_lease_names_the_holders_host_with_its_pid(storage: Storage) -> None:
    """A PostgreSQL home is shared by processes of several hosts: the line of a wait for the agent's lease (``memgpt
    run``, ``memgpt delete agent``) names the holder's host beside its pid, which alone names no process."""
    elsewhere = "db-client-2#4026531836:4242:1:token"  # <host>#<pid namespace>:<pid>:<start>:<token>
    assert storage.turns.acquire("a1", elsewhere, "", 60) is not None
    assert TurnWait(storage.turns, "a1").where() == " (pid 4242 on host db-client-2)"
    storage.turns.release("a1", elsewhere)
    assert TurnWait(storage.turns, "a1").where() == ""  # nobody holds it


def _clock_off(monkeypatch: pytest.MonkeyPatch) -> dict[str, timedelta]:
    """This process's clock as storage/turns.py reads it, off by what the returned dict's "by" says."""
    skew = {"by": timedelta(0)}
    for module in (storage_turns, expiring):  # its runs' times; the claim's clock on a database without its own
        monkeypatch.setattr(module, "utc_now", lambda: datetime.now(UTC) + skew["by"])
    return skew


@pytest.mark.usefixtures("claims")
def test_a_process_whose_clock_is_far_off_takes_no_live_lease(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hosts sharing a PostgreSQL have clocks of their own: a lease is judged by the database's clock, so a
    newcomer an hour ahead finds a live lease live, and a holder an hour behind keeps its own."""
    skew, turns = _clock_off(monkeypatch), storage.turns
    holder = new_owner()
    assert turns.acquire("a1", holder, "run-1", 60) is not None
    skew["by"] = timedelta(hours=1)
    assert turns.running_run("a1") == "run-1"
    assert turns.acquire("a1", new_owner(), "run-2", 60) is None, "a newcomer's clock ahead took a live lease"
    skew["by"] = -timedelta(hours=1)
    assert turns.renew("a1", holder, 60)
    assert turns.acquire("a1", new_owner(), "run-2", 60) is None
    skew["by"] = timedelta(0)
    assert turns.running_run("a1") == "run-1"
    assert turns.acquire("a1", new_owner(), "run-2", 60) is None, "a holder's clock behind lost its lease"
    assert lease_owner(storage, "a1") == holder


@pytest.mark.usefixtures("claims")
def test_a_process_whose_clock_is_far_off_keeps_no_dead_lease(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder an hour ahead that takes and renews its lease for a moment and then stops (as one on another host
    that died: no pid to look at) holds it for that moment, not for an hour more.

    The moment is 2 s: at 0.3 s a loaded machine's pause between the renewal and the newcomer's look (two
    statements in a row) ended it first. Its end is waited for, not slept past."""
    skew, turns = _clock_off(monkeypatch), storage.turns
    skew["by"] = timedelta(hours=1)
    holder, moment = new_owner(), 2.0
    assert turns.acquire("a1", holder, "run-1", moment) is not None
    renewing = time.monotonic()
    assert turns.renew("a1", holder, moment)
    skew["by"] = timedelta(0)
    taken = turns.acquire("a1", new_owner(), "run-2", 60)
    looked = time.monotonic() - renewing
    assert taken is None, f"the lease renewed for {moment} s was free {looked:.2f} s after"  # the moment is not over
    deadline = renewing + 30  # far less than the hour the holder's clock is ahead
    while turns.running_run("a1") is not None:
        assert time.monotonic() < deadline, "a holder's clock ahead kept its lease past the expiry"
        time.sleep(0.05)
    skew["by"] = -timedelta(hours=1)  # and a newcomer's clock behind does not wait an hour either
    mine = new_owner()
    assert turns.acquire("a1", mine, "run-2", 60) is not None
    assert lease_owner(storage, "a1") == mine


def test_a_retry_in_another_process_as_the_turn_ends_gets_its_answer_not_a_second_turn(
    request: pytest.FixtureRequest, home: Path, llm: ScriptedLLM
) -> None:
    """A client's retry reaches another server process: it finds the first try's run still running, and that
    turn ends (its answer and its release one transaction) before the retry looks at the agent's lease. No lease
    then does not mean the first try's process died: the retry gets the stored answer, the message is not sent
    to the agent twice."""
    _opened_on_metadata_backend(request)
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    turns = server.state.storage.turns
    other: TurnRunner | None = None
    try:
        _, agent_id = _sam(server)
        answering = threading.Event()

        def answer(_: dict[str, Any]) -> dict[str, Any]:
            assert answering.wait(30)
            return {"tool": "send_message", "args": {"message": "Only once."}}

        llm.add(answer)

        def send(retry: bool) -> TurnInput:
            user = server.state.owner.id
            return TurnInput(user, agent_id, "hello", "user", 10, "digest-of-hello", retry, Rendering())

        first = server.state.turns().start(send(retry=False))
        running_run = turns.running_run

        def first_ends_meanwhile(agent: str) -> str | None:
            answering.set()
            deadline = time.monotonic() + 30
            while not first.done and time.monotonic() < deadline:
                time.sleep(0.02)
            return running_run(agent)

        turns.running_run = first_ends_meanwhile  # type: ignore[method-assign]
        other = TurnRunner(server.state)  # another server process: the first try's turn is not in its memory
        retried = other.start(send(retry=True))
        deadline = time.monotonic() + 30
        while not retried.done and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.done and retried.done
        assert retried.run_id == first.run_id and retried.body() == first.body()
        said = [m.content for m in server.state.storage.messages.last(agent_id, 100) if m.role is Role.USER]
        assert said == ["hello"] and len(llm.requests) == 1
    finally:
        vars(turns).pop("running_run", None)
        if other is not None:
            other.close()
        server.stop()


def _end_recorded_after_the_turn_and_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A turn's run's end left out of its last step's commit, to be recorded with the lease's release after the turn
    (as where the agent's recall index is shared: ``_Ending``), and that record failing (until ``monkeypatch.undo``).
    Only the commit's record (``storage.turns.give_back``) would otherwise be tried, and the fallback never ran."""
    from memgpt.errors import StorageError

    def fails(_c: Any, run: Run, _dialect: str) -> None:
        raise StorageError(f"the answer of run {run.id} cannot be written")

    monkeypatch.setattr(RecallMemory, "waits_at_close", property(lambda _self: True))
    monkeypatch.setattr(storage_turns, "_record_end", fails)


def test_a_turn_whose_answer_cannot_be_recorded_still_frees_the_agent(
    request: pytest.FixtureRequest, home: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording the run's answer and giving the lease back are one transaction; when it fails, the lease is given
    back alone. Else this process's own lease (alive, so not taken over) kept the agent busy until it expired. (A
    turn whose end its last step's commit does not record: ``_end_recorded_after_the_turn_and_failing``.)"""
    _opened_on_metadata_backend(request)
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        letta, agent_id = _sam(server)
        llm.reply("First.")
        llm.reply("Second.")
        _end_recorded_after_the_turn_and_failing(monkeypatch)
        letta.agents.messages.create(agent_id, messages=[{"role": "user", "content": "one"}])  # type: ignore[list-item]
        monkeypatch.undo()
        assert lease_owner(server.state.storage, agent_id) is None
        second = letta.agents.messages.create(agent_id, messages=[{"role": "user", "content": "two"}])  # type: ignore[list-item]
        assert [m.content for m in second.messages if m.message_type == "assistant_message"] == ["Second."]
    finally:
        server.stop()


@dataclass
class _Stall:
    backend: int = 0  # the PostgreSQL backend of the stopped holder's connection
    overran: threading.Event = field(default_factory=threading.Event)  # it went on by itself, STALL_LIMIT later


STALL_LIMIT = 90.0  # seconds a stopped holder stays stopped at most: far past what PostgreSQL should take to end it


def _storage_and_holders(home: Path, lease: float) -> tuple[Storage, Storage]:
    """The test's own storage (the default lease's idle transaction timeout, 30 s), which migrates the new
    database, and the stopped holder's, opened after it with a ``lease``-long one: PostgreSQL ends any session of
    that storage whose transaction waits ``lease`` for its client. On a machine at load ~20 a gen-2 GC of the
    pytest process (~0.1 CPU s) took 3-4.4 s, and one landing inside the migrations' transaction (70 statements)
    ended it ("terminating connection due to idle-in-transaction timeout") when the test opened one storage with
    the short lease for everything. Only the holder's write is meant to idle."""
    config = load_config(home)
    storage = Storage(config, home)
    config.server.lease_seconds = lease
    try:
        return storage, Storage(config, home)
    except BaseException:
        storage.close()
        raise


@contextmanager
def _holder_stalled_in_its_fenced_write(storage: Storage, write: Callable[[], None]) -> Iterator[_Stall]:
    """``write`` (a fenced write) on a thread that stops right after its fence's UPDATE of the lease row (the row
    locked, the transaction open: a stopped process) while the block runs (at most STALL_LIMIT); then it goes on
    and is joined."""
    stalled, go_on, stall = threading.Event(), threading.Event(), _Stall()

    def stop_inside(_conn: Any, cursor: Any, sql: str, *_: Any) -> None:
        if threading.current_thread().name == "holder" and sql.lstrip().upper().startswith("UPDATE AGENT_LEASES"):
            stall.backend = cursor.connection.info.backend_pid
            stalled.set()
            if not go_on.wait(STALL_LIMIT):
                stall.overran.set()

    event.listen(storage.metadata.engine, "after_cursor_execute", stop_inside)
    writer = threading.Thread(target=write, name="holder")
    try:
        writer.start()
        assert stalled.wait(30)
        yield stall
    finally:
        go_on.set()
        writer.join(STALL_LIMIT + 30)
        event.remove(storage.metadata.engine, "after_cursor_execute", stop_inside)


def test_a_holder_stalled_inside_its_fenced_write_neither_blocks_the_takeover_nor_stores_it_after(
    home: Path, metadata_url: str
) -> None:
    """A holder that stops between two statements of its fenced write keeps the lease row locked: a newcomer's
    claim of the expired lease waits for that lock. PostgreSQL ends the stopped transaction once it idled for
    the lease's length (undoing it), the claim goes on, and the holder's write, when it goes on, is refused as
    fenced. (SQLite has no server to end it: the newcomer's write waits for the busy timeout, then fails.)"""
    if not metadata_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: on SQLite a stopped writer holds the database's write lock until it goes on")
    storage, holders = _storage_and_holders(home, LEASE := 3.0)
    holder = new_owner()
    refused: list[BaseException] = []

    def fenced_write() -> None:
        try:
            holders.agents.record_effects("a1", [], fence=Fence("a1", holder))
        except LeaseLostError as exc:
            refused.append(exc)

    try:
        assert storage.turns.acquire("a1", holder, "run-1", LEASE) is not None
        with _holder_stalled_in_its_fenced_write(holders, fenced_write) as stall:
            newcomer = new_owner()
            while storage.turns.acquire("a1", newcomer, "run-2", LEASE) is None:  # until the lease expired
                time.sleep(0.1)
            # Taken while the holder is still stopped (PostgreSQL ended its transaction after LEASE idle), not
            # once it went on by itself STALL_LIMIT later: no wall-clock bound on a loaded machine's timings.
            assert not stall.overran.is_set(), "the takeover waited for the stopped holder's transaction"
        assert lease_owner(storage, "a1") == newcomer
        assert len(refused) == 1 and "took the agent over" in str(refused[0]), refused
    finally:
        holders.close()
        storage.close()


def test_a_holder_stalled_inside_its_fenced_write_past_its_lease_with_no_takeover_is_told_its_lease_lapsed(
    home: Path, metadata_url: str
) -> None:
    """A lone server process stopped inside its fenced write for longer than the lease, with nobody taking the
    agent over: PostgreSQL ends its idle transaction, the lease row still names it. The write must fail as a lapsed
    lease (nothing stored, said so), not with the database's "server closed the connection"."""
    if not metadata_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite has no server to end a stopped writer's transaction")
    import psycopg

    storage, holders = _storage_and_holders(home, LEASE := 1.0)
    holder = new_owner()
    failed: list[BaseException] = []

    def fenced_write() -> None:
        try:
            holders.agents.record_effects("a1", [StepEffect("step-1", "passage", "p1")], fence=Fence("a1", holder))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            failed.append(exc)

    try:
        assert storage.turns.acquire("a1", holder, "run-1", LEASE) is not None
        with _holder_stalled_in_its_fenced_write(holders, fenced_write) as stall:
            # PostgreSQL ends the transaction after it idled for the lease's length: until its session is gone.
            plain = metadata_url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(plain, autocommit=True) as monitor:
                alive = "SELECT state FROM pg_stat_activity WHERE pid = %s"
                while (state := monitor.execute(alive, (stall.backend,)).fetchone()) is not None:
                    assert not stall.overran.is_set(), f"the stopped holder's session is still {state[0]!r}"
                    time.sleep(0.1)
        assert lease_owner(storage, "a1") == holder  # nobody took it over
        assert len(failed) == 1 and isinstance(failed[0], LeaseLostError), failed
        assert "stalled past its lease" in str(failed[0]) and "took the agent over" not in str(failed[0])
        assert storage.agents.uncommitted_effects("a1") == []  # the write is not stored
    finally:
        holders.close()
        storage.close()


def test_a_lease_a_dead_holder_left_of_a_deleted_agent_goes_at_the_next_prune(storage: Storage) -> None:
    """An agent's delete skips a lease row its holder has locked (PostgreSQL's SKIP LOCKED; on SQLite the holder
    took it just after the delete, from the agent read before): when that holder dies before its release, the row,
    a claim and a run it left are swept the next time a turn forgets its agent's old runs. An expired lease of an
    agent that still exists stays: nobody took it over yet, so it still holds."""
    dead = f"{HOST}:999999999:0:{'0' * 32}"
    past = datetime.now(UTC) - timedelta(seconds=5)
    for agent_id in ("gone", "kept"):
        storage.agents.create(AgentState(agent_id, agent_id, "u", "sam", "basic", "s", "m", 8000, "m", 4), [])
    with storage.metadata.session() as s:
        s.add(LeaseRow(agent_id="kept", owner=dead, run_id="run-kept", expires_at=past, cancel_requested=False))
    postgres = storage.metadata.engine.dialect.name == "postgresql"

    def leave_behind() -> None:  # what the dead holder wrote before it died: a lease with its run, a claim
        with storage.metadata.session() as s:
            s.add(LeaseRow(agent_id="gone", owner=dead, run_id="run-gone", expires_at=past, cancel_requested=False))
            s.execute(text("insert into recall_index_claims values ('gone', :o, :t)"), {"o": dead, "t": past})
        storage.turns.start_run(Run("run-gone", "gone", "d"))
        storage.turns.start_run(Run("run-write", "passages:gone", "d"))

    if postgres:
        leave_behind()
        with storage.metadata.engine.connect() as holder:  # locks the lease row, as a fenced write does
            holder.execute(text("select * from agent_leases where agent_id = 'gone' for update"))
            storage.agents.delete("gone")
            holder.rollback()  # the holder dies: its release never comes
        assert lease_owner(storage, "gone") == dead
        storage.turns.start_run(Run("run-gone", "gone", "d"))  # forget_agent deleted these; a late holder's
        storage.turns.start_run(Run("run-write", "passages:gone", "d"))
    else:
        storage.agents.delete("gone")
        leave_behind()
    storage.turns.acquire("other", new_owner(), "run-1", 60, run=Run("run-1", "other", "d"), keep=timedelta(minutes=10))
    assert lease_owner(storage, "gone") is None
    assert lease_owner(storage, "kept") == dead
    with storage.metadata.session() as s:
        assert s.execute(text("select count(*) from recall_index_claims")).scalar() == 0
        runs = s.execute(text("select id from agent_runs order by id")).scalars().all()
    assert runs == ["run-1"]


def test_a_release_left_for_later_is_given_up_at_its_deadline_said_once_and_its_thread_ends(
    storage: Storage, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """``release_later`` while PostgreSQL stays stopped past ``within``: the background thread gives up (the lease
    lapses by itself), says so in one logged error, calls no ``then`` and ends, while the database is still down;
    nothing is tried after it (the lease is still its owner's once PostgreSQL is back)."""
    if storage.metadata.engine.dialect.name != "postgresql":
        pytest.skip("a database kept unreachable: the PostgreSQL server is stopped")
    postgres_server = request.getfixturevalue("postgres_server")
    turns, owner = storage.turns, new_owner()
    assert turns.acquire("a1", owner, "", 60) is not None
    given_back: list[bool] = []

    def releasers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "lease-releaser"]

    with caplog.at_level("INFO", logger="memgpt.storage.turns"), postgres_server.down():
        turns.release_later("a1", owner, within=1.0, then=lambda: given_back.append(True))
        assert releasers(), "no thread gives the lease back"
        deadline = time.monotonic() + 15
        while releasers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not releasers(), "the thread giving the lease back never ended"
        gave_up = [r for r in caplog.records if r.getMessage().startswith("gave up giving back the lease of agent a1")]
        assert len(gave_up) == 1 and gave_up[0].levelname == "ERROR", caplog.text
    time.sleep(1.5)  # (a thread still trying would give it back now)
    assert lease_owner(storage, "a1") == owner
    assert not given_back
    turns.release("a1", owner)


def test_a_release_left_for_later_that_fails_unexpectedly_is_tried_again(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """The background releaser takes any failure of a try (not only the database out of reach) as a failed try and
    tries again: a failure it did not expect ended its thread for good, and the lease stayed until it lapsed."""
    owner = new_owner()
    assert storage.turns.acquire("a1", owner, "", 60) is not None
    failed, given_back = threading.Event(), threading.Event()

    def fails_once(*_: Any) -> None:
        if threading.current_thread().name == "lease-releaser" and not failed.is_set():
            failed.set()
            raise RuntimeError("not the database's")

    event.listen(storage.metadata.engine, "before_cursor_execute", fails_once)
    try:
        storage.turns.release_later("a1", owner, within=60, then=given_back.set)
        assert failed.wait(30)
        assert given_back.wait(30), "the releaser's thread ended at the unexpected failure"
    finally:
        event.remove(storage.metadata.engine, "before_cursor_execute", fails_once)
    assert lease_owner(storage, "a1") is None
    assert any("giving back the lease of agent a1 failed" in r.getMessage() for r in caplog.records)


def test_a_follow_up_that_fails_after_a_later_release_neither_ends_the_releaser_nor_reaches_a_taker(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """The ``then`` of a lease given back later (the server wakes its waiters) raised out of the releaser: its thread
    ended with the other agents' leases still to give back (kept until they lapsed), and a take of the agent, which
    tries its release first, got the follow-up's error."""
    from sqlalchemy.exc import OperationalError

    owners = {agent_id: new_owner() for agent_id in ("a1", "a2", "a3")}
    for agent_id, owner in owners.items():
        assert storage.turns.acquire(agent_id, owner, "", 60) is not None
    database_back, given_back = threading.Event(), threading.Event()

    def away(*_: Any) -> None:  # the database out of reach for the releaser until all three are left to it
        if threading.current_thread().name == "lease-releaser" and not database_back.is_set():
            raise OperationalError("connect", {}, Exception("timeout expired"))

    def fails() -> None:
        raise RuntimeError("a follow-up's bug")

    event.listen(storage.metadata.engine, "before_cursor_execute", away)
    try:
        storage.turns.release_later("a1", owners["a1"], within=60, then=fails)  # given back first, in the thread
        storage.turns.release_later("a2", owners["a2"], within=60, then=given_back.set)
        storage.turns.release_later("a3", owners["a3"], within=60, then=fails)
        time.sleep(0.2)  # the releaser has tried (and failed) at least once
        database_back.set()
        assert given_back.wait(30), "the releaser's thread ended at a1's failed follow-up"
        assert storage.turns.acquire("a3", new_owner(), "", 60) is not None  # its release first, then the take
    finally:
        event.remove(storage.metadata.engine, "before_cursor_execute", away)
    assert lease_owner(storage, "a1") is None and lease_owner(storage, "a2") is None
    failed = [r for r in caplog.records if "its follow-up failed" in r.getMessage()]
    assert len(failed) >= 1 and failed[0].exc_info is not None, caplog.text


def test_closing_with_the_database_out_of_reach_tries_the_leases_left_for_a_bounded_time(storage: Storage) -> None:
    """A process that closes while the database does not answer (each try waiting a connect timeout) gives up its
    last tries at a total deadline: one try of each of N agents took N connect timeouts."""
    from sqlalchemy.exc import OperationalError

    agents = [f"a{i}" for i in range(5)]
    owners = {agent_id: new_owner() for agent_id in agents}
    for agent_id, owner in owners.items():
        assert storage.turns.acquire(agent_id, owner, "", 60) is not None
    closing_tries: list[str] = []

    def out_of_reach(*_: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            closing_tries.append("try")
            time.sleep(0.6)  # a connect timeout, shortened
        raise OperationalError("connect", {}, Exception("timeout expired"))

    event.listen(storage.metadata.engine, "before_cursor_execute", out_of_reach)
    try:
        for agent_id, owner in owners.items():
            storage.turns.release_later(agent_id, owner, within=60)
        storage.turns._later.close(within=1.0)
    finally:
        event.remove(storage.metadata.engine, "before_cursor_execute", out_of_reach)
    assert 1 <= len(closing_tries) <= 2, f"{len(closing_tries)} tries of {len(agents)} agents, past the deadline"


def test_a_turn_whose_answer_is_recorded_later_is_not_run_again_by_a_retry(
    request: pytest.FixtureRequest, home: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's answer and the lease fail to be recorded together, the lease alone is given back: the run's end is
    recorded in the background once the database takes it. Meanwhile a client's retry in this process joins the
    answered turn, and after it one in another process reads the recorded answer: left "running" with no lease,
    the run read as one whose process died mid-turn and the retry ran the turn again (the message answered twice)."""
    _opened_on_metadata_backend(request)
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    turns = server.state.storage.turns
    other: TurnRunner | None = None
    try:
        _, agent_id = _sam(server)
        llm.reply("Only once.")

        def send(retry: bool) -> TurnInput:
            return TurnInput(
                server.state.owner.id, agent_id, "hello", "user", 10, "digest-of-hello", retry, Rendering()
            )

        def done(turn: Any) -> None:
            deadline = time.monotonic() + 30
            while not turn.done and time.monotonic() < deadline:
                time.sleep(0.02)
            assert turn.done

        _end_recorded_after_the_turn_and_failing(monkeypatch)
        first = server.state.turns().start(send(retry=False))
        done(first)
        assert lease_owner(server.state.storage, agent_id) is None
        retried = server.state.turns().start(send(retry=True))
        done(retried)
        assert retried.run_id == first.run_id and retried.body() == first.body()
        monkeypatch.undo()
        deadline = time.monotonic() + 30
        while (run := turns.run(first.run_id)) is not None and run.status != storage_turns.FINISHED:
            assert time.monotonic() < deadline, "the run's end was never recorded"
            time.sleep(0.05)
        other = TurnRunner(server.state)  # another server process: the first try's turn is not in its memory
        again = other.start(send(retry=True))
        done(again)
        assert again.run_id == first.run_id and again.body() == first.body()
        said = [m.content for m in server.state.storage.messages.last(agent_id, 100) if m.role is Role.USER]
        assert said == ["hello"] and len(llm.requests) == 1
    finally:
        if other is not None:
            other.close()
        server.stop()
