"""Any OpenAI-compatible chat-completions endpoint: OpenAI, Azure OpenAI, vLLM, Ollama, LM Studio,
llama.cpp server, Groq, OpenRouter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memgpt.errors import ContextWindowExceededError, LLMError, LLMRetryableError
from memgpt.llm.base import ChatMessage, Completion, LLMClient, ToolSpec
from memgpt.types import ToolCall

_OVERFLOW_HINTS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "too many tokens",
    "exceeds the available context",
    "prompt is too long",
    "context window",
)


def _detail(exc: Any) -> str:
    """The server's own error message (the SDK passes either the error object or the whole body)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if message:
            return str(message)
    return str(getattr(exc, "message", "") or exc)


class OpenAICompatible(LLMClient):
    def __init__(
        self,
        *,
        model: str,
        context_window: int,
        endpoint: str = "",
        api_key: str = "",
        timeout: float = 120.0,
        azure_api_version: str = "",
    ) -> None:
        self.model = model
        self.context_window = context_window
        self.endpoint = endpoint.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._azure_api_version = azure_api_version
        self._client: Any = None

    def _openai(self) -> Any:
        if self._client is None:
            import openai

            if self._azure_api_version:
                self._client = openai.AzureOpenAI(
                    azure_endpoint=self.endpoint,
                    api_key=self._api_key,
                    api_version=self._azure_api_version,
                    timeout=self._timeout,
                    max_retries=0,
                )
            else:
                self._client = openai.OpenAI(
                    base_url=self.endpoint or None,
                    api_key=self._api_key or "not-needed",
                    timeout=self._timeout,
                    max_retries=0,
                )
        return self._client

    def request(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> Completion:
        import openai

        payload: dict[str, Any] = {"model": self.model, "messages": [_sendable(m) for m in messages]}
        if tools:
            payload["tools"] = [t.openai() for t in tools]
            payload["tool_choice"] = "auto"
        where = self.endpoint or "api.openai.com"
        try:
            response = self._openai().chat.completions.create(**payload)
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise LLMRetryableError(f"{where}: {type(exc).__name__}: {exc}") from exc
        except openai.APIStatusError as exc:
            detail = _detail(exc)
            if exc.status_code == 429 or exc.status_code >= 500:
                raise LLMRetryableError(f"{where} answered {exc.status_code}: {detail}") from exc
            if any(hint in detail.lower() for hint in _OVERFLOW_HINTS):
                raise ContextWindowExceededError(f"{where}: {detail}") from exc
            if exc.status_code in (401, 403):
                raise LLMError(f"{where} refused the API key ({exc.status_code}): {detail}") from exc
            raise LLMError(f"{where} answered {exc.status_code}: {detail}") from exc
        if not response.choices:
            raise LLMRetryableError(f"{where} returned no choices")
        message = response.choices[0].message
        calls = tuple(
            ToolCall(id=call.id or f"call_{index}", name=call.function.name, arguments=call.function.arguments or "{}")
            for index, call in enumerate(message.tool_calls or [])
            if getattr(call, "function", None) is not None
        )
        usage = response.usage
        return Completion(
            content=message.content or "",
            tool_calls=calls,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )


def _sendable(message: ChatMessage) -> ChatMessage:
    """llama.cpp's server rejects ``content: null`` beside tool calls; every server accepts ""."""
    if message.get("content") is None:
        return {**message, "content": ""}
    return message
