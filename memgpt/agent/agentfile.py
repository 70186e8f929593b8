"""Agent Files (``.af``, Letta's format): export one of a user's agents, import the agents of a file.

An export holds the agent (its system prompt, model and context window), its core-memory blocks, its
messages (the compiled system message first, then every message with which are in the context window),
MemGPT's tools, the sources attached to it with their files' text, the MCP servers attached to it (Letta's
``mcp_servers`` entries: the command or URL, never environment values, headers or tokens), and, under
memgpt's own top-level key, its archival passages, running summary and the names of its MCP servers.
Embeddings are never exported: an import embeds again with the home's model.

An import makes a new agent of each agent in the file, all or nothing: blocks with their limits, messages
in order as recall history (the compiled system message is regenerated), tools mapped by name to MemGPT's
(custom tools carry code, which is never run or installed: they are reported), sources created afresh with
their files loaded by the home's loader, and archival passages. MCP servers are attached when the home has
a server registered under the same name that runs the same command or URL; an import never registers one (a
file must not make a machine run a command: that is for `memgpt mcp add`, or the server's owner), so each
other server is reported with what to do. Everything it could not carry over is reported in one line each.
"""

from __future__ import annotations

import io
import json
import logging
import shlex
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from memgpt import __version__
from memgpt.agent import prompts
from memgpt.agent.agentfile_format import (
    EXTENSION_KEY,
    EXTENSION_VERSION,
    AgentFile,
    FileAgent,
    FileMCPServer,
    block_entry,
    embedding_config,
    llm_config,
    message_entry,
    source_entry,
    to_message,
    tool_entry,
)
from memgpt.agent.context import system_message
from memgpt.agent.manager import (
    attached_sources,
    check_window,
    default_agent_settings,
    delete_agent,
    validate_agent_name,
)
from memgpt.agent.tools import builtin_tools
from memgpt.config import Config, EmbeddingSettings
from memgpt.data.files import DuplicateHandling, file_text, load_file, take_upload
from memgpt.data.ingest import LoadListener
from memgpt.data.sources import create_source, delete_source
from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import AlreadyExistsError, ConfigError, MemGPTError
from memgpt.memory.core import DEFAULT_LIMIT, CoreMemory
from memgpt.memory.messages import stored
from memgpt.storage import Storage
from memgpt.storage.filters import all_of, eq
from memgpt.types import AgentState, Block, FileRecord, FileStatus, Message, Passage, Role, Source, utc_now

logger = logging.getLogger(__name__)

# Letta's tools by name, and MemGPT's that do the same job (every memgpt agent has all of MemGPT's).
TOOL_EQUIVALENTS: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in (t.name for t in builtin_tools())},
    "memory_insert": ("core_memory_append",),
    "memory_replace": ("core_memory_replace",),
    "memory_rethink": ("core_memory_replace",),
    "memory": ("core_memory_append", "core_memory_replace"),
}
TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst", ".log")
_PASSAGE_WINDOW = 256


# -- export ---------------------------------------------------------------------------------------
def export_agent(
    storage: Storage, state: AgentState, *, chunk_size: int, scrub_messages: bool = False, home: Path | None = None
) -> dict[str, Any]:
    """The agent as an Agent File document (``json.dumps`` it, or use ``export_text``); the commands or URLs
    of its MCP servers come from ``home``'s registry (without it, or for one no longer added, only names)."""
    blocks = storage.agents.blocks(state.id)
    sources = attached_sources(storage, state)
    passages = _own_passages(storage, state)
    messages: list[dict[str, Any]] = []
    in_context: list[str] = []
    if not scrub_messages:
        messages, in_context = _message_entries(storage, state, blocks, sources, len(passages))
    files: list[dict[str, Any]] = []
    source_entries = []
    for number, source in enumerate(sources):
        source_entries.append(source_entry(source, f"source-{number}", chunk_size))
        for record in storage.files.list(source.id):
            text = file_text(storage, source, record) if record.status is FileStatus.COMPLETED else None
            if text is not None:
                files.append(_file_entry(record, f"file-{len(files)}", f"source-{number}", text))
    chosen = set(state.tools) if state.tools is not None else None
    tools = sorted((t for t in builtin_tools() if chosen is None or t.name in chosen), key=lambda t: t.name)
    mcp_names = storage.mcp_servers.names(state.id)
    agent = {
        "name": state.name,
        "memory_blocks": [],
        "tools": [],
        "tool_ids": [f"tool-{n}" for n in range(len(tools))],
        "source_ids": [f"source-{n}" for n in range(len(sources))],
        "folder_ids": None,
        "block_ids": [f"block-{n}" for n in range(len(blocks))],
        "tool_rules": [],
        "tags": list(state.tags),
        "agent_type": "memgpt_agent",
        "initial_message_sequence": None,
        "include_base_tools": False,
        "include_multi_agent_tools": False,
        "include_base_tool_rules": False,
        "include_default_source": False,
        "description": state.description or None,
        "metadata": state.metadata or None,
        "llm_config": llm_config(state.llm_model, state.context_window),
        "embedding_config": embedding_config(state.space, chunk_size),
        "model": None,
        "embedding": None,
        "system": state.system_prompt,
        "timezone": "UTC",
        "message_buffer_autoclear": False,
        "enable_sleeptime": False,
        "tool_exec_environment_variables": {},
        "id": "agent-0",
        "in_context_message_ids": in_context,
        "messages": messages,
        "files_agents": [],
        "group_ids": [],
    }
    return {
        "agents": [agent],
        "groups": [],
        "blocks": [block_entry(b, f"block-{n}") for n, b in enumerate(blocks)],
        "files": files,
        "sources": source_entries,
        "tools": [tool_entry(t.name, t.description, t.parameters, f"tool-{n}") for n, t in enumerate(tools)],
        "mcp_servers": _mcp_server_entries(mcp_names, home),
        "metadata": {"exported_by": f"memgpt {__version__}"},
        "created_at": utc_now().isoformat(),
        EXTENSION_KEY: {
            "version": EXTENSION_VERSION,
            "archival_passages": {"agent-0": passages},
            "agents": {
                "agent-0": {
                    "persona": state.persona,
                    "human": state.human,
                    "summary": state.summary,
                    "tools": list(state.tools) if state.tools is not None else None,
                    "mcp_servers": mcp_names,
                }
            },
        },
    }


def _mcp_server_entries(names: Sequence[str], home: Path | None) -> list[dict[str, Any]]:
    """Letta's entries for the registered ones of ``names``: what runs, never a secret."""
    if not names or home is None:
        return []
    from memgpt.mcp.registry import load_servers

    try:
        registry = load_servers(home)
    except ConfigError as exc:
        logger.warning("MCP servers exported by name only: %s", exc)
        return []
    entries = []
    for name in (n for n in names if n in registry):
        spec = registry[name]
        entry: dict[str, Any] = {"id": f"mcp_server-{len(entries)}", "server_name": name, "metadata_": None}
        if spec.url:
            entry.update(server_type="streamable_http", server_url=spec.url, stdio_config=None)
        else:
            stdio = {"server_name": name, "type": "stdio", "command": spec.command, "args": list(spec.args)}
            entry.update(server_type="stdio", server_url=None, stdio_config=stdio)
        entries.append(entry)
    return entries


def export_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def _own_passages(storage: Storage, state: AgentState) -> list[dict[str, Any]]:
    """The agent's own archival passages (not its sources'), oldest first, without embeddings."""
    store = storage.passages(state.space)
    where = all_of(eq("user_id", state.user_id), eq("agent_id", state.id), eq("kind", "archival"))
    found = [p for batch in store.iterate(where) for p in batch]
    found.sort(key=lambda p: (p.created_at, p.chunk_index, p.id))
    return [{"text": p.text, "created_at": p.created_at.isoformat(), "metadata": p.metadata} for p in found]


def _message_entries(
    storage: Storage, state: AgentState, blocks: list[Block], sources: list[Source], own_passages: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every message, after the system message as the agent would see it now; and the in-context ids."""
    history = storage.messages.last(state.id, storage.messages.count(state.id))
    in_context = {m.id for m in storage.messages.in_context(state.id)}
    system = system_message(
        state,
        CoreMemory(blocks).render(),
        recall_count=len(history),
        archival_count=own_passages + sum(s.passages for s in sources),
        sources=[s.name for s in sources],
        now=utc_now(),
    )
    compiled = Message(id="", agent_id=state.id, role=Role.SYSTEM, content=str(system["content"]))
    entries = [message_entry(compiled, entry_id="message-0", agent_entry="agent-0", model=state.llm_model)]
    context = ["message-0"]
    for number, message in enumerate(history, start=1):
        entry_id = f"message-{number}"
        entries.append(message_entry(message, entry_id=entry_id, agent_entry="agent-0", model=state.llm_model))
        if message.id in in_context:
            context.append(f"message-{number}")
    return entries, context


def _file_entry(record: FileRecord, entry_id: str, source_entry_id: str, text: str) -> dict[str, Any]:
    return {
        "id": entry_id,
        "source_id": source_entry_id,
        "file_name": record.file_name,
        "original_file_name": record.original_file_name or record.file_name,
        "file_path": None,
        "file_type": record.file_type or None,
        "file_size": record.file_size,
        "file_creation_date": None,
        "file_last_modified_date": None,
        "processing_status": "completed",
        "error_message": None,
        "total_chunks": record.total_chunks,
        "chunks_embedded": record.chunks_embedded,
        "content": text,
    }


# -- import ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportOptions:
    """``name`` replaces the file's agent name; ``copy_suffix`` adds Letta's "_copy"; a name that is taken
    gets "_2", "_3"... or, with ``on_clash="error"``, refuses the import."""

    name: str | None = None
    copy_suffix: bool = False
    on_clash: Literal["suffix", "error"] = "suffix"
    strip_messages: bool = False
    model: str | None = None


@dataclass(frozen=True)
class ImportSettings:
    """What the home provides: where uploads go, the embedding model and how files are loaded with it, and
    the LLM model new agents run on (None: the one the file names)."""

    home: Path
    embedding: EmbeddingModel
    loading: EmbeddingSettings
    llm_model: str | None = None
    context_window: int = 8192
    # False: files are only stored (pending) for the caller to load, as the server's file jobs load uploads.
    load_files: bool = True


def import_settings(home: Path, config: Config, embedding: EmbeddingModel) -> ImportSettings:
    """The home's settings for imports; without a usable LLM configuration agents keep the file's model."""
    try:
        model, window = default_agent_settings(config, None)
    except ConfigError:
        model, window = None, 8192
    return ImportSettings(home, embedding, config.embedding, model, window)


@dataclass
class ImportedAgent:
    state: AgentState
    messages: int = 0
    passages: int = 0
    tools_mapped: dict[str, list[str]] = field(default_factory=dict)
    tools_without_equivalent: list[str] = field(default_factory=list)
    custom_tools: list[str] = field(default_factory=list)  # carry code: never run or installed
    mcp_servers: list[str] = field(default_factory=list)  # attached: registered here, running the same thing
    files: list[FileRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Planned:
    """One of the file's agents as it is to be written, checked before anything of the import is."""

    agent: FileAgent
    result: ImportedAgent
    blocks: list[Block]
    history: list[Message]
    out_of_context: list[str]


@dataclass
class _Made:
    """What an import has written so far, to take back if it fails."""

    sources: list[Source] = field(default_factory=list)
    agents: list[AgentState] = field(default_factory=list)
    passage_owners: list[AgentState] = field(default_factory=list)


def import_agent_file(
    storage: Storage,
    document: AgentFile,
    *,
    user_id: str,
    settings: ImportSettings,
    options: ImportOptions = ImportOptions(),
    listener: LoadListener | None = None,
) -> list[ImportedAgent]:
    """Make the file's agents for ``user_id``; if anything fails, nothing of the import stays. What can be
    refused without writing (a taken name, a context window too small for an agent's fixed prompt) is,
    before anything is written."""
    taken = storage.agents.names(user_id)
    planned = []
    for agent in document.agents:
        plan = _plan_agent(storage, document, agent, user_id, settings, options, taken)
        taken.add(plan.result.state.name)
        planned.append(plan)
    made = _Made()
    try:
        sources, files, notes = _import_sources(storage, document, user_id, settings, listener, made)
        imported = []
        for plan in planned:
            result = _write_agent(storage, document, plan, settings, sources, made)
            result.files = [f for sid in plan.agent.sources for f in files.get(sid, [])]
            result.notes = notes + _file_notes(result.files) + result.notes
            imported.append(result)
        return imported
    except BaseException:
        _take_back(storage, made)
        raise


def _take_back(storage: Storage, made: _Made) -> None:
    for undo, items in (
        (delete_agent, made.agents),
        (_delete_passages, made.passage_owners),
        (delete_source, made.sources),
    ):
        for item in items:
            try:
                undo(storage, item)  # type: ignore[operator]
            except MemGPTError as exc:
                logger.warning("could not remove %s after a failed import: %s", item, exc)


def _delete_passages(storage: Storage, state: AgentState) -> None:
    storage.passages(state.space).delete(all_of(eq("user_id", state.user_id), eq("agent_id", state.id)))


def _free(name: str, taken: set[str]) -> str:
    number = 2
    while f"{name}_{number}" in taken:
        number += 1
    return f"{name}_{number}"


def _import_sources(
    storage: Storage,
    document: AgentFile,
    user_id: str,
    settings: ImportSettings,
    listener: LoadListener | None,
    made: _Made,
) -> tuple[dict[str, Source], dict[str, list[FileRecord]], list[str]]:
    """New sources for the file's sources its agents use, with their files loaded from the text the file
    carries; by file-local source id."""
    used = {sid for agent in document.agents for sid in agent.sources}
    taken = {s.name for s in storage.metadata.list_sources(user_id)}
    sources: dict[str, Source] = {}
    files: dict[str, list[FileRecord]] = {}
    notes: list[str] = []
    space = settings.embedding.space
    for entry in document.sources:
        if entry.id not in used:
            continue
        name = entry.name.strip() if entry.name.strip() not in taken else _free(entry.name.strip(), taken)
        if name != entry.name.strip():
            notes.append(f"source {entry.name!r} exists already; imported as {name!r}")
        source = create_source(
            storage,
            user_id,
            name,
            space,
            entry.description or "",
            instructions=entry.instructions or "",
            metadata=entry.metadata,
        )
        made.sources.append(source)
        taken.add(name)
        sources[entry.id] = source
        files[entry.id] = []
        for file in (f for f in document.files if f.source_id == entry.id):
            if not (file.content or "").strip():
                notes.append(f"file {file.file_name!r} has no text in the agent file; not loaded")
                continue
            files[entry.id].append(_load_text(storage, source, file.file_name, file.content, settings, listener))
    return sources, files, notes


def _load_text(
    storage: Storage, source: Source, name: str, text: str, settings: ImportSettings, listener: LoadListener | None
) -> FileRecord:
    stored_name = name if name.lower().endswith(TEXT_SUFFIXES) else f"{name}.txt"  # it is the file's text
    upload = take_upload(
        storage,
        settings.home,
        source,
        stored_name,
        io.BytesIO(text.encode("utf-8")),
        space=settings.embedding.space,
        content_type="text/plain",
        duplicate_handling=DuplicateHandling.SUFFIX,
        original_name=name,
    )
    if not settings.load_files:
        return upload.record
    load_file(storage, settings.embedding, source, upload.record, settings=settings.loading, listener=listener)
    return storage.files.get(upload.record.id) or upload.record


def _file_notes(files: Sequence[FileRecord]) -> list[str]:
    failed = [f for f in files if f.status is FileStatus.ERROR]
    return [f"file {f.file_name!r} could not be loaded: {f.error_message}" for f in failed]


def _agent_name(agent: FileAgent, options: ImportOptions, taken: set[str]) -> str:
    name = validate_agent_name(options.name or agent.name)
    if options.copy_suffix:
        name = f"{name}_copy"
    if name not in taken:
        return name
    if options.on_clash == "error":
        raise AlreadyExistsError(f"an agent named {name!r} already exists; import it under another name")
    return _free(name, taken)


def _plan_agent(
    storage: Storage,
    document: AgentFile,
    agent: FileAgent,
    user_id: str,
    settings: ImportSettings,
    options: ImportOptions,
    taken: set[str],
) -> _Planned:
    """The agent to make of the file's ``agent``, refused (a UserError) when its context window is too small for
    its fixed prompt: the agent could never be opened."""
    extras = document.extras_of(agent)
    file_model = str((agent.llm_config or {}).get("model") or "")
    model = options.model or settings.llm_model or file_model or "unknown"
    window = settings.context_window
    if not (options.model or settings.llm_model):
        window = int((agent.llm_config or {}).get("context_window") or window)
    state = AgentState(
        id=f"agent-{uuid.uuid4()}",
        name=_agent_name(agent, options, taken),
        user_id=user_id,
        persona=extras.persona if extras and extras.persona else "imported",
        human=extras.human if extras and extras.human else "imported",
        system_prompt=agent.system if extras and agent.system else prompts.system_prompt(),
        llm_model=model,
        context_window=window,
        embedding_model=settings.embedding.model_id,
        embedding_dim=settings.embedding.dimensions,
        created_at=utc_now(),
        summary=extras.summary if extras else "",
        description=agent.description or "",
        tags=tuple(dict.fromkeys(agent.tags or ())),
        metadata=dict(agent.metadata or {}),
        tools=tuple(extras.tools) if extras and extras.tools is not None else None,
        updated_at=utc_now(),
    )
    result = ImportedAgent(state)
    _map_tools(document, agent, result)
    blocks = _blocks(document, agent, result.notes)
    history, out_of_context = ([], []) if options.strip_messages else _history(agent, state)
    if agent.system and not extras:
        result.notes.append("the system prompt is memgpt's: the file's describes Letta's tools")
    if file_model and file_model != model:
        result.notes.append(f"runs on {model} (the file's agent ran on {file_model})")
    if agent.tool_rules:
        result.notes.append(f"{len(agent.tool_rules)} tool rule(s) not imported: memgpt agents have none")
    if document.groups:
        result.notes.append("multi-agent groups are not imported")
    check_window(storage, state, blocks, tools_folder=settings.home / "tools", fix=_WINDOW_FIX)
    return _Planned(agent, result, blocks, history, out_of_context)


_WINDOW_FIX = "configure a model that has that much with `memgpt configure` and import again; nothing was imported"


def _write_agent(
    storage: Storage,
    document: AgentFile,
    plan: _Planned,
    settings: ImportSettings,
    sources: dict[str, Source],
    made: _Made,
) -> ImportedAgent:
    result, state, agent = plan.result, plan.result.state, plan.agent
    made.passage_owners.append(state)
    result.passages = _restore_passages(storage, document, agent, state, settings.embedding)
    storage.agents.create(
        state,
        plan.blocks,
        history=[stored(m) for m in plan.history],
        out_of_context=plan.out_of_context,
        source_ids=[sources[sid].id for sid in agent.sources if sid in sources],
        own_passages=result.passages,
    )
    made.agents.append(state)
    _attach_mcp_servers(storage, settings.home, document.mcp_servers_of(agent), state, result)
    result.messages = len(plan.history)
    return result


def _attach_mcp_servers(
    storage: Storage, home: Path, servers: Sequence[FileMCPServer], state: AgentState, result: ImportedAgent
) -> None:
    """Attach the file's MCP servers that this home registers under the same name for the same command or URL;
    a note for each other one."""
    if not servers:
        return
    from memgpt.mcp.registry import load_servers

    try:
        registry = load_servers(home)
    except ConfigError as exc:
        result.notes.append(f"MCP servers not attached ({', '.join(s.server_name for s in servers)}): {exc}")
        return
    for server in servers:
        name = server.server_name
        spec = registry.get(name)
        what = shlex.join(server.command) if server.command else (server.server_url or "")
        if spec is None:
            how = f"`memgpt mcp add {name} -- {what}`" if server.command else f"`memgpt mcp add {name} --url {what}`"
            result.notes.append(
                f"MCP server {name!r} is not attached: it is not added here (add it with "
                f"{how if what else f'`memgpt mcp add {name} ...`'}, with its secrets, which files never carry; "
                f"on a server its owner registers it), then attach it (/mcp attach {name})"
            )
            continue
        ours = [spec.command, *spec.args] if spec.command else spec.url
        theirs = server.command or (server.server_url or "").strip() or None
        if theirs is not None and theirs != ours:
            result.notes.append(
                f"MCP server {name!r} is not attached: the one added here under that name runs something else "
                f"than the file's ({what}); attach it (/mcp attach {name}) if it is the same server"
            )
            continue
        storage.mcp_servers.attach(state.id, name)
        result.mcp_servers.append(name)


def _map_tools(document: AgentFile, agent: FileAgent, result: ImportedAgent) -> None:
    for tool in document.tools_of(agent):
        if tool.mcp_server:
            continue  # an MCP server's tool: it comes with the server (see _attach_mcp_servers)
        if tool.name in TOOL_EQUIVALENTS:
            result.tools_mapped[tool.name] = list(TOOL_EQUIVALENTS[tool.name])
        elif tool.source_code:
            result.custom_tools.append(tool.name)
        else:
            result.tools_without_equivalent.append(tool.name)


def _blocks(document: AgentFile, agent: FileAgent, notes: list[str]) -> list[Block]:
    blocks: dict[str, Block] = {}
    for entry in document.blocks_of(agent):
        if entry.label in blocks:
            notes.append(f"a second block labelled {entry.label!r} was left out")
            continue
        limit = max(entry.limit or DEFAULT_LIMIT, len(entry.value))
        blocks[entry.label] = Block(entry.label, entry.value, limit, entry.description or "", bool(entry.read_only))
    for label in ("persona", "human"):
        if label not in blocks:
            blocks[label] = Block(label, "", DEFAULT_LIMIT)
            notes.append(f"the file has no {label} block; it starts empty")
    return list(blocks.values())


def _history(agent: FileAgent, state: AgentState) -> tuple[list[Message], list[str]]:
    """The file's messages as memgpt's, oldest first, and the ids of those outside the context window."""
    now = utc_now()
    ordered = sorted(enumerate(agent.messages), key=lambda pair: (pair[1].created_at or now, pair[0]))
    in_context = set(agent.in_context_message_ids)
    history: list[Message] = []
    context: list[bool] = []
    for _, entry in ordered:
        message = to_message(entry, message_id=f"message-{uuid.uuid4()}", agent_id=state.id, fallback_time=now)
        if message is not None:
            history.append(message)
            context.append(entry.id in in_context)
    _keep_calls_whole(history, context)
    return history, [m.id for m, inside in zip(history, context, strict=True) if not inside]


def _keep_calls_whole(history: list[Message], context: list[bool]) -> None:
    """A tool call and its results are in the context window together or not at all (LLM APIs refuse a
    result without its call, or a call without its result)."""
    results = {m.tool_call_id: i for i, m in enumerate(history) if m.role is Role.TOOL}
    for index, message in enumerate(history):
        if message.role is Role.ASSISTANT and message.tool_calls and context[index]:
            answered = [results.get(c.id) for c in message.tool_calls]
            if any(i is None or not context[i] for i in answered):
                context[index] = False
    calls = {c.id: i for i, m in enumerate(history) for c in m.tool_calls}
    for index, message in enumerate(history):
        if message.role is Role.TOOL and context[index]:
            call = calls.get(message.tool_call_id)
            if call is None or not context[call]:
                context[index] = False


def _restore_passages(
    storage: Storage, document: AgentFile, agent: FileAgent, state: AgentState, model: EmbeddingModel
) -> int:
    entries = document.passages_of(agent)
    store = storage.passages(model.space)
    now = utc_now()
    for start in range(0, len(entries), _PASSAGE_WINDOW):
        window = entries[start : start + _PASSAGE_WINDOW]
        vectors = model.embed_multi([e.text for e in window])
        store.upsert(
            [
                Passage(
                    id=f"passage-{uuid.uuid4()}",
                    text=entry.text,
                    user_id=state.user_id,
                    agent_id=state.id,
                    created_at=entry.created_at or now,
                    metadata=entry.metadata,
                    embedding=vector,
                )
                for entry, vector in zip(window, vectors, strict=True)
            ]
        )
    if entries:
        store.flush()
    return len(entries)

