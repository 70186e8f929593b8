"""The benches' LLM: an OpenAI-compatible chat server answering every request with a ``send_message`` after a
fixed delay, in a process of its own (uvicorn, uvloop and httptools, a plain ASGI callable).

    python bench/fixed_llm.py --fd N [--delay 0.2] [--words 0] [--standin]

It runs outside the bench's process so that its answers and the bench's clients do not wait on each other's
Python (one GIL) and its CPU is counted apart. It has no project imports, so it starts in a fraction of a second.
``FixedLLM`` starts it on a listening socket the bench made (``--fd``: connections queue there until it
accepts them); GET /calls answers how many chat completions it has served.

``--standin``: it also answers the few `memgpt server` routes the server bench's clients use, so the bench can
measure itself against a server that does nothing but wait (its floor): POST /v1/agents/{id}/messages after the
same delay (an answer shaped and sized as the server's); at once POST /v1/agents/ and
POST /v1/agents/{id}/archival-memory (a new id), GET /v1/agents/ and GET /v1/agents/{id}/archival-memory/search
(empty lists); GET /times answers when it received, woke for and had answered each send, by agent, and how late
its event loop woke from 10 ms sleeps meanwhile (the bench's account of where its floor's time goes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Words the messages and replies of ``--words`` are drawn from.
VOCABULARY = """we could meet on tuesday after work near the station and talk about the garden project my sister
wants to plant tomatoes basil and roses before the summer holiday if the weather stays warm enough remember that
the invoice for the new bicycle is due next month so maybe keep some budget aside for the concert tickets too""".split()  # noqa: SIM905

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def words(count: int, seed: str | None = None) -> str:
    """``count`` words of VOCABULARY, the same ones for the same ``seed`` (None: any)."""
    rng = random.Random(seed) if seed is not None else random
    return " ".join(rng.choices(VOCABULARY, k=count))


def completion(reply: str) -> dict[str, Any]:
    """A chat completion calling send_message with ``reply``."""
    call = {"name": "send_message", "arguments": json.dumps({"message": reply})}
    message = {
        "role": "assistant",
        "content": "Acknowledge.",
        "tool_calls": [{"id": f"call_{uuid.uuid4().hex[:10]}", "type": "function", "function": call}],
    }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:10]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _sent(agent: str, reply: str) -> dict[str, Any]:
    """What `memgpt server` answers a send with (Letta's shape: the thought, the send_message call, its return,
    the reply, and usage), with ids and dates as long as its."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())

    def item(kind: str, **extra: Any) -> dict[str, Any]:
        return {"id": f"message-{uuid.uuid4()}", "date": now, "message_type": kind, "agent_id": agent, **extra}

    call = {"name": "send_message", "arguments": json.dumps({"message": reply}), "tool_call_id": "call_0000000001"}
    return {
        "messages": [
            item("reasoning_message", reasoning="Acknowledge."),
            item("tool_call_message", tool_call=call),
            item("tool_return_message", tool_return="None", status="success", tool_call_id="call_0000000001"),
            item("assistant_message", content=reply),
        ],
        "stop_reason": {"message_type": "stop_reason", "stop_reason": "end_turn"},
        "usage": {"message_type": "usage_statistics", "completion_tokens": 1, "prompt_tokens": 1, "total_tokens": 2},
    }


class App:
    """The ASGI callable: chat completions after ``delay`` seconds (and with ``standin``, the server's routes)."""

    def __init__(self, delay: float, words: int = 0, standin: bool = False) -> None:
        self.delay = delay
        self.words = words  # a reply of this many words (each different) instead of "Noted."
        self.standin = standin
        self.calls = 0
        # With ``standin``: each send's (received, woke, answered) on the machine's monotonic clock (the one
        # time.perf_counter reads, the same in every process), by agent, in the order they came; and this
        # loop's lag (how late a 10 ms sleep woke), for GET /times: where the floor's added latency goes.
        self.times: dict[str, list[tuple[float, float, float]]] = {}
        self.lag: list[tuple[float, float]] = []
        self._lagging: asyncio.Task[None] | None = None

    def _reply(self) -> str:
        return words(self.words) if self.words else "Noted."

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # the request's body, unread: no route needs it
            more = (await receive()).get("more_body", False)
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/calls":
            payload: Any = {"calls": self.calls}
        elif method == "GET" and path == "/times":
            payload = {"sends": self.times, "lag": self.lag}
        elif method == "GET" and path.endswith("/models"):
            payload = {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "bench"}]}
        elif method == "POST" and path.endswith("/chat/completions"):
            await asyncio.sleep(self.delay)
            self.calls += 1
            payload = completion(self._reply())
        elif self.standin and method == "POST" and path.startswith("/v1/agents/") and path.endswith("/messages"):
            received = time.perf_counter()
            if self._lagging is None:
                self._lagging = asyncio.create_task(loop_lag(self.lag))
            await asyncio.sleep(self.delay)
            woke = time.perf_counter()
            self.calls += 1
            agent = path.split("/")[3]
            await _answer(send, 200, _sent(agent, self._reply()))
            self.times.setdefault(agent, []).append((received, woke, time.perf_counter()))
            return
        elif self.standin and method == "POST" and path == "/v1/agents/":
            payload = {"id": f"agent-{uuid.uuid4()}"}
        elif self.standin and method == "POST" and path.endswith("/archival-memory"):
            payload = [{"id": f"passage-{uuid.uuid4()}"}]
        elif self.standin and method == "GET" and (path == "/v1/agents/" or path.endswith("/search")):
            payload = []
        else:
            await _answer(send, 404, {"detail": f"{method} {path}: not a route of the bench's LLM"})
            return
        await _answer(send, 200, payload)


async def loop_lag(into: list[tuple[float, float]], every: float = 0.01) -> None:
    """How late this event loop wakes from sleeps of ``every`` seconds, as (woke at, seconds late) appended to
    ``into`` until cancelled."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(every)
        woke = time.perf_counter()
        into.append((woke, woke - start - every))


async def _answer(send: Send, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(fd: int, app: App) -> None:
    """Serve ``app`` on the listening socket ``fd`` until SIGTERM or SIGINT."""
    import uvicorn

    sock = socket.socket(fileno=fd)
    config = uvicorn.Config(
        app,
        loop="auto",  # uvloop and httptools where installed (not on Windows), as `memgpt server`
        http="auto",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=600,  # the server's LLM client keeps its connections: never close one under it
    )
    uvicorn.Server(config).run(sockets=[sock])


class FixedLLM:
    """``bench/fixed_llm.py`` as a child process on a loopback port; ``url`` is its /v1 (``base`` its root)."""

    def __init__(self, delay: float, words: int = 0, *, standin: bool = False) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(2048)  # 100 clients connect at once: a short backlog would add SYN retries
        self.port = listener.getsockname()[1]
        command = [sys.executable, str(Path(__file__).resolve()), "--fd", str(listener.fileno())]
        command += ["--delay", str(delay), "--words", str(words)] + (["--standin"] if standin else [])
        # Its stdin is a pipe only this process holds: when this process ends, however it ends, the stub sees
        # the pipe close and ends too (no stub left listening after a killed bench).
        self.process = subprocess.Popen(command, pass_fds=(listener.fileno(),), stdin=subprocess.PIPE)
        listener.close()  # the child has its own copy
        self.calls  # noqa: B018 - waits until it answers (or fails if it died)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def calls(self) -> int:
        """Chat completions (and with ``standin``, sends) it has answered so far."""
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                return int(httpx.get(f"{self.base}/calls", timeout=30).json()["calls"])
            except httpx.HTTPError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bench/fixed_llm.py did not answer (exit code {self.process.poll()})") from None
                time.sleep(0.05)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _end_with_parent() -> None:
    """SIGTERM to this process (uvicorn's graceful exit) once stdin, the bench's pipe, closes."""
    while sys.stdin.buffer.read(65536):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="a listening socket to serve on")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds before each answer")
    parser.add_argument("--words", type=int, default=0, help="words in each reply (0: 'Noted.')")
    parser.add_argument("--standin", action="store_true", help="also answer the server's routes (the floor)")
    args = parser.parse_args()
    threading.Thread(target=_end_with_parent, daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.fd, App(args.delay, args.words, args.standin))


if __name__ == "__main__":
    main()
