"""Answering JSON from the small HTTP servers the tests start (the scripted LLMs)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


def read_json(handler: BaseHTTPRequestHandler) -> Any:
    return json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    send_raw(handler, status, json.dumps(payload).encode(), "application/json")


def send_raw(handler: BaseHTTPRequestHandler, status: int, raw: bytes, content_type: str) -> None:
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up first (a timeout test)
