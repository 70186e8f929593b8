"""A real Milvus standalone server for the test session (the PyPI package `milvus`, no Docker).

Started once per session on free loopback ports; every test that uses it gets a fresh database,
so tests never see each other's collections.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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
            tail = (data / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(
                "the Milvus server did not start (is another one running? this package runs one instance per "
                f"machine; see {data}/logs):\n{tail}"
            )
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


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if _executable() is None:
        pytest.skip("milvus-server is not installed (pip install milvus==2.3.5, part of memgpt[dev] on Linux x86_64)")
    try:
        process, uri = start_server(tmp_path_factory.mktemp("milvus-server"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield uri
    stop_server(process)


@pytest.fixture
def server_database(milvus_server: str) -> Iterator[str]:
    """A database of its own on the shared server, dropped afterwards."""
    from pymilvus import MilvusClient

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = MilvusClient(uri=milvus_server, token=TOKEN)
    admin.create_database(name)
    yield name
    scoped = MilvusClient(uri=milvus_server, token=TOKEN, db_name=name)
    for collection in scoped.list_collections():
        scoped.drop_collection(collection)
    scoped.close()
    admin.drop_database(name)
    admin.close()
