"""`memgpt server` under N concurrent clients, each with its own agent, on an LLM that answers in a fixed time.

    python bench/server_bench.py [--clients 10,50,100] [--turns 5] [--backend default|scale|both] [--header]
    python bench/server_bench.py --backend scale --workers 2    # several server processes on one database
    python bench/server_bench.py --backend default --workers 2  # ... sharing one Milvus Lite server
    python bench/server_bench.py --backend default --workers 2 --connections own  # a connection per client
    python bench/server_bench.py --backend default --clients 100 --client httpx  # httpx 0.28's pool stalling
    python bench/server_bench.py --backend default --clients 50 --words 30  # chat-sized messages and replies
    python bench/server_bench.py --floor [--clients 10,50,100]  # the bench's own floor: no server, no LLM
    python bench/server_bench.py --floor --client-processes 1  # the clients on one event loop (before 2026-11-28)

The real `memgpt server` command runs as a child process on a new home; "default" is Milvus Lite + SQLite,
"scale" is PostgreSQL + a Milvus server (both started here, as the tests start them). The LLM is an
OpenAI-compatible server (``bench/fixed_llm.py``: uvicorn, a plain ASGI callable) in a process of its own that
answers every request with a `send_message` after ``--llm-ms`` (200 ms): a turn is one LLM call, so what a turn
takes beyond that is the server's own cost, plus the bench's floor (below). Until 2026-11-28 the LLM was a
thread-per-connection server inside the bench's process, under one GIL with the clients: its replies and the
clients' reading of answers waited on each other's Python.

The floor: ``--floor`` runs the same clients against ``bench/fixed_llm.py --standin``, a process that does nothing
but answer each send after ``--llm-ms`` (with a body shaped and sized as the server's) and the other routes at once,
in place of the server and the LLM. Its "added" latency is what the bench adds by itself: the clients' Python (an
event loop reads the answers arriving together one after another), loopback HTTP, and the scheduler's delays when
other work shares the cores. A server row's added latency less the floor's at the same clients is what the server
adds; on a machine shared with other work the floor itself moves by hundreds of milliseconds (2026-11-28, 2 cores
with a load of 10-22 from other work: at 50 clients p50 32-599 ms over nine runs, most 70-180; at 10 clients 22-52),
so read both from the same quiet minutes. Where the floor's time goes is printed under its row: the stand-in notes
when it received each send, woke from its sleep and had answered (``GET /times``, on the machine's monotonic clock,
the clients' too), so the added time splits into the request's way (the clients sending, loopback, the stand-in
taking it), the sleep's overshoot, the stand-in's answering, and the answer's way (loopback, a client loop reading
it); and how late each event loop woke from 10 ms sleeps. Under every row: how late the clients' loops woke, and how
long a turn they waited for a core while ready to run (Linux's schedstat; summed over the clients' processes). On
the busy machine of 2026-11-28 (load 13-21, one event loop for the clients): the stand-in's loop was rarely late
(p50 0-4 ms) and answered in under 1 ms, the sleep overshot by 1-7 ms (p50; uvloop's timers count whole
milliseconds, so one can also end up to ~0.3 ms early: left as it is, a second sleep to make up for it costs a
wake-up more), and the rest was the clients' side: their loop was ready but waiting for a core for 1.5 s of a 2 s
load (``nice`` gave it nothing: the kernel groups processes by session, autogroup), and it woke up to 200-470 ms
late; the sends reached the stand-in, and its answers left it, in clusters of 10-50 within 0-60 ms (each time the
clients' process got a core back), which one loop then read one after another at ~1 ms of Python each. So the
clients are spread over ``--client-processes`` (2) processes, each its own event loop (uvloop's) with its share of
the agents and connections, started together after the warm-up: a burst of answers is read by two loops at once, and
one loop's process waiting for a core holds up half the clients. At 50 clients, floor p50 / p95 added ms with one
process 94-297 / 148-551, with two 48-172 / 122-363 (eight pairs of runs, one after the other, the two processes'
p50 lower in seven; provisional: busy machine); the clients' CPU a turn 1.0-1.4 ms against 0.9-1.3. Against the
server (default backend, the same minutes) the p50 added moved with the machine more than with the split: 198-459 ms
with one, 305-469 with two (four runs each, load 16-25).

Clients speak raw HTTP through httpcore2's connection pool (the one httpx2 sends through; ``CorePool``) on uvloop's
event loops (one a process of the clients), rather than letta-client: the client's pydantic validation of every
answer would take CPU from the server on the same cores and count in the latencies. httpx2's client layer around
that pool (URL merging, request and response models, auth, redirects, hooks) cost about a third of the clients' CPU
a turn (at 50 clients on ``--floor``, busy machine: 1.0-1.5 ms a turn against 1.4-1.8; ``--client httpx2`` keeps
it for comparison).
The clients of a process share one connection pool, as one app driving many agents does (two processes: two
such apps; ``--connections own``: each its own connection, as separate apps do; with ``--workers`` that decides
whether an agent's turns stay in one worker, see ``_warm_and_load``).
``--client httpx`` drives them with httpx 0.28 instead: its pool (httpcore 1.0.9) hands the same idle connection
to every request that arrives before the first of them starts on it; the others find it busy and start over, each
time going through every connection for every waiting request. A burst of requests on a warm pool then spins the
client's event loop: at 100 clients the bench used 11 ms CPU a turn against 2 and some turns waited ~5 s, until
the idle connections no request could get expired (httpcore issues 822, 1035, 1110; the server is not involved).
httpx2's pool (httpcore2: pydantic's fork of httpx, which openai and mcp use) keeps a connection it gave to a
request. Each client sends ``--turns`` messages one after another; meanwhile one more client samples
the non-LLM routes (list agents, archival search), pausing ``--observer-pause`` (0.2 s) between requests.
After the run every agent's stored history is read back:
a lost message is a sent one whose user message or reply is missing (the first few are printed after the row, as
are the first errors, and then what the server logged; its home is then kept). The messages are a few words
("bench message 3") and every reply is "Noted." unless ``--words N``: then each message and each reply has N more
words (a chat's size), so recall indexing embeds what a chat would (each message's embedding costs CPU in
proportion to its tokens; a pass embeds a text it holds twice once, so identical replies cost one embedding a pass).

Prints one markdown row per (backend, clients): turns/s, p50/p95 of a turn's latency above the LLM's time, errors,
lost messages, p50/p95 of the two non-LLM routes under that load, and CPU time per turn (user + system, all threads,
the non-LLM routes included) of the server process, of the processes it started (Milvus Lite's ``milvus``; with
``--workers``, the workers), of the clients (their processes, during the measured load), of the LLM stub's process
and of the whole machine (with how many cores were busy: other people's work counts there too). The CPU is counted
until the server's recall indexing has caught up with every message (SQLite only; the last column says how long
after the load that took), so work a turn leaves for later is not missed; the cores busy are over that same span
(until 2026-11-28 over the load's time alone, which overstated them by the catching up's share). With
``--workers``, a line after the row gives each process the server started (Milvus Lite, each worker) its CPU per
turn. On a machine shared with other work the latencies say little, but the CPU a turn costs, against the cores
there are, bounds turns/s.

``--profile FILE`` also runs py-spy (``pip install py-spy``) on the server during each measured load: the share
of its samples in which a server thread held the GIL, collapsed stacks of those threads in FILE-<clients>.txt,
and the server's CPU per turn by thread name. Sampling stops the server each time, so a turn then costs more CPU
(~15 ms against ~9 at 50 clients on a busy machine): ``--threads`` gives the CPU per turn by thread name alone,
without sampling (py-spy names the threads once, at the end), and how long each thread waited for a core while
ready to run, and how often it was preempted, a turn (schedstat): a thread preempted while it holds the GIL stops
every other thread of the server, so the event loop's wait for a core adds to every turn's latency. At 50 clients
on a busy machine (load 25 on 2 cores, 2026-11-28) it ran 1.4 ms a turn and waited 7.9 ms, preempted 2.3 times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json as _json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpcore2
import httpx
import httpx2

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fixed_llm import FixedLLM, loop_lag  # noqa: E402
from bench.fixed_llm import words as _words  # noqa: E402

if TYPE_CHECKING:
    from tests.server_rig import ServerProcess

HANDLE = "openai-compatible/scripted"


def message_text(tag: str, number: int, agent: str, words: int) -> str:
    """The text an agent's ``number``-th message of the load ``tag`` carries (``words`` more words than its tag)."""
    text = f"{tag} message {number}"
    return f"{text}: {_words(words, f'{agent}/{text}')}" if words else text


# -- the deployments ----------------------------------------------------------------------------------
@contextlib.contextmanager
def deployment(backend: str, home: Path, llm: FixedLLM, workers: int = 1) -> Iterator[tuple[ServerProcess, str]]:
    """A running `memgpt server` on ``home`` configured for ``backend``; yields it and an API key."""
    # Here, not at the top: the processes of the clients (``--client-processes``) import this module and need
    # none of memgpt (its imports cost them seconds to start and to end, on a busy machine).
    from memgpt.config import save_config
    from memgpt.server.state import OWNER_NAME
    from memgpt.storage import Storage
    from tests.server_rig import ServerProcess, use_scripted_llm

    config = use_scripted_llm(home, llm.url, timeout=120)
    with contextlib.ExitStack() as stack:
        if backend == "scale":
            from tests.milvus_server import TOKEN, milvus_database, shared_server
            from tests.postgres import find_binaries, start_postgres, stop_postgres

            binaries = find_binaries()
            if binaries is None:
                raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
            postgres = start_postgres(binaries)
            stack.callback(stop_postgres, postgres)
            config.metadata_url = stack.enter_context(postgres.database())
            uri = stack.enter_context(shared_server())  # one Milvus server per machine: the tests' own
            config.milvus.uri, config.milvus.token = uri, TOKEN
            config.milvus.database = stack.enter_context(milvus_database(uri))
        config.server.busy_wait_seconds = 60
        save_config(config, home)
        with Storage(config, home) as storage:
            owner = storage.users.ensure(config.user_id, OWNER_NAME)
            key = storage.users.create_key(owner.id)[1]
        server = ServerProcess(home, workers=workers)
        stack.callback(server.stop)
        server.wait_ready()
        yield server, key


# -- the load -----------------------------------------------------------------------------------------
@dataclass
class Results:
    turns: list[float] = field(default_factory=list)  # seconds per turn
    errors: list[str] = field(default_factory=list)
    list_agents: list[float] = field(default_factory=list)
    search: list[float] = field(default_factory=list)
    wall: float = 0.0
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # (agent, sent, answered) of each turn
    lag: list[tuple[float, float]] = field(default_factory=list)  # the clients' loop: (at, late) per 10 ms sleep
    cpu: float = 0.0  # the clients' CPU seconds (user + system) during the measured load, every process's
    waited: float = 0.0  # seconds the clients' event loops were ready to run but waited for a core meanwhile

    def add(self, other: Results) -> None:
        """``other``'s turns, errors and samples with these (the clients of another process, same load)."""
        for name in ("turns", "errors", "list_agents", "search", "spans", "lag"):
            getattr(self, name).extend(getattr(other, name))
        self.wall, self.cpu, self.waited = max(self.wall, other.wall), self.cpu + other.cpu, self.waited + other.waited


def _spent() -> tuple[float, float]:
    """This process's CPU seconds so far, and how long its main thread (the event loop's) has waited for a core
    while ready to run (Linux's schedstat; 0.0 elsewhere)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        waited = int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        waited = 0.0
    return usage.ru_utime + usage.ru_stime, waited


class _Answer:
    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code, self.content = status_code, content

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class CorePool:
    """httpcore2's connection pool (the one httpx2's client sends through) without httpx2's client around it:
    ``post`` and ``get`` as the load calls them. At 50 clients on a stand-in that only waits (``--floor``) the
    client layer (merging URLs, the request and response models, auth, redirects, hooks) was about a third of the
    clients' CPU a turn, which they take from the server on the same cores."""

    def __init__(self, base_url: str, headers: dict[str, str], limits: Any, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        self._posting = [*self._headers, (b"content-type", b"application/json")]
        self._timeout = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}}
        self._pool = httpcore2.AsyncConnectionPool(
            max_connections=limits.max_connections, max_keepalive_connections=limits.max_keepalive_connections
        )

    async def __aenter__(self) -> CorePool:
        await self._pool.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pool.__aexit__(*exc)  # type: ignore[arg-type]

    async def post(self, path: str, json: Any) -> _Answer:
        body = _json.dumps(json).encode()
        got = await self._pool.request(
            "POST", self._base + path, headers=self._posting, content=body, extensions=self._timeout
        )
        return _Answer(got.status, got.content)

    async def get(self, path: str, params: dict[str, Any]) -> _Answer:
        url = f"{self._base}{path}?{urllib.parse.urlencode(params)}"
        got = await self._pool.request("GET", url, headers=self._headers, extensions=self._timeout)
        return _Answer(got.status, got.content)


# --client: the HTTP library of the load's clients, as (AsyncClient-like class, Limits)
CLIENTS = {
    "httpcore2": (CorePool, httpx2.Limits),
    "httpx2": (httpx2.AsyncClient, httpx2.Limits),
    "httpx": (httpx.AsyncClient, httpx.Limits),
}
HTTP_ERRORS = (
    httpx.HTTPError,
    httpx2.HTTPError,
    httpcore2.TimeoutException,
    httpcore2.NetworkError,
    httpcore2.ProtocolError,
    httpcore2.PoolTimeout,
)
# The observer samples the non-LLM routes under the clients' load; with no pause it is one more client sending
# back to back (~20 ms of server CPU a request: at 10 clients a third of the server's CPU, at 50 about a tenth).
OBSERVER_PAUSE = 0.2
# --client-processes: how many processes the clients are spread over, each its own event loop (see the docstring).
CLIENT_PROCESSES = 2


async def _client(http: Any, agent: str, turns: int, tag: str, results: Results, words: int) -> None:
    for number in range(turns):
        start = time.perf_counter()
        try:
            text = message_text(tag, number, agent, words)
            answer = await http.post(f"/v1/agents/{agent}/messages", json={"input": text})
            if answer.status_code != 200:
                results.errors.append(f"{answer.status_code} {answer.text[:200]}")
                continue
        except HTTP_ERRORS as exc:
            results.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        end = time.perf_counter()
        results.turns.append(end - start)
        results.spans.append((agent, start, end))


async def _observer(http: Any, agents: list[str], done: asyncio.Event, results: Results, pause: float) -> None:
    """The non-LLM routes, one after another with ``pause`` seconds between them, for as long as the turns run."""
    number = 0
    while not done.is_set():
        for path, into, params in (
            ("/v1/agents/", results.list_agents, {"limit": 50}),
            (f"/v1/agents/{agents[number % len(agents)]}/archival-memory/search", results.search, {"query": "tea"}),
        ):
            start = time.perf_counter()
            try:
                answer = await http.get(path, params=params)
                if answer.status_code == 200:
                    into.append(time.perf_counter() - start)
                else:
                    results.errors.append(f"{path}: {answer.status_code} {answer.text[:200]}")
            except HTTP_ERRORS as exc:
                results.errors.append(f"{path}: {type(exc).__name__}: {exc}")
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), pause)
        number += 1


async def _load(
    clients: list[Any],
    agents: list[str],
    turns: int,
    tag: str,
    words: int,
    pause: float = OBSERVER_PAUSE,
    observe: bool = True,
) -> Results:
    """Each agent's ``turns`` messages through ``clients`` (one shared, or one per agent plus one for the
    observer, the last), the observer looping meanwhile (``observe``: in one process of the clients' only)."""
    results = Results()
    done = asyncio.Event()
    observer = asyncio.create_task(_observer(clients[-1], agents, done, results, pause)) if observe else None
    lagging = asyncio.create_task(loop_lag(results.lag))
    start = time.perf_counter()
    senders = clients[:-1] if len(clients) > 1 else clients * len(agents)
    pairs = zip(senders, agents, strict=True)
    await asyncio.gather(*(_client(http, agent, turns, tag, results, words) for http, agent in pairs))
    results.wall = time.perf_counter() - start
    done.set()
    lagging.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lagging
    if observer is not None:
        await observer
    return results


async def _warm_and_load(
    url: str,
    key: str,
    agents: list[str],
    turns: int,
    own: bool,
    client: str,
    measuring: Any,
    words: int = 0,
    pause: float = OBSERVER_PAUSE,
    observe: bool = True,
) -> Results:
    """Each agent's first turn (opening it, not measured), then ``measuring()`` and the measured load, on the
    same connections. ``own``: every client its own keep-alive connection, as separate apps each driving one
    agent have (with ``--workers``, all of an agent's turns then reach the worker that accepted its
    connection); else one pool shared by all clients, as one app driving many agents has (each request takes
    whichever connection is free, so an agent's turns spread over the workers). ``client``: the HTTP library
    (``CLIENTS``; with httpx the pool kept from the warm-up stalls, see the module's docstring)."""
    headers = {"Authorization": f"Bearer {key}"}
    made_by, limited = CLIENTS[client]
    count = len(agents) + 1 if own else 1
    size = 1 if own else len(agents) + 4
    limits = limited(max_connections=size, max_keepalive_connections=size)
    made = (made_by(base_url=url, headers=headers, limits=limits, timeout=300) for _ in range(count))
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(http) for http in made]
        warm = await _load(clients, agents, 1, "warm-up", words, pause, observe)
        measuring()
        cpu, waited = _spent()
        results = await _load(clients, agents, turns, "bench", words, pause, observe)
        cpu_after, waited_after = _spent()
        results.cpu, results.waited = cpu_after - cpu, waited_after - waited
        results.errors[:0] = [f"warm-up: {error}" for error in warm.errors]
        return results


def _client_process(pipe: Any, *args: Any) -> None:
    """One process of the clients (``--client-processes``): ``_warm_and_load(*args)`` on its own event loop,
    telling the bench through ``pipe`` when its warm-up is done and waiting for the word to start the load,
    then sending it the Results."""

    def measuring() -> None:
        pipe.send("warmed")
        pipe.recv()

    with asyncio.Runner(loop_factory=_event_loop()) as runner:
        pipe.send(runner.run(_warm_and_load(*args[:6], measuring, *args[6:])))


def _run_clients(
    url: str,
    key: str,
    agents: list[str],
    turns: int,
    own: bool,
    client: str,
    measuring: Any,
    words: int,
    pause: float,
    processes: int = 1,
    ending: contextlib.ExitStack | None = None,
) -> Results:
    """The load (``_warm_and_load``) from ``processes`` processes, each its own event loop (uvloop's) driving its
    share of the agents (every ``processes``-th), the first of them with the observer: all warm up, then
    ``measuring()``, then all start the measured load together. With 1, on this process's own loop. The
    processes end on their own once they have sent their results; ``ending`` (if given) waits for them when it
    closes, after the CPU is counted (on a busy machine an interpreter's exit took a second or more)."""
    processes = min(processes, len(agents))
    if processes <= 1:
        with asyncio.Runner(loop_factory=_event_loop()) as runner:
            return runner.run(_warm_and_load(url, key, agents, turns, own, client, measuring, words, pause))
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # not fork: this process has threads (the server's log)
    pipes: list[Any] = []
    children: list[Any] = []

    def join() -> None:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()

    try:
        for number in range(processes):
            share = agents[number::processes]
            mine, theirs = context.Pipe()
            args = (theirs, url, key, share, turns, own, client, words, pause, number == 0)
            child = context.Process(target=_client_process, args=args, daemon=True)
            child.start()
            children.append(child)
            theirs.close()
            pipes.append(mine)
        for pipe in pipes:
            if pipe.recv() != "warmed":
                raise RuntimeError("a process of the bench's clients did not warm up")
        measuring()
        for pipe in pipes:
            pipe.send("go")
        results = Results()
        for pipe in pipes:
            results.add(pipe.recv())
    except EOFError:
        join()
        codes = [child.exitcode for child in children]
        raise RuntimeError(f"a process of the bench's clients ended early (exit codes {codes})") from None
    except BaseException:
        join()
        raise
    if ending is not None:
        ending.callback(join)
    else:
        join()
    return results


def _make_agents(url: str, key: str, count: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    agents = []
    with httpx2.Client(base_url=url, headers=headers, timeout=300) as http:
        for number in range(count):
            made = http.post("/v1/agents/", json={"name": f"bench-{uuid.uuid4().hex[:8]}", "model": HANDLE})
            made.raise_for_status()
            agents.append(made.json()["id"])
            if number < 10:  # something for archival search to find
                text = {"text": "Chad likes green tea in the morning."}
                http.post(f"/v1/agents/{agents[-1]}/archival-memory", json=text).raise_for_status()
    return agents


def _history(http: httpx2.Client, agent: str) -> list[dict[str, Any]]:
    """The agent's whole stored history, oldest first, page after page (one page holds at most 1000 items: a
    turn is three, the user message, a reasoning and an assistant message, so one page ended after ~330 turns)."""
    items: list[dict[str, Any]] = []
    while True:
        params: dict[str, Any] = {"limit": 1000, "order": "asc"} | ({"after": items[-1]["id"]} if items else {})
        page = http.get(f"/v1/agents/{agent}/messages", params=params)
        page.raise_for_status()
        if not page.json():
            return items
        items += page.json()


def _lost(url: str, key: str, agents: list[str], tag: str, turns: int, words: int) -> list[str]:
    """Each message the bench sent (the warm-up's and the load's) that is not in the agent's stored history, or
    is with no assistant message after it before the next one the bench sent, as "agent 'text': what is
    missing". Only the texts the bench sent are paired with replies: the history also shows, as user messages,
    what the server itself told the agent (the memory-pressure alert, {"type": "system_alert", ...}, stored once
    the context is 75% full: after ~100 turns of the bench's chat, then again after each trim), which no reply
    of their own follows (until 2026-11-28 they counted as lost: one per alert)."""
    headers = {"Authorization": f"Bearer {key}"}
    lost = []
    with httpx2.Client(base_url=url, headers=headers, timeout=300) as http:
        for agent in agents:
            sent = [message_text("warm-up", 0, agent, words)]
            sent += [message_text(tag, number, agent, words) for number in range(turns)]
            wanted = set(sent)
            replied: dict[str, int] = {}  # a sent text stored: how many assistant messages follow it
            current = None
            for item in _history(http, agent):
                if item["message_type"] == "user_message" and item["content"] in wanted:
                    current = item["content"]
                    replied.setdefault(current, 0)
                elif item["message_type"] == "assistant_message" and current is not None:
                    replied[current] += 1
            lost += [f"{agent} {text!r}: not stored" for text in sent if text not in replied]
            lost += [f"{agent} {text!r}: stored, no reply after it" for text in sent if replied.get(text) == 0]
    return lost


def _indexed(home: Path, pid: int, timeout: float = 120.0) -> float:
    """Wait until recall indexing has caught up with every message (read from the SQLite metadata database;
    0.0 at once for another database), so the CPU counted includes it; returns the seconds waited."""
    import sqlite3

    database = home / "metadata.sqlite"
    if not database.exists():
        return 0.0
    start = time.perf_counter()
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as db:
        while time.perf_counter() - start < timeout:
            left = db.execute("SELECT count(*) FROM messages WHERE searchable AND NOT indexed").fetchone()[0]
            if not left:
                break
            time.sleep(0.05)
    return time.perf_counter() - start


def _log_errors(log: Path) -> str:
    """What the server logged beyond answering requests: every line but uvicorn's INFO lines, and the requests
    it answered with a 4xx or 5xx (the last 1500 characters), or that there was nothing of the kind."""
    lines = log.read_text(errors="replace").splitlines()[1:]  # the first says where it listens
    said = [line for line in lines if not line.startswith("INFO:") or re.search(r'" [45]\d\d ', line)]
    return " / ".join(said)[-1500:] if said else "nothing but INFO lines, no request answered 4xx or 5xx"


def _floor_parts(base: str, results: Results, delay: float) -> str:
    """Where the floor's added latency goes, from the stand-in's times of each send (``GET /times``) paired
    with the clients' (an agent's sends are one after another: its n-th measured turn is its n-th send after
    the warm-up's), all on the machine's monotonic clock: p50/p95 ms of the request's way (the clients
    sending, loopback, the stand-in's loop taking it), the sleep's overshoot, the stand-in's answering, and the
    answer's way (loopback, the clients' loop reading it); and how late each loop woke from 10 ms sleeps."""
    times = httpx2.get(f"{base}/times", timeout=30).json()
    by_agent: dict[str, list[tuple[float, float]]] = {}
    for agent, sent, answered in results.spans:
        by_agent.setdefault(agent, []).append((sent, answered))
    parts: dict[str, list[float]] = {"request": [], "sleep overshoot": [], "answering": [], "answer": []}
    for agent, spans in by_agent.items():
        stood_in = times["sends"][agent][-len(spans) :]
        for (sent, answered), (received, woke, replied) in zip(spans, stood_in, strict=True):
            parts["request"].append(received - sent)
            parts["sleep overshoot"].append(woke - received - delay)
            parts["answering"].append(replied - woke)
            parts["answer"].append(answered - replied)
    first, last = min(s for _, s, _ in results.spans), max(e for _, _, e in results.spans)
    lag = [late for at, late in times["lag"] if first <= at <= last]
    return (
        "floor's added ms p50/p95: "
        + ", ".join(f"{name} {_ms(values, 0.5)}/{_ms(values, 0.95)}" for name, values in parts.items())
        + f"; the stand-in's loop late ms p50/p95/max {_ms(lag, 0.5)}/{_ms(lag, 0.95)}/{_ms(lag, 1.0)}"
    )


def _clients_line(results: Results) -> str:
    """How late the clients' event loops woke from 10 ms sleeps, and how long they waited for a core a turn."""
    lag = [late for _, late in results.lag]
    return (
        f"clients' loops late ms p50/p95/max {_ms(lag, 0.5)}/{_ms(lag, 0.95)}/{_ms(lag, 1.0)}, ready to run but"
        f" waiting for a core {results.waited * 1000 / max(1, len(results.turns)):.1f} ms a turn"
    )


def _ms(values: list[float], q: float, minus: float = 0.0) -> str:
    """The ``q`` quantile (nearest rank) of ``values`` seconds, less ``minus``, in milliseconds."""
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{(ordered[round(q * (len(ordered) - 1))] - minus) * 1000:.0f}"


@dataclass
class Cpu:
    """CPU seconds (user + system) used so far: the server process, the processes it started (Milvus Lite's
    ``milvus`` binary, or ``--workers`` processes), this process (the table's clients column is ``Results.cpu``:
    the clients' processes during the load), the LLM stub's process
    (``bench/fixed_llm.py``), and the whole machine (every process, other people's work included: only
    meaningful on a quiet machine). ``each``: every process the server started, by pid, as (command name, CPU
    seconds)."""

    server: float
    children: float
    bench: float
    machine: float
    each: dict[int, tuple[str, float]] = field(default_factory=dict)
    llm: float = 0.0

    @classmethod
    def now(cls, pid: int, llm_pid: int | None = None) -> Cpu:
        tick = os.sysconf("SC_CLK_TCK")
        server = llm = 0
        each = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:  # a process that ended meanwhile
                continue
            name, rest = text.rsplit(")", 1)
            fields = rest.split()
            used = int(fields[11]) + int(fields[12])
            if stat.parent.name == str(pid):
                server += used
            elif stat.parent.name == str(llm_pid):
                llm += used
            elif fields[1] == str(pid):
                each[int(stat.parent.name)] = (name.split("(", 1)[1], used / tick)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        busy = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        machine = sum(busy) - busy[3] - busy[4]  # all but idle and iowait
        children = sum(seconds for _, seconds in each.values())
        return cls(server / tick, children, usage.ru_utime + usage.ru_stime, machine / tick, each, llm / tick)

    def __sub__(self, other: Cpu) -> Cpu:
        each = {
            pid: (name, seconds - other.each.get(pid, (name, 0.0))[1]) for pid, (name, seconds) in self.each.items()
        }
        return Cpu(
            self.server - other.server,
            self.children - other.children,
            self.bench - other.bench,
            self.machine - other.machine,
            each,
            self.llm - other.llm,
        )

    def by_process(self, turns: int) -> str:
        """The processes the server started, with their CPU in ms per turn (Milvus Lite, then the workers)."""
        ordered = sorted(self.each.values(), key=lambda entry: (entry[0] != "milvus", -entry[1]))
        return ", ".join(
            f"{'Milvus Lite' if name == 'milvus' else name} {seconds * 1000 / turns:.1f}" for name, seconds in ordered
        )


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of ``pid``, by OS thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def _thread_waits(pid: int) -> dict[int, tuple[float, int]]:
    """Of each live thread of ``pid``, by OS thread id: the seconds it was ready to run but waiting for a core
    (Linux's schedstat) and how often it was preempted (``nonvoluntary_ctxt_switches``). A thread preempted while it
    holds the GIL stops every other Python thread of the process too (the event loop: see the docstring)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waited = int((task / "schedstat").read_text().split()[1]) / 1e9
            status = (task / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        switches = re.search(r"nonvoluntary_ctxt_switches:\s*(\d+)", status)
        found[int(task.name)] = (waited, int(switches.group(1)) if switches else 0)
    return found


def py_spy() -> str:
    """The py-spy executable (on PATH or next to this Python), or exit with one line saying how to get it."""
    import shutil

    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("server_bench: --threads and --profile need py-spy: pip install py-spy")
    return found


@contextlib.contextmanager
def gil_profile(pid: int, out: Path | None, rate: int = 100, *, by_thread: bool = False) -> Iterator[dict[str, Any]]:
    """With ``out``, py-spy samples the server's threads that hold the GIL (``--gil``) ``rate`` times a second
    while the block runs, writing collapsed stacks to ``out``; the yielded dict then gets ``gil``, the share of
    py-spy's samples in which a thread of the server held the GIL (1.0: its Python is the bottleneck), and
    ``threads``, the server's CPU seconds meanwhile by thread name (Python's names, from a ``py-spy dump`` at the
    end; "native" for threads without Python, such as ONNX Runtime's; "ended" for threads gone by then, such
    as finished turns'). With ``by_thread`` and no ``out``: ``threads`` only, without py-spy sampling meanwhile
    (sampling stops the server ``rate`` times a second: with it a turn took ~1.7 times the CPU)."""
    found: dict[str, Any] = {}
    if out is None and not by_thread:
        yield found
        return
    import subprocess

    spy = py_spy()
    before, process_before, waits_before = _thread_cpu(pid), Cpu.now(pid).server, _thread_waits(pid)
    sampling = None
    if out is not None:
        command = [spy, "record", "--pid", str(pid), "--gil", "--rate", str(rate), "--format", "raw"]
        command += ["--output", str(out)]
        log = out.with_suffix(".log").open("w")
        sampling = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
    start = time.perf_counter()
    try:
        yield found
    finally:
        wall = time.perf_counter() - start
        after, process_after, waits_after = _thread_cpu(pid), Cpu.now(pid).server, _thread_waits(pid)
        if sampling is not None:
            sampling[0].send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
            sampling[0].wait(60)
            sampling[1].close()
        dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, check=False).stdout
        names = {
            int(tid): re.sub(r"[-_ ]?\(?[0-9a-f]{6,}\)?|[-_ ]\d+$", "", name)
            for tid, name in re.findall(r'Thread (\d+) \([^)]*\): "([^"]*)"', dump)
        }
        threads: dict[str, float] = {}
        for tid, seconds in after.items():
            name = names.get(tid, "native")
            threads[name] = threads.get(name, 0.0) + seconds - before.get(tid, 0.0)
        threads["ended"] = (process_after - process_before) - sum(threads.values())
        waits: dict[str, tuple[float, int]] = {}
        for tid, (waited, switches) in waits_after.items():
            name = names.get(tid, "native")
            was = waits_before.get(tid, (0.0, 0))
            sum_waited, sum_switches = waits.get(name, (0.0, 0))
            waits[name] = (sum_waited + waited - was[0], sum_switches + switches - was[1])
        found["waits"] = waits
        if out is not None:
            samples = sum(int(line.rsplit(" ", 1)[1]) for line in out.read_text().splitlines() if line.strip())
            found["gil"] = samples / max(1.0, wall * rate)
        found["threads"] = threads


def _event_loop() -> Any:
    """uvloop's event loop where there is one (not on Windows), as the server's: the clients' loop then costs
    less of the CPU the server needs."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(
    backend: str,
    clients: int,
    turns: int,
    llm_ms: int,
    workers: int = 1,
    profile: Path | None = None,
    own: bool = False,
    client: str = "httpcore2",
    words: int = 0,
    by_thread: bool = False,
    pause: float = OBSERVER_PAUSE,
    floor: bool = False,
    client_processes: int = 1,
) -> str:
    """One row of the table; ``floor``: against ``bench/fixed_llm.py --standin`` in place of `memgpt server`
    (no server, no LLM stub: a process that answers a send after ``llm_ms``), the bench's own floor."""
    llm = FixedLLM(llm_ms / 1000, words, standin=floor)
    lost: list[str] | None = None
    catch_up: float | None = None
    logged: str | None = None  # what the server logged, when a send failed or a message was lost
    parts: str | None = None  # with ``floor``: where its added latency goes
    scratch = Path(tempfile.mkdtemp(prefix="bench-server-"))
    try:
        with contextlib.ExitStack() as serving:
            if floor:
                url, key, pid, llm_pid = llm.base, "floor", llm.pid, None
            else:
                server, key = serving.enter_context(deployment(backend, scratch / "home", llm, workers))
                url, pid, llm_pid = server.url, server.process.pid, llm.pid
            agents = _make_agents(url, key, clients)
            before: dict[str, Any] = {}
            with contextlib.ExitStack() as profiling:

                def measuring() -> None:  # after the warm-up: each agent's first turn opens it, not measured
                    before.update(calls=llm.calls, cpu=Cpu.now(pid, llm_pid), at=time.perf_counter())
                    before["gil"] = profiling.enter_context(gil_profile(pid, profile, by_thread=by_thread))

                results = _run_clients(
                    url, key, agents, turns, own, client, measuring, words, pause, client_processes, serving
                )  # fmt: skip
            gil = before["gil"]
            calls = (llm.calls - before["calls"]) / max(1, len(results.turns))
            if not floor:
                catch_up = _indexed(server.home, pid)
            else:
                parts = _floor_parts(url, results, llm_ms / 1000)
            cpu = Cpu.now(pid, llm_pid) - before["cpu"]
            span = time.perf_counter() - before["at"]  # the load and the indexing's catching up: what cpu covers
            if not floor:
                lost = _lost(url, key, agents, "bench", turns, words)
                if results.errors or lost:
                    logged = _log_errors(server.log)
    finally:
        llm.close()
        if logged is None:
            shutil.rmtree(scratch, ignore_errors=True)
    llm_s = llm_ms / 1000 * calls
    label = "Milvus Lite + SQLite" if backend == "default" else "Milvus server + PostgreSQL"
    label = f"floor: a stand-in answering in {llm_ms} ms" if floor else label
    label += f", {workers} workers" if workers > 1 else ""
    label += ", a connection per client" if own else ""
    label += f", clients on {client}" if client != "httpcore2" else ""
    label += f", messages and replies +{words} words" if words else ""
    done = max(1, len(results.turns))
    used = (cpu.server, cpu.children, results.cpu, cpu.llm, cpu.machine)
    per_turn = [f"{seconds * 1000 / done:.1f}" for seconds in used]
    per_turn[3] = "-" if floor else per_turn[3]  # the stand-in is both: its CPU is in the server's column
    cores = cpu.machine / span if span else 0.0
    lost_ = "-" if lost is None else str(len(lost))
    return (
        f"| {label} | {clients} | {len(results.turns)} | {len(results.turns) / results.wall:.1f} | "
        f"{_ms(results.turns, 0.5, llm_s)} | {_ms(results.turns, 0.95, llm_s)} | {len(results.errors)} | {lost_} | "
        f"{_ms(results.list_agents, 0.5)} / {_ms(results.list_agents, 0.95)} | "
        f"{_ms(results.search, 0.5)} / {_ms(results.search, 0.95)} | "
        f"{' | '.join(per_turn[:4])} | {per_turn[4]} ({cores:.2f} of {os.cpu_count()}) | "
        f"{'-' if catch_up is None else f'{catch_up:.1f}'} |"
        + (f" GIL held {gil['gil']:.0%} of py-spy's samples ({profile}) |" if "gil" in gil else "")
        + (
            "\n\nserver CPU ms/turn by thread: "
            + ", ".join(
                f"{name} {seconds * 1000 / done:.1f}"
                for name, seconds in sorted(gil["threads"].items(), key=lambda item: -item[1])
            )
            # The observer's routes are plain functions: they run on AnyIO's worker threads, as nothing of a send does.
            + f" (the non-LLM routes answered {len(results.list_agents) + len(results.search)} requests meanwhile,"
            " on the AnyIO worker threads)"
            + "; waiting for a core ms/turn (preempted times/turn): "
            + ", ".join(
                f"{name} {waited * 1000 / done:.1f} ({switches / done:.1f})"
                for name, (waited, switches) in sorted(gil["waits"].items(), key=lambda item: -item[1][0])
                if waited * 1000 / done >= 0.05
            )
            if "threads" in gil
            else ""
        )
        + f"\n\n{parts + '; ' if parts else ''}{_clients_line(results)}"
        + (f"\n\nCPU ms/turn of the processes the server started: {cpu.by_process(done)}" if workers > 1 else "")
        + (f"\n\nfirst errors: {results.errors[:3]}" if results.errors else "")
        + (f"\n\nfirst lost: {lost[:3]}" if lost else "")
        + (f"\n\nserver log ({server.log}, kept): {logged}" if logged is not None else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10,50,100", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--turns", type=int, default=5, help="messages each client sends, one after another")
    parser.add_argument("--backend", choices=["default", "scale", "both"], default="both")
    parser.add_argument("--llm-ms", type=int, default=200, help="how long the LLM takes to answer")
    parser.add_argument("--workers", type=int, default=1, help="server processes (`memgpt server --workers N`)")
    parser.add_argument(
        "--connections",
        choices=["pooled", "own"],
        default="pooled",
        help="pooled: the clients share one connection pool (one app, many agents); own: each client its own",
    )
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="httpcore2",
        help="the clients' HTTP library (httpx: its pool stalls under bursts, see the docstring)",
    )
    parser.add_argument(
        "--words", type=int, default=0, help="words added to every message and reply (0: a few words, 'Noted.')"
    )
    parser.add_argument(
        "--observer-pause",
        type=float,
        default=OBSERVER_PAUSE,
        help="seconds between the non-LLM route requests sampled during the load (0: back to back)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="the bench's own floor: a stand-in that only waits --llm-ms in place of the server (and the LLM)",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=CLIENT_PROCESSES,
        help="processes the clients are spread over, each its own event loop (the observer in the first; default 2)",
    )
    parser.add_argument("--header", action="store_true", help="print the table's header first")
    parser.add_argument(
        "--profile", type=Path, help="py-spy (--gil) the server during each measured load into FILE-<clients>.txt"
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="the server's CPU per turn by thread, without --profile's sampling (which slows the server)",
    )
    args = parser.parse_args()
    if args.threads or args.profile:
        py_spy()  # before minutes of load, not after them
    if args.header:
        print(f"### memgpt server: N clients, each its own agent, LLM answering in {args.llm_ms} ms")
        print()
        print(
            "| backend | clients | turns | turns/s | p50 added ms | p95 added ms | errors | lost "
            "| list agents p50/p95 ms | archival search p50/p95 ms | server CPU ms/turn | its children (Milvus Lite) "
            "| bench's clients | LLM stub | whole machine (cores busy) | recall index caught up s after |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if args.client_processes < 1:
        parser.error("--client-processes must be 1 or more")
    if args.floor and (args.profile or args.threads or args.workers > 1):
        parser.error("--floor has no server to profile or run workers of")
    backends = ["default", "scale"] if args.backend == "both" else [args.backend]
    backends = ["default"] if args.floor else backends
    for backend in backends:
        for clients in (int(n) for n in args.clients.split(",")):
            profile = args.profile.with_name(f"{args.profile.stem}-{clients}.txt") if args.profile else None
            own = args.connections == "own"
            row = run(
                backend, clients, args.turns, args.llm_ms, args.workers, profile, own, args.client, args.words,
                by_thread=args.threads, pause=args.observer_pause, floor=args.floor,
                client_processes=args.client_processes,
            )  # fmt: skip
            print(row, flush=True)


if __name__ == "__main__":
    main()
