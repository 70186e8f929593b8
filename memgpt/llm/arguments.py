"""Tool-call arguments and reply text as the model meant them, whatever shape the server wrote.

Real servers put raw newlines inside JSON strings (``json.loads(strict=False)`` accepts them), some send
the arguments as an object or as a JSON string holding the JSON, and llama.cpp's
``chatml-function-calling`` renders its prompt through an HTML-autoescaping template, so small models
copy ``&#34;`` and ``&#39;`` into what they write: usually inside values, sometimes for the JSON's own
quotes. Only those two numeric forms (what the template writes for quotes) are taken as the sign of an
escaped reply, so a model explaining ``&quot;`` to the user is left alone.
"""

from __future__ import annotations

import ast
import html
import json
import re
from typing import Any

from memgpt.replytext import whole_text

_ESCAPED_QUOTE = re.compile(r"&#(?:34|39);")


def html_escaped(text: str) -> bool:
    return bool(_ESCAPED_QUOTE.search(text))


def unescape_text(text: str) -> str:
    """Reply text with a template's HTML escapes undone (and nothing else touched)."""
    return html.unescape(text) if html_escaped(text) else text


def load_arguments(raw: object) -> dict[str, Any] | None:
    """The arguments as a dict, or None when they are no JSON object even after repair."""
    if isinstance(raw, dict):
        return raw
    text = str(raw or "").strip() or "{}"
    escaped = html_escaped(text)
    value = _object(text)
    if value is None and escaped:  # the JSON's own quotes were escaped too
        value = _object(html.unescape(text))
    if value is None:
        return None
    return _unescape(value) if escaped else value


def normalise_arguments(raw: object) -> str:
    """Clean JSON text for ``ToolCall.arguments``. Text that is no JSON object stays as written, so
    the agent can tell the model what was wrong with it."""
    value = load_arguments(raw)
    if value is None:
        return whole_text(raw) if isinstance(raw, str) else json.dumps(whole_text(raw), ensure_ascii=False)
    return json.dumps(whole_text(value), ensure_ascii=False)  # an argument's "\\ud800" is no text to store


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text, strict=False)
    except (json.JSONDecodeError, RecursionError):
        value = extract_json(text)
    if isinstance(value, str):  # the JSON arrived as a JSON string
        return _object(value) if value.strip().startswith("{") else None
    return value if isinstance(value, dict) else None


def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return html.unescape(value)
    if isinstance(value, dict):
        return {key: _unescape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unescape(item) for item in value]
    return value


def extract_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``, repaired where a small model commonly breaks it: code fences,
    prose around the object, single quotes, trailing commas."""
    cleaned = re.sub(r"```(?:json)?", "", text)
    start = cleaned.find("{")
    while start != -1:
        depth, in_string, escape = 0, False, False
        for index in range(start, len(cleaned)):
            char = cleaned[index]
            if in_string:
                escape = char == "\\" and not escape
                if char == '"' and not escape:
                    in_string = False
                continue
            if char == '"':
                in_string = True
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    parsed = _repaired(cleaned[start : index + 1])
                    if isinstance(parsed, dict):
                        return parsed
                    break
        start = cleaned.find("{", start + 1)
    return None


def _repaired(candidate: str) -> Any:
    for attempt in (candidate, re.sub(r",\s*([}\]])", r"\1", candidate)):
        try:
            return json.loads(attempt, strict=False)
        except (json.JSONDecodeError, RecursionError):
            pass
    try:
        return ast.literal_eval(candidate)
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        return None
