"""Real MCP servers for the tests: the fixture server (tests/mcp_fixture.py) over stdio or HTTP, and
mcp-server-time from PyPI; plus a way to see whether a server process is still alive."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memgpt.mcp.registry import ServerSpec

FIXTURE = str(Path(__file__).parent / "mcp_fixture.py")
API_KEY = "k-" + uuid.uuid4().hex  # a "secret" that must never show up in output


def fixture_command(*extra: str) -> list[str]:
    return [sys.executable, FIXTURE, "stdio", *extra]


def time_command() -> list[str]:
    return [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]


def stdio_spec(name: str, command: list[str], **fields: object) -> ServerSpec:
    return ServerSpec(name=name, command=command[0], args=command[1:], **fields)  # type: ignore[arg-type]


def alive_with(tag: str) -> list[int]:
    """Processes (not zombies) whose command line contains ``tag``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tag in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(condition: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def http_fixture(api_key: str = API_KEY) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The fixture server over streamable HTTP on a free loopback port: (its URL, its process)."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, FIXTURE, "http", str(port), "--api-key", api_key],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
            return True

        if not wait_until(listening, 60):
            raise RuntimeError("the HTTP fixture server did not start listening")
        yield f"http://127.0.0.1:{port}/mcp", process
    finally:
        process.terminate()
        process.wait(10)
