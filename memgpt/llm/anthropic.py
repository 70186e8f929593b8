"""Anthropic's Messages API, natively (tool use blocks), over httpx."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from memgpt.errors import ContextWindowExceededError, LLMError, LLMRetryableError
from memgpt.llm.base import ChatMessage, Completion, LLMClient, ToolSpec
from memgpt.types import ToolCall

API_VERSION = "2023-06-01"


def to_anthropic(messages: Sequence[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """System text and alternating user/assistant turns with tool_use / tool_result blocks."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "system":
            system.append(content)
        elif role == "user":
            add("user", [{"type": "text", "text": content or "(empty)"}])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            for call in message.get("tool_calls") or []:
                try:
                    arguments = json.loads(call["function"]["arguments"] or "{}")
                except json.JSONDecodeError:
                    arguments = {"_unparsed": call["function"]["arguments"]}
                blocks.append(
                    {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": arguments}
                )
            add("assistant", blocks or [{"type": "text", "text": "(no reply)"}])
        elif role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": content}])
    if turns and turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": "(conversation continues)"}]})
    return "\n\n".join(system), turns


class AnthropicClient(LLMClient):
    def __init__(
        self,
        *,
        model: str,
        context_window: int,
        api_key: str,
        endpoint: str = "",
        timeout: float = 120.0,
        max_output_tokens: int = 4096,
    ) -> None:
        self.model = model
        self.context_window = context_window
        self.endpoint = (endpoint or "https://api.anthropic.com").rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._max_output_tokens = max_output_tokens

    def request(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> Completion:
        import httpx

        system, turns = to_anthropic(messages)
        payload: dict[str, Any] = {"model": self.model, "max_tokens": self._max_output_tokens, "messages": turns}
        if system:
            payload["system"] = system
        if tools:
            payload["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
            ]
        headers = {"x-api-key": self._api_key, "anthropic-version": API_VERSION, "content-type": "application/json"}
        try:
            response = httpx.post(f"{self.endpoint}/v1/messages", json=payload, headers=headers, timeout=self._timeout)
        except httpx.TimeoutException as exc:
            raise LLMRetryableError(f"{self.endpoint}: timed out after {self._timeout:.0f}s") from exc
        except httpx.TransportError as exc:
            raise LLMRetryableError(f"{self.endpoint}: {exc}") from exc
        if response.status_code != 200:
            self._raise(response)
        body = response.json()
        text = "".join(b.get("text", "") for b in body.get("content", []) if b.get("type") == "text")
        calls = tuple(
            ToolCall(id=b["id"], name=b["name"], arguments=json.dumps(b.get("input") or {}))
            for b in body.get("content", [])
            if b.get("type") == "tool_use"
        )
        usage = body.get("usage") or {}
        return Completion(text, calls, int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))

    def _raise(self, response: Any) -> None:
        try:
            detail = response.json().get("error", {}).get("message", response.text)
        except ValueError:
            detail = response.text
        status = response.status_code
        if status in (429, 529) or status >= 500:
            raise LLMRetryableError(f"Anthropic answered {status}: {detail}")
        if "too long" in detail.lower() or ("context" in detail.lower() and "exceed" in detail.lower()):
            raise ContextWindowExceededError(f"Anthropic: {detail}")
        raise LLMError(f"Anthropic answered {status}: {detail}")
