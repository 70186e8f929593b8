"""Many users share one Storage and one collection: no search, query, page or delete of one user reaches
another's passages, whatever the names look like. Run on Milvus Lite and on the real server."""

from __future__ import annotations

import pytest

from memgpt.agent.manager import attach_source, create_agent, open_agent
from memgpt.data.sources import delete_source, get_source, search_source
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import NotFoundError
from memgpt.llm.openai_compat import OpenAICompatible
from memgpt.storage import Storage
from memgpt.storage.filters import eq
from tests.conftest import DATA, load

HOSTILE = 'it\'s "x" or 1==1 \\ -- user_id != ""'


def test_users_never_see_or_touch_each_other(any_storage: Storage, model: LocalMiniLM) -> None:
    storage = any_storage  # one Storage serves both users, as a server would
    load(storage, model, HOSTILE, DATA / "long_test.txt", user_id="alice")
    load(storage, model, HOSTILE, DATA / "philosophical_question.txt", user_id="bob")
    mine, theirs = get_source(storage, "alice", HOSTILE), get_source(storage, "bob", HOSTILE)
    assert mine.id != theirs.id

    for hit in search_source(storage, mine, model, "assumptions about rest and work", k=50):
        assert hit.passage.user_id == "alice" and hit.passage.source_id == mine.id
    for hit in search_source(storage, theirs, model, "Enrico Letta prime minister", k=50):
        assert hit.passage.user_id == "bob" and hit.passage.source_id == theirs.id
    with pytest.raises(NotFoundError):
        get_source(storage, "bob", "long_test")

    llm = OpenAICompatible(model="none", context_window=8000, endpoint="http://127.0.0.1:9")
    states = {}
    for user in ("alice", "bob"):
        states[user] = create_agent(
            storage,
            user_id=user,
            name=HOSTILE,
            persona="sam_pov",
            human="basic",
            model="none",
            context_window=8000,
            embedding=model.space,
        )
    # bob cannot attach alice's source: names resolve per user
    attach_source(storage, states["bob"], HOSTILE)
    attach_source(storage, states["alice"], HOSTILE)
    alice_agent, _ = open_agent(storage, states["alice"], llm=llm, embedding=model)
    bob_agent, _ = open_agent(storage, states["bob"], llm=llm, embedding=model)
    alice_agent.archival.insert("Alice's secret: the vault code is 4711.")
    assert alice_agent.archival.count() == mine.passages + 1
    assert bob_agent.archival.count() == theirs.passages
    for page in range(3):
        text = bob_agent.archival.search("vault code secret", page).render("results")
        assert "4711" not in text and "Letta" not in text
    assert storage.agents.by_id("bob", states["alice"].id) is None  # an id alone never crosses users

    store = storage.passages(model.space)
    delete_source(storage, mine)
    assert store.count(eq("source_id", mine.id)) == 0
    assert store.count(eq("source_id", theirs.id)) == theirs.passages
    assert get_source(storage, "bob", HOSTILE).passages == theirs.passages
