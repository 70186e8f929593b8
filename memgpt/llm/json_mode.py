"""Function calling for models without native tool calls: the model answers with JSON,
``{"function": "send_message", "params": {"inner_thoughts": "...", "message": "..."}}``, as the old
MemGPT local-LLM wrappers asked. Parsing is tolerant of code fences, prose around the object,
single quotes and trailing commas (``extract_json``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

from memgpt.llm.arguments import extract_json, load_arguments
from memgpt.llm.base import AUTO, ChatMessage, Completion, LLMClient, ToolChoice, ToolSpec
from memgpt.types import ToolCall

__all__ = ["INSTRUCTIONS", "JsonFunctionClient", "extract_json"]

INSTRUCTIONS = """You call functions by answering with one JSON object and nothing else:
{"function": "<function name>", "params": {"inner_thoughts": "<your private thoughts>", <the function's arguments>}}
Available functions:
"""


class JsonFunctionClient(LLMClient):
    """Wraps a client whose model cannot call tools natively."""

    supports_tools = False

    def __init__(self, inner: LLMClient) -> None:
        self.inner = inner
        self.model = inner.model
        self.context_window = inner.context_window
        self.endpoint = inner.endpoint
        self.timeout, self.deadline = inner.timeout, inner.deadline

    @property
    def where(self) -> str:
        return self.inner.where

    def request(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], *, choice: ToolChoice, timeout: float
    ) -> Completion:
        completion = self.inner.request(self._as_text(messages, tools, choice), (), choice=AUTO, timeout=timeout)
        parsed = extract_json(completion.content)
        if not parsed or "function" not in parsed:
            return Completion(
                completion.content, (), completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens
            )
        params = parsed.get("params") or parsed.get("arguments") or {}
        if not isinstance(params, dict):
            params = {}
        thoughts = str(params.pop("inner_thoughts", "") or "")
        call = ToolCall(
            id=f"call_{uuid.uuid4().hex[:12]}",
            name=str(parsed["function"]),
            arguments=json.dumps(params, ensure_ascii=False),
        )
        return Completion(
            thoughts, (call,), completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens
        )

    @staticmethod
    def _as_text(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], choice: ToolChoice) -> list[ChatMessage]:
        catalogue = "\n".join(
            f"- {t.name}: {t.description} Parameters: {json.dumps(t.parameters['properties'])}" for t in tools
        )
        if choice.mode == "function":
            catalogue += f'\nThis answer must call "{choice.name}".'
        converted: list[ChatMessage] = []
        for message in messages:
            role = message["role"]
            if role == "system" and not converted:
                converted.append({"role": "system", "content": f"{message['content']}\n\n{INSTRUCTIONS}{catalogue}"})
            elif role == "assistant" and message.get("tool_calls"):
                call = message["tool_calls"][0]["function"]
                params = load_arguments(call.get("arguments")) or {}
                body = {"function": call["name"], "params": {"inner_thoughts": message.get("content") or "", **params}}
                converted.append({"role": "assistant", "content": json.dumps(body)})
            elif role == "tool":
                converted.append({"role": "user", "content": f"FUNCTION RETURN: {message.get('content', '')}"})
            else:
                converted.append({"role": role, "content": message.get("content") or ""})
        return converted
