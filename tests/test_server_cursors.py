"""Letta's cursor paging through `memgpt server` while the listed things change: letta-client's own iteration
(``for agent in client.agents.list(): ...``) asks for the page after the last item it was given, which a loop that
deletes each item has just deleted. Real server, SQLite and PostgreSQL, letta-client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from letta_client import Letta
from sqlalchemy import select, update

from memgpt.storage.agents import DeletedAgentRow
from memgpt.storage.sql import CURSOR_KEPT, DELETED_SOURCES
from tests.server_rig import LiveServer

HANDLE = "openai-compatible/scripted"


pytestmark = pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL


def make_agents(letta: Letta, count: int, prefix: str = "a") -> list[str]:
    """``count`` agents, oldest first."""
    with ThreadPoolExecutor(4) as pool:
        pool.map(lambda i: letta.agents.create(name=f"{prefix}{i:04d}", model=HANDLE, memory_blocks=[]), range(count))
    return [agent.id for agent in letta.agents.list(limit=1000, order="asc").items]


def test_deleting_every_agent_while_iterating_the_list_deletes_them_all(scripted_server: LiveServer) -> None:
    letta = Letta(base_url=scripted_server.url, api_key=scripted_server.key("alice"), max_retries=0)
    made = make_agents(letta, 120)
    assert len(made) == 120
    deleted = []
    for agent in letta.agents.list(limit=50):  # 3 pages: each asks for the page after an agent just deleted
        letta.agents.delete(agent.id)
        deleted.append(agent.id)
    assert sorted(deleted) == sorted(made)
    assert letta.agents.list(limit=1000).items == []


def test_a_deleted_agent_is_still_a_cursor_in_both_orders_but_only_for_its_user(scripted_server: LiveServer) -> None:
    alice = Letta(base_url=scripted_server.url, api_key=scripted_server.key("alice"), max_retries=0)
    bob = Letta(base_url=scripted_server.url, api_key=scripted_server.key("bob"), max_retries=0)
    made = make_agents(alice, 12)
    bobs = make_agents(bob, 3, "b")
    alice.agents.delete(made[5])
    alice.agents.delete(made[6])
    kept = made[:5] + made[7:]
    assert [a.id for a in alice.agents.list(after=made[5], order="asc").items] == made[7:]
    assert [a.id for a in alice.agents.list(after=made[6], order="desc").items] == made[:5][::-1]
    assert [a.id for a in alice.agents.list(before=made[5], order="asc", limit=3).items] == made[2:5]
    assert [a.id for a in alice.agents.list(after=made[1], before=made[6], order="asc").items] == made[2:5]
    assert [a.id for a in alice.agents.list(limit=1000, order="asc").items] == kept
    assert bob.agents.list(after=made[5]).items == []  # another user's agent, deleted or not, places nothing
    bob.agents.delete(bobs[1])
    assert alice.agents.list(after=bobs[1]).items == []
    assert alice.agents.list(after="agent-00000000-0000-0000-0000-000000000000").items == []  # never existed


def test_deleting_every_folder_while_iterating_the_list_deletes_them_all(scripted_server: LiveServer) -> None:
    letta = Letta(base_url=scripted_server.url, api_key=scripted_server.key("alice"), max_retries=0)
    made = [letta.folders.create(name=f"f{i:03d}").id for i in range(60)]
    deleted = []
    for folder in letta.folders.list():  # pages of 50: the second is asked for after a folder just deleted
        letta.folders.delete(folder.id)
        deleted.append(folder.id)
    assert sorted(deleted) == sorted(made)
    assert letta.folders.list(limit=1000).items == []


def test_a_deleted_folder_is_still_a_cursor_in_both_orders_but_only_for_its_user(scripted_server: LiveServer) -> None:
    alice = Letta(base_url=scripted_server.url, api_key=scripted_server.key("alice"), max_retries=0)
    bob = Letta(base_url=scripted_server.url, api_key=scripted_server.key("bob"), max_retries=0)
    made = [alice.folders.create(name=f"f{i:02d}").id for i in range(8)]
    alice.folders.delete(made[3])
    assert [f.id for f in alice.folders.list(after=made[3]).items] == made[4:]
    assert [f.id for f in alice.folders.list(after=made[3], order="desc").items] == made[:3][::-1]
    assert [f.id for f in alice.folders.list(before=made[3], limit=2).items] == made[1:3]
    assert [f.id for f in alice.folders.list(before=made[3], order="desc").items] == made[4:][::-1]
    assert bob.folders.list(after=made[3]).items == []
    assert alice.folders.list(after="source-00000000-0000-0000-0000-000000000000").items == []


def test_a_deletion_older_than_its_day_is_no_cursor_even_before_the_next_deletion_forgets_it(
    scripted_server: LiveServer,
) -> None:
    """A tombstone older than ``CURSOR_KEPT`` is forgotten only inside the next deletion; until then the lookups
    treat it as unknown, as before tombstones were kept."""
    alice = Letta(base_url=scripted_server.url, api_key=scripted_server.key("alice"), max_retries=0)
    agents = make_agents(alice, 3)
    folders = [alice.folders.create(name=f"f{i}").id for i in range(3)]
    alice.agents.delete(agents[1])
    alice.folders.delete(folders[1])
    assert [a.id for a in alice.agents.list(after=agents[1], order="asc").items] == agents[2:]  # within its day
    assert [f.id for f in alice.folders.list(after=folders[1]).items] == folders[2:]
    with scripted_server.state.storage.metadata.session() as s:
        for row in s.scalars(select(DeletedAgentRow)):
            row.deleted_at -= CURSOR_KEPT + timedelta(minutes=1)
    with scripted_server.state.storage.metadata.connection() as c:
        for source_id, deleted_at in c.execute(select(DELETED_SOURCES.c.id, DELETED_SOURCES.c.deleted_at)).all():
            c.execute(
                update(DELETED_SOURCES)
                .where(DELETED_SOURCES.c.id == source_id)
                .values(deleted_at=deleted_at - CURSOR_KEPT - timedelta(minutes=1))
            )
    assert alice.agents.list(after=agents[1], order="asc").items == []
    assert alice.folders.list(after=folders[1]).items == []
