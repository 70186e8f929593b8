"""Milvus Lite allows one process per file: a second memgpt command waits a bounded time for another command
(saying so), and otherwise gets one actionable line, not a traceback; a server's file is refused at once."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from memgpt.errors import StorageLockedError
from memgpt.storage.milvus import MilvusConnection, MilvusTarget, client
from memgpt.storage.milvus.client import LockWait, command_holding
from tests.conftest import PAPER, cli_env, run_cli
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import use_scripted_llm

HOLDER = """
import sys, time
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
conn = MilvusConnection(MilvusTarget(sys.argv[1]))
conn.ping()
print("holding", flush=True)
time.sleep(120)
"""


# A memgpt command that holds the home's Milvus Lite file (announced as the CLI announces `memgpt load directory`)
# until told to let go on its stdin.
COMMAND_HOLDER = """
import sys
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from memgpt.storage.milvus.client import command_holding
with command_holding(sys.argv[2], None):
    conn = MilvusConnection(MilvusTarget(sys.argv[1]))
    conn.ping()
    print("holding", flush=True)
    sys.stdin.readline()
    conn.close()
print("released", flush=True)
"""


@contextlib.contextmanager
def holding(db: Path, description: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the Milvus Lite file ``db`` while the block runs (killed at its end): a memgpt
    command announced as ``description`` (COMMAND_HOLDER), or with none, a bare connection (HOLDER)."""
    script = [HOLDER, str(db)] if description is None else [COMMAND_HOLDER, str(db), description]
    proc = subprocess.Popen([sys.executable, "-c", *script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        said = proc.stdout.readline()
        while said and said.strip() != "holding":  # (anything the libraries print first)
            said = proc.stdout.readline()
        if said.strip() != "holding":
            pytest.fail("the holder process never opened the database")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_second_process_gets_the_lock_message(home: Path) -> None:
    db = home / "milvus.db"
    home.mkdir(parents=True)
    with holding(db):
        message = r"another memgpt process (\(pid \d+\) )?is using .*milvus\.db — close it or use a Milvus server"
        with pytest.raises(StorageLockedError, match=message):
            MilvusConnection(MilvusTarget(str(db)))
        args = ("load", "directory", "--name", "paper", "--input-files", str(PAPER))
        result = run_with(args, home=home, wait="0")
        assert result.returncode == 1
        assert "another memgpt process" in result.stderr and "is using" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_closing_releases_the_lock_for_other_processes(home: Path) -> None:
    db = home / "milvus.db"
    home.mkdir(parents=True)
    conn = MilvusConnection(MilvusTarget(str(db)))
    conn.ping()
    conn.close()
    with holding(db):  # would fail to open if our process still held the lock
        pass


def run_with(args: tuple[str, ...], *, home: Path, wait: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, home=home, timeout=timeout, env={"MEMGPT_LOCK_WAIT": wait})


def start_cli(args: tuple[str, ...], *, home: Path, wait: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "memgpt", *args],
        env={**cli_env(home), "MEMGPT_LOCK_WAIT": wait},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


WAITING = "waiting for the other memgpt command (pid {pid}: {command}) to finish — Ctrl-C to stop"


def test_a_command_waits_for_another_command_then_goes_on(home: Path, tmp_path: Path) -> None:
    """`memgpt load` while another command holds the file: it says once whom it waits for, waits (here until the
    holder lets go, however long that takes within the bound), then does its work."""
    home.mkdir(parents=True)
    note = tmp_path / "note.txt"
    note.write_text("Milvus Lite is one process's file; a second command waits its turn.\n", encoding="utf-8")
    with holding(home / "milvus.db", "memgpt run") as holder:
        waiter = start_cli(("load", "directory", "--name", "notes", "--input-files", str(note)), home=home, wait="600")
        assert waiter.stderr is not None
        line = waiter.stderr.readline().strip()
        assert line == WAITING.format(pid=holder.pid, command="memgpt run")
        assert waiter.poll() is None  # still waiting: the holder has not let go
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        out, err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err
    assert "Loaded 1 passages and 1 documents from notes" in out
    assert "waiting" not in err and "Traceback" not in err


def test_a_real_command_is_named_and_the_wait_is_bounded(home: Path) -> None:
    """A real `memgpt load` holds the file (stopped mid-way, so it holds it as long as the test needs): `memgpt
    search` names it and its pid, waits MEMGPT_LOCK_WAIT seconds, then refuses in one line; the load goes on."""
    home.mkdir(parents=True)
    loading = start_cli(("load", "directory", "--name", "paper", "--input-files", str(PAPER)), home=home, wait="0")
    lock = home / ".milvus.db.memgpt.lock"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and loading.poll() is None:
            try:
                if json.loads(lock.read_text(encoding="utf-8") or "{}").get("pid") == loading.pid:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        else:
            pytest.fail(f"`memgpt load` never held the file: {loading.communicate()}")
        os.kill(loading.pid, signal.SIGSTOP)
        try:
            result = run_with(("search", "paper", "memory"), home=home, wait="1")
        finally:
            os.kill(loading.pid, signal.SIGCONT)
        out, err = loading.communicate(timeout=300)
    finally:
        loading.kill()
        loading.wait()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == WAITING.format(pid=loading.pid, command="memgpt load directory")
    assert lines[1].startswith(f"error: another memgpt process (memgpt load directory, pid {loading.pid}) is still ")
    assert "milvus.db after 1 s — try again once it has finished, set MEMGPT_LOCK_WAIT=SECONDS to wait" in lines[1]
    assert len(lines) == 2
    assert loading.returncode == 0, err
    assert "Loaded" in out


@pytest.mark.parametrize("server", ["memgpt server at http://127.0.0.1:8283", "memgpt mcp serve"])
def test_a_server_holding_the_file_is_refused_at_once(home: Path, server: str) -> None:
    """A server holds the file for as long as it runs: no wait, however long one may be, just what to do."""
    home.mkdir(parents=True)
    with holding(home / "milvus.db", server) as holder:
        result = run_with(("search", "paper", "memory"), home=home, wait="100000", timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "waiting" not in lines[0]
    assert f"(pid {holder.pid})" in lines[0] and ("use its API" in lines[0] or "quit the client" in lines[0])


def test_ctrl_c_while_waiting_stops_cleanly(home: Path) -> None:
    home.mkdir(parents=True)
    with holding(home / "milvus.db", "memgpt load directory"):
        waiter = start_cli(("search", "paper", "memory"), home=home, wait="600")
        assert waiter.stderr is not None
        assert waiter.stderr.readline().startswith("waiting for the other memgpt command")
        waiter.send_signal(signal.SIGINT)
        _, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 130
        assert err.strip() == "Interrupted"  # what it lets go of: see test_ctrl_c_in_the_wait_lets_go_of_the_file


def test_a_wait_that_is_not_a_number_is_one_line(home: Path) -> None:
    result = run_with(("search", "paper", "memory"), home=home, wait="soon")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: MEMGPT_LOCK_WAIT='soon': give a number of seconds (0 refuses at once)"


def test_migrate_waits_for_another_command_too(home: Path) -> None:
    """`memgpt migrate` opens the Lite file itself (not through open_storage): it waits and names the holder alike."""
    home.mkdir(parents=True)
    with holding(home / "milvus.db", "memgpt run") as holder:
        result = run_with(("migrate", "--to", "http://127.0.0.1:9", "-y"), home=home, wait="1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == WAITING.format(pid=holder.pid, command="memgpt run")
    assert lines[1].startswith(f"error: another memgpt process (memgpt run, pid {holder.pid}) is still using ")
    assert len(lines) == 2


def test_a_delete_refused_for_the_lite_file_leaves_the_source_whole(home: Path, tmp_path: Path) -> None:
    """`memgpt delete source` while a server holds the file: refused before anything changes, so the source is
    neither hidden nor reported as partly deleted afterwards."""
    note = tmp_path / "note.txt"
    note.write_text("A source that stays whole when its delete is refused.\n", encoding="utf-8")
    loaded = run_with(("load", "directory", "--name", "notes", "--input-files", str(note)), home=home, wait="0")
    assert loaded.returncode == 0, loaded.stderr
    with holding(home / "milvus.db", "memgpt server at http://127.0.0.1:8283"):
        refused = run_with(("delete", "source", "notes", "-y"), home=home, wait="0")
    assert refused.returncode == 1 and "use its API" in refused.stderr
    listed = run_with(("list", "sources", "--json"), home=home, wait="0")
    assert listed.returncode == 0, listed.stderr
    [source] = json.loads(listed.stdout)
    assert (source["name"], source["passages"], source["status"]) == ("notes", 1, "ready")
    assert listed.stderr == ""


# In this process: a lock file held by another open file (as another process holds it: flock locks are per open
# file), with the note a holder writes.
@contextlib.contextmanager
def held_lock(db: Path, note: str) -> Iterator[IO[str]]:
    with open(db.parent / f".{db.name}.memgpt.lock", "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        write_note(handle, note)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_note(handle: IO[str], note: str) -> None:
    handle.truncate(0)
    handle.write(note)
    handle.flush()


def note_of(pid: int, holder: str) -> str:
    return json.dumps({"pid": pid, "holder": holder})


def lock_files_open(db: Path) -> int:
    lock = db.parent / f".{db.name}.memgpt.lock"
    return sum(1 for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd) == str(lock.resolve()))


def test_ctrl_c_in_the_wait_lets_go_of_the_file(tmp_path: Path) -> None:
    """A Ctrl-C while waiting (here raised where the wait tells the user) leaves nothing held: no entry in the
    process's table of held files, no lock file left open."""
    db = tmp_path / "milvus.db"

    def interrupted(line: str) -> None:
        raise KeyboardInterrupt

    with held_lock(db, note_of(os.getpid(), "memgpt load directory")):
        with command_holding("memgpt search", LockWait(600, interrupted)), pytest.raises(KeyboardInterrupt) as caught:
            client.reserve(MilvusTarget(str(db)))
        # While the interrupt is handled (kept here, as the CLI keeps it to say so), not once it is collected.
        assert client._lite_locks._held == {}
        assert lock_files_open(db) == 1, caught  # the holder's own
    client.reserve(MilvusTarget(str(db)))  # free at once now
    client.release(MilvusTarget(str(db)))


def test_a_wait_for_one_file_holds_up_no_other_file(tmp_path: Path) -> None:
    """While one thread waits for a file another process holds, other threads take and let go of other files."""
    waited, other = tmp_path / "waited.db", tmp_path / "other.db"
    told = threading.Event()

    def take_and_let_go() -> None:
        client._lite_locks.acquire(other)
        client._lite_locks.release(other)

    wait = LockWait(600, lambda line: told.set())
    with held_lock(waited, note_of(os.getpid(), "memgpt run")) as holder, command_holding("memgpt search", wait):
        waiting = threading.Thread(target=client._lite_locks.acquire, args=(waited,), daemon=True)
        waiting.start()
        assert told.wait(60)
        meanwhile = threading.Thread(target=take_and_let_go, daemon=True)
        meanwhile.start()
        meanwhile.join(30)  # moments; before, it waited for the first thread's wait to end
        done = not meanwhile.is_alive()
        fcntl.flock(holder, fcntl.LOCK_UN)
        waiting.join(60)
    assert done and not waiting.is_alive()
    client._lite_locks.release(waited)
    assert client._lite_locks._held == {}


def test_letting_go_clears_the_note(tmp_path: Path) -> None:
    db = tmp_path / "milvus.db"
    client.reserve(MilvusTarget(str(db)))
    lock = tmp_path / ".milvus.db.memgpt.lock"
    assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == os.getpid()
    client.release(MilvusTarget(str(db)))
    assert lock.read_text(encoding="utf-8") == ""


def _ended_pid() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


@pytest.mark.parametrize("note", ["", "dead server"])
def test_a_holder_not_named_yet_is_read_again(tmp_path: Path, note: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock is taken before its holder writes its note, over what it found: nothing (the last holder cleared
    it) or the note of a process killed while it held the file (here a server, which is refused at once). The
    waiter reads it again until it names a live process, then says once whom it waits for."""
    db = tmp_path / "milvus.db"
    found = note_of(_ended_pid(), "memgpt server at http://127.0.0.1:8283") if note else ""
    lines: list[str] = []
    monkeypatch.setattr(client, "_NOTE_SECONDS", 600.0)  # however slow this thread is to write it
    with held_lock(db, found) as holder:

        def holder_goes_on() -> None:
            time.sleep(0.5)
            write_note(holder, note_of(os.getpid(), "memgpt run"))
            deadline = time.monotonic() + 60
            while not lines and time.monotonic() < deadline:
                time.sleep(0.01)
            fcntl.flock(holder, fcntl.LOCK_UN)

        going_on = threading.Thread(target=holder_goes_on, daemon=True)
        going_on.start()
        with command_holding("memgpt search", LockWait(600, lines.append)):
            client.reserve(MilvusTarget(str(db)))
        going_on.join(60)
    client.release(MilvusTarget(str(db)))
    assert lines == [WAITING.format(pid=os.getpid(), command="memgpt run")]


def test_a_wait_under_a_second_is_said_as_it_is(tmp_path: Path) -> None:
    """MEMGPT_LOCK_WAIT=0.4: "after 0.4 s", not "after 0 s"."""
    db = tmp_path / "milvus.db"
    refused = r"\(memgpt run, pid \d+\) is still using .* after 0\.4 s — "
    with (
        held_lock(db, note_of(os.getpid(), "memgpt run")),
        command_holding("memgpt search", LockWait(0.4, lambda line: None)),
        pytest.raises(StorageLockedError, match=refused),
    ):
        client.reserve(MilvusTarget(str(db)))
    assert client._lite_locks._held == {}


@pytest.mark.parametrize("server", ["memgpt server at http://127.0.0.1:8283", "memgpt mcp serve"])
def test_run_message_is_refused_at_once_while_a_server_holds_the_file(
    home: Path, llm: ScriptedLLM, server: str
) -> None:
    """`memgpt run --message` opens Milvus only when a tool needs it: while a server held the Lite file it ran its turn
    and only an archival tool call failed inside it. It is refused at start, in the one line `search` says, from the
    lock's note (Milvus never opened), and stores nothing; once the server has let go it runs."""
    use_scripted_llm(home, llm.url)
    llm.reply("Hello.")
    assert run_with(("run", "--agent", "sam", "--message", "hi"), home=home, wait="0").returncode == 0
    with holding(home / "milvus.db", server) as holder:
        refused = run_with(("run", "--agent", "sam", "--message", "refused words"), home=home, wait="0")
    assert refused.returncode == 1 and refused.stdout == ""
    [line] = refused.stderr.strip().splitlines()
    assert f"(pid {holder.pid})" in line and ("use its API" in line or "quit the client" in line), line
    assert len(llm.requests) == 1  # (the first run's one turn)
    llm.reply("Hello again.")
    again = run_with(("run", "--agent", "sam", "--message", "now"), home=home, wait="0")
    assert again.returncode == 0 and "Hello again." in again.stdout, again.stderr
    assert "refused words" not in again.stdout  # (the resumed agent's last messages, shown)
