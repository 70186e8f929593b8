"""The one LLM interface: chat messages and tool specs in, text and tool calls out."""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memgpt.errors import LLMRetryableError
from memgpt.types import ToolCall

logger = logging.getLogger(__name__)

ChatMessage = dict[str, Any]  # OpenAI chat format: role, content, tool_calls, tool_call_id, name


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


@dataclass(frozen=True)
class Completion:
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class LLMClient(ABC):
    """One provider family. Subclasses implement ``request``; ``complete`` adds retries with backoff."""

    model: str
    context_window: int
    supports_tools: bool = True
    max_retries: int = 4
    backoff_seconds: float = 1.0
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    @abstractmethod
    def request(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> Completion:
        """One call to the provider. Raises LLMRetryableError for 429s, 5xx and timeouts,
        ContextWindowExceededError when the prompt is too long, LLMError otherwise."""

    def complete(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> Completion:
        for attempt in range(self.max_retries + 1):
            try:
                return self.request(messages, tools)
            except LLMRetryableError as exc:
                if attempt == self.max_retries:
                    raise
                delay = min(30.0, self.backoff_seconds * 2**attempt) * (0.5 + random.random())
                logger.warning("LLM call failed (%s); retrying in %.1fs", exc, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises
