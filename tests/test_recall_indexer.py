"""Recall indexing for every open agent of a process: one pass indexes several agents' new messages with one
embedding call and one Milvus insert; the process's indexer gathers the steps' requests into such passes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from memgpt.agent.manager import create_agent, delete_agent
from memgpt.config import load_config, save_config
from memgpt.embeddings.base import Vector
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import EmbeddingError, StorageError
from memgpt.memory.background import Batcher, Outcome
from memgpt.memory.messages import stored
from memgpt.memory.paging import Page, RankedPage
from memgpt.memory.recall import WORD_SEARCH_NOTE, RecallIndex, RecallMemory, index_pass
from memgpt.storage import Storage
from memgpt.storage.base import PassageStore
from memgpt.storage.claims import CLAIMS, IndexClaims
from memgpt.storage.expiring import new_owner
from memgpt.storage.filters import all_of, eq
from memgpt.types import Message, Passage, Role, ToolCall
from tests.milvus_server import TOKEN

START = datetime(2024, 3, 12, 19, 0, tzinfo=UTC)


class CountingModel(LocalMiniLM):
    """The real local model, counting the calls that embed messages."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def embed_multi(self, texts: Sequence[str], **kwargs: object) -> list[Vector]:
        self.calls.append(len(texts))
        return super().embed_multi(texts)


def _agent(storage: Storage, model: LocalMiniLM, name: str) -> str:
    state = create_agent(
        storage, user_id="u", name=name, persona="sam_pov", human="basic", model="scripted",
        context_window=8192, embedding=model.space,
    )  # fmt: skip
    return state.id


def _messages(agent_id: str, count: int) -> list[Message]:
    text = "Message {} of {} about sailing."
    return [
        Message(f"{agent_id}-{i}", agent_id, Role.USER, text.format(i, agent_id), START + timedelta(minutes=i))
        for i in range(count)
    ]


def test_one_pass_indexes_several_agents_with_one_embedding_call_and_one_insert(storage: Storage) -> None:
    model = CountingModel()
    store = storage.passages(model.space)
    inserts: list[int] = []
    original = store.insert

    def counted(passages: Sequence[Passage]) -> None:
        inserts.append(len(passages))
        original(passages)

    store.insert = counted  # type: ignore[method-assign]
    recalls = []
    for name in ("first", "second", "third"):
        agent_id = _agent(storage, model, name)
        recall = RecallMemory(storage, agent_id=agent_id, user_id="u", index=RecallIndex(store, model))
        recall.append(_messages(agent_id, 5))
        recalls.append(recall)

    outcome = index_pass(recalls)
    assert outcome.finished == {r.key for r in recalls} and not outcome.failed
    assert model.calls == [15] and inserts == [15]
    for recall in recalls:
        where = all_of(eq("agent_id", recall.agent_id), eq("kind", "recall"))
        entries = {p.id: p for p in store.query(where, limit=100)}
        assert sorted(entries) == sorted(f"{recall.agent_id}-{i}" for i in range(5))
        # Each is indexed with the message before it, as when indexed alone.
        assert entries[f"{recall.agent_id}-3"].text.splitlines()[1] == f"Message 2 of {recall.agent_id} about sailing."
        assert recall.backlog() == 0


def test_a_pass_takes_at_most_its_limit_and_the_rest_is_left_for_the_next(storage: Storage, model: LocalMiniLM) -> None:
    store: PassageStore = storage.passages(model.space)
    ids = [_agent(storage, model, name) for name in ("busy", "quiet")]
    recalls = [RecallMemory(storage, agent_id=i, user_id="u", index=RecallIndex(store, model)) for i in ids]
    recalls[0].append(_messages(ids[0], 6))
    recalls[1].append(_messages(ids[1], 2))

    first = index_pass(recalls, limit=4)
    assert not first.finished and not first.failed  # the first agent had more; the second was not reached
    assert [r.backlog() for r in recalls] == [2, 2]
    second = index_pass(recalls, limit=4)
    assert second.finished == {recalls[0].key}  # the second read as many as it could take: perhaps more
    assert [r.backlog() for r in recalls] == [0, 0]
    assert index_pass(recalls, limit=4).finished == {r.key for r in recalls}


def test_an_outage_is_logged_once_and_its_end_once_not_at_every_pass(
    storage: Storage, model: LocalMiniLM, caplog: pytest.LogCaptureFixture
) -> None:
    """While Milvus is away every turn's pass fails: its warning is logged at the first failure, once more when it
    fails otherwise (another error class), and once when a pass writes again, not at every turn."""
    store: PassageStore = storage.passages(model.space)
    agent_id = _agent(storage, model, "outage")
    recall = RecallMemory(storage, agent_id=agent_id, user_id="u", index=RecallIndex(store, model))
    recall.append(_messages(agent_id, 8)[6:])
    assert index_pass([recall]).finished == {recall.key}  # (ends any outage an earlier test left in this process)
    original = store.insert

    def away(passages: Sequence[Passage]) -> None:
        raise StorageError("cannot connect to Milvus at localhost:19530: connection refused")

    store.insert = away  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="memgpt.memory.recall")
    caplog.clear()
    for turn in range(3):
        recall.append(_messages(agent_id, 6)[2 * turn : 2 * turn + 2])
        assert index_pass([recall]).failed == {recall.key}
    # Then it fails otherwise (Milvus back, the embedding endpoint away): that is said too, once.
    embed = model.embed_batch

    def endpoint_away(texts: Sequence[str]) -> list[Vector]:
        raise EmbeddingError("embedding endpoint http://localhost:8080 refused the connection")

    model.embed_batch = endpoint_away  # type: ignore[method-assign]
    store.insert = original  # type: ignore[method-assign]
    try:
        for turn in range(2):
            recall.append(_messages(agent_id, 12)[8 + 2 * turn : 10 + 2 * turn])
            assert index_pass([recall]).failed == {recall.key}
    finally:
        model.embed_batch = embed  # type: ignore[method-assign]
    assert index_pass([recall]).finished == {recall.key} and recall.backlog() == 0
    assert index_pass([recall]).finished == {recall.key}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3, said
    assert said[0].startswith("recall messages not indexed yet (cannot connect to Milvus"), said
    assert said[1].startswith("recall messages not indexed yet (embedding endpoint"), said
    assert said[2].startswith("recall indexing works again"), said


def test_the_indexer_gathers_requests_into_one_pass_and_who_waits_does_not_wait_for_the_pause() -> None:
    passes: list[list[str]] = []

    def work(items: list[str]) -> Outcome:
        passes.append(sorted(items))
        return Outcome(finished=set(items))

    gathering: Batcher[str] = Batcher(work, lambda item: item, "test indexing", gather=1.0)
    for item in ("a", "b", "a", "c"):
        gathering.request(item)
    assert gathering.wait("c", timeout=60)
    assert passes == [["a", "b", "c"]]  # one pass, each agent once

    batcher: Batcher[str] = Batcher(work, lambda item: item, "test indexing", gather=60.0)
    began = time.monotonic()
    batcher.request("d", urgent=True)
    assert batcher.wait("d", timeout=10)
    assert time.monotonic() - began < 30 and passes[-1] == ["d"]  # not the 60 s pause (generous: a loaded CI)
    began = time.monotonic()
    batcher.request("e")
    assert batcher.withdraw("e", timeout=10)  # closing an agent waits for its share without the pause
    assert time.monotonic() - began < 30 and passes[-1] == ["e"]


def test_requests_while_items_wait_do_not_wake_the_indexer_unless_urgent() -> None:
    """A server's every step asks for indexing: only the first request of a pass (and an urgent one) wakes the
    indexer's thread; the others, during its gathering pause, join the pass without waking it."""
    passes: list[list[str]] = []
    wakes: list[str] = []

    class Counted(threading.Condition):
        def notify_all(self) -> None:
            wakes.append("notify")
            super().notify_all()

    def work(items: list[str]) -> Outcome:
        passes.append(sorted(items))
        return Outcome(finished=set(items))

    batcher: Batcher[str] = Batcher(work, lambda item: item, "test indexing", gather=60.0)
    batcher._changed = Counted()
    items = [f"agent-{n:02}" for n in range(20)]
    for item in items:
        batcher.request(item)
    assert wakes == ["notify"]  # the first: the thread waited for an item
    batcher.request("urgent", urgent=True)  # a search waiting for it: the pause ends at once
    assert wakes == ["notify", "notify"]
    assert batcher.wait("urgent", timeout=30)
    assert passes == [sorted([*items, "urgent"])]


def test_a_failed_item_waits_for_its_next_request_and_more_work_goes_round_again() -> None:
    calls: list[list[str]] = []
    rounds = {"long": 3}

    def work(items: list[str]) -> Outcome:
        calls.append(sorted(items))
        outcome = Outcome(failed={"down"} & set(items))
        for item in items:
            if item == "long":
                rounds["long"] -= 1
                if rounds["long"] == 0:
                    outcome.finished.add(item)
        return outcome

    batcher: Batcher[str] = Batcher(work, lambda item: item, "test indexing")
    batcher.request("down")
    assert batcher.wait("down", timeout=10) is False
    batcher.request("long")
    assert batcher.wait("long", timeout=10) is True
    assert calls.count(["long"]) == 3 and sum("down" in c for c in calls) == 1


def test_withdrawing_an_item_drops_what_is_left_of_it() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[Hashable] = []

    def work(items: list[str]) -> Outcome:
        seen.extend(items)
        started.set()
        release.wait(10)
        return Outcome()  # more to do, always

    batcher: Batcher[str] = Batcher(work, lambda item: item, "test indexing")
    batcher.request("agent")
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    assert batcher.withdraw("agent", timeout=0.05) is False  # waits for the pass under way, then drops the rest
    time.sleep(0.2)
    assert seen == ["agent"] and batcher.wait("agent", timeout=1)


def test_a_wait_trusts_no_pass_begun_before_it_even_when_that_pass_ends_after() -> None:
    """A pass that looked (and found the item in another process's hands) before the claim was let go, but ended
    after a wait began, is not that wait's: with no patience the wait still waits for the next pass, which does the
    work. (Under load the pass's end fell after the wait's start and the wait gave up: a flaky test before.)"""
    looked, go_on, held = threading.Event(), threading.Event(), threading.Event()
    held.set()

    def work(items: list[str]) -> Outcome:
        if not held.is_set():
            return Outcome(finished=set(items))
        looked.set()
        go_on.wait(30)  # the pass ends only once the wait below has begun
        return Outcome(elsewhere=set(items))

    # (the gathering pause holds the next pass back until the wait has seen the first one end)
    batcher: Batcher[str] = Batcher(work, lambda item: item, "test indexing", gather=1.0)
    batcher.request("agent", urgent=True)
    assert looked.wait(30)
    held.clear()  # let go after that pass looked
    ending = threading.Timer(0.3, go_on.set)
    ending.start()
    try:
        assert batcher.wait("agent", timeout=30, patience=0.0) is True
    finally:
        ending.cancel()
        go_on.set()


def test_a_waiter_gives_an_item_another_process_holds_its_patience_and_no_longer() -> None:
    """An item another process does the work of (its claim) goes round again; a withdraw with no patience stops
    waiting at the first pass that found it so, a wait with some patience once that much time has passed since
    the first one did, and neither trusts a pass begun before it: the claim may have been let go since."""
    held = threading.Event()
    held.set()

    def work(items: list[str]) -> Outcome:
        return Outcome(elsewhere=set(items)) if held.is_set() else Outcome(finished=set(items))

    batcher: Batcher[str] = Batcher(work, lambda item: item, "test indexing")
    batcher.request("agent")
    started = time.monotonic()
    assert batcher.withdraw("agent", timeout=60, patience=0.0) is False
    assert time.monotonic() - started < 30  # not the timeout (generous: a loaded CI machine)
    batcher.request("agent", urgent=True)
    started = time.monotonic()
    assert batcher.wait("agent", timeout=60, patience=1.5) is False
    assert 0.5 < time.monotonic() - started < 30  # from the first pass that found it held: the withdraw's
    held.clear()  # let go: the next pass does the work, and a wait waits for it
    batcher.request("agent", urgent=True)
    assert batcher.wait("agent", timeout=10, patience=0.0) is True


def test_an_agent_opened_again_does_not_embed_its_last_message_again(storage: Storage) -> None:
    """A server opens an agent (and its recall index) anew for a turn: the message before the turn's first
    one was embedded by the last turn's index and is not embedded again; nor is a message without words,
    which is not indexed at all."""
    model = CountingModel()
    store = storage.passages(model.space)
    agent_id = _agent(storage, model, "again")
    history = _messages(agent_id, 4)

    def turn(messages: list[Message]) -> None:
        recall = RecallMemory(storage, agent_id=agent_id, user_id="u", index=RecallIndex(store, model))
        recall.append(messages)
        assert index_pass([recall]).finished == {recall.key}

    turn(history[:2])
    turn(history[2:])
    assert model.calls == [2, 2]
    bare = [
        Message(f"{agent_id}-bare{i}", agent_id, Role.ASSISTANT, "", START + timedelta(hours=1, minutes=i),
                tool_calls=(ToolCall(f"c{i}", "archival_memory_search", '{"query": "boats"}'),))
        for i in range(3)
    ]  # fmt: skip
    turn(bare[:2])
    turn(bare[2:])
    assert model.calls == [2, 2]  # nothing to embed: a message without words is not indexed
    entries = {p.id: p for p in store.query(all_of(eq("agent_id", agent_id), eq("kind", "recall")), limit=100)}
    assert len(entries) == 4 and not any("bare" in message_id for message_id in entries)
    assert storage.messages.backlog(agent_id) == 0


def test_a_message_edited_elsewhere_is_embedded_again(storage: Storage) -> None:
    """The cache of own embeddings is the process's: a message edited by another process (whose cache was
    the one told) must not be indexed with its old text's vector, here as the predecessor of the next one."""
    model = CountingModel()
    store = storage.passages(model.space)
    agent_id = _agent(storage, model, "edited")
    first, second = _messages(agent_id, 2)
    index = RecallIndex(store, model)
    index.add("u", [first], {})
    assert index.uncached([(second, first)]) == [second]  # the first one's embedding is cached
    edited = dataclasses.replace(first, content="an entirely different first message")
    assert index.uncached([(second, edited)]) == [second, edited]


def test_settling_waits_for_the_pass_under_way_and_for_what_was_asked_meanwhile() -> None:
    """A server's turns leave their indexing to the indexer (on Milvus Lite); before storage closes, it settles."""
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def work(items: list[str]) -> Outcome:
        started.set()
        release.wait(10)
        done.extend(items)
        return Outcome(finished=set(items))

    batcher: Batcher[str] = Batcher(work, lambda item: item, "test indexing", gather=30.0)
    batcher.request("a", urgent=True)
    assert started.wait(10)
    batcher.request("b")  # asked for during the pass: settling skips its gathering pause
    assert batcher.settle(0.1) is False
    release.set()
    began = time.monotonic()
    assert batcher.settle(10) is True
    assert time.monotonic() - began < 5 and done == ["a", "b"]


def test_a_process_exiting_during_a_pass_in_onnx_runtime_waits_for_it_and_exits_cleanly() -> None:
    """The indexer's thread is a daemon: a process (pytest, `memgpt server`) whose interpreter finalized while a pass
    was inside ONNX Runtime's ``run`` aborted after all its work was done: "terminate called without an active
    exception", exit code 134 (the daemon thread is ended by ``pthread_exit`` as it takes the GIL back). The exit
    waits for the pass under way, and begins no other."""
    script = textwrap.dedent(
        """
        import threading
        import time
        from memgpt.embeddings.local import LocalMiniLM
        from memgpt.memory.background import Batcher, Outcome

        model, inside = LocalMiniLM(), threading.Event()
        model.embed_batch(["warm"])

        def work(items):
            ends = time.monotonic() + 2.0  # a pass of many embedding calls
            while time.monotonic() < ends:
                inside.set()
                model.embed_batch(["some text to embed " * 20] * 8)
            return Outcome(finished=set(items))

        batcher = Batcher(work, lambda item: item, "test indexing")
        batcher.request("a")
        assert inside.wait(30)
        batcher.request("b")  # asked for during the pass: no pass begins once the exit waits
        time.sleep(0.5)  # well into the pass: inside ONNX Runtime most of the time
        print("exiting", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "exiting\n" and "terminate called" not in done.stderr, done.stderr[-2000:]


def test_a_process_exit_waits_once_not_once_for_the_indexer_and_again_for_native_calls() -> None:
    """A pass stuck inside a native call at exit: the indexer's ``_close_all`` and then ``native_calls``' wait share
    one deadline (EXIT_WAIT_SECONDS, here 2 s), rather than waiting that long each (30 s + 30 s)."""
    script = textwrap.dedent(
        """
        import atexit, threading, time
        marks = {}
        atexit.register(lambda: print(f"waited {time.monotonic() - marks['exit']:.2f}", flush=True))  # runs last
        from memgpt import native_calls
        from memgpt.memory import background
        native_calls.EXIT_WAIT_SECONDS = background.EXIT_WAIT_SECONDS = 2.0
        inside = threading.Event()

        def work(items):
            with native_calls.guarded():
                inside.set()
                threading.Event().wait()  # a native call that never ends
            return background.Outcome(finished=set(items))

        batcher = background.Batcher(work, lambda item: item, "test indexing")
        batcher.request("a")
        assert inside.wait(30)
        atexit.register(lambda: marks.setdefault("exit", time.monotonic()))  # runs first
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    waited = float(done.stdout.split()[-1])
    assert 1.9 <= waited < 3.0, done.stdout  # once (~2 s), not twice (~4 s)
    assert "test indexing did not end within 2 s" in done.stderr and "1 native calls did not end" in done.stderr


def test_deleting_an_agent_waits_for_its_indexing_pass_so_no_entry_outlives_it(storage: Storage) -> None:
    """A server turn does not wait for its recall indexing (Milvus Lite): an agent deleted while a pass is
    embedding its messages must not get index entries written after its deletion."""
    started, release = threading.Event(), threading.Event()

    class SlowModel(LocalMiniLM):
        def embed_multi(self, texts: Sequence[str], **kwargs: object) -> list[Vector]:
            started.set()
            release.wait(10)
            return super().embed_multi(texts)

    model = SlowModel()
    store = storage.passages(model.space)
    state = create_agent(
        storage, user_id="u", name="leaving", persona="sam_pov", human="basic", model="scripted",
        context_window=8192, embedding=model.space,
    )  # fmt: skip
    recall = RecallMemory(storage, agent_id=state.id, user_id="u", index=RecallIndex(store, model))
    recall.append(_messages(state.id, 3))
    indexing = threading.Thread(target=index_pass, args=([recall],))
    indexing.start()
    assert started.wait(10)
    deleting = threading.Thread(target=delete_agent, args=(storage, state))
    deleting.start()
    deleting.join(0.5)
    assert deleting.is_alive()  # waits for the pass
    release.set()
    indexing.join(30)
    deleting.join(30)
    assert storage.agents.by_id("u", state.id) is None
    assert store.query(all_of(eq("agent_id", state.id), eq("kind", "recall")), limit=100) == []


@contextlib.contextmanager
def two_processes(home: Path, milvus_server: str, server_database: str) -> Iterator[tuple[Storage, Storage]]:
    """Two storages on one home and one Milvus server, standing for two processes (each has its own writing locks)."""
    config = load_config(home)
    config.milvus.uri, config.milvus.database, config.milvus.token = milvus_server, server_database, TOKEN
    save_config(config, home)
    first, second = Storage(config, home), Storage(config, home)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@pytest.mark.usefixtures("metadata_url")
def test_two_processes_indexing_one_agent_at_once_on_a_shared_store_leave_one_entry_per_message(
    home: Path, milvus_server: str, server_database: str, model: LocalMiniLM
) -> None:
    """A search outside a lease (an MCP conversation_search, another server process's) indexes the agent's new
    messages while its own process does: two storages on one home and one Milvus server stand for the two
    processes (each has its own writing locks). Both passes read the same unindexed messages; were both to
    delete and then both insert, every message would have two entries (taking two ranked places)."""
    with two_processes(home, milvus_server, server_database) as (first, second):
        agent_id = _agent(first, model, "shared")
        both_inserting = threading.Barrier(2, timeout=5)
        recalls = []
        for storage in (first, second):
            store = storage.passages(model.space)
            assert store.shared
            original = store.insert

            def meet(passages: Sequence[Passage], original: Any = original) -> None:
                # Each pass has deleted its messages' old entries: both insert only once both got here.
                with contextlib.suppress(threading.BrokenBarrierError):
                    both_inserting.wait()
                original(passages)

            store.insert = meet  # type: ignore[method-assign]
            recalls.append(RecallMemory(storage, agent_id=agent_id, user_id="u", index=RecallIndex(store, model)))
        recalls[0].append(_messages(agent_id, 6))
        done: list[bool] = []
        passes = [threading.Thread(target=lambda r=recall: done.append(r.sync())) for recall in recalls]
        for thread in passes:
            thread.start()
        for thread in passes:
            thread.join(60)
        assert done == [True, True]
        where = all_of(eq("agent_id", agent_id), eq("kind", "recall"))
        entries = [p.id for p in first.passages(model.space).query(where, limit=100)]
        assert sorted(entries) == sorted(f"{agent_id}-{i}" for i in range(6)), entries
        # A query shows each id once; the entries are counted, and a search's places are taken, all the same.
        store = first.passages(model.space)
        assert store.count(where) == 6
        hits = store.search(model.embed("sailing"), limit=6, where=where, text="sailing")
        assert len(hits) == 6, [h.passage.id for h in hits]


@pytest.mark.usefixtures("metadata_url")
def test_a_pass_that_outlived_its_claim_leaves_the_agent_to_the_pass_that_took_it(
    home: Path, milvus_server: str, server_database: str, model: LocalMiniLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass slower than its claim (a slow embedding endpoint) finds the agent taken by another process's pass
    once the claim expired: it must not delete and insert alongside that pass (two entries of each message)."""
    with two_processes(home, milvus_server, server_database) as (slow, taker):
        slow.claim_seconds = taker.claim_seconds = 3.0  # a lease's length (config.server.lease_seconds)
        agent_id = _agent(slow, model, "outlived")
        slow_inserted = threading.Event()
        recalls = []
        for storage in (slow, taker):
            store = storage.passages(model.space)
            original = store.insert

            def insert(passages: Sequence[Passage], original: Any = original, mine: Storage = storage) -> None:
                if mine is taker:  # it has deleted: the slow pass, were it to write now, deletes and inserts too
                    slow_inserted.wait(2.0)
                original(passages)
                if mine is slow:
                    slow_inserted.set()

            store.insert = insert  # type: ignore[method-assign]
            recalls.append(RecallMemory(storage, agent_id=agent_id, user_id="u", index=RecallIndex(store, model)))
        recalls[0].append(_messages(agent_id, 4))
        messages = recalls[0]._messages
        read = messages.unindexed_of
        stalled = threading.Event()

        def stall(*args: Any, **kwargs: Any) -> Any:
            found = read(*args, **kwargs)
            if not stalled.is_set():  # the first pass only, holding its claim: the claim expires meanwhile
                stalled.set()
                time.sleep(4.5)
            return found

        monkeypatch.setattr(messages, "unindexed_of", stall)
        done: list[bool] = []
        passes = [threading.Thread(target=lambda r=recall: done.append(r.sync())) for recall in recalls]
        passes[0].start()
        assert stalled.wait(30)  # the slow pass claims first; the other waits for the claim to expire
        passes[1].start()
        for thread in passes:
            thread.join(60)
        assert done == [True, True]
        where = all_of(eq("agent_id", agent_id), eq("kind", "recall"))
        store = slow.passages(model.space)
        assert store.count(where) == 4
        hits = store.search(model.embed("sailing"), limit=8, where=where, text="sailing")
        assert sorted(h.passage.id for h in hits) == sorted(f"{agent_id}-{i}" for i in range(4))


@pytest.mark.usefixtures("metadata_url")
def test_a_message_another_process_edits_during_a_pass_is_left_to_index_with_its_new_text(
    home: Path, milvus_server: str, server_database: str, model: LocalMiniLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass (a search outside the agent's lease: MCP's conversation_search in its own process) read the agent's
    new messages; meanwhile the turn that holds the agent, in another process, edits one of them (/rethink,
    /rewrite: its text changes, it is marked unindexed). The pass indexed the old text and then marked the message
    indexed: the edit was never indexed. The message stays unindexed, and the next pass indexes its new text."""
    with two_processes(home, milvus_server, server_database) as (searching, editing):
        agent_id = _agent(searching, model, "edited")
        store = searching.passages(model.space)
        recall = RecallMemory(searching, agent_id=agent_id, user_id="u", index=RecallIndex(store, model))
        messages = _messages(agent_id, 3)
        recall.append(messages)
        read = searching.messages.unindexed_of

        def edited_meanwhile(*args: Any, **kwargs: Any) -> Any:
            found = read(*args, **kwargs)
            editing.messages.replace(stored(dataclasses.replace(messages[1], content="Knitting, not sailing.")))
            return found

        monkeypatch.setattr(searching.messages, "unindexed_of", edited_meanwhile)
        index_pass([recall])
        assert recall.backlog() == 1  # the edited one
        monkeypatch.setattr(searching.messages, "unindexed_of", read)
        assert index_pass([recall]).finished == {recall.key}
        assert recall.backlog() == 0
        entries = {p.id: p.text for p in store.query(all_of(eq("agent_id", agent_id), eq("kind", "recall")), limit=100)}
        assert "Knitting, not sailing." in entries[messages[1].id], entries


class SlowModel(LocalMiniLM):
    """The real local model at a slow CPU's or endpoint's pace (``pace`` seconds a text), counting the texts it
    embeds; once ``stop`` is set it fails (an endpoint gone), which ends a pass that would go on for ever. Its next
    call after ``stall`` is set takes that many seconds more (a busy machine starving the embedding thread)."""

    def __init__(self, pace: float, stop: threading.Event) -> None:
        super().__init__()
        self.pace, self.stop, self.texts, self.stall = pace, stop, 0, 0.0

    def embed_multi(self, texts: Sequence[str], **kwargs: object) -> list[Vector]:
        if self.stop.is_set():
            raise EmbeddingError("stopped by the test")
        time.sleep(self.pace * len(texts) + self.stall)
        self.stall = 0.0
        self.texts += len(texts)
        return super().embed_multi(texts)


@pytest.mark.usefixtures("metadata_url")
def test_two_processes_whose_passes_outlast_a_claim_index_a_backlog_once_not_taking_it_from_each_other(
    home: Path, milvus_server: str, server_database: str
) -> None:
    """An agent with a backlog (an import, a long conversation indexed late) on a slow CPU: a pass's embedding
    takes longer than its claim. The pass took its claim once and lost it while it embedded: the other process's
    pass took it over, embedded the same messages, lost it the same way, and so on for ever (neither wrote). A pass
    keeps its claim while it embeds, even through a part that takes longer than the claim (a load spike starving
    the embedding thread; in the suite at a load of 30 it did, both passes embedded 80 texts of 120, neither wrote):
    the backlog is embedded once, and indexed once."""
    # 5 s of embedding and more (the model's own time), against a claim of 4 s; the first process's first part
    # (16 texts) is held up 1.5 claims.
    count, pace, claim = 120, 0.04, 4.0
    stop = threading.Event()
    with two_processes(home, milvus_server, server_database) as (first, second):
        models = [SlowModel(pace, stop), SlowModel(pace, stop)]  # each process has its own embedding cache
        for model in models:
            model.embed_multi(["loaded before the passes"])  # the model's load is not the pace this test sets
            model.texts = 0
        agent_id = _agent(first, models[0], "backlog")
        recalls = []
        for storage, model in zip((first, second), models, strict=True):
            storage.claim_seconds = claim
            index = RecallIndex(storage.passages(model.space), model)
            recalls.append(RecallMemory(storage, agent_id=agent_id, user_id="u", index=index))
        recalls[0].append(_messages(agent_id, count))
        assert models[0].texts == 0
        models[0].stall = claim * 1.5
        done: list[bool] = []
        passes = [threading.Thread(target=lambda r=r: done.append(r.sync()), daemon=True) for r in recalls]
        for thread in passes:
            thread.start()
            time.sleep(0.3)  # the first claims the agent; the second waits for the claim
        # The passes end, or one embeds a text the other did (a livelock's first sign: it shows within two claims);
        # a slow machine only makes the passes take longer.
        deadline = time.monotonic() + 300
        while any(t.is_alive() for t in passes) and sum(m.texts for m in models) <= count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        stop.set()  # a livelock's passes now fail and end
        for thread in passes:
            thread.join(30)
        embedded = [m.texts for m in models]
        assert done == [True, True], f"indexed: {done}; texts embedded by each process: {embedded}"
        assert sum(embedded) == count, embedded  # each message embedded once, by one process
        where = all_of(eq("agent_id", agent_id), eq("kind", "recall"))
        store = first.passages(models[0].space)
        assert store.count(where) == count
        assert recalls[0].backlog() == 0


@pytest.mark.usefixtures("metadata_url")
def test_a_turn_never_waits_for_an_agent_a_stopped_process_holds_and_its_claim_lasts_a_lease(
    home: Path, milvus_server: str, server_database: str, model: LocalMiniLM
) -> None:
    """A server process stopped (SIGSTOP, a frozen VM) mid-pass holds its claim on the agent: the process that
    took the agent over had each turn's end wait 10 s for its indexing (``close``), a search 10 s more. Now a turn
    ends without waiting, a search waits briefly and finds the messages by words; once the claim expires (a
    lease's length), they are indexed, one entry each."""
    with two_processes(home, milvus_server, server_database) as (stopped, other):
        assert other.claim_seconds == load_config(home).server.lease_seconds
        other.claim_seconds = 3.0  # the shortest lease the config allows
        agent_id = _agent(stopped, model, "held")
        held = IndexClaims(stopped.metadata, 6.0)
        assert held.claim([agent_id], new_owner(), held.seconds) == {agent_id}  # its pass, then SIGSTOP
        expires = time.monotonic() + held.seconds
        index = RecallIndex(other.passages(model.space), model)
        recall = RecallMemory(other, agent_id=agent_id, user_id="u", index=index)
        recall.append(_messages(agent_id, 4))
        started = time.monotonic()
        recall.sync_later()  # a step's end
        recall.close(wait=False)  # the turn's end, under the lease
        closed = time.monotonic() - started
        assert closed < 1.5, f"the turn's end waited {closed:.2f} s for the other process's claim"
        started = time.monotonic()
        found = recall.search("sailing")
        searched = time.monotonic() - started
        assert searched < 4.0, f"the search waited {searched:.2f} s"
        assert isinstance(found, Page) and found.about == WORD_SEARCH_NOTE and found.total == 4, found
        time.sleep(max(0.0, expires - time.monotonic()))
        assert recall.wait_indexed(30)
        where = all_of(eq("agent_id", agent_id), eq("kind", "recall"))
        store = other.passages(model.space)
        assert store.count(where) == 4
        ranked = recall.search("sailing")
        shown = "\n".join(ranked.items) if isinstance(ranked, RankedPage) else ""
        assert all(f"Message {i} of" in shown for i in range(4)), ranked  # ranked, with its neighbours


@pytest.mark.usefixtures("metadata_url")
def test_an_agent_whose_claim_is_lost_between_embedding_parts_is_neither_written_nor_marked(
    home: Path, milvus_server: str, server_database: str
) -> None:
    """The pass's claim expires during its first part of embedding and another process's pass claims the agent:
    the first pass then embeds none of the rest, writes none of the agent's entries and marks nothing indexed
    (the new owner does)."""
    claim = 2.0
    with two_processes(home, milvus_server, server_database) as (first, second):
        agent_id = _agent(first, LocalMiniLM(), "lost")

        class TakenDuringFirstPart(LocalMiniLM):
            calls = 0

            def embed_multi(self, texts: Sequence[str], **kwargs: object) -> list[Vector]:
                type(self).calls += 1
                if type(self).calls == 1:
                    # The claim expired (the process was stopped: its renewing thread too) and the other process's
                    # pass took it: the row names that pass now. A running pass's thread keeps it renewed, so the
                    # expiry is set here rather than slept for.
                    with second.metadata.connection() as c:
                        c.execute(update(CLAIMS).where(CLAIMS.c.agent_id == agent_id).values(owner=new_owner()))
                    time.sleep(claim * 0.3)  # the part goes on past a renewal's due time (a quarter of the claim)
                return super().embed_multi(texts)

        model = TakenDuringFirstPart()
        first.claim_seconds = claim
        recall = RecallMemory(
            first, agent_id=agent_id, user_id="u", index=RecallIndex(first.passages(model.space), model)
        )
        recall.append(_messages(agent_id, 40))
        TakenDuringFirstPart.calls = 0
        before = recall.backlog()
        outcome = index_pass([recall])
        assert TakenDuringFirstPart.calls == 1  # the rest was not embedded
        assert first.passages(model.space).count(all_of(eq("agent_id", agent_id), eq("kind", "recall"))) == 0
        assert recall.backlog() == before
        assert recall.key in outcome.elsewhere and recall.key not in outcome.finished
