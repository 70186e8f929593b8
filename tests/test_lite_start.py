"""Starting Milvus Lite on a loaded machine: memgpt waits while the Milvus Lite process is alive and using
CPU, and fails in one line only when it died or stopped making progress.

The process is real: milvus-lite's own ``BIN_PATH`` (which memgpt honours alike) points at a stand-in
``milvus`` that first behaves as the test needs (busy for a while, exits, stops itself) and then, where it
should, becomes the real Milvus Lite binary.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import milvus_lite
import pytest

from memgpt.errors import StorageError
from memgpt.storage.milvus import MilvusConnection, MilvusTarget, lite

REAL_BIN = Path(milvus_lite.__file__).parent / "lib"

# The stand-in: spend BUSY seconds of CPU (a slow start on a loaded machine), then do THEN ("bind": hold the
# socket bound but not listening for 1.5 s of CPU, then "exec").
STAND_IN = """#!{python}
import os, signal, sys, time
end = time.monotonic() + {busy}
while time.monotonic() < end:
    pass
then = {then!r}
if then == "bind":  # the socket exists a while before anyone listens on it, as between gRPC's bind and listen
    import socket
    path = sys.argv[2].removeprefix("unix:")
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(path)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        pass
    bound.close()
    os.unlink(path)
    then = "exec"
if then == "exec":
    os.environ["LD_LIBRARY_PATH"] = {lib!r}
    os.execv({lib!r} + "/milvus", [{lib!r} + "/milvus", *sys.argv[1:]])
if then == "stop":
    with open(os.environ["STAND_IN_PID_FILE"], "w") as out:
        out.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)
sys.exit(3)
"""


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, busy: float, then: str) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "milvus"
    script.write_text(STAND_IN.format(python=sys.executable, busy=busy, then=then, lib=str(REAL_BIN)))
    script.chmod(0o755)
    monkeypatch.setenv("BIN_PATH", str(folder))
    monkeypatch.setenv("STAND_IN_PID_FILE", str(tmp_path / "stand_in.pid"))
    monkeypatch.setattr(lite, "LITE_STALL_SECONDS", 2.0)
    lite.binary_dir.cache_clear()  # looked up once per process: this test's BIN_PATH must be read
    return tmp_path / "data" / "milvus.db"


@pytest.fixture(autouse=True)
def _real_binary_afterwards() -> Iterator[None]:
    yield
    lite.binary_dir.cache_clear()  # the stand-in's BIN_PATH is gone: later tests find the real binary again


def test_a_slow_start_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Busy for twice the stall limit before Milvus Lite even begins: alive and progressing all along.
    db_file = stand_in(tmp_path, monkeypatch, busy=4.0, then="exec")
    _open_and_close(db_file)


def test_a_socket_that_exists_before_it_listens_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under load gRPC's bind and listen can be far apart; a connection in between is refused, and pymilvus
    # gave up at once ("Milvus Lite did not answer within 60 s", after a few milliseconds).
    db_file = stand_in(tmp_path, monkeypatch, busy=0.0, then="bind")
    _open_and_close(db_file)


# A stand-in that listens at once but greets no one for GREET_AFTER seconds (a Milvus Lite process starved of
# CPU), then relays every connection to the real Milvus Lite, which it runs on a socket of its own.
SLOW_GREETER = """#!{python}
import os, socket, subprocess, sys, threading, time
db, uri, level, lock = sys.argv[1:5]
inner = uri.removeprefix("unix:") + ".inner"
env = dict(os.environ, LD_LIBRARY_PATH={lib!r})
real = subprocess.Popen([{lib!r} + "/milvus", db, "unix:" + inner, level, lock], env=env)
outer = socket.socket(socket.AF_UNIX)
outer.bind(uri.removeprefix("unix:"))
outer.listen()
time.sleep({greet_after})
while not os.path.exists(inner):
    time.sleep(0.01)

def pump(source, sink):
    while data := source.recv(65536):
        sink.sendall(data)
    sink.shutdown(socket.SHUT_WR)

def relay():
    while True:
        client, _ = outer.accept()
        server = socket.socket(socket.AF_UNIX)
        server.connect(inner)
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()

threading.Thread(target=relay, daemon=True).start()
sys.exit(real.wait())
"""


def test_a_server_slow_to_greet_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # gRPC's own connect timeout (20 s unless told) ended the first call long before LITE_ANSWER_SECONDS.
    db_file = stand_in(tmp_path, monkeypatch, busy=0.0, then="exit")
    script = tmp_path / "bin" / "milvus"
    script.write_text(SLOW_GREETER.format(python=sys.executable, lib=str(REAL_BIN), greet_after=22))
    _open_and_close(db_file)


def test_a_process_that_dies_while_starting_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_file = stand_in(tmp_path, monkeypatch, busy=1.5, then="exit")  # past milvus-lite's own 0.5 s check
    with pytest.raises(StorageError) as failure:
        MilvusConnection(MilvusTarget(str(db_file)))
    message = str(failure.value)
    assert "\n" not in message
    assert "the Milvus Lite process exited (code 3) before it answered" in message, message
    assert not (db_file.parent / f".{db_file.name}.lock").exists()  # milvus-lite's lock is given back


def test_a_hung_process_is_reported_and_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_file = stand_in(tmp_path, monkeypatch, busy=0.7, then="stop")  # SIGSTOPs itself: alive, never progressing
    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        MilvusConnection(MilvusTarget(str(db_file)))
    waited = time.monotonic() - started
    message = str(failure.value)
    pid = int((tmp_path / "stand_in.pid").read_text())
    assert "\n" not in message
    assert f"the Milvus Lite process (pid {pid}) is stopped and has made no progress for 2 s" in message, message
    assert waited < 30, waited
    with pytest.raises(ProcessLookupError):  # the stopped process was ended, not left behind
        os.kill(pid, 0)


# Opens Milvus Lite on a file, says its server's pid and socket, then waits to be killed.
HOLD_OPEN = """
import sys, time
from pathlib import Path
from memgpt.storage.milvus import MilvusConnection, MilvusTarget, lite
connection = MilvusConnection(MilvusTarget(sys.argv[1]))
connection.ping()
server = lite.servers._running[Path(sys.argv[1]).resolve()]
print(server._process.pid, server.socket, flush=True)
time.sleep(600)
"""


def _sockets_of(db_file: Path) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"*_{db_file.name}.sock"))


def test_the_socket_a_killed_process_left_is_removed_at_the_next_start(tmp_path: Path) -> None:
    db_file = tmp_path / f"stale-{uuid.uuid4().hex[:8]}.db"  # a name no other test's sockets share
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(db_file)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        pid, left = child.stdout.readline().split()  # type: ignore[union-attr]
    finally:
        # kill -9 of its process group (a killed job, a timeout): the server dies with it, before removing its socket
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    deadline = time.monotonic() + 60
    while _alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(int(pid)), "the killed process's Milvus Lite server did not end"
    assert _sockets_of(db_file) == [Path(left)]  # left behind, nothing listening on it
    _open_and_close(db_file)
    assert _sockets_of(db_file) == []


def test_a_socket_a_live_process_listens_on_is_never_removed(tmp_path: Path) -> None:
    db_file = tmp_path / f"live-{uuid.uuid4().hex[:8]}.db"
    path = lite.LiteServer(db_file).socket  # where this file's server would listen
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        try:
            _open_and_close(db_file)
            assert path.exists()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(path))  # still the listener's
        finally:
            path.unlink()


def _alive(pid: int) -> bool:
    found = lite._cpu_ticks(pid)
    return found is not None and found[1] != "Z"  # a zombie has ended


def _open_and_close(db_file: Path) -> None:
    """Open Milvus Lite on the file, use it, and stop its server."""
    connection = MilvusConnection(MilvusTarget(str(db_file)))
    try:
        assert connection.ping() == []
    finally:
        connection.close()
        lite.servers.stop(db_file)


# The stand-in on a machine too loaded to give it CPU: one of its threads, pinned to one CPU with the idle
# scheduling class beside a busy process of normal priority there, waits to run (state R) while the process's
# used CPU time barely moves. The competitor says when it spins on that CPU (until then the stand-in spins
# itself, making progress: an idle-class thread alone on the CPU would use up its share at once and then wait,
# asleep). Once the competitor ends, the main thread (normal class, any CPU: a policy and a CPU set are a
# thread's own) becomes the real Milvus Lite, which must not inherit the starvation: at idle priority, pinned
# beside any other busy process, it got too little CPU to answer its first call within LITE_ANSWER_SECONDS.
STARVED = """#!{python}
import os, subprocess, sys, threading, time
busy = "import os, sys, time\\nos.sched_setaffinity(0, {{{cpu}}})\\nend = time.monotonic() + {starve}\\n"
busy += "os.write(1, b'spinning')\\nwhile time.monotonic() < end: pass"
competitor = subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE)
os.set_blocking(competitor.stdout.fileno(), False)
while True:
    try:
        if not os.read(competitor.stdout.fileno(), 8):
            sys.exit(4)  # it ended without spinning
        break
    except BlockingIOError:
        pass

def starved():
    os.sched_setaffinity(0, {{{cpu}}})
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while competitor.poll() is None:
        pass

thread = threading.Thread(target=starved)
thread.start()
thread.join()
os.environ["LD_LIBRARY_PATH"] = {lib!r}
os.execv({lib!r} + "/milvus", [{lib!r} + "/milvus", *sys.argv[1:]])
"""


def test_a_start_starved_of_cpu_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_file = stand_in(tmp_path, monkeypatch, busy=0.0, then="exit")
    cpu = min(os.sched_getaffinity(0))  # one this process may run on (a container's cpuset may leave out 0)
    script = tmp_path / "bin" / "milvus"
    script.write_text(STARVED.format(python=sys.executable, starve=8.0, lib=str(REAL_BIN), cpu=cpu))
    _open_and_close(db_file)


def test_a_start_leaves_no_log_file_in_the_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Milvus Lite's glog writes into the temporary directory (TMPDIR, else /tmp): INFO logs, and at every
    error three files (milvus.*.INFO/WARNING/ERROR), never removed. A start leaves none there, whether it
    works or is refused (a damaged file: its errors are logged)."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))  # where the server's glog writes; this process's is cached
    for name in ("GLOG_minloglevel", "GLOG_logtostderr", "GLOG_log_dir"):
        monkeypatch.delenv(name, raising=False)
    _open_and_close(tmp_path / "good.db")
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database " * 100)
    with pytest.raises(StorageError, match="exited"):
        MilvusConnection(MilvusTarget(str(damaged))).ping()
    lite.servers.stop(damaged)
    assert sorted(p.name for p in temporary.iterdir()) == []


def test_a_home_folder_planted_at_its_path_is_refused_in_one_line_and_left_alone(tmp_path: Path) -> None:
    """Milvus Lite's HOME sits at a known path in the shared temporary folder: a link (or another user's folder)
    found there is never used nor emptied; the start fails in one line and lets the file go."""
    server = lite.LiteServer(tmp_path / f"planted-{uuid.uuid4().hex[:8]}.db")
    target = tmp_path / "someone-elses"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    server.home.symlink_to(target)
    try:
        with pytest.raises(StorageError, match="is not usable") as caught:
            server.start(timeout=60)
        assert "\n" not in str(caught.value)
        assert (target / "keep.txt").read_text() == "mine" and server.home.is_symlink()
    finally:
        server.home.unlink()
    (server.home / ".cache").mkdir(parents=True)  # what a killed process's server left: its own, made anew
    server.start(timeout=60)  # the lock was let go
    try:
        assert server.home.is_dir() and oct(server.home.stat().st_mode & 0o777) == "0o700"
    finally:
        server.stop()
    assert not server.home.exists()
