"""What one agent step costs in memgpt's own time, with an LLM that answers instantly.

Usage: python bench/step_bench.py [--sizes 10000,100000] [--turns 60] [--unindexed 1000]
For each history size: a fresh home (Milvus Lite, SQLite, the local MiniLM) holds one agent with that
many older messages in recall (out of its context window, already indexed: synthetic chat lines with
random unit vectors, so seeding 100k messages does not take an hour of embedding), then ``--turns``
one-step turns (the model calls send_message at once). A turn's own time is its wall time minus the time
the LLM took (an in-process client answering from memory: microseconds); its CPU time is the turn thread's
(``time.thread_time``), which moves less than wall time with the machine's load. Recall indexing that runs after
the reply (in the background) is reported beside it, and left to finish between turns as a person's
reading time would. SQL statements are counted per turn on the thread that runs the turn. ``open`` is
opening the agent (tools, memory, recall catch-up) in a freshly opened home with its history indexed,
and with the newest ``--unindexed`` messages not yet in the recall index (as after a crash, or a home
from an older version); ``until all indexed`` is how long the background catch-up then takes.
It runs unchanged against a checkout from before background indexing (it only calls ``close`` and
``wait_indexed`` where they exist), for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import event, func, select, update

from memgpt.agent.agent import Agent
from memgpt.agent.manager import create_agent, open_agent
from memgpt.config import Config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.llm.base import ChatMessage, Completion, LLMClient, ToolChoice, ToolSpec
from memgpt.memory.messages import stored
from memgpt.storage import Storage
from memgpt.storage.messages import MessageRow
from memgpt.types import AgentState, Message, Passage, Role, ToolCall, utc_now

WORDS = """sailing weather harbor lantern coffee garden violin mountain river train ticket birthday sister
project deadline recipe tomato basil winter summer holiday museum painting novel chapter bicycle marathon
doctor appointment meeting budget invoice puppy kitten library history physics guitar concert""".split()  # noqa: SIM905
IN_CONTEXT = 20  # older messages still in the window when the bench starts
console = Console(width=None if sys.stdout.isatty() else 150)


class InstantLLM(LLMClient):
    """Answers every request at once with a send_message call (and summary requests with a line)."""

    def __init__(self, context_window: int) -> None:
        self.model = "bench"
        self.context_window = context_window
        self.seconds = 0.0
        self.calls = 0

    def request(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], *, choice: ToolChoice, timeout: float
    ) -> Completion:
        began = time.perf_counter()
        self.calls += 1
        if not tools:
            answer = Completion("Summary: we talked about many things.")
        else:
            arguments = json.dumps({"message": f"Reply number {self.calls}."})
            answer = Completion("Answering.", (ToolCall(f"call_{self.calls}", "send_message", arguments),))
        self.seconds += time.perf_counter() - began
        return answer


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + "."


def unit_vector(rng: random.Random, dimensions: int) -> list[float]:
    vector = [rng.gauss(0, 1) for _ in range(dimensions)]
    norm = sum(v * v for v in vector) ** 0.5
    return [v / norm for v in vector]


def seed_history(storage: Storage, model: LocalMiniLM, state: AgentState, count: int, unindexed: int) -> None:
    """``count`` older messages (user and assistant in turn, a minute apart), all but the newest
    ``IN_CONTEXT`` out of the window; all but the newest ``unindexed`` in the recall index."""
    rng = random.Random(count)
    start = utc_now() - timedelta(minutes=count + 10)
    messages: list[Message] = []
    for i in range(count):
        at = start + timedelta(minutes=i)
        if i % 2 == 0:
            messages.append(Message(f"h{i:07d}", state.id, Role.USER, sentence(rng), at))
        else:
            call = ToolCall(f"hc{i}", "send_message", json.dumps({"message": sentence(rng)}))
            messages.append(Message(f"h{i:07d}", state.id, Role.ASSISTANT, sentence(rng), at, (call,)))
    for begin in range(0, count, 5000):
        storage.messages.append(state.id, [stored(m) for m in messages[begin : begin + 5000]])
    indexed = messages[: count - unindexed]
    with storage.metadata.session() as s:
        s.execute(
            update(MessageRow)
            .where(MessageRow.agent_id == state.id, MessageRow.seq <= count - IN_CONTEXT)
            .values(in_context=False)
        )
        s.execute(
            update(MessageRow)
            .where(MessageRow.agent_id == state.id, MessageRow.seq <= len(indexed))
            .values(indexed=True)
        )
    store = storage.passages(model.space)
    for begin in range(0, len(indexed), 2000):
        store.upsert(
            [
                Passage(
                    id=m.id,
                    text=stored(m).search_text,
                    user_id=state.user_id,
                    agent_id=state.id,
                    kind="recall",
                    created_at=m.created_at,
                    metadata={"role": m.role.value},
                    embedding=unit_vector(rng, model.dimensions),
                )
                for m in indexed[begin : begin + 2000]
            ]
        )
    store.flush()


class Statements:
    """SQL statements per thread, counted at the engine."""

    def __init__(self, storage: Storage) -> None:
        self.counts: dict[int, int] = {}
        event.listen(storage.metadata.engine, "before_cursor_execute", self._count)

    def _count(self, *_: Any) -> None:
        ident = threading.get_ident()
        self.counts[ident] = self.counts.get(ident, 0) + 1

    def here(self) -> int:
        return self.counts.get(threading.get_ident(), 0)


def wait_for_index(agent: Agent) -> float:
    """Seconds until recall indexing (in the background, where it is) has caught up."""
    began = time.perf_counter()
    waiter = getattr(agent.recall, "wait_indexed", None)
    if waiter is not None:
        waiter(timeout=120)
    return time.perf_counter() - began


def opened(storage: Storage, state: AgentState, model: LocalMiniLM, window: int) -> tuple[Agent, float]:
    began = time.perf_counter()
    agent, _ = open_agent(storage, state, llm=InstantLLM(window), embedding=model)
    return agent, time.perf_counter() - began


def close(agent: Agent) -> None:
    closer = getattr(agent, "close", None)
    if closer is not None:
        closer()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(size: int, turns: int, unindexed: int, model: LocalMiniLM, root: Path) -> dict[str, str]:
    window = 16_384
    config = Config()
    home = root / f"home-{size}"
    began = time.perf_counter()
    with Storage(config, home) as storage:
        state = create_agent(
            storage,
            user_id=config.user_id,
            name="bench",
            persona="sam_pov",
            human="basic",
            model="bench",
            context_window=window,
            embedding=model.space,
        )
        seed_history(storage, model, state, size, 0)
    seeding = time.perf_counter() - began
    with Storage(config, home) as storage:  # as the next process finds the home
        storage.passages(model.space).count()  # Milvus Lite started: that is start-up, not opening the agent
        statements = Statements(storage)
        agent, open_indexed = opened(storage, state, model, window)
        wait_for_index(agent)
        llm = agent.llm
        assert isinstance(llm, InstantLLM)
        own: list[float] = []
        cpu: list[float] = []
        indexing: list[float] = []
        queries: list[int] = []
        for turn in range(turns + 3):  # the first three warm caches and are not counted
            before_llm, before_sql = llm.seconds, statements.here()
            began, began_cpu = time.perf_counter(), time.thread_time()
            events = list(agent.send(f"Turn {turn}: {sentence(random.Random(turn))}"))
            wall, turn_cpu = time.perf_counter() - began, time.thread_time() - began_cpu
            waited = wait_for_index(agent)
            assert events, "the turn produced no events"
            if turn >= 3:
                own.append(wall - (llm.seconds - before_llm))
                cpu.append(turn_cpu)
                indexing.append(waited)
                queries.append(statements.here() - before_sql)
        close(agent)
        with storage.metadata.session() as s:  # the newest ones unindexed again, for the second open
            newest = s.scalar(select(func.max(MessageRow.seq)).where(MessageRow.agent_id == state.id)) or 0
            s.execute(
                update(MessageRow)
                .where(MessageRow.agent_id == state.id, MessageRow.seq > newest - unindexed)
                .values(indexed=False)
            )
        reopened, open_unindexed = opened(storage, state, model, window)
        caught_up = open_unindexed + wait_for_index(reopened)
        close(reopened)
    ms = [1000 * v for v in own]
    return {
        "history": f"{size:,}",
        "p50 ms": f"{statistics.median(ms):.1f}",
        "p95 ms": f"{percentile(ms, 0.95):.1f}",
        "max ms": f"{max(ms):.1f}",
        "CPU ms (p50)": f"{1000 * statistics.median(cpu):.1f}",
        "indexing after the reply, ms (p50)": f"{1000 * statistics.median(indexing):.0f}",
        "SQL / turn": f"{statistics.median(queries):.0f}",
        "open s": f"{open_indexed:.2f}",
        f"open, newest {unindexed:,} unindexed, s": f"{open_unindexed:.2f}",
        "until all indexed s": f"{caught_up:.1f}",
        "seed s": f"{seeding:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="history sizes, comma-separated")
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--unindexed", type=int, default=1000, help="messages not yet indexed at the second open")
    args = parser.parse_args()
    model = LocalMiniLM()
    model.embed("warm up")
    rows = []
    with tempfile.TemporaryDirectory(prefix="step-bench-") as root:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(size, args.turns, args.unindexed, model, Path(root)))
    table = Table(*rows[0], box=box.MARKDOWN, title=f"### One step of memgpt's own time ({args.turns} turns each)")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


if __name__ == "__main__":
    main()
