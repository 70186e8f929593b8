"""Milvus Lite's server process, started and stopped here rather than by the milvus-lite package.

Importing any module of milvus-lite runs its ``__init__``, which imports ``pkg_resources`` just to read the
package's version: about a tenth of a CPU second, more with many packages installed, at the start of every
command that opens Milvus Lite. So the server binary that the package ships is found without importing the
package, started as its own ``milvus_lite.server.Server`` starts it (the same arguments, lock file and
library path), and pymilvus is given the server's socket (``unix:...``), so it does not import milvus-lite
either. The server stops by itself when the lock file is let go, even if this process dies.

A killed process leaves its server's socket file behind (the server does not remove it). So each file's server
listens on a socket named after the file's path, and the next start, holding the file's lock, removes the one
a killed process left once nothing listens on it: at most one such file per database, never piling up in /tmp.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from memgpt.config import display_path
from memgpt.errors import StorageError, StorageLockedError
from memgpt.procfs import stat_fields

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.01
LITE_STALL_SECONDS = 30.0  # a starting process that used no CPU this long is stopped or stuck
_LOCK_WAIT_SECONDS = 10.0  # for the server of a killed process to shut down (~0.1 s; more on a busy machine)
_KILL_WAIT_SECONDS = 60.0  # for a process this one killed to be gone (see _wait_killed)


@functools.cache
def binary_dir() -> Path:
    """milvus-lite's ``lib`` folder (the ``milvus`` binary and its libraries), found without importing it.
    Looked up once, in the thread that starts a server's thread: looking up a package is import machinery."""
    if os.environ.get("BIN_PATH"):  # milvus-lite's own override, honoured alike
        return Path(os.environ["BIN_PATH"]).absolute()
    spec = importlib.util.find_spec("milvus_lite")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / "lib" / "milvus").exists():
            return Path(folder) / "lib"
    raise StorageError(
        "Milvus Lite is not installed (the milvus-lite package): reinstall memgpt, or configure a Milvus server "
        "URI (`memgpt configure --milvus-uri http://host:19530`)"
    )


class LiteServer:
    """One Milvus Lite server process serving ``db_file`` on a Unix socket."""

    def __init__(self, db_file: Path) -> None:
        self.db_file = db_file.absolute().resolve()
        # In the temporary folder, as milvus-lite puts it: a Unix socket path must stay short (108 bytes), so not
        # beside the file. Named after the file's path, so that the next start finds one a killed process left.
        digest = hashlib.sha256(str(self.db_file).encode()).hexdigest()[:12]
        self.socket = Path(tempfile.gettempdir()) / f"memgpt-{os.getuid()}-{digest}_{self.db_file.name}.sock"
        self.lock_path = self.db_file.parent / f".{self.db_file.name}.lock"
        # Its HOME: Milvus Lite creates $HOME/.cache/milvus as it starts, and with one shared by all (~/.cache/milvus)
        # processes starting at once raced for it: "create dir ... failed", then the first create or load of a
        # collection failed with "Mmap manager has not been init" (2-5 of 75 starts, three of them at once).
        self.home = self.socket.with_suffix(".home")
        self._home_made = False
        self._lock: IO[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"unix:{self.socket}"

    def start(self, timeout: float, environ: Mapping[str, str] | None = None) -> None:
        """Start the process and wait (up to ``timeout``) until it listens; raises if it cannot start. Its
        environment is ``environ`` (a copy the caller took before it started the thread this runs in: the
        main thread may change ``os.environ`` meanwhile) or this process's."""
        binaries = binary_dir()
        source = dict(os.environ) if environ is None else environ
        self._lock = self._take_lock()
        self._clear_stale_socket()
        environment = {k: v for k, v in source.items() if k not in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH")}
        library_path = f"{binaries}:{source.get('LD_LIBRARY_PATH', '')}"
        environment.update(LD_LIBRARY_PATH=library_path, DYLD_LIBRARY_PATH=library_path, HOME=str(self.home))
        try:
            self._fresh_home()
        except OSError as exc:
            self.stop()
            raise StorageError(
                f"cannot start Milvus Lite for {display_path(self.db_file)}: its folder {self.home} is not usable "
                f"({exc.strerror or exc}); remove it"
            ) from exc
        # Its glog would write INFO logs, and at every error three files (milvus.*.INFO/WARNING/ERROR), into
        # the temporary directory, kept forever: errors only, to its stderr alone (where glog shows them anyway).
        environment.setdefault("GLOG_minloglevel", "2")
        environment.setdefault("GLOG_logtostderr", "1")
        log_level = source.get("LOG_LEVEL", "ERROR")
        try:
            process = subprocess.Popen(
                [str(binaries / "milvus"), str(self.db_file), self.uri, log_level, str(self.lock_path)],
                env=environment,
                cwd=self.db_file.parent,
            )
        except OSError as exc:
            self.stop()
            raise StorageError(f"cannot start Milvus Lite for {display_path(self.db_file)}: {exc.strerror}") from exc
        self._process = process
        self._wait_listening(process, timeout)

    def _fresh_home(self) -> None:
        """Make its HOME anew, this user's alone. Called holding the file's lock: one left there is a killed
        process's, removed first, but only if it is this user's own folder (not a link, nor another user's, in
        a temporary folder everyone may write to)."""
        try:
            found = self.home.lstat()
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
                raise OSError(errno.EEXIST, "it is not a folder of this user's")
            shutil.rmtree(self.home)
        self.home.mkdir(mode=0o700)
        self._home_made = True

    def _take_lock(self) -> IO[str]:
        """The lock the server watches: it ends once it can take it. So after a process that held the file was
        killed, its server holds the lock while it shuts down; that is waited out. Longer, another program
        (not memgpt, whose own lock is taken first) uses the file."""
        lock = open(self.lock_path, "a", encoding="utf-8")  # noqa: SIM115 - held while the server runs
        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lock
            except OSError as exc:
                if time.monotonic() > deadline:
                    lock.close()
                    raise StorageLockedError(
                        f"another program is using {display_path(self.db_file)} — close it or use a Milvus server"
                    ) from exc
            time.sleep(_POLL_SECONDS)

    def _clear_stale_socket(self) -> None:
        """Remove the socket a killed process's server left at this file's socket path. Called holding the file's
        lock, so no other memgpt is starting a server for it; one that still listens there (the server of a
        killed process that has not yet seen its lock let go) is left alone, and this server gets a name of its
        own, as is anything at the path that is not this user's socket."""
        try:
            found = self.socket.lstat()
        except FileNotFoundError:
            return
        # Only a refusal means nobody listens there: a socket that cannot be told is left alone.
        if stat.S_ISSOCK(found.st_mode) and found.st_uid == os.getuid() and connects(self.socket, 2) is False:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            logger.info("removed %s, left by a process that was killed", self.socket)
        else:
            self.socket = Path(f"{tempfile.mktemp()}_{self.db_file.name}.sock")

    def _wait_listening(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        """Until the socket accepts a connection, while the process is alive and making progress: on a loaded
        machine (load average ~30 on 2 cores) it took tens of seconds to even create its socket. That it exists
        is not enough: gRPC binds it, then listens, and a connection between the two is refused, which pymilvus
        reports at once as a server that is not there (seen under load as "did not answer"). Given up on, in one line,
        when it ends (it could not open the file), when it used no CPU for LITE_STALL_SECONDS (stopped, or
        stuck: it is then ended), or after ``timeout`` in all (busy without ever listening, or no /proc)."""
        started = changed = time.monotonic()
        ticks: int | None = None
        where = display_path(self.db_file)
        # The cheap test first (this is polled every _POLL_SECONDS); what cannot be told is "not yet".
        while not (self.socket.exists() and connects(self.socket, 1.0)):
            now = time.monotonic()
            code = process.poll()
            if code is not None:
                self.stop()
                raise StorageLockedError(
                    f"cannot open {where}: the Milvus Lite process exited (code {code}) before it answered — the "
                    "file may be damaged or used by another program; close other programs or use a Milvus server"
                )
            found = _cpu_ticks(process.pid)
            if found is not None and (found[0] != ticks or found[1] == "D"):  # D: waiting on the disk, not stuck
                ticks, changed = found[0], now
            if found is not None and now - changed >= LITE_STALL_SECONDS and _runnable(process.pid):
                changed = now  # starved of CPU by a loaded machine, not stuck
            problem = None
            if found is not None and now - changed >= LITE_STALL_SECONDS:
                how = "is stopped and has" if found[1] in "Tt" else "has"
                problem = (
                    f"the Milvus Lite process (pid {process.pid}) {how} made no progress for {LITE_STALL_SECONDS:.0f} s"
                )
            elif now - started >= timeout:
                problem = f"the Milvus Lite process (pid {process.pid}) did not start listening within {timeout:.0f} s"
            if problem is not None:
                process.kill()
                self.stop()
                raise StorageLockedError(f"cannot open {where}: {problem}; try again, or use a Milvus server")
            time.sleep(_POLL_SECONDS)

    def wait(self) -> int | None:
        """Wait until the server process ends by itself or is stopped; its exit code (None: never started)."""
        process = self._process
        return None if process is None else process.wait()

    def stop(self) -> None:
        """Let go of the lock file, which ends the server, and wait for it; then tidy its files away."""
        if self._lock is not None:
            fcntl.lockf(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if self._process is not None:
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                _wait_killed(self._process)
            self._process = None
        for path in (self.socket, self.lock_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._home_made:
            shutil.rmtree(self.home, ignore_errors=True)
            self._home_made = False


def _wait_killed(process: subprocess.Popen[bytes]) -> None:
    """Wait for a killed process to be gone. Dying takes CPU too: one whose threads a loaded machine starves took
    up to 15 s after SIGKILL (measured here), and a bound of 3 s raised TimeoutExpired out of stop(), a traceback
    in place of the one-line error that ended the start. Past _KILL_WAIT_SECONDS it is left to the kernel."""
    try:
        process.wait(timeout=_KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("the Milvus Lite process (pid %d) was killed but is not gone after %.0f s", process.pid,
                       _KILL_WAIT_SECONDS)  # fmt: skip


def connects(path: Path, timeout: float) -> bool | None:
    """Whether a process listens on the Unix socket ``path``, by a connection made and closed at once: True,
    False (refused: bound but not listening yet, or nobody's; or no socket there), or None when it cannot be
    told (a timeout, a full backlog). A listening socket takes the connection into its backlog by itself."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return None
    return True


def _cpu_ticks(pid: int) -> tuple[int, str] | None:
    """The CPU time a process has used (clock ticks, its threads and reaped children) and its state letter,
    from /proc; None where there is no /proc."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return sum(int(value) for value in fields[11:15]), fields[0]


def _runnable(pid: int) -> bool:
    """Whether a thread of the process waits only for a CPU (R) or the disk (D): on a loaded machine a process
    may get too little CPU for its used time to move at all, without being stopped or stuck."""
    try:
        threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    for thread in threads:
        fields = stat_fields(pid, thread)  # None: the thread ended meanwhile
        if fields and fields[0] in ("R", "D"):
            return True
    return False


class _Servers:
    """This process's Milvus Lite servers, one per file."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._running: dict[Path, LiteServer] = {}

    def start(self, db_file: Path, timeout: float, environ: Mapping[str, str] | None = None) -> LiteServer:
        """The server of ``db_file``, started now unless it runs already (see :meth:`LiteServer.start`)."""
        key = db_file.absolute().resolve()
        with self._guard:
            if key not in self._running:
                server = LiteServer(key)
                server.start(timeout, environ)
                self._running[key] = server
            return self._running[key]

    def stop(self, db_file: Path) -> None:
        with self._guard:
            server = self._running.pop(db_file.absolute().resolve(), None)
            if server is not None:
                server.stop()

    def stop_all(self) -> None:
        with self._guard:
            servers, self._running = list(self._running.values()), {}
        for server in servers:
            server.stop()

    def files(self) -> list[Path]:
        """The files whose servers run."""
        with self._guard:
            return sorted(self._running)


servers = _Servers()
atexit.register(servers.stop_all)  # the servers would end anyway; this waits for them and removes their sockets
