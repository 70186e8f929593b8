"""The archival count an agent's prompt shows ("N total memories are stored in archival memory") is read from
SQL (storage/agents.py ``archival_writing``), so `memgpt run --message` opens no Milvus for it. It must still be
the number of passages a search of archival memory ranks: after inserts by the agent's tool, attaching and
detaching a source, an agent of an older memgpt (no count kept yet), and a kill -9 between a write to Milvus and
the SQL after it. Real `memgpt run` processes, real Milvus Lite and SQLite, the scripted LLM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from memgpt.config import load_config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.memory.archival import ArchivalMemory
from memgpt.storage import Storage
from memgpt.storage.agents import AgentRow
from tests.conftest import DATA, REPO, load, run_cli
from tests.scripted_llm import ScriptedLLM

AGENT = "Counted"
REMEMBER = "Remember this: my favourite colour is teal."
SHOWN = re.compile(r"(\d+) total memories are stored in archival memory")


def policy(body: dict[str, Any]) -> dict[str, Any]:
    """Store a fact when asked to remember, answer otherwise."""
    last = json.loads(body["messages"][-1]["content"])
    if last.get("type") == "user_message" and last["message"] == REMEMBER:
        return {
            "tool": "archival_memory_insert",
            "args": {"content": "Chad's favourite colour is teal.", "request_heartbeat": True},
        }
    return {"tool": "send_message", "args": {"message": "Noted."}}


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLM]:
    server = ScriptedLLM()
    server.add(*[policy] * 40)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    yield server
    server.close()


def shown(home: Path, llm: ScriptedLLM, message: str = "hello") -> int:
    """The archival count in the prompt of a `memgpt run --message` turn (one: its steps store nothing)."""
    counts = set(turn(home, llm, message))
    assert len(counts) == 1, counts
    return counts.pop()


def turn(home: Path, llm: ScriptedLLM, message: str) -> list[int]:
    """The archival count in the prompt of each request of a `memgpt run --message` turn."""
    before = len(llm.requests)
    done = run_cli("run", "--agent", AGENT, "--message", message, home=home)
    assert done.returncode == 0, done.stderr
    found = [SHOWN.search(r["messages"][0]["content"]) for r in llm.requests[before:]]
    return [int(f.group(1)) for f in found if f is not None]


def in_milvus(home: Path) -> int:
    """What a search of the agent's archival memory ranks, counted in Milvus."""
    config = load_config(home)
    with Storage(config, home) as storage:
        state = storage.agents.get(config.user_id, AGENT)
        assert state is not None
        archival = ArchivalMemory(storage, LocalMiniLM(), agent_id=state.id, user_id=state.user_id)
        return archival._store.count(archival._where())


def test_the_prompt_counts_tool_inserts_and_attached_sources(home: Path, llm: ScriptedLLM) -> None:
    assert shown(home, llm) == 0  # a new agent
    assert turn(home, llm, REMEMBER) == [0, 1]  # the insert is in the prompt of the step after it
    assert shown(home, llm) == in_milvus(home) == 1

    config = load_config(home)
    with Storage(config, home) as storage:
        report = load(storage, LocalMiniLM(), "notes", DATA / "test.md", user_id=config.user_id)
    assert report.passages > 0
    attached = run_cli("attach", "--agent", AGENT, "--data-source", "notes", home=home)
    assert attached.returncode == 0, attached.stderr
    assert shown(home, llm) == in_milvus(home) == 1 + report.passages
    detached = run_cli("detach", "--agent", AGENT, "--data-source", "notes", home=home)
    assert detached.returncode == 0, detached.stderr
    assert shown(home, llm) == in_milvus(home) == 1

    # An agent of an older memgpt has no count kept (migration 0022 leaves it NULL): it is counted in Milvus.
    with Storage(config, home) as storage, storage.metadata.session() as s:
        s.execute(update(AgentRow).values(archival_count=None, archival_counted=None))
    assert shown(home, llm) == 1


# Adds a passage to the agent's archival memory as `memgpt server`'s passages.create does (no step), then adds
# another and is killed with SIGKILL right after Milvus stored it, before SQL hears of it. With "reader", the
# agent's own passages are counted (as another process opening it would) while that write is open.
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from memgpt.config import load_config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.memory.archival import ArchivalMemory
from memgpt.storage import Storage
from memgpt.storage.milvus.store import MilvusPassageStore

home = Path(os.environ["MEMGPT_HOME"])
config = load_config(home)
storage = Storage(config, home)
state = storage.agents.get(config.user_id, sys.argv[1])
archival = ArchivalMemory(storage, LocalMiniLM(), agent_id=state.id, user_id=state.user_id)
archival.add("Chad owns a sailing boat named Tern.", attempt="first")
upsert = MilvusPassageStore.upsert
def killed(self, rows):
    if sys.argv[2] == "reader":  # another process opening the agent counts now, before the passage is stored
        reader = ArchivalMemory(storage, LocalMiniLM(), agent_id=state.id, user_id=state.user_id)
        assert reader.own_count() == 1
    upsert(self, rows)
    os.kill(os.getpid(), signal.SIGKILL)
MilvusPassageStore.upsert = killed
archival.add("Chad hates coffee.", attempt="second")
"""


@pytest.mark.parametrize("meanwhile", ["", "reader"])
def test_a_kill_between_the_milvus_write_and_sql_leaves_no_wrong_count(
    home: Path, llm: ScriptedLLM, meanwhile: str
) -> None:
    assert shown(home, llm) == 0
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, AGENT, meanwhile],
        cwd=REPO,
        env={**os.environ, "MEMGPT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert in_milvus(home) == 2  # the second passage is stored: SQL's count of 1 must not be taken
    assert shown(home, llm) == 2  # counted again in Milvus: the kept count is not taken
    assert shown(home, llm) == 2
