"""A server's garbage collector: what its start-up made is frozen, and young objects are collected in larger batches
(``memgpt.server.app.freeze_startup``; bench/server_bench.py measures what collections cost under load)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from memgpt.server import collector as collector_module
from memgpt.server.app import YOUNG_COLLECTION, create_app


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, after the test."""
    threshold = gc.get_threshold()
    yield
    collector_module.uninstall()
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector")
def test_a_worker_freezes_what_its_start_up_made(home: Path) -> None:
    """A worker of `memgpt server --workers N` builds its app with ``create_app()`` (uvicorn's factory): once built,
    the objects it made are frozen (no later full collection walks them) and the young generation's threshold is
    raised, as `memgpt server` with one process does after building its app."""
    gc.unfreeze()
    frozen = gc.get_freeze_count()
    app = create_app(home)
    try:
        assert gc.get_freeze_count() > frozen + 10_000, "the app's objects were not frozen"
        assert gc.get_threshold()[0] == YOUNG_COLLECTION
    finally:
        app.state.memgpt.close()


# `memgpt server` in a child process up to uvicorn's run, which reports the child's collector instead of listening.
_SERVE_UNTIL_LISTENING = textwrap.dedent(
    """
    import gc, sys
    import uvicorn
    def listening(*_args, **_options):
        print("collector", gc.get_freeze_count(), gc.get_threshold()[0], flush=True)
    uvicorn.run = listening
    sys.argv = ["memgpt", "server", "--port", "8999"]
    from memgpt.cli import executable
    executable()
    """
)


def test_memgpt_server_with_one_process_freezes_what_its_start_up_made(home: Path) -> None:
    """`memgpt server` (one process) builds its app itself, not with uvicorn's factory: it freezes its start-up and
    raises the young generation's threshold too, before it listens."""
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_UNTIL_LISTENING],
        env={**os.environ, "MEMGPT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    said = [line.split() for line in done.stdout.splitlines() if line.startswith("collector ")]
    assert done.returncode == 0 and len(said) == 1, done.stdout + done.stderr
    frozen, young = int(said[0][1]), int(said[0][2])
    assert young == YOUNG_COLLECTION, "the young generation's threshold was not raised"
    assert frozen > 10_000


class _Node:
    """A cycle's member that a weak reference can watch."""

    def __init__(self) -> None:
        self.me = self


def _churn(rounds: int) -> None:
    """Work as a server's turns do to the collector: containers made and dropped, young collections run."""
    for _ in range(rounds):
        made = [{"role": "user", "content": [i]} for i in range(2_000)]
        del made


@pytest.mark.usefixtures("collector")
def test_a_full_collection_freezes_what_survived_it() -> None:
    """After a full collection its survivors are frozen: the next full collection does not walk them again."""
    watcher = collector_module.Collector(thaw_seconds=3600)
    watcher.start()
    try:
        kept = [[i] for i in range(1_000)]
        frozen = gc.get_freeze_count()
        gc.collect()
        assert gc.get_freeze_count() >= frozen + len(kept), "the full collection's survivors were not frozen"
        assert not any(item is kept for item in gc.get_objects()), "a survivor is still walked by collections"
        assert watcher.collections[2] >= 1 and watcher.cpu[2] > 0
    finally:
        watcher.close()


@pytest.mark.usefixtures("collector")
def test_a_cycle_that_became_garbage_after_it_was_frozen_is_freed_within_the_thaw_period() -> None:
    """A cycle that survived a full collection (frozen) and then became garbage while the process worked is not
    freed by later full collections, but within ``thaw_seconds`` it is: the memory frozen garbage holds is bounded."""
    thaw = 0.5
    watcher = collector_module.Collector(thaw_seconds=thaw)
    node = _Node()
    alive = weakref.ref(node)
    watcher.start()
    try:
        watcher.thaw()  # a thaw's collection just ran, so the next is ``thaw`` seconds away; ``node`` is frozen
        del node
        _churn(5)
        gc.collect()  # a full collection walks no frozen object: the cycle stays
        assert alive() is not None, "the cycle was freed by a full collection: it had not been frozen"
        began = time.monotonic()
        while alive() is not None and time.monotonic() - began < 10 * thaw:
            _churn(5)  # under load: the thaw's collection competes with this thread for the GIL
        took = time.monotonic() - began
        assert alive() is None, f"a frozen cycle was still not freed {took:.1f} s later (thaw every {thaw} s)"
        assert watcher.thaws >= 1
    finally:
        watcher.close()
