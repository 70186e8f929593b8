"""Tool schemas written without pydantic (plain-typed parameters) are byte for byte what pydantic writes: the
schema is in every request to the LLM, so a changed key order or default would change the prompt."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from memgpt.agent import tools as tools_module
from memgpt.agent.tools import AgentContext, Tool, builtin_tools, tool_from_function
from memgpt.errors import ToolError


def plain(agent: AgentContext, text: str, count: int, ratio: float, flag: bool) -> str:
    """Every plain type, none with a default.

    Args:
        text: Some text.
        count: A number.
    """
    return text


def defaults(agent: AgentContext, text: str = "x", count: int = 3, ratio: float = 0.5, flag: bool = True) -> str:
    """Every plain type with a default."""
    return text


def mixed(agent: AgentContext, count: int = True, ratio: float = 1, name: str = "") -> str:  # type: ignore[assignment]
    """Defaults of another plain type than the annotation: pydantic writes them as given."""
    return name


def optional(agent: AgentContext, text: str | None = None, tags: list[str] | None = None) -> str:
    """Not plain: pydantic writes the schema."""
    return str(text)


def endless(agent: AgentContext, ratio: float = float("inf")) -> str:
    """A default JSON has no number for: pydantic writes the schema."""
    return str(ratio)


def private(agent: AgentContext, text: str, _hidden: str = "") -> str:
    """A name pydantic keeps out of the schema: pydantic writes the schema."""
    return text


MADE_HERE: list[Callable[..., Any]] = [plain, defaults, mixed]
BY_PYDANTIC: list[Callable[..., Any]] = [optional, endless, private]


def _made(function: Callable[..., Any], heartbeat: bool) -> Tool:
    return tool_from_function(function, wants_agent=True, heartbeat=heartbeat)


@pytest.mark.parametrize("heartbeat", [True, False])
def test_plain_schemas_are_what_pydantic_writes(heartbeat: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    functions = [*(t.function for t in builtin_tools()), *MADE_HERE, *BY_PYDANTIC]
    ours = [_made(f, heartbeat) for f in functions]
    for tool in ours[: len(functions) - len(BY_PYDANTIC)]:  # no model was built for the schema
        assert tool.make_arguments.cache_info().currsize == 0, tool.name  # type: ignore[attr-defined]
    monkeypatch.setattr(tools_module, "_PLAIN_TYPES", {})  # every schema from pydantic's model
    theirs = [_made(f, heartbeat) for f in functions]
    for mine, pydantics in zip(ours, theirs, strict=True):
        assert json.dumps(mine.parameters) == json.dumps(pydantics.parameters), mine.name


def test_a_tool_validates_its_arguments_with_the_model_made_at_its_first_call() -> None:
    tool = _made(defaults, heartbeat=True)
    assert tool.call(None, {"text": "y", "request_heartbeat": True}) == "y"  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="bad arguments for defaults: count"):
        tool.call(None, {"count": "many"})  # type: ignore[arg-type]
