"""One Storage serves many users and threads, as a server will use it."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from memgpt.agent.manager import create_agent
from memgpt.storage import Storage
from memgpt.storage.filters import eq
from memgpt.storage.messages import StoredMessage
from memgpt.types import EmbeddingSpace, Message, Passage, Role

THREADS = 8
SPACE = EmbeddingSpace("threads-model", 4)


def run_together(work: Callable[[int], None]) -> None:
    """Start ``work(i)`` in THREADS threads at the same moment; re-raise the first failure."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if errors:
        raise errors[0]


def test_threads_share_one_passage_store_per_space(storage: Storage) -> None:
    stores: list[object] = []
    run_together(lambda i: stores.append(storage.passages(SPACE)))
    assert len(stores) == THREADS
    assert len({id(s) for s in stores}) == 1  # one connection, one store: the collection was opened once


def test_threads_write_agents_messages_and_passages_for_many_users(storage: Storage) -> None:
    def work(i: int) -> None:
        user = f"user{i}"
        state = create_agent(
            storage,
            user_id=user,
            name="Same Name",  # one per user: names are unique per user only
            persona="sam_pov",
            human="basic",
            model="m",
            context_window=8000,
            embedding=SPACE,
        )
        for n in range(5):
            message = Message(uuid.uuid4().hex, state.id, Role.USER, f"message {n} of {user}")
            storage.messages.append(state.id, [StoredMessage(message, message.content, searchable=True)])
        vector = [1.0, float(i), 0.0, 0.0]
        storage.passages(SPACE).upsert([Passage(uuid.uuid4().hex, f"note of {user}", user, embedding=vector)])

    run_together(work)
    store = storage.passages(SPACE)
    for i in range(THREADS):
        state = storage.agents.get(f"user{i}", "Same Name")
        assert state is not None
        assert [m.content for m in storage.messages.last(state.id, 10)] == [
            f"message {n} of user{i}" for n in range(5)
        ]
        assert store.count(eq("user_id", f"user{i}")) == 1
