"""Function calling for models without native tool calls: the model answers with JSON,
``{"function": "send_message", "params": {"inner_thoughts": "...", "message": "..."}}``, as the old
MemGPT local-LLM wrappers asked. Parsing is tolerant of code fences, prose around the object,
single quotes and trailing commas."""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

from memgpt.llm.base import ChatMessage, Completion, LLMClient, ToolSpec
from memgpt.types import ToolCall

INSTRUCTIONS = """You call functions by answering with one JSON object and nothing else:
{"function": "<function name>", "params": {"inner_thoughts": "<your private thoughts>", <the function's arguments>}}
Available functions:
"""


def extract_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``, repaired where a small model commonly breaks it."""
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
                    parsed = _loads(cleaned[start : index + 1])
                    if isinstance(parsed, dict):
                        return parsed
                    break
        start = cleaned.find("{", start + 1)
    return None


def _loads(candidate: str) -> Any:
    for attempt in (candidate, re.sub(r",\s*([}\]])", r"\1", candidate)):
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            pass
    try:
        return ast.literal_eval(candidate)
    except (ValueError, SyntaxError):
        return None


class JsonFunctionClient(LLMClient):
    """Wraps a client whose model cannot call tools natively."""

    supports_tools = False

    def __init__(self, inner: LLMClient) -> None:
        self.inner = inner
        self.model = inner.model
        self.context_window = inner.context_window

    def request(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> Completion:
        completion = self.inner.request(self._as_text(messages, tools), ())
        parsed = extract_json(completion.content)
        if not parsed or "function" not in parsed:
            return Completion(completion.content, (), completion.prompt_tokens, completion.completion_tokens)
        params = parsed.get("params") or parsed.get("arguments") or {}
        if not isinstance(params, dict):
            params = {}
        thoughts = str(params.pop("inner_thoughts", "") or "")
        call = ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=str(parsed["function"]), arguments=json.dumps(params))
        return Completion(thoughts, (call,), completion.prompt_tokens, completion.completion_tokens)

    @staticmethod
    def _as_text(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> list[ChatMessage]:
        catalogue = "\n".join(
            f"- {t.name}: {t.description} Parameters: {json.dumps(t.parameters['properties'])}" for t in tools
        )
        converted: list[ChatMessage] = []
        for message in messages:
            role = message["role"]
            if role == "system" and not converted:
                converted.append({"role": "system", "content": f"{message['content']}\n\n{INSTRUCTIONS}{catalogue}"})
            elif role == "assistant" and message.get("tool_calls"):
                call = message["tool_calls"][0]["function"]
                params = json.loads(call["arguments"] or "{}") if call["arguments"] else {}
                body = {"function": call["name"], "params": {"inner_thoughts": message.get("content") or "", **params}}
                converted.append({"role": "assistant", "content": json.dumps(body)})
            elif role == "tool":
                converted.append({"role": "user", "content": f"FUNCTION RETURN: {message.get('content', '')}"})
            else:
                converted.append({"role": role, "content": message.get("content") or ""})
        return converted
