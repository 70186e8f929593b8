"""A process that stops or dies inside a new database's migrations (one transaction holding the migration lock):
the next process goes on promptly, never applying a migration twice nor on top of a half-done one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import text

from memgpt.storage.migrations import MIGRATIONS
from memgpt.storage.sql import MetadataStore
from tests.conftest import REPO
from tests.processes import stop

# Opens a new database's metadata store as any command does, pausing after the first migration (inside the
# migrations' one transaction, the lock held) until a line comes on stdin; says "migrating" then, "opened" at the end.
MIGRATOR = """
import sys
from memgpt.storage import migrations
name, first = migrations.MIGRATIONS[0]
paused = []
def pausing(conn):
    first(conn)
    if not paused:
        paused.append(True)
        print("migrating", flush=True)
        sys.stdin.readline()
migrations.MIGRATIONS[0] = (name, pausing)
from memgpt.storage.sql import MetadataStore
MetadataStore(sys.argv[1]).close()
print("opened", flush=True)
"""


def migrator(url: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", MIGRATOR, url],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "migrating\n"
    return child


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["kill-9", "stopped"])
def test_the_next_process_goes_on_promptly_after_a_migrator_dies_or_stops(postgres_url: str, how: int) -> None:
    """kill -9: its session ends with its socket (1.4 s, the next process's own migrations included). Stopped: its
    session is ended as stalled once idle _STALLED_MIGRATOR (10) s (it held the lock for the idle limit, 60.6 s);
    let go again, it finds its transaction undone and the migrations applied, and opens the store."""
    child = migrator(postgres_url)
    assert child.stdin is not None and child.stdout is not None
    try:
        if how == signal.SIGKILL:
            child.kill()
            child.wait(10)
        else:
            stop(child)
        started = time.monotonic()
        store = MetadataStore(postgres_url)
        took = time.monotonic() - started
        try:
            with store.connection() as c:
                names = list(c.execute(text("SELECT name FROM schema_migrations ORDER BY name")).scalars())
        finally:
            store.close()
        if how == signal.SIGSTOP:
            os.kill(child.pid, signal.SIGCONT)
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline() == "opened\n"
            assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    print(f"{signal.Signals(how).name}: the next open took {took:.2f} s")
    assert names == sorted(name for name, _ in MIGRATIONS)  # each once: the primary key says so too
    assert took < 20  # _STALLED_MIGRATOR and the migrations themselves
