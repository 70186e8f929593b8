"""Where a server turn's CPU goes: each part's thread CPU time, one turn at a time, in this process.

    python bench/turn_parts_bench.py [--turns 300] [--agents 20]

The server's app (Milvus Lite + SQLite, on a new home) runs in this process with an OpenAI-compatible LLM that
answers at once (bench/fixed_llm.py, its own process); each turn goes through ``TurnRunner.start`` as a send's does,
one after another over ``--agents`` agents (each opened by a first turn before measuring). The parts of a turn
(taking the lease, the LLM call, the step's commit, giving the lease back, ...) and every SQL statement the turn
runs are timed with ``time.thread_time`` around them: CPU of the calling thread, inclusive (a part's figure
holds the parts it calls; the SQL rows count every thread's statements, the recall indexer's select and
``update messages`` too), which moves less with the machine's load than server_bench.py's whole-process figure
under 50 clients, though on a shared machine it still moves by ~20% from run to run. What the HTTP layer, the
recall indexer and the other threads cost is server_bench.py's ``--threads``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy.engine.base

from bench.server_bench import HANDLE, FixedLLM
from memgpt.agent.agent import Agent
from memgpt.llm.openai_compat import OpenAICompatible
from memgpt.server.schemas.messages import Rendering
from memgpt.server.turns import Turn, TurnInput, TurnRunner, request_digest
from memgpt.storage.agents import AgentStore
from memgpt.storage.sql import Direct
from memgpt.storage.turns import TurnStore
from tests.server_rig import LiveServer, use_scripted_llm

# (owner, method, what it is): the parts of a turn, outermost first.
PARTS: list[tuple[type, str, str]] = [
    (TurnRunner, "_begin", "the whole turn (its thread's CPU)"),
    (TurnRunner, "_opening", "opening: lease, message, agent"),
    (TurnRunner, "_take_lease", "  taking the lease (with the run and the message)"),
    (TurnStore, "acquire", "    TurnStore.acquire"),
    (TurnRunner, "_open", "  the agent, kept open since its last turn"),
    (Agent, "refuse_oversized", "  the message's size check"),
    (TurnRunner, "_run", "running: steps, answer, release"),
    (OpenAICompatible, "request", "  the LLM call (HTTP, JSON)"),
    (Agent, "_commit", "  the step's commit"),
    (AgentStore, "commit_step", "    AgentStore.commit_step"),
    (Turn, "step_items", "  the step's Letta messages"),
    (TurnRunner, "_release", "  giving the lease back (with the run's answer), when not in the last step's commit"),
]


def _add(spent: Counter[str], calls: Counter[str], longest: dict[str, float], label: str, seconds: float) -> None:
    spent[label] += seconds
    calls[label] += 1
    longest[label] = max(longest.get(label, 0.0), seconds)


def _timed(
    spent: Counter[str], calls: Counter[str], longest: dict[str, float], label: str, function: Callable[..., Any]
) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            _add(spent, calls, longest, label, time.thread_time() - start)

    return timed


def _statement(statement: Any) -> str:
    """A statement's kind and table, e.g. ``SQL insert messages``."""
    table = getattr(getattr(statement, "table", None), "name", "")
    return f"SQL {getattr(statement, '__visit_name__', type(statement).__name__)} {table}".rstrip()


def measure(turns: int, agents: int) -> None:
    spent: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    longest: dict[str, float] = {}  # the most one call took
    for owner, name, label in PARTS:
        setattr(owner, name, _timed(spent, calls, longest, label, getattr(owner, name)))
    execute = sqlalchemy.engine.base.Connection.execute

    def counted(self: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return execute(self, statement, *args, **kwargs)
        finally:
            _add(spent, calls, longest, _statement(statement), time.thread_time() - start)

    sqlalchemy.engine.base.Connection.execute = counted  # type: ignore[method-assign]
    run_direct = Direct._run

    def counted_direct(self: Direct, *args: Any, **kwargs: Any) -> Any:  # a statement on the driver's cursor
        start = time.thread_time()
        try:
            return run_direct(self, *args, **kwargs)
        finally:
            words = self.sql.split()
            table = words[2] if words[0] in ("INSERT", "DELETE") else words[1]
            _add(spent, calls, longest, f"SQL {words[0].lower()} {table} (direct)", time.thread_time() - start)

    Direct._run = counted_direct  # type: ignore[method-assign]
    collecting: dict[int, float] = {}  # thread id -> when its collection began

    def collection(phase: str, info: dict[str, int]) -> None:  # Python's garbage collector, in whatever thread
        if phase == "start":
            collecting[threading.get_ident()] = time.thread_time()
        elif (began := collecting.pop(threading.get_ident(), None)) is not None:
            label = f"garbage collection, generation {info['generation']} (any thread)"
            _add(spent, calls, longest, label, time.thread_time() - began)

    gc.callbacks.append(collection)
    llm = FixedLLM(0.0)
    with tempfile.TemporaryDirectory(prefix="bench-turn-parts-") as scratch:
        home = Path(scratch) / "home"
        os.environ["MEMGPT_HOME"] = str(home)  # nothing of this run reaches the user's own home
        server = LiveServer(home, use_scripted_llm(home, llm.url, timeout=120))
        try:
            headers = {"Authorization": f"Bearer {server.key()}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
                ids = []
                for number in range(agents):
                    made = http.post("/v1/agents/", json={"name": f"parts-{number}", "model": HANDLE})
                    made.raise_for_status()
                    ids.append(made.json()["id"])
            runner, user = server.state.turns(), server.state.owner.id

            def turn(agent: str, number: int) -> None:
                body = {"input": f"parts message {number}"}
                digest = request_digest(user, agent, f"/v1/agents/{agent}/messages", body)
                sent = TurnInput(user, agent, str(body["input"]), "user", 10, digest, False, Rendering())
                started = runner.start(sent)
                while not started.done:
                    time.sleep(0.001)
                if started.error is not None:
                    raise SystemExit(f"a turn failed: {started.error}")

            for number, agent in enumerate(ids):  # opens each agent: not measured
                turn(agent, -1 - number)
            spent.clear()
            calls.clear()
            longest.clear()
            process = time.process_time()
            for number in range(turns):
                turn(ids[number % len(ids)], number)
            process = time.process_time() - process
        finally:
            server.stop()
            llm.close()
    labels = [label for _, _, label in PARTS] + sorted(
        (k for k in spent if k.startswith("SQL")), key=lambda k: -spent[k]
    )
    labels += sorted(k for k in spent if k.startswith("garbage"))
    print(f"### A server turn's parts: thread CPU ms a turn, {turns} turns one at a time over {agents} agents")
    print()
    print("| part | ms a turn | calls a turn | the longest call, ms |")
    print("|---|---|---|---|")
    for label in labels:
        if calls[label]:
            share, count, most = spent[label] * 1000 / turns, calls[label] / turns, longest[label] * 1000
            print(f"| {label} | {share:.3f} | {count:.1f} | {most:.1f} |")
    sql = sum(seconds for label, seconds in spent.items() if label.startswith("SQL"))
    print(f"| SQL statements, all (SQLAlchemy's and direct, transactions aside) | {sql * 1000 / turns:.3f} | | |")
    print(f"| this process, all threads (recall indexing too; not the LLM) | {process * 1000 / turns:.3f} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--agents", type=int, default=20)
    args = parser.parse_args()
    measure(args.turns, args.agents)


if __name__ == "__main__":
    main()
