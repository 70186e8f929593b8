"""The one LLM interface: chat messages and tool specs in, text and tool calls out."""

from __future__ import annotations

import json
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from memgpt.errors import ContextWindowExceededError, LLMError, LLMRetryableError, LLMTimeoutError
from memgpt.types import ToolCall

logger = logging.getLogger(__name__)

ChatMessage = dict[str, Any]  # OpenAI chat format: role, content, tool_calls, tool_call_id, name


def encode_json(value: object) -> str:
    """JSON text as a request body holds it: compact, non-ASCII as itself."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class EncodedChat(dict[str, Any]):
    """A chat message that keeps its JSON text (``chat_json``) once made: an agent sends the same system message
    and window messages in every step's request, and encoding them again each time was the largest part of a
    request's CPU. Changing it through the dict's own methods drops the text; do not change what it holds
    (its ``tool_calls`` list)."""

    __slots__ = ("_json",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._json: str | None = None

    def json(self) -> str:
        if self._json is None:
            self._json = encode_json(self)
        return self._json

    def __setitem__(self, key: str, value: Any) -> None:
        self._json = None
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._json = None
        super().__delitem__(key)

    def __ior__(self, other: Any) -> EncodedChat:  # type: ignore[override,misc]
        self._json = None
        return super().__ior__(other)  # type: ignore[return-value]

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._json = None
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._json = None
        return super().setdefault(key, default)

    def pop(self, *args: Any) -> Any:
        self._json = None
        return super().pop(*args)

    def popitem(self) -> tuple[str, Any]:
        self._json = None
        return super().popitem()

    def clear(self) -> None:
        self._json = None
        super().clear()


def chat_json(message: ChatMessage) -> str:
    """``encode_json(message)``, made once for an ``EncodedChat``."""
    return message.json() if isinstance(message, EncodedChat) else encode_json(message)


REPLY_TOOL = "send_message"  # the function a recovering tool-choice policy names


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is a JSON schema object."""

    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def openai_json(self) -> str:
        """``openai()`` as JSON text, made once (an agent keeps its specs): every request of every step sends every
        tool's schema, and encoding them (~6 KB for MemGPT's eight) cost more than the rest of a request's body."""
        text: str | None = self.__dict__.get("_openai_json")
        if text is None:
            text = json.dumps(self.openai(), ensure_ascii=False, separators=(",", ":"))
            object.__setattr__(self, "_openai_json", text)  # frozen: its fields; this is derived from them
        return text


@dataclass(frozen=True)
class ToolChoice:
    """What one request lets the model answer with: ``auto`` (text or calls), ``required`` (some
    call) or ``function`` (a call of the function ``name``)."""

    mode: Literal["auto", "required", "function"] = "auto"
    name: str = ""

    @classmethod
    def function(cls, name: str) -> ToolChoice:
        return cls("function", name)

    def openai(self) -> str | dict[str, Any]:
        return {"type": "function", "function": {"name": self.name}} if self.mode == "function" else self.mode


AUTO = ToolChoice()


@dataclass(frozen=True)
class Completion:
    """One answer. Token counts are the server's own (0 when it did not say); ``prompt_tokens``
    includes ``cached_tokens``, the part of the prompt the provider read from its prompt cache."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str = ""  # as the server said: "stop", "tool_calls", "length" (cut off at the limit), ...
    # Replies with neither text nor a function call this call received; under the tool-choice policy
    # "auto_then_send_message" the first one was asked again naming send_message.
    empty_replies: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        """Neither text nor a function call: the user would see nothing."""
        return not self.content.strip() and not self.tool_calls


@dataclass
class _Budget:
    """The time and attempts one ``complete`` call may spend."""

    start: float
    total: float
    per_attempt: float
    clock: Callable[[], float]
    attempts: int = 0

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()

    def attempt_timeout(self) -> float:
        return max(0.001, min(self.per_attempt, self.left()))

    def can_try_after(self, pause: float) -> bool:
        """Whether a request started after ``pause`` seconds would still get a fair share of time."""
        return self.left() - pause >= min(1.0, self.per_attempt)


class LLMClient(ABC):
    """One provider family. Subclasses implement ``request``; ``complete`` adds retries with backoff
    inside a time budget, and the tool-choice policy."""

    model: str
    context_window: int
    endpoint: str = ""
    supports_tools: bool = True
    tool_choice: str = "auto"  # the policy: one of memgpt.config.TOOL_CHOICES
    timeout: float = 120.0  # one request
    deadline: float = 120.0  # one ``complete``, retries included
    max_retries: int = 4
    backoff_seconds: float = 1.0
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    clock: Callable[[], float] = staticmethod(time.monotonic)

    @abstractmethod
    def request(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], *, choice: ToolChoice, timeout: float
    ) -> Completion:
        """One call to the provider, answered within ``timeout`` seconds. Raises LLMTimeoutError when it
        was not, LLMRetryableError for 429s, 5xx and garbled replies, ContextWindowExceededError when the
        prompt is too long, LLMError otherwise. Every message names the endpoint."""

    @property
    def where(self) -> str:
        """The endpoint as error messages name it."""
        return self.endpoint or self.model

    def complete(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> Completion:
        """The model's answer; fails within ``deadline`` seconds, however the endpoint behaves."""
        budget = _Budget(self.clock(), self.deadline, min(self.timeout, self.deadline), self.clock)
        names = {t.name for t in tools}
        completion = self._retrying(messages, tools, self._first_choice(names), budget)
        if not completion.empty:
            return completion
        if self.tool_choice != "auto_then_send_message" or REPLY_TOOL not in names or not budget.can_try_after(0):
            return replace(completion, empty_replies=1)
        logger.info("the model answered with neither text nor a function call; asking again for %s", REPLY_TOOL)
        try:
            again = self._retrying(messages, tools, ToolChoice.function(REPLY_TOOL), budget)
        except ContextWindowExceededError:
            raise
        except LLMError as exc:  # the empty reply stands; the agent shows it
            logger.warning("asking again for %s failed: %s", REPLY_TOOL, exc)
            return replace(completion, empty_replies=1)
        return replace(again, empty_replies=2 if again.empty else 1)

    def _first_choice(self, names: set[str]) -> ToolChoice:
        if self.tool_choice == "required":
            return ToolChoice("required")
        if self.tool_choice == "send_message" and REPLY_TOOL in names:
            return ToolChoice.function(REPLY_TOOL)
        return AUTO

    def _retrying(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], choice: ToolChoice, budget: _Budget
    ) -> Completion:
        retry = 0
        while True:
            budget.attempts += 1
            try:
                return self.request(messages, tools, choice=choice, timeout=budget.attempt_timeout())
            except LLMRetryableError as exc:
                pause = min(30.0, self.backoff_seconds * 2**retry) * (0.5 + random.random())
                if retry >= self.max_retries or not budget.can_try_after(pause):
                    raise self._give_up(exc, budget) from exc
                logger.warning("LLM call failed (%s); retrying in %.1fs", exc, pause)
                self.sleep(pause)
                retry += 1

    def _give_up(self, last: LLMRetryableError, budget: _Budget) -> LLMError:
        attempts = f"{budget.attempts} attempt{'s' if budget.attempts != 1 else ''}"
        if isinstance(last, LLMTimeoutError):
            # The configured bound, not the time spent: that is a little more (connecting, a pause between tries),
            # and "within 121 s" under a bound of 120 reads as if the bound did not hold.
            if budget.left() < budget.per_attempt:
                return LLMTimeoutError(
                    f"{self.where} did not answer within {budget.total:g} s ({attempts}); "
                    "check the server or raise llm.timeout_seconds"
                )
            return LLMTimeoutError(
                f"{self.where} did not answer within {budget.per_attempt:g} s at any of {attempts}; "
                "check the server or raise llm.attempt_timeout_seconds"
            )
        return LLMRetryableError(f"{last} (gave up after {attempts} in {budget.elapsed():.0f} s)")
