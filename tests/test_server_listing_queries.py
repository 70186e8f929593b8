"""What a page of a list costs the metadata database: a handful of statements whatever the page size, not
some per item (an N+1 made paging 1,000 agents through letta-client take 10-15 s). Real server, SQLite and
PostgreSQL, letta-client; statements counted on the server's engine, not timed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from letta_client import Letta
from sqlalchemy import event

from memgpt.server.jobs import SWEEP_THREAD
from tests import web
from tests.server_rig import LiveServer

HANDLE = "openai-compatible/scripted"


pytestmark = pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL


@contextmanager
def statements(server: LiveServer) -> Iterator[list[str]]:
    """The SQL statements the server runs meanwhile (the test sends one request at a time)."""
    seen: list[str] = []
    lock = threading.Lock()

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread().name == SWEEP_THREAD:  # its look for dead loads, every 30 s, not the request's
            return
        with lock:
            seen.append(statement)

    engine = server.state.storage.metadata.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_a_page_of_agents_costs_the_same_statements_whatever_its_size(scripted_server: LiveServer) -> None:
    letta = Letta(base_url=scripted_server.url, api_key=scripted_server.key("alice"), max_retries=0)
    folder = letta.folders.create(name="notes")
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda i: letta.agents.create(name=f"a{i:03d}", model=HANDLE, tags=["t"]).id, range(40)))
    for agent_id in made[:5]:
        letta.agents.folders.attach(folder.id, agent_id=agent_id)
    letta.agents.list(limit=1)  # anything done once per server (a tool catalog) done before counting
    counts = {}
    for size in (2, 37):
        with statements(scripted_server) as seen:
            page = letta.agents.list(limit=size, order="asc")
        assert len(page.items) == size
        counts[size] = len(seen)
    assert counts[37] == counts[2], counts
    assert counts[37] <= 10, counts


def test_a_listed_agent_is_the_json_its_retrieve_answers(scripted_server: LiveServer) -> None:
    """The list is serialized by the route itself (not FastAPI's response_model pass): each item must be what
    retrieving that agent answers, aliases (a tool's metadata_), non-ASCII text and floats alike."""

    letta = Letta(base_url=scripted_server.url, api_key=scripted_server.key("alice"), max_retries=0)
    folder = letta.folders.create(name="ü notes")
    made = letta.agents.create(
        name="zoë 中", model=HANDLE, tags=["t", "ü"], metadata={"x": 0.1, "big": 1e300, "n": None}, description="d"
    )
    letta.agents.create(name="plain", model=HANDLE)
    letta.agents.folders.attach(folder.id, agent_id=made.id)
    headers = {"Authorization": f"Bearer {scripted_server.key('alice')}"}
    listed = web.get(f"{scripted_server.url}/v1/agents/", headers=headers)
    assert listed.headers["content-type"] == "application/json"
    items = listed.json()
    assert len(items) == 2
    for item in items:
        assert item == web.get(f"{scripted_server.url}/v1/agents/{item['id']}", headers=headers).json()
    assert items[1]["tools"][0]["metadata_"] == {}


def test_a_page_of_folders_costs_the_same_statements_whatever_its_size(scripted_server: LiveServer) -> None:
    letta = Letta(base_url=scripted_server.url, api_key=scripted_server.key("alice"), max_retries=0)
    made = [letta.folders.create(name=f"f{i:02d}").id for i in range(25)]
    letta.folders.list(limit=1)
    counts = {}
    for size in (2, 20):
        with statements(scripted_server) as seen:
            page = letta.folders.list(limit=size, after=made[0])
        assert len(page.items) == size
        counts[size] = len(seen)
    assert counts[20] == counts[2], counts
    assert counts[20] <= 10, counts
