"""What an endpoint sent back, as JSON or as one clear error line naming the endpoint.

Shared by the adapters: a body that is not JSON, an HTML page where JSON was expected, an error
object inside a 200, and HTTP statuses all become LLMError (or LLMRetryableError where another try
can help: 429, 5xx, a truncated body), never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from memgpt import httppool
from memgpt.errors import (
    ContextWindowExceededError,
    LLMError,
    LLMKeyError,
    LLMRequestError,
    LLMRetryableError,
    LLMTimeoutError,
)
from memgpt.replytext import (
    NO_DETAIL,
    body_detail,
    error_detail,
    looks_like_html,
    may_hold_lone_surrogates,
    one_line,
    whole_text,
)

_OVERFLOW_HINTS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "too many tokens",
    "exceeds the available context",
    "prompt is too long",
    "context window",
)


def post(
    endpoint: httppool.Endpoint,
    url: str,
    payload: Mapping[str, Any],
    *,
    timeout: float,
    where: str,
    params: Mapping[str, str] | None = None,
    encoded: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """POST ``payload`` as JSON, plus the members in ``encoded`` (name -> JSON text already made); the reply's
    status and text. No answer within ``timeout`` seconds is an LLMTimeoutError, a failed connection an
    LLMRetryableError, a malformed URL an LLMError. Over ``httppool.KeptAlive`` where ``httppool.plain`` has the
    endpoint (a redirect then goes through httpx, which follows it)."""
    from http.client import HTTPException

    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":")) if payload or not encoded else "{}"
    if encoded:
        members = ",".join(f"{json.dumps(name)}:{value}" for name, value in encoded.items())
        text = f"{text[:-1]},{members}}}" if payload else f"{{{members}}}"
    body = text.encode()
    headers = {"content-type": "application/json"}
    kept = httppool.plain(endpoint)
    if kept is not None:
        try:
            answer = kept.post(url, body, headers, params, timeout)
        except TimeoutError as exc:
            raise LLMTimeoutError(f"{where} did not answer within {_seconds(timeout)} s") from exc
        except (OSError, HTTPException) as exc:  # refused, reset, cut off, a certificate refused
            raise LLMRetryableError(f"cannot reach {where}: {one_line(exc) or type(exc).__name__}") from exc
        if answer is not None:
            return answer
    import httpx

    try:
        response = endpoint.httpx().post(url, content=body, params=params, timeout=timeout, headers=headers)
        return response.status_code, response.text
    except httpx.TimeoutException as exc:
        raise LLMTimeoutError(f"{where} did not answer within {_seconds(timeout)} s") from exc
    except httpx.InvalidURL as exc:
        raise LLMError(f"{where} is not a URL memgpt can call ({one_line(exc)}): check llm.endpoint") from exc
    except httpx.HTTPError as exc:  # refused, reset, cut off, too many redirects, undecodable
        raise LLMRetryableError(f"cannot reach {where}: {one_line(exc)}") from exc


def _seconds(value: float) -> str:
    """A request's time bound as a message says it: "120", "2.5", "0.4" (never "0" for a bound under a second)."""
    return f"{value:.2g}" if value < 1 else f"{value:.1f}".removesuffix(".0")


def json_body(text: str, where: str) -> dict[str, Any]:
    """The reply body as a JSON object. An HTML page means a wrong URL (not worth retrying); an empty,
    truncated or otherwise broken body is retried."""
    if not text.strip():
        raise LLMRetryableError(f"{where} sent an empty reply")
    if looks_like_html(text):
        raise LLMError(
            f"{where} answered with an HTML page, not JSON: check that the endpoint is the API's base URL "
            "(often ending in /v1)"
        )
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LLMRetryableError(
            f"{where} sent a reply that is not valid JSON ({exc.msg}: character {exc.pos} of {len(text)}): "
            f"{one_line(text, 80)}"
        ) from exc
    except RecursionError as exc:
        raise LLMRetryableError(f"{where} sent JSON nested too deeply to read") from exc
    if not isinstance(body, dict):
        raise LLMRetryableError(f"{where} sent JSON that is not an object: {one_line(text, 80)}")
    return whole_text(body) if may_hold_lone_surrogates(text) else body


def status_error(status: int, detail: str, where: str, said: str = "", model: str = "") -> LLMError:
    """The error for an HTTP status (or an error code inside a 200) with the server's own detail; ``model``: the
    one asked for (an ``LLMRequestError`` names it to a server's client)."""
    detail = one_line(detail) or NO_DETAIL
    said = said or f"answered {status}"
    if status == 429:
        return LLMRetryableError(f"{where} {said}: {detail}")
    if any(hint in detail.lower() for hint in _OVERFLOW_HINTS):
        return ContextWindowExceededError(f"{where}: {detail}")
    if status >= 500:
        return LLMRetryableError(f"{where} {said}: {detail}")
    if status in (401, 403):
        return LLMKeyError(f"{where} refused the API key ({status}): {detail}")
    hint = " (check the endpoint and the model name)" if status == 404 else ""
    if 400 <= status < 500:
        return LLMRequestError(f"{where} {said}: {detail}{hint}", status=status, model=model)
    return LLMError(f"{where} {said}: {detail}")


def response_error(status: int, text: str, where: str, model: str = "") -> LLMError:
    """The error for a reply with an HTTP error status, from its body (``memgpt.replytext.body_detail``)."""
    return status_error(status, body_detail(text), where, model=model)


def error_in_body(error: object, where: str) -> LLMError:
    """An error object sent with status 200 (OpenRouter and some proxies do): its own code decides,
    and without one it counts as a server error worth another try."""
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    said = "answered 200 with an error" + (f" (code {code})" if code not in (None, "") else "")
    return status_error(status, error_detail(error), where, said)


def count(value: object) -> int:
    """A token count from a usage object: 0 when absent or not a whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
