"""A step's side effects happen exactly once across kill -9 and /retry.

A real `memgpt run` child (tests/crash_child.py) stores a fact with archival_memory_insert and answers,
and is killed with SIGKILL at one point of that turn. Another `memgpt run` then retries the turn and
takes the next one. Afterwards: the user's message is there once, the fact is in archival memory once
(no duplicate, no orphan of a step that never committed), the recall index holds exactly the messages
SQL has, and the next turn was answered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from memgpt.agent.manager import open_memory
from memgpt.config import load_config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage
from memgpt.storage.agents import PASSAGE, AgentRow, StepEffectRow
from memgpt.storage.filters import all_of, eq
from memgpt.types import Role
from tests.conftest import REPO, run_cli
from tests.scripted_llm import ScriptedLLM

AGENT = "Crashy"
FACT = "Chad's favourite colour is teal."
REMEMBER = "Remember this: my favourite colour is teal."
NEXT = "What is my favourite colour?"


def policy(body: dict[str, Any]) -> dict[str, Any]:
    """What the model does whichever request of the turn this is: store the fact when asked to remember,
    answer otherwise (after the heartbeat that follows the insert, and to any other message)."""
    last = json.loads(body["messages"][-1]["content"])
    if last.get("type") == "user_message" and last["message"] == REMEMBER:
        return {
            "tool": "archival_memory_insert",
            "args": {"content": FACT, "request_heartbeat": True},
            "content": "Store it.",
        }
    if last.get("type") == "user_message":
        return {"tool": "send_message", "args": {"message": "It is teal."}}
    return {"tool": "send_message", "args": {"message": "Saved it."}}


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLM]:
    server = ScriptedLLM()
    server.add(*[policy] * 60)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    yield server
    server.close()


def crashing_run(home: Path, point: str, *args: str, after: int = 0, stdin: str | None = None) -> None:
    env = {**os.environ, "MEMGPT_HOME": str(home), "CRASH_AT": point, "CRASH_AFTER": str(after), "NO_COLOR": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "tests.crash_child", "run", "--agent", AGENT, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, f"not killed at {point}: {child.returncode}\n{child.stderr}"


def check_exactly_once(home: Path) -> None:
    config = load_config(home)
    with Storage(config, home) as storage:
        state = storage.agents.get(config.user_id, AGENT)
        assert state is not None
        messages = storage.messages.last(state.id, 1000)
        typed = [m.content for m in messages if m.role is Role.USER and not m.name]
        assert typed == [REMEMBER, NEXT]  # kept, and once
        inserts = [m for m in messages if any(c.name == "archival_memory_insert" for c in m.tool_calls)]
        assert len(inserts) == 1

        store = storage.passages(state.space)
        mine = all_of(eq("agent_id", state.id), eq("kind", "archival"))
        passages = store.query(mine, limit=100)
        assert [p.text for p in passages] == [FACT]  # no duplicate, no orphan
        with storage.metadata.session() as s:
            effects = list(s.scalars(select(StepEffectRow).where(StepEffectRow.agent_id == state.id)))
        assert [(e.step_id, e.kind, e.target, e.committed) for e in effects] == [
            (inserts[0].id, PASSAGE, passages[0].id, True)
        ]

        recall = all_of(eq("agent_id", state.id), eq("kind", "recall"))
        indexed = sorted(p.id for p in store.query(recall, limit=1000))
        searchable = sorted(m.id for m in messages if m.role is Role.ASSISTANT or (m.role is Role.USER and not m.name))
        assert indexed == searchable  # every message SQL has, nothing it does not
        assert not storage.messages.unindexed(state.id, 10)


@pytest.mark.parametrize(
    ("point", "after"),
    [
        ("llm_request", 0),
        ("llm_answered", 0),
        ("archival_written", 0),
        ("step_committed", 0),
        ("recall_indexing", 0),
        ("llm_request", 1),  # the second step's request: the first step (the insert) is committed
    ],
)
def test_a_kill_at_any_point_of_a_step_then_retry_stores_the_fact_once(
    home: Path, llm: ScriptedLLM, point: str, after: int
) -> None:
    if point == "recall_indexing":  # a chat indexes as it goes (`run --message` leaves it to the next search)
        crashing_run(home, point, stdin=f"{REMEMBER}\n", after=after)
    else:
        crashing_run(home, point, "--message", REMEMBER, after=after)

    retried = run_cli("run", "--agent", AGENT, home=home, stdin=f"/retry\n{NEXT}\n")
    assert retried.returncode == 0, retried.stderr
    assert "🤖 Saved it." in retried.stdout and "🤖 It is teal." in retried.stdout
    check_exactly_once(home)


def test_a_kill_while_retry_forgets_the_old_answer(home: Path, llm: ScriptedLLM) -> None:
    first = run_cli("run", "--agent", AGENT, "--message", REMEMBER, home=home)
    assert first.returncode == 0, first.stderr
    crashing_run(home, "forgetting", stdin="/retry\n")  # the old passage is gone from Milvus, its step not from SQL

    retried = run_cli("run", "--agent", AGENT, home=home, stdin=f"/retry\n{NEXT}\n")
    assert retried.returncode == 0, retried.stderr
    check_exactly_once(home)


def stored_system(home: Path) -> str | None:
    config = load_config(home)
    with Storage(config, home) as storage:
        state = storage.agents.get(config.user_id, AGENT)
        assert state is not None
        with storage.metadata.session() as s:
            stored = s.scalar(select(AgentRow.last_system).where(AgentRow.id == state.id))
        return json.loads(stored)["content"] if stored else None


def test_runs_in_a_row_send_the_system_message_their_last_committed_step_was_sent(
    home: Path, llm: ScriptedLLM
) -> None:
    """Each `memgpt run --message` sends the system message of the last committed step again, to the byte (the
    LLM server's prompt cache keeps it); it is stored with that step, so a step killed before it commits
    leaves none behind."""
    crashing_run(home, "llm_answered", "--message", NEXT)
    assert stored_system(home) is None  # its step never committed
    sent = []
    for _ in range(2):
        done = run_cli("run", "--agent", AGENT, "--message", NEXT, home=home)
        assert done.returncode == 0, done.stderr
        sent.append(llm.requests[-1]["messages"][0]["content"])
        assert stored_system(home) == sent[0]
    assert sent[1] == sent[0]


@pytest.mark.parametrize("backend", ["lite", "server"], indirect=True)
def test_a_first_run_killed_while_its_collection_is_made_leaves_recall_searchable(
    home: Path, llm: ScriptedLLM, backend: str, model: LocalMiniLM
) -> None:
    """The recall index shares the embedding space's collection with archival passages; a first `memgpt run`
    killed while making it (before its indexes) leaves it to the next run to finish, on Lite and on a server.
    The first run is a chat (a line piped in), which opens Milvus at once; `run --message` opens it only for a
    tool, and leaves its messages to the next search, which indexes them here."""
    crashing_run(home, "collection_made", stdin=f"{NEXT}\n")
    done = run_cli("run", "--agent", AGENT, "--message", NEXT, home=home)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "🤖 It is teal." in done.stdout
    config = load_config(home)
    with Storage(config, home) as storage:
        state = storage.agents.get(config.user_id, AGENT)
        assert state is not None
        caught_up = open_memory(storage, state, model).recall
        assert caught_up.wait_indexed(60)
        caught_up.close()
        messages = storage.messages.last(state.id, 1000)
        store = storage.passages(state.space)
        recall = all_of(eq("agent_id", state.id), eq("kind", "recall"))
        indexed = sorted(p.id for p in store.query(recall, limit=1000))
        searchable = sorted(m.id for m in messages if m.role is Role.ASSISTANT or (m.role is Role.USER and not m.name))
        assert indexed == searchable and indexed
        hits = store.search(model.embed_batch([NEXT])[0], limit=1, where=recall)
        assert len(hits) == 1 and hits[0].passage.text.endswith(NEXT)  # recall texts begin with their date
