"""A real Milvus standalone server for the test session (the PyPI package `milvus`, no Docker).

Started once per session on free loopback ports; every test that uses it gets a fresh database,
so tests never see each other's collections.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _executable() -> str | None:
    beside = Path(sys.executable).parent / "milvus-server"
    return str(beside) if beside.exists() else shutil.which("milvus-server")


# The server runs with authentication on, so every server test also proves the token reaches it.
TOKEN = "root:Milvus"


def _ready(uri: str) -> bool:
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    try:
        client = MilvusClient(uri=uri, token=TOKEN, timeout=2)
        client.list_collections()
        client.close()
        return True
    except MilvusException:
        return False


# Milvus standalone's parts find each other through etcd, each at the address it registers there: with its
# `<part>.ip` empty (the package's config template) that is the machine's first non-loopback address (here the
# VM's, 192.0.2.2), so they dialed each other there ("failed to connect 192.0.2.2:53100": a part dialing root
# coordination). Pinned to loopback, they neither depend on that interface nor advertise it.
_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")


def start_server(data: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start `milvus-server` (authentication on) and wait until it answers; raises RuntimeError."""
    executable = _executable()
    if executable is None:
        raise FileNotFoundError("milvus-server is not installed (pip install milvus==2.3.5)")
    port = port or _free_port()
    log = open(data / "server.log", "w")  # noqa: SIM115 - the server writes to it for its lifetime
    process = subprocess.Popen(
        # Strong reads wait for the time tick; 20 ms keeps them fast (the default is 200 ms).
        [
            executable,
            "--data",
            str(data),
            "--proxy-port",
            str(port),
            "--authorization-enabled",
            "true",
            "--extra-config",
            "proxy.timeTickInterval=20",
            *(arg for part in _COMPONENTS for arg in ("--extra-config", f"{part}.ip=127.0.0.1")),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not _ready(uri):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            logs = " ".join(f.read_text(errors="replace") for f in data.rglob("*.log"))
            if "2380: bind: address already in use" in logs:
                raise RuntimeError(
                    "another milvus-server runs on this machine (its embedded etcd holds 127.0.0.1:2380, one per "
                    "machine): stop it, or let this run share it (tests/milvus_server.py shares its own)"
                )
            tail = (data / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Milvus server did not start (see {data}/logs):\n{tail}")
        time.sleep(0.5)
    return process, uri


def stop_server(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# milvus-server runs once per machine (its embedded etcd always binds 127.0.0.1:2380), so test sessions
# running at the same time (several worktrees, several developers' runs) share one: the first starts it, each
# holds a shared flock on USERS while it uses it, and the last one out stops it.
SHARED = Path(tempfile.gettempdir()) / "memgpt-test-milvus-server"


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # reap it if this process started it
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running() -> dict[str, object] | None:
    try:
        info = json.loads((SHARED / "server.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(info, dict) and _alive(int(info["pid"])) and _ready(str(info["uri"])):
        return info
    return None


def _stop_shared(info: dict[str, object]) -> None:
    pid = int(info["pid"])  # type: ignore[call-overload]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(str(info["data"]), ignore_errors=True)
    (SHARED / "server.json").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[str]:
    if _executable() is None:
        pytest.skip("milvus-server is not installed (pip install milvus==2.3.5, part of memgpt[dev] on Linux x86_64)")
    try:
        with shared_server() as uri:
            yield uri
    except _StartFailed as exc:
        pytest.fail(str(exc))


class _StartFailed(RuntimeError):
    pass


@contextlib.contextmanager
def shared_server() -> Iterator[str]:
    """The machine's one test Milvus server (started if none runs), used until exit; its URI."""
    SHARED.mkdir(exist_ok=True)
    with open(SHARED / "start.lock", "a") as mutex, open(SHARED / "users.lock", "a") as users:
        fcntl.flock(mutex, fcntl.LOCK_EX)
        try:
            info = _running()
            if info is None:
                stale = SHARED / "server.json"
                if stale.exists():  # left by a session that was killed: its server is gone or broken
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        _stop_shared(json.loads(stale.read_text()))
                data = SHARED / f"data-{uuid.uuid4().hex[:8]}"
                data.mkdir()
                try:
                    process, uri = start_server(data)
                except RuntimeError as exc:
                    shutil.rmtree(data, ignore_errors=True)
                    raise _StartFailed(str(exc)) from exc
                info = {"pid": process.pid, "uri": uri, "data": str(data)}
                (SHARED / "server.json").write_text(json.dumps(info))
            fcntl.flock(users, fcntl.LOCK_SH)
        finally:
            fcntl.flock(mutex, fcntl.LOCK_UN)
        try:
            yield str(info["uri"])
        finally:
            fcntl.flock(mutex, fcntl.LOCK_EX)
            try:
                if _last_user(users):
                    _stop_shared(info)
            finally:
                fcntl.flock(users, fcntl.LOCK_UN)
                fcntl.flock(mutex, fcntl.LOCK_UN)


def _last_user(users: IO[str]) -> bool:
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # granted only when no other session uses it
    except OSError:
        return False
    return True


@pytest.fixture
def server_database(milvus_server: str) -> Iterator[str]:
    """A database of its own on the shared server, dropped afterwards."""
    with milvus_database(milvus_server) as name:
        yield name


@contextlib.contextmanager
def milvus_database(milvus_server: str) -> Iterator[str]:
    """A new database on the server, its collections and itself dropped on exit; its name."""
    from pymilvus import MilvusClient

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = MilvusClient(uri=milvus_server, token=TOKEN)
    admin.create_database(name)
    try:
        yield name
    finally:
        scoped = MilvusClient(uri=milvus_server, token=TOKEN, db_name=name)
        for collection in scoped.list_collections():
            scoped.drop_collection(collection)
        scoped.close()
        admin.drop_database(name)
        admin.close()
