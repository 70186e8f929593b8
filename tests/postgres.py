"""A real PostgreSQL for the test session (Debian's `postgresql` package, no Docker).

``initdb`` in a temporary directory, then ``postgres`` on a free loopback port with its unix socket in
that directory too. Every test that asks for it gets a database of its own, dropped afterwards.

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as an unprivileged user
(Debian's ``postgres``, else ``nobody``) that owns the temporary directory.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "memgpt"
PASSWORD = "memgpt-test-password"
# Durability is not what these tests check: without fsync a database is created in milliseconds.
# Sessions default to a zone with a half-hour offset, so anything that assumes UTC shows up.
# log_line_prefix: PostgreSQL 15's default, set so tests that read server.log for a session's "[pid] FATAL:" lines
# do not depend on it
_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "timezone=Asia/Kolkata",
    "log_line_prefix=%m [%p] ",
)


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``: from PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    """Who runs the server: ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    process: subprocess.Popen[bytes]
    directory: Path
    port: int
    launch: Callable[[], subprocess.Popen[bytes]] | None = None  # starts it again on the same data and port

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Stop the server ("fast shutdown": every session ends), and start it again on exit."""
        if self.launch is None:
            raise RuntimeError("this PostgresServer was not started by start_postgres: it cannot be restarted")
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        try:
            yield
        finally:
            self.process = self.launch()
            _wait_until_ready(self)

    def url(self, database: str = "postgres", *, password: str = PASSWORD) -> str:
        """A SQLAlchemy URL on the psycopg 3 driver."""
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def admin(self):  # -> psycopg.Connection, imported lazily like the driver itself
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres", autocommit=True
        )

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database, dropped on exit even while connections are left open; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.url(name)
        finally:
            with self.admin() as admin:
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")[-2000:]


def start_postgres(binaries: Path) -> PostgresServer:
    """initdb and start a server in a new temporary directory; raises RuntimeError if it does not come up."""
    runner = _unprivileged_user()
    # Not under pytest's temp root: that one is private to us, and the server may run as another user.
    directory = Path(tempfile.mkdtemp(prefix="memgpt-pg-"))
    (directory / "password").write_text(PASSWORD)
    as_runner: dict[str, object] = {}
    if runner is not None:
        for path in (directory, directory / "password"):
            os.chown(path, runner.pw_uid, runner.pw_gid)
        as_runner = {"user": runner.pw_uid, "group": runner.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    initdb = subprocess.run(
        [
            str(binaries / "initdb"),
            "--pgdata",
            str(directory / "data"),
            "--username",
            USER,
            "--pwfile",
            str(directory / "password"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",  # so a wrong password is refused, as on a real server
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        **as_runner,  # type: ignore[arg-type]
    )
    if initdb.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
    port = _free_port()
    command = [str(binaries / "postgres"), "-D", str(directory / "data"), "-p", str(port), "-h", "127.0.0.1"]
    command += ["-k", str(directory), *(arg for setting in _SETTINGS for arg in ("-c", setting))]
    launch = functools.partial(_launch, command, directory, env, as_runner)
    server = PostgresServer(launch(), directory, port, launch)
    _wait_until_ready(server)
    return server


def _launch(
    command: list[str], directory: Path, env: dict[str, str], as_runner: dict[str, object]
) -> subprocess.Popen[bytes]:
    log = open(directory / "server.log", "ab")  # noqa: SIM115 - the server writes to it for its lifetime
    return subprocess.Popen(
        command,
        cwd=directory,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **as_runner,  # type: ignore[arg-type]
    )


def _wait_until_ready(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            server.admin().close()
            return
        except psycopg.OperationalError:
            if server.process.poll() is not None or time.monotonic() > deadline:
                log = server.log()
                stop_postgres(server)
                raise RuntimeError(f"PostgreSQL did not start:\n{log}") from None
            time.sleep(0.1)


def stop_postgres(server: PostgresServer) -> None:
    with contextlib.suppress(ProcessLookupError):
        server.process.send_signal(signal.SIGINT)  # "fast shutdown": ends sessions, then exits
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    binaries = find_binaries()
    if binaries is None:
        reason = "PostgreSQL is not installed (initdb not on PATH or in /usr/lib/postgresql/*/bin): "
        if os.environ.get("CI"):  # scripts/test.sh installs it there: a skip would hide a broken install step
            pytest.fail(reason + "CI must install it (scripts/test.sh does)")
        pytest.skip(reason + "apt-get install postgresql, or run scripts/test.sh, which does")
    try:
        server = start_postgres(binaries)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    stop_postgres(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's server, dropped afterwards; its SQLAlchemy URL."""
    with postgres_server.database() as url:
        yield url
