"""A server's garbage collector: what its start-up made is frozen, and young objects are collected in larger batches
(``memgpt.server.app.freeze_startup``; bench/server_bench.py measures what collections cost under load)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from memgpt.server.app import YOUNG_COLLECTION, create_app


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, after the test."""
    threshold = gc.get_threshold()
    yield
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
