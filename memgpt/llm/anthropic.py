"""Anthropic's Messages API, natively (tool use blocks), over httpx."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memgpt import httppool
from memgpt.errors import LLMRetryableError
from memgpt.llm.arguments import load_arguments, normalise_arguments
from memgpt.llm.base import AUTO, ChatMessage, Completion, LLMClient, ToolChoice, ToolSpec
from memgpt.llm.replies import count, error_in_body, json_body, post, response_error
from memgpt.replytext import one_line
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
                raw = call["function"]["arguments"]
                arguments = load_arguments(raw)
                if arguments is None:
                    arguments = {"_unparsed": raw}
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
        deadline: float = 120.0,
        max_output_tokens: int = 4096,
    ) -> None:
        """``timeout`` bounds one request, ``deadline`` one ``complete`` call with its retries."""
        self.model = model
        self.context_window = context_window
        self.endpoint = (endpoint or "https://api.anthropic.com").rstrip("/")
        self.timeout, self.deadline = timeout, deadline
        self._api_key = api_key
        self._max_output_tokens = max_output_tokens

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key, "anthropic-version": API_VERSION}

    def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        choice: ToolChoice = AUTO,
        timeout: float = 120.0,
    ) -> Completion:
        system, turns = to_anthropic(messages)
        payload: dict[str, Any] = {"model": self.model, "max_tokens": self._max_output_tokens, "messages": turns}
        if system:
            payload["system"] = system
        if tools:
            payload["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in tools
            ]
            payload["tool_choice"] = _tool_choice(choice)
        http = httppool.client(self.endpoint, self.headers())
        status, text = post(http, "/v1/messages", payload, timeout=timeout, where=self.endpoint)
        if status != 200:
            raise response_error(status, text, self.endpoint, self.model)
        return parse_message(text, self.endpoint)


def _tool_choice(choice: ToolChoice) -> dict[str, str]:
    if choice.mode == "function":
        return {"type": "tool", "name": choice.name}
    return {"type": "any" if choice.mode == "required" else "auto"}


def parse_message(text: str, where: str) -> Completion:
    """A Messages-API reply body as a Completion; anything unexpected is one clear error."""
    body = json_body(text, where)
    if body.get("type") == "error" or (body.get("error") and "content" not in body):
        raise error_in_body(body.get("error"), where)
    blocks = body.get("content")
    if not isinstance(blocks, list):
        raise LLMRetryableError(f"{where} sent a reply without content blocks: {one_line(text, 120)}")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))  # type: ignore[union-attr]
        elif kind == "tool_use":
            name = block.get("name")  # type: ignore[union-attr]
            if not isinstance(name, str) or not name.strip():
                raise LLMRetryableError(f"{where} sent a tool_use block without a name: {one_line(block, 120)}")
            calls.append(
                ToolCall(
                    id=str(block.get("id") or f"toolu_{len(calls)}"),  # type: ignore[union-attr]
                    name=name.strip(),
                    arguments=normalise_arguments(block.get("input") or {}),  # type: ignore[union-attr]
                )
            )
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    cached = count(usage.get("cache_read_input_tokens"))
    # input_tokens leaves out what was read from or written to the prompt cache: the prompt is all three.
    prompt = count(usage.get("input_tokens")) + count(usage.get("cache_creation_input_tokens")) + cached
    return Completion(
        content="".join(texts),
        tool_calls=tuple(calls),
        prompt_tokens=prompt,
        completion_tokens=count(usage.get("output_tokens")),
        cached_tokens=cached,
        finish_reason=str(body.get("stop_reason") or ""),
    )
