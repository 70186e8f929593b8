"""A new home's set-up killed at any point leaves a home the next command opens, loads into and searches.

The collection is made in the connecting thread of `memgpt load` (MilvusConnection.warm) while the command
goes on; a kill -9 there (tests/crash_child.py) stops the whole process at that point. On a Milvus server
the collection so left is every process's: whichever opens it next finishes it, several at once too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from memgpt.config import load_config
from memgpt.data.sources import get_source
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage, milvus_target
from memgpt.storage.filters import MATCH_ALL
from memgpt.storage.milvus import MilvusConnection
from memgpt.storage.milvus.store import MilvusPassageStore
from tests.conftest import DATA, REPO, run_cli

NOTES = DATA / "long_test.txt"


def killed_load(home: Path, point: str) -> None:
    env = {**os.environ, "MEMGPT_HOME": str(home), "CRASH_AT": point, "NO_COLOR": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "tests.crash_child", "load", "directory", "--name", "notes", f"--input-files={NOTES}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, f"not killed at {point}: {child.returncode}\n{child.stderr}"


# A server's new collection has no primer row (see schema.PRIMER_ID): only Milvus Lite's are primed.
KILLS = [("lite", "collection_made"), ("lite", "collection_primed"), ("server", "collection_made")]


@pytest.mark.parametrize(("backend", "point"), KILLS, indirect=["backend"])
def test_a_first_load_killed_while_its_collection_is_made_leaves_a_working_home(
    home: Path, model: LocalMiniLM, backend: str, point: str
) -> None:
    killed_load(home, point)
    done = run_cli("load", "directory", "--name", "notes", "--input-files", str(NOTES), home=home)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    found = run_cli("search", "notes", "Enrico Letta prime minister", home=home)
    assert found.returncode == 0 and "error" not in found.stderr.lower(), found.stderr
    assert "Letta" in found.stdout
    config = load_config(home)
    with Storage(config, home) as storage:
        source = get_source(storage, config.user_id, "notes")
        assert source.passages > 0
        assert storage.passages(model.space).count(MATCH_ALL) == source.passages  # no primer row left


def _started(*args: str, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "MEMGPT_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "memgpt", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", ["server"], indirect=True)
def test_two_processes_opening_a_server_collection_left_unfinished_at_once_both_work(
    home: Path, model: LocalMiniLM, backend: str
) -> None:
    killed_load(home, "collection_made")
    loads = [
        _started("load", "directory", "--name", name, f"--input-files={NOTES}", home=home) for name in ("one", "two")
    ]
    for load in loads:
        _out, err = load.communicate(timeout=300)
        assert load.returncode == 0 and "Traceback" not in err, err
    for name in ("one", "two"):
        found = run_cli("search", name, "Enrico Letta prime minister", home=home)
        assert found.returncode == 0 and "Letta" in found.stdout, found.stderr


class _Together:
    """A pymilvus client whose ``create_index`` calls wait for each other: two processes' repairs meeting at the
    one step that could collide."""

    def __init__(self, client: Any, barrier: threading.Barrier) -> None:
        self._client = client
        self._barrier = barrier

    def create_index(self, *args: Any, **kwargs: Any) -> Any:
        self._barrier.wait(timeout=60)
        return self._client.create_index(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.mark.parametrize("backend", ["server"], indirect=True)
def test_an_index_two_openers_create_at_once_fails_neither(home: Path, model: LocalMiniLM, backend: str) -> None:
    killed_load(home, "collection_made")
    target = milvus_target(load_config(home), home)
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []
    connections = [MilvusConnection(target), MilvusConnection(target)]

    def open_with(connection: MilvusConnection) -> None:
        client = _Together(connection.client, barrier)
        try:
            MilvusPassageStore(client, target, connection.capabilities, model.space)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failures.append(exc)
            barrier.abort()

    try:
        threads = [threading.Thread(target=open_with, args=(connection,)) for connection in connections]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
        assert connections[0].passages(model.space).search(model.embed_batch(["Letta"])[0], limit=1) == []
    finally:
        for connection in connections:
            connection.close()
