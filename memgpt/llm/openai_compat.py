"""Any OpenAI-compatible chat-completions endpoint: OpenAI, Azure OpenAI, vLLM, Ollama, LM Studio,
llama.cpp server, Groq, OpenRouter.

The SDK sends the request; the reply body is read here rather than by the SDK's models, because
real servers send truncated JSON, HTML pages, error objects with status 200 and tool calls without
names, and each must become one clear line (``memgpt.llm.replies``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memgpt.errors import LLMError, LLMRetryableError, LLMTimeoutError
from memgpt.llm.arguments import normalise_arguments, unescape_text
from memgpt.llm.base import AUTO, ChatMessage, Completion, LLMClient, ToolChoice, ToolSpec
from memgpt.llm.replies import count, error_detail, error_in_body, json_body, one_line, status_error
from memgpt.types import ToolCall


def _detail(exc: Any) -> str:
    """The server's own error message (the SDK passes either the error object or the whole body)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return error_detail(body.get("error", body))
    response = getattr(exc, "response", None)
    text = getattr(response, "text", "") if response is not None else ""
    if text:
        return "an HTML page" if text.lstrip().startswith("<") else one_line(text)
    return one_line(getattr(exc, "message", "") or exc)


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
    ) -> None:
        """``timeout`` bounds one request, ``deadline`` one ``complete`` call with its retries."""
        self.model = model
        self.context_window = context_window
        self.endpoint = endpoint.rstrip("/")
        self.timeout, self.deadline = timeout, deadline
        self._api_key = api_key
        self._azure_api_version = azure_api_version
        self._client: Any = None

    @property
    def where(self) -> str:
        return self.endpoint or "api.openai.com"

    def _openai(self) -> Any:
        if self._client is None:
            import openai

            if self._azure_api_version:
                self._client = openai.AzureOpenAI(
                    azure_endpoint=self.endpoint,
                    api_key=self._api_key,
                    api_version=self._azure_api_version,
                    timeout=self.timeout,
                    max_retries=0,
                )
            else:
                self._client = openai.OpenAI(
                    base_url=self.endpoint or None,
                    api_key=self._api_key or "not-needed",
                    timeout=self.timeout,
                    max_retries=0,
                )
        return self._client

    def request(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        *,
        choice: ToolChoice = AUTO,
        timeout: float = 120.0,
    ) -> Completion:
        import openai

        # The body goes in extra_body, which the SDK sends as it is: passed as arguments, messages and tools
        # are first walked against the SDK's typed parameters, ~6 ms of CPU per call here (a server's turn
        # costs less than that of its own). Our messages and schemas are plain JSON already.
        payload: dict[str, Any] = {"messages": [_sendable(m) for m in messages]}
        if tools:
            payload["tools"] = [t.openai() for t in tools]
            payload["tool_choice"] = choice.openai()
        try:
            raw = self._openai().chat.completions.with_raw_response.create(
                model=self.model, messages=[], extra_body=payload, timeout=timeout
            )
            text = raw.text
        except openai.APITimeoutError as exc:
            raise LLMTimeoutError(f"{self.where} did not answer within {timeout:.0f} s") from exc
        except openai.APIConnectionError as exc:
            raise LLMRetryableError(f"cannot reach {self.where}: {one_line(exc.__cause__ or exc)}") from exc
        except openai.APIStatusError as exc:
            error = status_error(exc.status_code, _detail(exc), self.where)
            if choice.mode == "required" and exc.status_code >= 500:
                # llama.cpp's server answers tool_choice "required" with a bare 500.
                error = LLMError(f"{error}; this server may not support tool_choice \"required\": set "
                                 "llm.tool_choice to auto_then_send_message")
            raise error from exc
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
