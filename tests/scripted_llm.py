"""A scripted OpenAI-compatible chat server: the one fake in the test suite.

It serves POST /v1/chat/completions over real HTTP, answers from a script and records every request,
so the agent loop, our HTTP client and our retry logic all run for real. Summarization requests (no
tools, our summarizer's instructions) are answered automatically, so scripts need not predict them.

Script entries:
  {"tool": "send_message", "args": {...}, "content": "thought"}   one tool call
  {"calls": [("name", {...}), ...], "content": "..."}              several tool calls
  {"raw_tool": "name", "raw_arguments": "{not json"}                malformed arguments
  {"content": "plain text"}                                        no tool call ("" for an empty reply)
  {"status": 429} / {"status": 500}                                an error answer
  {"delay": 3.0, ...}                                              wait before answering
  {"until": threading.Event(), ...}                                wait until the test sets the event
  {"hang": True}                                                   never answer (until the server closes)
  {"body": "<html>...", "content_type": "text/html"}               exactly this body, status 200 (or "status")
  {"json": {...}}                                                  exactly this JSON object, status 200
  {"prompt_tokens": 3081, ...}                                     usage.prompt_tokens to report (else 1)
  a callable taking the request body and returning one of the above

GET /v1/models answers from ``models``; GET /props and POST /api/show (llama.cpp's and Ollama's own
routes) answer from ``props`` and ``show`` when set, else 404.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from memgpt.memory.summarize import INSTRUCTIONS as SUMMARY_INSTRUCTIONS
from tests.http_json import read_json, send_json, send_raw

Entry = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Raw:
    """A body sent exactly as written."""

    body: str
    content_type: str


SUMMARY_PREFIX = SUMMARY_INSTRUCTIONS.split("{")[0]

# Tool call ids are "call_" and 10 decimal digits: this server's number in the process (4) and its call's (6).
# The tokenizers split digits in threes, so every such id is the same number of tokens (34 with its JSON
# envelope in cl100k_base and o200k_base), where 10 random hex digits took 5-12 (33-40): a test near a token
# threshold passed or failed by the ids drawn. Unique within a server and across the servers of a process.
_SERVERS = itertools.count(1)


class ScriptedLLM:
    def __init__(self) -> None:
        self._number = next(_SERVERS) % 10_000
        self._serial = itertools.count(1)
        self._serial_lock = threading.Lock()  # requests are answered on threads of their own
        self.script: deque[Entry] = deque()
        self.requests: list[dict[str, Any]] = []
        self.summaries: list[dict[str, Any]] = []
        self.summary_text = "Summary: the user and I talked at length; the first topic was the codeword."
        self.models: list[dict[str, Any]] = [{"id": "scripted", "object": "model", "owned_by": "tests"}]
        self.props: dict[str, Any] | None = None
        self.show: dict[str, Any] | None = None
        self.gets: list[str] = []
        self.posts: list[tuple[str, dict[str, str]]] = []  # path and headers of every POST
        self._closed = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def add(self, *entries: Entry) -> ScriptedLLM:
        self.script.extend(entries)
        return self

    def reply(self, message: str, thought: str = "", **more: Any) -> ScriptedLLM:
        return self.add({"tool": "send_message", "args": {"message": message}, "content": thought, **more})

    def close(self) -> None:
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()

    # -- answering ----------------------------------------------------------------------------
    def answer(self, body: dict[str, Any]) -> tuple[int, Any]:
        system = body["messages"][0].get("content") or ""
        if not body.get("tools") and system.startswith(SUMMARY_PREFIX):
            self.summaries.append(body)
            return 200, _completion(self._id("chatcmpl-"), self.summary_text, [])
        self.requests.append(body)
        if not self.script:
            return 500, {"error": {"message": "the test script has no more answers", "type": "server_error"}}
        entry = self.script.popleft()
        if callable(entry):
            entry = entry(body)
        if entry.get("delay"):
            time.sleep(entry["delay"])
        if entry.get("until") is not None:
            entry["until"].wait(60)
        if entry.get("hang"):
            self._closed.wait()
        if "body" in entry:
            return entry.get("status", 200), Raw(entry["body"], entry.get("content_type", "application/json"))
        if "json" in entry:
            return 200, entry["json"]
        if "status" in entry:
            return entry["status"], {
                "error": {"message": entry.get("message", "scripted error"), "type": "error", "code": entry.get("code")}
            }
        calls: list[tuple[str, str]] = []
        if "tool" in entry:
            calls.append((entry["tool"], json.dumps(entry.get("args", {}))))
        for name, args in entry.get("calls", []):
            calls.append((name, json.dumps(args)))
        if "raw_tool" in entry:
            calls.append((entry["raw_tool"], entry["raw_arguments"]))
        named = [(self._id("call_"), *call) for call in calls]
        return 200, _completion(self._id("chatcmpl-"), entry.get("content", ""), named, entry.get("prompt_tokens", 1))

    def _id(self, prefix: str) -> str:
        """The next id of this server's answers: ``prefix``, its number in the process and the answer's."""
        with self._serial_lock:
            return f"{prefix}{self._number:04d}{next(self._serial) % 1_000_000:06d}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = read_json(self)
                llm.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path == "/api/show":
                    llm.gets.append(self.path)
                    self._send(*((200, llm.show) if llm.show is not None else (404, {"error": "not found"})))
                else:
                    self._send(*llm.answer(body))

            def do_GET(self) -> None:
                llm.gets.append(self.path)
                path = self.path.split("?")[0]
                if path == "/v1/models":
                    self._send(200, {"object": "list", "data": llm.models})
                elif path == "/props" and llm.props is not None:
                    self._send(200, llm.props)
                else:
                    self._send(404, {"error": {"message": "File Not Found", "type": "not_found_error"}})

            def _send(self, status: int, payload: Any) -> None:
                if isinstance(payload, Raw):
                    send_raw(self, status, payload.body.encode(), payload.content_type)
                else:
                    send_json(self, status, payload)

            def log_message(self, *args: object) -> None: ...

        return Handler


def _completion(
    completion_id: str, content: str, calls: list[tuple[str, str, str]], prompt_tokens: int = 1
) -> dict[str, Any]:
    """A chat completion of ``content`` and ``calls`` (each an id, a function's name and its arguments)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
    }
