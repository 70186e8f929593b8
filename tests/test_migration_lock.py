"""A process that stops or dies inside a new database's migrations (one transaction holding the migration lock):
the next process goes on promptly, never applying a migration twice nor on top of a half-done one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from memgpt.config import load_config, save_config
from memgpt.storage.migrations import MIGRATIONS
from memgpt.storage.sql import MetadataStore
from tests.conftest import REPO, run_cli
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


def let_go(child: subprocess.Popen[str]) -> None:
    """Resumes a stopped migrator and lets it finish: it opens the store and exits 0."""
    assert child.stdin is not None and child.stdout is not None
    os.kill(child.pid, signal.SIGCONT)
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.stdout.readline() == "opened\n"
    assert child.wait(30) == 0


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
            let_go(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    print(f"{signal.Signals(how).name}: the next open took {took:.2f} s")
    assert names == sorted(name for name, _ in MIGRATIONS)  # each once: the primary key says so too
    assert took < 20  # _STALLED_MIGRATOR and the migrations themselves


def test_a_command_meeting_a_stopped_migrator_on_sqlite_says_which_process_holds_the_home(home: Path) -> None:
    """SQLite: a migrator stopped (SIGSTOP) inside the migrations' transaction (BEGIN EXCLUSIVE) holds the home's
    database until it goes on or ends: another command waits its busy timeout, then says in one line which process
    holds it and what to do, not "database is locked". Let go, the migrator finishes and the command works."""
    save_config(load_config(home), home)
    child = migrator(f"sqlite:///{home / 'metadata.sqlite'}")
    assert child.stdin is not None and child.stdout is not None
    try:
        stop(child)
        told = run_cli("user", "create", "bob", home=home, timeout=120)
        let_go(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert told.returncode != 0 and "Traceback" not in told.stderr, told.stderr
    lines = told.stderr.strip().splitlines()
    assert len(lines) == 1, told.stderr
    line = lines[0]
    assert f"held by process {child.pid} (stopped: " in line and f"kill -CONT {child.pid}" in line, line
    assert run_cli("user", "create", "bob", home=home).returncode == 0


def test_the_server_answers_a_busy_metadata_database_without_naming_the_process(home: Path) -> None:
    """The busy line names another process's pid and command line: the CLI says it (above), but the server
    answers any API user a generic 503 and keeps the detail for its log."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from memgpt.errors import MetadataBusyError
    from memgpt.server.errors import install

    database = home / "metadata.sqlite"
    save_config(load_config(home), home)
    child = migrator(f"sqlite:///{database}")
    assert child.stdin is not None and child.stdout is not None
    try:
        stop(child)
        with pytest.raises(MetadataBusyError) as met:
            MetadataStore(f"sqlite:///{database}")
    finally:
        child.kill()
        child.wait(10)
    assert f"held by process {child.pid} (stopped: " in str(met.value)
    app = FastAPI()
    install(app)

    @app.get("/busy")
    def busy() -> None:
        raise met.value

    answer = TestClient(app).get("/busy")
    assert (answer.status_code, answer.json()) == (503, {"detail": "metadata database busy, try again"})
    assert str(child.pid) not in answer.text and "python" not in answer.text
