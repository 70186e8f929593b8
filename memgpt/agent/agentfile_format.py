"""Letta's Agent File format (``.af``): reading and checking one, and the entries memgpt writes.

An agent file is one JSON object with seven lists (``agents``, ``groups``, ``blocks``, ``files``,
``sources``, ``tools``, ``mcp_servers``) whose entries have file-local ids ``<kind>-<n>`` and refer to each
other by them (an agent's ``block_ids``, a file's ``source_id``). Letta ignores unknown top-level keys,
so memgpt keeps what Letta has no place for (an agent's own archival passages, its running summary) in
one of its own, ``"memgpt"``. Some files are a JSON string holding the document (encoded twice).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memgpt.errors import InputFileError
from memgpt.memory.messages import HEARTBEAT, LOGIN, SYSTEM_ALERT
from memgpt.types import Block, EmbeddingSpace, Message, Role, Source, ToolCall

EXTENSION_KEY = "memgpt"
EXTENSION_VERSION = 1
LISTS = ("agents", "groups", "blocks", "files", "sources", "tools", "mcp_servers")
_ROLES = {"user": Role.USER, "assistant": Role.ASSISTANT, "tool": Role.TOOL, "function": Role.TOOL}
_ENVELOPES = {"user_message": "", "heartbeat": HEARTBEAT, "system_alert": SYSTEM_ALERT, "login": LOGIN}


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)


class FileBlock(_Entry):
    label: str = Field(min_length=1, max_length=64)
    value: str = ""
    limit: int | None = Field(default=None, gt=0)
    description: str | None = None
    read_only: bool | None = False


class FileTool(_Entry):
    name: str = Field(min_length=1)
    tool_type: str | None = None
    source_code: str | None = None


class FileMessage(_Entry):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    created_at: datetime | None = None


class FileSource(_Entry):
    name: str = Field(min_length=1)
    description: str | None = None
    instructions: str | None = None
    metadata: dict[str, Any] | None = None


class FileFile(_Entry):
    source_id: str
    file_name: str = Field(min_length=1)
    file_type: str | None = None
    content: str | None = None


class FileAgent(_Entry):
    name: str = Field(min_length=1)
    system: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    llm_config: dict[str, Any] | None = None
    block_ids: list[str] = Field(default_factory=list)
    tool_ids: list[str] = Field(default_factory=list)
    source_ids: list[str] | None = None
    folder_ids: list[str] | None = None
    messages: list[FileMessage] = Field(default_factory=list)
    in_context_message_ids: list[str] = Field(default_factory=list)
    tool_rules: list[Any] | None = None

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys([*(self.source_ids or []), *(self.folder_ids or [])]))


class ArchivalEntry(BaseModel):
    text: str = Field(min_length=1)
    created_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class AgentExtras(BaseModel):
    persona: str = ""
    human: str = ""
    summary: str = ""
    tools: list[str] | None = None  # the functions it may call; None: every one there is


class Extension(BaseModel):
    """memgpt's own top-level key: what Letta's format has no place for, by file-local agent id."""

    version: int = EXTENSION_VERSION
    archival_passages: dict[str, list[ArchivalEntry]] = Field(default_factory=dict)
    agents: dict[str, AgentExtras] = Field(default_factory=dict)


class AgentFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    agents: list[FileAgent] = Field(min_length=1)
    blocks: list[FileBlock] = Field(default_factory=list)
    tools: list[FileTool] = Field(default_factory=list)
    sources: list[FileSource] = Field(default_factory=list)
    files: list[FileFile] = Field(default_factory=list)
    groups: list[dict[str, Any]] = Field(default_factory=list)
    mcp_servers: list[dict[str, Any]] = Field(default_factory=list)
    memgpt: Extension | None = None

    @model_validator(mode="after")
    def _references_resolve(self) -> AgentFile:
        seen: set[str] = set()
        for entry in [*self.agents, *self.blocks, *self.tools, *self.sources, *self.files]:
            if entry.id in seen:
                raise ValueError(f"id {entry.id!r} is used twice")
            seen.add(entry.id)
        blocks, tools = {b.id for b in self.blocks}, {t.id for t in self.tools}
        sources = {s.id for s in self.sources}
        for agent in self.agents:
            for kind, ids, known in (
                ("block", agent.block_ids, blocks),
                ("tool", agent.tool_ids, tools),
                ("source", agent.sources, sources),
            ):
                missing = [i for i in ids if i not in known]
                if missing:
                    raise ValueError(f"agent {agent.name!r} refers to {kind} {missing[0]!r}, which is not in the file")
        for file in self.files:
            if file.source_id not in sources:
                raise ValueError(f"file {file.file_name!r} is in source {file.source_id!r}, which is not in the file")
        return self

    def blocks_of(self, agent: FileAgent) -> list[FileBlock]:
        by_id = {b.id: b for b in self.blocks}
        return [by_id[i] for i in agent.block_ids]

    def tools_of(self, agent: FileAgent) -> list[FileTool]:
        by_id = {t.id: t for t in self.tools}
        return [by_id[i] for i in agent.tool_ids]

    def extras_of(self, agent: FileAgent) -> AgentExtras | None:
        return self.memgpt.agents.get(agent.id) if self.memgpt else None

    def passages_of(self, agent: FileAgent) -> list[ArchivalEntry]:
        return self.memgpt.archival_passages.get(agent.id, []) if self.memgpt else []


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def read_agent_file(data: bytes | str, label: str) -> AgentFile:
    """The agent file in ``data`` (``label`` names it in errors), checked whole before anything is made of
    it. Raises InputFileError with one line saying what is wrong."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
        document: Any = json.loads(text)
        if isinstance(document, str):  # encoded twice, as some of Letta's own files are
            document = json.loads(document)
    except UnicodeDecodeError as exc:
        raise InputFileError(label, "not an agent file (not UTF-8 text)") from exc
    except json.JSONDecodeError as exc:
        raise InputFileError(label, f"not an agent file (not JSON: {exc.msg} at line {exc.lineno})") from exc
    except RecursionError as exc:
        raise InputFileError(label, "not an agent file (JSON nested too deeply)") from exc
    if not isinstance(document, dict):
        raise InputFileError(label, "not an agent file (the JSON is not an object)")
    if not isinstance(document.get("agents"), list):
        raise InputFileError(
            label, "not an agent file in Letta's current format: it has no 'agents' list (legacy files are not read)"
        )
    try:
        return AgentFile.model_validate(document)
    except ValidationError as exc:
        raise InputFileError(label, f"not a valid agent file: {_problem(exc)}") from exc
    except RecursionError as exc:
        raise InputFileError(label, "not an agent file (JSON nested too deeply)") from exc


# -- reading entries into memgpt's records ------------------------------------------------------
def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind == "reasoning" and isinstance(part.get("reasoning"), str):
            parts.append(part["reasoning"])
    return "\n".join(parts)


def _user_text(text: str, name: str | None) -> tuple[str, str]:
    """What a person or the system said, and which (Message.name), from MemGPT's JSON envelope if there."""
    if name in (HEARTBEAT, SYSTEM_ALERT, LOGIN):
        return text, name
    try:
        envelope = json.loads(text)
    except json.JSONDecodeError:
        return text, ""
    if not isinstance(envelope, dict) or envelope.get("type") not in _ENVELOPES:
        return text, ""
    kind = envelope["type"]
    said = envelope.get({"heartbeat": "reason", "login": "last_login"}.get(kind, "message"))
    return (str(said), _ENVELOPES[kind]) if said is not None else (text, "")


def _calls(raw: list[dict[str, Any]] | None) -> tuple[ToolCall, ...]:
    calls = []
    for number, call in enumerate(raw or []):
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        name = function.get("name")
        if not isinstance(name, str) or not name:
            continue
        arguments = function.get("arguments", "{}")
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        calls.append(ToolCall(str(call.get("id") or f"call_{number}"), name, arguments))
    return tuple(calls)


def to_message(entry: FileMessage, *, message_id: str, agent_id: str, fallback_time: datetime) -> Message | None:
    """A file's message as memgpt stores it; None for what memgpt regenerates or has no place for (the
    compiled system prompt, approvals, summaries)."""
    role = _ROLES.get(entry.role)
    if role is None:
        return None
    text = _text_of(entry.content)
    name = ""
    if role is Role.USER:
        text, name = _user_text(text, entry.name)
    elif role is Role.TOOL:
        name = entry.name or ""
    return Message(
        id=message_id,
        agent_id=agent_id,
        role=role,
        content=text,
        created_at=entry.created_at or fallback_time,
        tool_calls=_calls(entry.tool_calls) if role is Role.ASSISTANT else (),
        tool_call_id=entry.tool_call_id or "" if role is Role.TOOL else "",
        name=name,
    )


# -- memgpt's records as entries ----------------------------------------------------------------
def message_entry(message: Message, *, entry_id: str, agent_entry: str, model: str) -> dict[str, Any]:
    calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in message.tool_calls
    ]
    return {
        "type": "message",
        "role": message.role.value,
        "content": [{"type": "text", "text": message.content, "signature": None}],
        "name": message.name or None,
        "otid": None,
        "sender_id": None,
        "batch_item_id": None,
        "group_id": None,
        "id": entry_id,
        "model": model if message.role is Role.ASSISTANT else None,
        "agent_id": agent_entry,
        "tool_calls": calls or None,
        "tool_call_id": message.tool_call_id or None,
        "tool_returns": [],
        "created_at": message.created_at.isoformat(),
        "approve": None,
        "approval_request_id": None,
        "denial_reason": None,
        "approvals": [],
    }


def block_entry(block: Block, entry_id: str) -> dict[str, Any]:
    return {
        "id": entry_id,
        "label": block.label,
        "value": block.value,
        "limit": block.limit,
        "description": block.description or None,
        "read_only": block.read_only,
        "metadata": {},
        "is_template": False,
        "preserve_on_migration": False,
        "template_name": None,
        "template_id": None,
        "base_template_id": None,
        "deployment_id": None,
        "entity_id": None,
        "hidden": None,
        "project_id": None,
    }


def tool_entry(name: str, description: str, parameters: dict[str, Any], entry_id: str) -> dict[str, Any]:
    """One of MemGPT's own functions: Letta has them under the same names as core tools (no source code)."""
    return {
        "id": entry_id,
        "tool_type": "letta_core",
        "description": description,
        "source_type": "python",
        "name": name,
        "tags": ["letta_core"],
        "source_code": None,
        "json_schema": {"name": name, "description": description, "parameters": parameters},
        "args_json_schema": None,
        "return_char_limit": 6000,
        "pip_requirements": None,
        "npm_requirements": None,
        "default_requires_approval": None,
        "enable_parallel_execution": False,
        "created_by_id": None,
        "last_updated_by_id": None,
        "metadata_": None,
    }


def embedding_config(space: EmbeddingSpace, chunk_size: int) -> dict[str, Any]:
    from memgpt.embeddings.local import MODEL_ID

    local = space.model == MODEL_ID
    return {
        "embedding_endpoint_type": "hugging-face" if local else "openai",
        "embedding_endpoint": None,
        "embedding_model": space.model,
        "embedding_dim": space.dimensions,
        "embedding_chunk_size": chunk_size,
        "handle": f"{'local' if local else 'openai'}/{space.model}",
        "batch_size": 32,
        "azure_endpoint": None,
        "azure_version": None,
        "azure_deployment": None,
    }


def llm_config(model: str, context_window: int) -> dict[str, Any]:
    return {
        "model": model,
        "model_endpoint_type": "openai",  # memgpt's providers all speak OpenAI's API but Anthropic
        "model_endpoint": None,
        "context_window": context_window,
        "handle": None,
        "put_inner_thoughts_in_kwargs": False,
        "temperature": 0.7,
        "max_tokens": None,
    }


def source_entry(source: Source, entry_id: str, chunk_size: int) -> dict[str, Any]:
    return {
        "id": entry_id,
        "name": source.name,
        "description": source.description or None,
        "instructions": source.instructions or None,
        "metadata": source.metadata or None,
        "embedding": None,
        "embedding_chunk_size": chunk_size,
        "embedding_config": embedding_config(source.space, chunk_size),
    }
