"""The client of a `memgpt server`: each operation is one request to its /v1 API (httpx), and each error
answer becomes the exception the server raised (a 404 a NotFoundError, a busy agent an AgentBusyError)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from memgpt import errors
from memgpt.client.base import Client
from memgpt.errors import (
    ERROR_CLASS_HEADER,
    AgentBusyError,
    BackendError,
    ConflictError,
    LLMError,
    MemGPTError,
    NotFoundError,
    UserError,
)

ROUTES: dict[str, tuple[str, str]] = {
    "agents.create": ("POST", "/v1/agents/"),
    "agents.list": ("GET", "/v1/agents/"),
    "agents.retrieve": ("GET", "/v1/agents/{agent_id}"),
    "agents.delete": ("DELETE", "/v1/agents/{agent_id}"),
    "agents.update": ("PATCH", "/v1/agents/{agent_id}"),
    "agents.memory": ("GET", "/v1/agents/{agent_id}/memory"),
    "agents.blocks.update": ("PATCH", "/v1/agents/{agent_id}/core-memory/blocks/{block_label}"),
    "agents.messages.create": ("POST", "/v1/agents/{agent_id}/messages"),
    "agents.messages.stream": ("POST", "/v1/agents/{agent_id}/messages/stream"),
    "agents.messages.list": ("GET", "/v1/agents/{agent_id}/messages"),
    "agents.passages.create": ("POST", "/v1/agents/{agent_id}/archival-memory"),
    "agents.passages.list": ("GET", "/v1/agents/{agent_id}/archival-memory"),
    "agents.passages.search": ("GET", "/v1/agents/{agent_id}/archival-memory/search"),
    "agents.passages.delete": ("DELETE", "/v1/agents/{agent_id}/archival-memory/{memory_id}"),
    "agents.folders.attach": ("PATCH", "/v1/agents/{agent_id}/folders/attach/{folder_id}"),
    "agents.folders.detach": ("PATCH", "/v1/agents/{agent_id}/folders/detach/{folder_id}"),
    "agents.folders.list": ("GET", "/v1/agents/{agent_id}/folders"),
    "agents.export_file": ("GET", "/v1/agents/{agent_id}/export"),
    "agents.import_file": ("POST", "/v1/agents/import"),
    "folders.create": ("POST", "/v1/folders/"),
    "folders.list": ("GET", "/v1/folders/"),
    "folders.retrieve": ("GET", "/v1/folders/{folder_id}"),
    "folders.delete": ("DELETE", "/v1/folders/{folder_id}"),
    "folders.files.upload": ("POST", "/v1/folders/{folder_id}/upload"),
    "folders.files.retrieve": ("GET", "/v1/folders/{folder_id}/files/{file_id}"),
}
UPLOADS = {"folders.files.upload", "agents.import_file"}  # the body is (file name, bytes), sent as multipart
FORMS = {"agents.import_file"}


class RESTClient(Client):
    """Talks to the server at ``base_url`` as the user whose API key ``token`` is."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def call(
        self, op: str, ids: dict[str, str] | None = None, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        method, template = ROUTES[op]
        path = template.format(**{k: quote(v, safe="") for k, v in (ids or {}).items()})
        request: dict[str, Any] = {"params": params}
        if op in UPLOADS:
            name, content = body
            request["files"] = {"file": (name, content)}
        if op in FORMS:  # the options are form fields beside the file
            request["data"], request["params"] = params, None
        elif body is not None:
            request["json"] = body
        if op == "agents.messages.stream":
            return self._stream(method, path, request)
        try:
            answer = self._http.request(method, path, **request)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if answer.status_code >= 400:
            raise error_of(answer.status_code, _detail(answer), answer.headers)
        if op == "agents.export_file":
            return answer.text
        return answer.json() if answer.content else None

    def _stream(self, method: str, path: str, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Server-sent events as JSON items; opened before the first item is asked for, so that a refused
        send (404, busy) raises at once."""
        try:
            context = self._http.stream(method, path, **request)
            answer = context.__enter__()
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if answer.status_code >= 400:
            answer.read()
            context.__exit__(None, None, None)
            raise error_of(answer.status_code, _detail(answer), answer.headers)
        return _events(context, answer)

    def _unreachable(self, exc: httpx.HTTPError) -> BackendError:
        return BackendError(f"cannot reach the memgpt server at {self.base_url}: {exc}")


def _events(context: Any, answer: httpx.Response) -> Iterator[dict[str, Any]]:
    try:
        for line in answer.iter_lines():
            if not line.startswith("data:"):
                continue  # comments (keep-alives), event names, blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield json.loads(data)
    except httpx.HTTPError as exc:
        raise BackendError(f"the server's stream broke off: {exc}") from exc
    finally:
        context.__exit__(None, None, None)


def _detail(answer: httpx.Response) -> Any:
    try:
        return answer.json().get("detail", answer.text)
    except (ValueError, AttributeError):
        return answer.text


def error_of(status: int, detail: Any, headers: httpx.Headers | dict[str, str]) -> MemGPTError:
    """The exception a server's error answer stands for."""
    if isinstance(detail, dict) and detail.get("code") == "AGENT_BUSY":
        retry_after = str(headers.get("retry-after", "2"))
        return AgentBusyError(str(detail.get("message")), int(retry_after) if retry_after.isdigit() else 2)
    if isinstance(detail, list):  # FastAPI's list of problems with the request
        detail = "; ".join(f"{'.'.join(map(str, p.get('loc', [])[1:]))}: {p.get('msg')}" for p in detail)
    message = str(detail)
    named = _named(str(headers.get(ERROR_CLASS_HEADER, "")), message)
    if named is not None:
        return named
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    if status in (401, 403):
        return UserError(f"the server refused the API key: {message}")
    if status == 502:
        return LLMError(message)
    if 400 <= status < 500:
        return UserError(message)
    return BackendError(f"the server failed ({status}): {message}")


def _named(name: str, message: str) -> MemGPTError | None:
    """The error of ours the server named (``ERROR_CLASS_HEADER``), as the local client would raise it."""
    kind = getattr(errors, name, None) if name.isidentifier() else None
    if not isinstance(kind, type) or not issubclass(kind, MemGPTError) or issubclass(kind, AgentBusyError):
        return None
    if issubclass(kind, errors.InputFileError):  # "path: reason"
        path, _, reason = message.partition(": ")
        return kind(path, reason)
    return kind(message)
