"""Any OpenAI-compatible chat-completions endpoint: OpenAI, Azure OpenAI, vLLM, Ollama, LM Studio,
llama.cpp server, Groq, OpenRouter.

Plain HTTP (httpx, one pooled client per endpoint and key): our messages and tool schemas are JSON
already, and the reply body is read here rather than by an SDK's models, because real servers send
truncated JSON, HTML pages, error objects with status 200 and tool calls without names, and each must
become one clear line (``memgpt.llm.replies``). The openai SDK cost ~0.65 s of imports per process and
several ms of CPU per call validating what it sent and received.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memgpt import httppool
from memgpt.errors import LLMError, LLMRetryableError
from memgpt.llm.arguments import normalise_arguments, unescape_text
from memgpt.llm.base import AUTO, ChatMessage, Completion, LLMClient, ToolChoice, ToolSpec, chat_json, encode_json
from memgpt.llm.replies import count, error_in_body, json_body, post, response_error
from memgpt.replytext import one_line
from memgpt.types import ToolCall

OPENAI_ENDPOINT = "https://api.openai.com/v1"


class OpenAICompatible(LLMClient):
    def __init__(
        self,
        *,
        model: str,
        context_window: int,
        endpoint: str = "",
        api_key: str = "",
        timeout: float = 120.0,
        deadline: float = 120.0,
        azure_api_version: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``timeout`` bounds one request, ``deadline`` one ``complete`` call with its retries; ``headers``
        go with every request (OpenAI's organization and project)."""
        self.model = model
        self.context_window = context_window
        self.endpoint = endpoint.rstrip("/")
        self.timeout, self.deadline = timeout, deadline
        self._api_key = api_key
        self._azure_api_version = azure_api_version
        self._headers = dict(headers or {})

    @property
    def where(self) -> str:
        return self.endpoint or "api.openai.com"

    def _route(self) -> tuple[Any, str, dict[str, str] | None]:
        """The pooled client, the chat-completions path and its query parameters. Azure names the
        deployment (our model) in the path and the API version in the query, and takes the key as
        ``api-key``."""
        if self._azure_api_version:
            http = httppool.client(f"{self.endpoint}/openai", {"api-key": self._api_key, **self._headers})
            return http, f"/deployments/{self.model}/chat/completions", {"api-version": self._azure_api_version}
        # Local servers need no key but some proxies insist on the header being there.
        headers = {"authorization": f"Bearer {self._api_key or 'not-needed'}", **self._headers}
        return httppool.client(self.endpoint or OPENAI_ENDPOINT, headers), "/chat/completions", None

    def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        choice: ToolChoice = AUTO,
        timeout: float = 120.0,
    ) -> Completion:
        # The body as JSON text made of parts kept from earlier requests (each message's and tool's text): the same
        # bytes as encoding {model, messages, tool_choice, tools} whole, for a fraction of the CPU.
        encoded = {
            "model": encode_json(self.model),
            "messages": "[" + ",".join(chat_json(_sendable(m)) for m in messages) + "]",
        }
        if tools:
            encoded["tool_choice"] = encode_json(choice.openai())
            encoded["tools"] = "[" + ",".join(t.openai_json() for t in tools) + "]"
        http, path, params = self._route()
        status, text = post(http, path, {}, timeout=timeout, where=self.where, params=params, encoded=encoded)
        if not 200 <= status < 300:
            error = response_error(status, text, self.where, self.model)
            if choice.mode == "required" and status >= 500:
                # llama.cpp's server answers tool_choice "required" with a bare 500.
                error = LLMError(f"{error}; this server may not support tool_choice \"required\": set "
                                 "llm.tool_choice to auto_then_send_message")
            raise error
        return parse_chat_completion(text, self.where)


def parse_chat_completion(text: str, where: str) -> Completion:
    """A chat-completions reply body as a Completion; anything unexpected is one clear error."""
    body = json_body(text, where)
    choices = body.get("choices")
    if body.get("error") and not choices:
        raise error_in_body(body["error"], where)
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise LLMRetryableError(f"{where} sent a reply without choices: {one_line(text, 120)}")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise LLMRetryableError(f"{where} sent a choice without a message: {one_line(choices[0], 120)}")
    raw_calls = message.get("tool_calls")
    if not raw_calls and isinstance(message.get("function_call"), dict):  # the legacy single-call form
        raw_calls = [{"function": message["function_call"]}]
    if raw_calls is not None and not isinstance(raw_calls, list):
        raise LLMRetryableError(f"{where} sent tool_calls that are not a list: {one_line(raw_calls, 120)}")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
    return Completion(
        content=unescape_text(_text(message.get("content"), where)),
        tool_calls=tuple(_tool_call(call, index, where) for index, call in enumerate(raw_calls or [])),
        prompt_tokens=count(usage.get("prompt_tokens")),
        completion_tokens=count(usage.get("completion_tokens")),
        cached_tokens=count(details.get("cached_tokens")),
        finish_reason=str(choices[0].get("finish_reason") or ""),
    )


def _text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    raise LLMRetryableError(f"{where} sent message content that is not text: {one_line(content, 120)}")


def _tool_call(call: object, index: int, where: str) -> ToolCall:
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise LLMRetryableError(f"{where} sent a tool call without a function name: {one_line(call, 120)}")
    call_id = call.get("id") if isinstance(call, dict) else None
    return ToolCall(
        id=call_id if isinstance(call_id, str) and call_id else f"call_{index}",
        name=name.strip(),
        arguments=normalise_arguments(function.get("arguments")),  # type: ignore[union-attr]
    )


def _sendable(message: ChatMessage) -> ChatMessage:
    """llama.cpp's server rejects ``content: null`` beside tool calls; every server accepts ""."""
    if message.get("content") is None:
        return {**message, "content": ""}
    return message
