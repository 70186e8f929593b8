"""Many users share one collection: no search, query, page or delete of one user reaches another's
passages, whatever the names look like. Run on Milvus Lite and on the real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from memgpt.agent.manager import attach_source, create_agent, open_agent
from memgpt.config import load_config
from memgpt.data.sources import delete_source, get_source, search_source
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import NotFoundError
from memgpt.llm.openai_compat import OpenAICompatible
from memgpt.storage import Storage
from memgpt.storage.agents import AgentStore
from memgpt.storage.filters import eq
from tests.conftest import DATA, load

HOSTILE = 'it\'s "x" or 1==1 \\ -- user_id != ""'


@pytest.fixture
def tenants(backend: str, home: Path) -> Iterator[tuple[Storage, Storage]]:
    config = load_config(home)
    opened = []
    for user in ("alice", "bob"):
        mine = config.model_copy(deep=True)
        mine.user_id = user
        opened.append(Storage(mine, home))
    yield opened[0], opened[1]
    for storage in opened:
        storage.close()


def test_users_never_see_or_touch_each_other(tenants: tuple[Storage, Storage], model: LocalMiniLM) -> None:
    alice, bob = tenants
    load(alice, model, HOSTILE, DATA / "long_test.txt")
    load(bob, model, HOSTILE, DATA / "philosophical_question.txt")
    mine, theirs = get_source(alice, HOSTILE), get_source(bob, HOSTILE)
    assert mine.id != theirs.id

    for hit in search_source(alice, mine, model, "assumptions about rest and work", k=50):
        assert hit.passage.user_id == "alice" and hit.passage.source_id == mine.id
    for hit in search_source(bob, theirs, model, "Enrico Letta prime minister", k=50):
        assert hit.passage.user_id == "bob" and hit.passage.source_id == theirs.id
    with pytest.raises(NotFoundError):
        get_source(bob, "long_test")

    agents = AgentStore(alice.metadata)
    llm = OpenAICompatible(model="none", context_window=8000, endpoint="http://127.0.0.1:9")
    states = {}
    for storage in (alice, bob):
        states[storage.user_id] = create_agent(
            agents,
            user_id=storage.user_id,
            name=HOSTILE,
            persona="sam_pov",
            human="basic",
            model="none",
            context_window=8000,
            embedding=model,
        )
    # bob cannot attach alice's source: names resolve per user
    attach_source(bob, agents, states["bob"], HOSTILE)
    attach_source(alice, agents, states["alice"], HOSTILE)
    alice_agent, _ = open_agent(alice, agents, states["alice"], llm=llm, embedding=model)
    bob_agent, _ = open_agent(bob, agents, states["bob"], llm=llm, embedding=model)
    alice_agent.archival.insert("Alice's secret: the vault code is 4711.")
    assert alice_agent.archival.count() == mine.passages + 1
    assert bob_agent.archival.count() == theirs.passages
    for page in range(3):
        text = bob_agent.archival.search("vault code secret", page).render("results")
        assert "4711" not in text and "Letta" not in text

    store = alice.passages(model.space)
    delete_source(alice, mine)
    assert store.count(eq("source_id", mine.id)) == 0
    assert store.count(eq("source_id", theirs.id)) == theirs.passages
    assert get_source(bob, HOSTILE).passages == theirs.passages
