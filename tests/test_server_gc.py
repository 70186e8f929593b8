"""A server's garbage collector: what its start-up made is frozen, and young objects are collected in larger batches
(``memgpt.server.app.freeze_startup``; bench/server_bench.py measures what collections cost under load)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
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


@pytest.mark.usefixtures("collector")
def test_memgpt_gc_stats_writes_what_the_collections_cost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MEMGPT_GC_STATS=<file>`` (for measuring): the collections per generation, their CPU and what a full one
    walked, written to the file after a full collection; unset, nothing is counted."""
    stats = tmp_path / "gc.json"
    assert collector_module.install() is None  # off by default
    monkeypatch.setenv(collector_module.STATS_ENV, str(stats))
    counting = collector_module.install()
    assert counting is not None
    kept = [[i] for i in range(1_000)]
    gc.collect()
    written = json.loads(stats.read_text())
    assert written["collections"][2] >= 1 and written["cpu_seconds"][2] > 0
    assert written["walked_by_last_full"] >= len(kept)
    assert dict(written["walked_types"])["list"] >= len(kept)
