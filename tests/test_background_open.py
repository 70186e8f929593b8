"""Milvus Lite opened in the background (Storage.open_vectors_early): the same connection, the same lock,
and nothing left behind when the command ends, fails or forks children meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memgpt.config import load_config
from memgpt.errors import StorageError, StorageLockedError
from memgpt.storage import Storage
from memgpt.storage.milvus.client import LITE_START_SECONDS
from memgpt.types import EmbeddingSpace, Passage
from tests.conftest import DATA, REPO, USER, run_cli
from tests.test_lock import holding
from tests.thread_imports import WATCH_THREAD_IMPORTS

SPACE = EmbeddingSpace("bg-model", 4)
NOTES = DATA / "long_test.txt"


def lite_servers() -> list[Path]:
    from memgpt.storage.milvus.lite import servers

    return servers.files()


def test_the_background_connection_is_the_one_used_and_closing_releases_it(home: Path) -> None:
    storage = Storage(load_config(home), home)
    storage.open_vectors_early()
    storage.open_vectors_early()  # a second call changes nothing
    store = storage.passages(SPACE)
    store.upsert([Passage(id="p1", text="hello", embedding=[1.0, 0, 0, 0], user_id=USER)])
    assert store.count() == 1
    assert storage.passages(SPACE) is store
    storage.close()
    assert lite_servers() == []
    with holding(home / "milvus.db"):  # fails to open if this process still held the file
        pass


def test_storage_for_a_space_loads_its_collection_while_the_sql_stores_open(home: Path) -> None:
    """``Storage(vectors_early=space)`` (what `search` and `load` open) starts Milvus first and the connecting
    thread loads the space's collection, which Milvus Lite does not do when it starts; a space without a
    collection gets one made there (and primed: see schema.PRIMER_ID), as a new home's first load needs."""
    from memgpt.storage.milvus import collection_name

    with Storage(load_config(home), home) as storage:
        storage.passages(SPACE).upsert([Passage(id="p1", text="hello", embedding=[1.0, 0, 0, 0], user_id=USER)])
    other = EmbeddingSpace("other-model", 4)
    storage = Storage(load_config(home), home, vectors_early=SPACE)
    try:
        client = storage.vectors.client  # waits for the connecting thread
        assert client.get_load_state(collection_name(SPACE))["state"].name == "Loaded"  # before any store opened
        assert storage.passages(SPACE).count() == 1
    finally:
        storage.close()
    storage = Storage(load_config(home), home, vectors_early=other)
    try:
        client = storage.vectors.client
        assert client.get_load_state(collection_name(other))["state"].name == "Loaded"  # before any store opened
        assert storage.passages(other).count() == 0
    finally:
        storage.close()
    assert lite_servers() == []


def test_closing_while_the_connection_is_still_opening_releases_everything(home: Path) -> None:
    for _ in range(3):
        storage = Storage(load_config(home), home)
        storage.open_vectors_early()
        storage.close()  # at once: the background thread is still importing pymilvus or starting Lite
        assert lite_servers() == []
    with holding(home / "milvus.db"):  # fails to open if this process still held the file
        pass


def test_a_file_another_process_holds_is_reported_at_once(home: Path) -> None:
    home.mkdir(parents=True)
    with holding(home / "milvus.db"):
        storage = Storage(load_config(home), home)
        with pytest.raises(StorageLockedError, match="another memgpt process"):
            storage.open_vectors_early()  # from the calling thread, before any thread starts: not at the first use
        storage.close()


def test_a_lite_server_that_ends_as_it_starts_is_reported_at_once(home: Path) -> None:
    """A file Milvus Lite cannot open (here not a database at all) ends its server at once: said so, without
    waiting for a server that will never answer, and nothing is left running."""
    home.mkdir(parents=True)
    (home / "milvus.db").write_bytes(b"not a Milvus Lite file\n" * 200)
    storage = Storage(load_config(home), home)
    storage.open_vectors_early()
    began = time.monotonic()
    with pytest.raises(StorageLockedError, match=r"milvus\.db: the Milvus Lite process exited \(code"):
        storage.passages(SPACE)
    assert time.monotonic() - began < LITE_START_SECONDS / 2
    storage.close()
    assert lite_servers() == []


def test_a_failed_background_open_is_raised_where_milvus_is_first_used(home: Path) -> None:
    config = load_config(home)
    config.milvus.uri = "http://127.0.0.1:9"  # nothing listens on the discard port
    storage = Storage(config, home)
    storage.open_vectors_early()
    with pytest.raises(StorageError, match=r"cannot connect to Milvus at http://127\.0\.0\.1:9"):
        storage.passages(SPACE)
    with pytest.raises(StorageError, match="cannot connect to Milvus"):  # tried again, not a stale handle
        storage.passages(SPACE)
    storage.close()


FORK_WHILE_OPENING = """
import sys
from pathlib import Path
from memgpt.config import Config
from memgpt.storage import Storage
from memgpt.types import EmbeddingSpace
import pexpect

home = Path(sys.argv[1])
crashed = []
for attempt in range(int(sys.argv[2])):
    storage = Storage(Config(), home)
    storage.open_vectors_early()
    # Children forked while the thread imports gRPC, starts Milvus Lite and connects, as `memgpt run`
    # starts MCP servers meanwhile (and the pty tests spawn with pexpect).
    for spawn in range(3):
        child = pexpect.spawn("/bin/echo", ["ok"], timeout=60)
        output = child.read().decode(errors="replace")
        child.close()
        if child.signalstatus is not None or "ok" not in output:
            crashed.append(f"run {attempt} spawn {spawn}: signal {child.signalstatus}: {output.strip()[:200]}")
    storage.passages(EmbeddingSpace("fork-model", 4)).count()
    storage.close()
print("\\n".join(crashed) or "none crashed")
"""


def test_children_forked_while_milvus_opens_in_the_background_are_unharmed(tmp_path: Path) -> None:
    """The background thread loads gRPC and starts Milvus Lite while the main thread forks: gRPC's fork
    handlers must stay off (see memgpt/storage/milvus) or pexpect's children die of "epoll_wait"."""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    out = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_OPENING, str(tmp_path / "home"), "15"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "none crashed", out.stdout + out.stderr[-2000:]


def test_ctrl_c_while_milvus_opens_in_the_background_ends_cleanly(home: Path) -> None:
    """Ctrl-C from a terminal reaches the whole process group; memgpt ends with one line and code 130,
    and the Lite server it was starting is gone with it."""
    assert run_cli("list", "sources", home=home).returncode == 0  # the home exists
    proc = subprocess.Popen(
        [sys.executable, "-m", "memgpt", "load", "directory", "--name", "notes", "--input-files", str(NOTES)],
        env={**os.environ, "MEMGPT_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not any(home.glob(".milvus.db.memgpt.lock")) and time.monotonic() < deadline:
        time.sleep(0.01)  # the lock is taken as the background open starts
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert run_cli("list", "sources", home=home).stdout.count("notes") == 0  # nothing half-loaded stays
    with holding(home / "milvus.db"):  # fails to open if this process still held the file
        pass


def _child(script: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``script`` run by a new Python on ``home`` (its argv[1]); it must exit 0."""
    command = [sys.executable, "-c", script, str(home)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


IMPORTS_IN_THREADS = (
    WATCH_THREAD_IMPORTS
    + """
from pathlib import Path
from memgpt.config import Config
from memgpt.storage import Storage
from memgpt.types import EmbeddingSpace

storage = Storage(Config(), Path(sys.argv[1]))
storage.open_vectors_early()
storage.passages(EmbeddingSpace("import-model", 4)).count()
storage.close()
print(sorted(set(seen)))
"""
)


def test_the_background_open_imports_nothing_in_its_threads(tmp_path: Path) -> None:
    """A Ctrl-C inside the main thread's imports can leave an import lock held that only the main thread
    may take again; a connecting thread that imported then hung `memgpt load` for good. So every module
    the threads need is imported before they start."""
    out = _child(IMPORTS_IN_THREADS, tmp_path / "home")
    assert out.stdout.strip() == "[]", out.stdout


LITE_BEFORE_PYMILVUS = """
import sys
from pathlib import Path
from memgpt.config import Config
from memgpt.storage import Storage
from memgpt.storage.milvus import client

started = []
real_start = client._start_lite_server


def watch(db_file):
    started.append("pymilvus" in sys.modules)
    return real_start(db_file)


client._start_lite_server = watch
storage = Storage(Config(), Path(sys.argv[1]))
storage.open_vectors_early()
storage.vectors.ping()
storage.close()
print(started)
"""


def test_milvus_lite_starts_before_pymilvus_is_imported(tmp_path: Path) -> None:
    """The Lite server process boots on the other core while the main thread imports pymilvus (~0.7 CPU
    seconds); started after it, the connection waited for both. It is started once."""
    out = _child(LITE_BEFORE_PYMILVUS, tmp_path / "home")
    assert out.stdout.strip() == "[False]", out.stdout


def test_a_ctrl_c_as_a_command_says_its_start_up_is_over_closes_what_it_opened(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``open_storage`` opens the home, then says start-up is over (the collector runs again, freezing what start-up
    made: tens of milliseconds at full size). A Ctrl-C that lands there still closes the storage: the Milvus Lite
    file is let go and its server stopped, rather than held until the process ends."""
    from memgpt.cli import common

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "startup_over", interrupted)
    with pytest.raises(KeyboardInterrupt), common.open_storage(vectors=True):
        pytest.fail("the command's body ran")
    assert lite_servers() == []
    with holding(home / "milvus.db"):  # fails to open if this process still held the file
        pass
