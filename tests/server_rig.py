"""A real `memgpt server` for tests: the app served by uvicorn on a free loopback port, in this process (so
tests can also look at its storage), plus API keys made the way `memgpt key create` makes them; and the
`memgpt server` command itself as child processes, for tests that need several processes or kill one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from memgpt.config import Config, load_config, save_config
from memgpt.server.app import KEEP_ALIVE_SECONDS, create_app, open_state
from memgpt.server.jobs import FileJobs
from memgpt.server.state import ServerState
from memgpt.server.turns import Timing
from memgpt.storage.users import UserStore
from tests.processes import cpu_seconds


def retrying_letta(server: LiveServer, *, max_retries: int, timeout: float | None = None) -> tuple[Any, list[str]]:
    """letta-client for the server's owner, retrying by itself as it does by default, and the
    X-Stainless-Retry-Count of every request it sent ("0" for a first try)."""
    from letta_client import Letta

    sent: list[str] = []
    hooks = {"request": [lambda r: sent.append(r.headers.get("x-stainless-retry-count", "0"))]}
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    letta = Letta(
        base_url=server.url,
        api_key=server.key(),
        max_retries=max_retries,
        http_client=httpx.Client(event_hooks=hooks),  # type: ignore[arg-type]
        **options,
    )
    return letta, sent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    home: Path
    config: Config
    state: ServerState = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.state = open_state(self.home, self.config)
        self.port = free_port()
        self.app = create_app(state=self.state)
        settings = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=KEEP_ALIVE_SECONDS,  # as `memgpt server` runs it
        )
        self._server = uvicorn.Server(settings)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def file_jobs(self) -> FileJobs:
        """The app's queue of background file loads."""
        return self.app.state.file_jobs  # type: ignore[no-any-return]

    @property
    def users(self) -> UserStore:
        return self.state.users

    def key(self, user_name: str | None = None) -> str:
        """A new API key for ``user_name`` (created if missing), or for the owner."""
        if user_name is None:
            return self.users.create_key(self.state.owner.id)[1]
        user = self.users.by_name(user_name) or self.users.create(user_name)
        return self.users.create_key(user.id)[1]

    def timing(self, **changes: float) -> None:
        """Shorter waits for tests (see ``memgpt.server.turns.Timing``)."""
        self.state.turns().timing = Timing(**changes)  # type: ignore[arg-type]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set while the block runs (child processes inherit them), as it was after:
    for fixtures that outlive a test, which have no monkeypatch."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def overtaken_send(server: LiveServer, url: str, body: dict[str, Any], headers: dict[str, str]) -> list[httpx.Response]:
    """POST ``body`` to ``url`` twice as a client whose retry overtakes its first try: the first try is held up
    before it takes the agent's lease (so before it records its run) until its retry (``X-Stainless-Retry-Count``
    1) has been answered. The order is set by events, not by time. The answers: the first try's, the retry's."""
    from tests import web

    runner = server.state.turns()
    take_lease = runner._take_lease
    held, retried = threading.Event(), threading.Event()

    def held_up(*args: Any, **kwargs: Any) -> Any:
        if not held.is_set():  # the first try: held up until its retry answered
            held.set()
            assert retried.wait(60)
        return take_lease(*args, **kwargs)

    runner._take_lease = held_up  # type: ignore[method-assign]
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(web.post(url, json=body, headers=headers, timeout=60)))
    first.start()
    assert held.wait(60)
    again = web.post(url, json=body, headers={**headers, "X-Stainless-Retry-Count": "1"}, timeout=60)
    retried.set()
    first.join(60)
    assert again.status_code == 200 and answers and answers[0].status_code == 200, (again.text, answers)
    return [answers[0], again]


def use_scripted_llm(home: Path, llm_url: str, *, timeout: float = 30.0) -> Config:
    """Point the home's config at the scripted LLM server (as `memgpt configure` would) and return it."""
    config = load_config(home)
    config.llm.provider = "openai-compatible"
    config.llm.endpoint = llm_url
    config.llm.model = "scripted"
    config.llm.api_key = "test"
    config.llm.context_window = 16_000
    config.llm.timeout_seconds = timeout
    save_config(config, home)
    return config


@dataclass
class ServerProcess:
    """`memgpt server` as a real child process on ``home`` (its output in ``<home>/server-<port>.log``)."""

    home: Path
    workers: int = 1
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / f"server-{self.port}.log"

    def start(self) -> None:
        """Launch it; ``wait_ready`` waits until it answers."""
        env = {**os.environ, "MEMGPT_HOME": str(self.home)}
        command = [sys.executable, "-m", "memgpt", "server", "--port", str(self.port), "--workers", str(self.workers)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until it answers. It failed once it exited, or once ``timeout`` seconds went by in which its processes
        used no CPU (they wait for something that does not come), or after ``5 * timeout`` seconds in all. Not a
        fixed ``timeout``: a start costs ~3 CPU seconds, and at load ~33 on this 2-core machine two servers
        starting side by side took 159 and 162 s to answer (the fencing pair's set-up failed at 120)."""
        started = last_progress = looked = time.monotonic()
        used = 0.0
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health/").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            now = time.monotonic()
            if now - looked >= 2:  # reading /proc costs CPU too: not at every poll
                looked, cpu = now, cpu_seconds(self.process.pid)
                if cpu > used:
                    used, last_progress = cpu, now
            why = (
                f"it exited with code {self.process.returncode}"
                if self.process.poll() is not None
                else f"its processes used no CPU for {timeout:.0f} s"
                if now - last_progress > timeout
                else f"it did not answer within {5 * timeout:.0f} s"
                if now - started > 5 * timeout
                else ""
            )
            if why:
                self.stop()
                load = os.getloadavg()[0]
                raise RuntimeError(
                    f"memgpt server did not start: {why} ({used:.1f} CPU s, {now - started:.0f} s, load {load:.1f}):\n"
                    f"{self.log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def http_stack(pid: int) -> set[str]:
    """Which of uvicorn's fast parts process ``pid`` has loaded (the shared objects it maps): "httptools" (the C
    HTTP parser uvicorn uses instead of pure-Python h11) and "uvloop" (the libuv event loop instead of asyncio's)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name in ("httptools", "uvloop") if f"/{name}/" in maps}


def start_servers(home: Path, *workers: int) -> list[ServerProcess]:
    """One `memgpt server` per entry (with that many workers), started side by side."""
    servers = [ServerProcess(home, n) for n in workers]
    try:
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
