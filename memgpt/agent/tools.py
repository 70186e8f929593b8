"""The functions an agent can call: MemGPT's set (same names and arguments) plus the user's own.

A tool's JSON schema comes from its signature and docstring, so a user tool is just a typed,
documented Python function in ``~/.memgpt/tools/*.py``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import logging
import math
import os
import re
import typing
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError, create_model

from memgpt.errors import ToolError, UserError
from memgpt.llm.base import ToolSpec
from memgpt.memory.archival import ArchivalMemory
from memgpt.memory.core import CoreMemory
from memgpt.memory.recall import RecallMemory

logger = logging.getLogger(__name__)

# The argument every tool but send_message takes: whether the model wants another step right after this call.
REQUEST_HEARTBEAT = "request_heartbeat"
REQUEST_HEARTBEAT_DOC = (
    "Request an immediate heartbeat after the function runs. Set to true to chain another step "
    "(for example to read the result and then reply); false to wait for the user."
)


class AgentContext(Protocol):
    """What a built-in tool may touch: the agent's memory and its heartbeat schedule. ``step_id`` names the
    running step: what a tool writes outside the step's SQL commit is recorded under it."""

    core: CoreMemory
    recall: RecallMemory
    archival: ArchivalMemory
    step_id: str

    def pause_heartbeats(self, minutes: int) -> str: ...


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    # Makes the model that validates the arguments; called at the tool's first call, since most of a process's
    # tools are never called and each model costs ~0.7 ms to build.
    make_arguments: Callable[[], type[BaseModel]]
    function: Callable[..., Any]
    wants_agent: bool = False
    ends_turn: bool = False  # send_message: the turn ends unless a heartbeat is requested

    @property
    def arguments(self) -> type[BaseModel]:
        return self.make_arguments()

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    def call(self, agent: AgentContext, raw: dict[str, Any]) -> str:
        """Validate the model's arguments, run the function, return its result as text."""
        try:
            args = self.arguments.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            raise ToolError(f"bad arguments for {self.name}: {problems}") from exc
        values = {k: v for k, v in args.model_dump().items() if k != REQUEST_HEARTBEAT}
        result = self.function(agent, **values) if self.wants_agent else self.function(**values)
        return "None" if result is None else str(result)


# -- deriving schemas ---------------------------------------------------------------------------
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$", re.IGNORECASE)
_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(r"^\s*(Returns|Raises|Yields|Examples?|Notes?):\s*$", re.IGNORECASE)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description and per-argument descriptions from a Google-style docstring."""
    lines = doc.splitlines()
    description: list[str] = []
    arguments: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        if _SECTION.match(line):
            in_args = False
            current = None
            continue
        if in_args:
            found = _ARG_LINE.match(line)
            if found and (line.startswith((" ", "\t")) or not description):
                current = found[1]
                arguments[current] = found[2].strip()
            elif current and line.strip():
                arguments[current] += " " + line.strip()
        elif not arguments:
            description.append(line)
    return " ".join(" ".join(description).split()), arguments


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


# Annotations whose JSON schema is written here as pydantic writes it (every parameter of MemGPT's own tools).
_PLAIN_TYPES: dict[Any, str] = {str: "string", int: "integer", bool: "boolean", float: "number"}


def _plain_schema(fields: dict[str, Any]) -> dict[str, Any] | None:
    """pydantic's JSON schema of a model of these fields (titles left out), when every field has a plain type
    and a plain default (or none): then no model need be built for the schema. None for any other field."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, (annotation, default) in fields.items():
        kind = _PLAIN_TYPES.get(annotation) if isinstance(annotation, type) else None
        if kind is None or name.startswith("_") or hasattr(BaseModel, name):  # pydantic treats those names apart
            return None
        if default is ...:
            properties[name] = {"type": kind}
            required.append(name)
        elif type(default) in _PLAIN_TYPES and not (isinstance(default, float) and not math.isfinite(default)):
            properties[name] = {"default": default, "type": kind}
        else:
            return None
    schema: dict[str, Any] = {"properties": properties, "type": "object"}
    if required:
        schema["required"] = required
    return schema


def tool_from_function(
    function: Callable[..., Any], *, wants_agent: bool = False, heartbeat: bool = True, ends_turn: bool = False
) -> Tool:
    """A tool whose schema is derived from ``function``'s type hints and docstring.

    Raises ValueError for an undocumented function or an unannotated parameter.
    """
    name = function.__name__
    doc = inspect.getdoc(function)
    if not doc:
        raise ValueError(f"function {name} has no docstring; the model needs one to know what it does")
    description, documented = parse_docstring(doc)
    hints = typing.get_type_hints(function)
    fields: dict[str, Any] = {}
    for parameter in list(inspect.signature(function).parameters.values())[1 if wants_agent else 0 :]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ValueError(f"function {name} takes *args/**kwargs; tools need named, typed parameters")
        if parameter.name not in hints:
            raise ValueError(f"parameter {parameter.name!r} of {name} has no type annotation")
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], default)
    if heartbeat:
        fields[REQUEST_HEARTBEAT] = (bool, False)
    make_arguments = functools.cache(lambda: create_model(f"{name}_arguments", **fields))  # type: ignore[call-overload]
    schema = _plain_schema(fields)
    if schema is None:  # the model is built now, so a type pydantic cannot handle fails as the tool is made
        schema = _strip_titles(make_arguments().model_json_schema())
    properties = schema.get("properties", {})
    for arg, text in documented.items():
        if arg in properties:
            properties[arg]["description"] = text
    if heartbeat:
        properties[REQUEST_HEARTBEAT]["description"] = REQUEST_HEARTBEAT_DOC
        schema["required"] = [*schema.get("required", []), REQUEST_HEARTBEAT]
    parameters = {"type": "object", "properties": properties, "required": schema.get("required", [])}
    if "$defs" in schema:
        parameters["$defs"] = schema["$defs"]
    return Tool(name, description, parameters, make_arguments, function, wants_agent=wants_agent, ends_turn=ends_turn)


# -- MemGPT's functions -------------------------------------------------------------------------
def send_message(agent: AgentContext, message: str) -> None:
    """Sends a message to the human user. This is the only way the user sees what you say.

    Args:
        message: Message contents. All unicode (including emojis) are supported.
    """
    return None


def pause_heartbeats(agent: AgentContext, minutes: int) -> str:
    """Temporarily ignore timed heartbeats. You may still receive messages from the user or from functions.

    Args:
        minutes: Number of minutes to ignore heartbeats for. Max value of 360 minutes (6 hours).
    """
    return agent.pause_heartbeats(minutes)


def core_memory_append(agent: AgentContext, name: str, content: str) -> None:
    """Append to the contents of core memory.

    Args:
        name: Section of the memory to be edited (persona or human).
        content: Content to write to the memory. All unicode (including emojis) are supported.
    """
    agent.core.append(name, content)


def core_memory_replace(agent: AgentContext, name: str, old_content: str, new_content: str) -> None:
    """Replace the contents of core memory. To delete memories, use an empty string for new_content.

    Args:
        name: Section of the memory to be edited (persona or human).
        old_content: String to replace. Must be an exact match.
        new_content: Content to write to the memory. All unicode (including emojis) are supported.
    """
    agent.core.replace(name, old_content, new_content)


def conversation_search(
    agent: AgentContext, query: str, page: int = 0, start_date: str = "", end_date: str = "", role: str = ""
) -> str:
    """Search prior conversation history (recall memory). Ranks every message by meaning and by the words it
    shares with the query (any word form: "climbed" finds "climbing"; common words like "how" or "you" are
    ignored), best first, and shows each match with the messages just before and after it.

    Args:
        query: What to look for, as a question or as key words; a day such as "14 March" also matches
            messages of that day.
        page: Which page of results to show; 0 is the first.
        start_date: Only messages from this day on, formatted YYYY-MM-DD; empty for no limit.
        end_date: Only messages up to this day, formatted YYYY-MM-DD; empty for no limit.
        role: "user" for only what the user said, "assistant" for only what you said; empty for both.
    """
    return agent.recall.search(query, page, start_date=start_date, end_date=end_date, role=role).render("results")


def conversation_search_date(agent: AgentContext, start_date: str, end_date: str, page: int = 0) -> str:
    """Search prior conversation history (recall memory) between two dates, inclusive.

    Args:
        start_date: First day to include, formatted YYYY-MM-DD.
        end_date: Last day to include, formatted YYYY-MM-DD.
        page: Which page of results to show; 0 is the first.
    """
    return agent.recall.search_dates(start_date, end_date, page).render("results")


def archival_memory_insert(agent: AgentContext, content: str) -> str:
    """Add to archival memory. Make sure to phrase the memory contents such that it can be easily queried later.

    Args:
        content: Content to write to the memory. All unicode (including emojis) are supported.
    """
    stored = agent.archival.insert(content, step_id=agent.step_id)
    return f"Stored in archival memory ({stored} passage{'s' if stored != 1 else ''})."


def archival_memory_search(agent: AgentContext, query: str, page: int = 0) -> str:
    """Search archival memory (including attached data sources). Ranks every passage by meaning and by the words it
    shares with the query (any word form; common words like "what" or "the" are ignored), best first; the header
    says how many of the best-ranked passages share words with the query. Page through results for more.

    Args:
        query: What to look for, as a phrase or question.
        page: Which page of results to show; 0 is the first.
    """
    return agent.archival.search(query, page).render("results")


def builtin_tools() -> list[Tool]:
    """MemGPT's own tools, in a new list each call (the caller may add to it)."""
    return list(_builtin_tools())


@functools.cache
def _builtin_tools() -> tuple[Tool, ...]:
    # Made once per process: building each argument model and JSON schema costs more than a server's turn.
    return (
        tool_from_function(send_message, wants_agent=True, heartbeat=False, ends_turn=True),
        tool_from_function(pause_heartbeats, wants_agent=True, heartbeat=False),
        *(
            tool_from_function(f, wants_agent=True)
            for f in (
                core_memory_append,
                core_memory_replace,
                conversation_search,
                conversation_search_date,
                archival_memory_insert,
                archival_memory_search,
            )
        ),
    )


# -- user tools ---------------------------------------------------------------------------------
def folder_signature(folder: Path) -> Hashable:
    """What tells a change in the ``*.py`` files ``load_user_tools`` reads (added, removed or rewritten)
    without reading them: a process that keeps loaded tools compares it before using them again."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return ()
    found = []
    for entry in entries:
        if entry.name.endswith(".py"):
            with contextlib.suppress(OSError):
                info = entry.stat()
                found.append((entry.name, info.st_mtime_ns, info.st_size))
    return tuple(found)


def load_user_tools(folder: Path, reserved: Iterable[str]) -> tuple[list[Tool], list[str]]:
    """Tools from every ``*.py`` in ``folder`` and a one-line warning for each that cannot be used."""
    tools: list[Tool] = []
    warnings: list[str] = []
    taken = set(reserved)
    if not folder.is_dir():
        return tools, warnings
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"memgpt_user_tools.{path.stem}", path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - a user's broken file must not stop the agent
            warnings.append(f"{path}: cannot import it ({type(exc).__name__}: {exc}); its tools are skipped")
            continue
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("_") or function.__module__ != module.__name__:
                continue
            if name in taken:
                warnings.append(f"{path}: {name} is already a tool; skipped")
                continue
            try:
                tools.append(tool_from_function(function))
            except (ValueError, TypeError, NameError) as exc:
                warnings.append(f"{path}: {name}: {exc}; skipped")
                continue
            taken.add(name)
    return tools, warnings


def parse_arguments(raw: str) -> dict[str, Any]:
    """The model's argument text as a dict (the LLM adapters already normalise what they can)."""
    from memgpt.llm.arguments import load_arguments

    value = load_arguments(raw)
    if value is None:
        raise ToolError(f"the arguments are not a JSON object: {(raw or '').strip()[:200]}")
    return value


def tools_by_name(tools: Iterable[Tool]) -> dict[str, Tool]:
    found: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in found:
            raise UserError(f"two tools are named {tool.name}")
        found[tool.name] = tool
    return found
