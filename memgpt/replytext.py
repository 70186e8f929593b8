"""What an HTTP API said, as one line: shared by the LLM and the embedding adapters (and anything else
that calls an OpenAI-style endpoint), so that an error object, a bare text and an HTML page read the same
whichever layer met them. Below both layers: it imports nothing of memgpt.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SPACES = re.compile(r"\s+")
NO_DETAIL = "no detail given"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def whole_text(value: Any) -> Any:
    """``value`` (JSON as decoded) with every lone surrogate replaced by U+FFFD. JSON allows an escape such as
    "\\ud800" on its own, which decodes to no Unicode text: no database can store it, so a reply holding one
    would fail the step that stores it. (A pair of escapes decodes to one whole character.)"""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {whole_text(key): whole_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_text(item) for item in value]
    return value


def may_hold_lone_surrogates(json_text: str) -> bool:
    """Whether JSON text has a surrogate escape at all (only then need its decoded value be made whole)."""
    return _SURROGATE_ESCAPE.search(json_text) is not None


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    flat = _SPACES.sub(" ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def looks_like_html(text: str) -> bool:
    return text.lstrip()[:1] == "<"


def error_detail(error: object) -> str:
    """The message inside an error object, which servers shape in several ways."""
    if isinstance(error, dict):
        message = error.get("message") or error.get("error") or error.get("detail")
        if isinstance(message, dict | list):
            return error_detail(message)
        return one_line(message or error.get("type") or NO_DETAIL)
    return one_line(error) if error not in (None, "") else NO_DETAIL


def body_detail(text: str, limit: int = 300) -> str:
    """The detail of an error reply's body: the error object's message when it is JSON, else the text
    itself on one line (or just "an HTML page")."""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        body = None
    if isinstance(body, dict):
        return error_detail(body.get("error", body))
    if looks_like_html(text):
        return "an HTML page"
    return one_line(text, limit) if text.strip() else NO_DETAIL
