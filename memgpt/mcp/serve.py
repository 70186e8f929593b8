"""memgpt's memory as an MCP server: an agent's archival, recall and core memory and its user's data
sources, as tools for MCP clients (Claude Desktop, Cursor, Codex, Open WebUI...).

The tools are thin: each finds the agent of the user asking, then calls what the agent's own tools
call (``ArchivalMemory``, ``RecallMemory``, ``CoreMemory`` edits through ``memory.core.edit_stored``,
``data.sources``), so filters, limits and isolation are those of a chat and of the REST API. Who asks
is decided outside: over stdio the home's own user, over HTTP the user of the request's API key
(``memgpt.server.routes.mcp_memory``). Like client.py, this module imports the ``mcp`` SDK: import it
lazily.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError as MCPToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import ValidationError

from memgpt import __version__
from memgpt.agent.manager import AgentMemory, get_agent, open_memory
from memgpt.agent.tools import parse_docstring
from memgpt.data.sources import get_source
from memgpt.data.sources import list_sources as sources_of
from memgpt.data.sources import search_source as search_in
from memgpt.embeddings.base import EmbeddingModel
from memgpt.errors import MemGPTError, NotFoundError, UnavailableError, UserError, public_message
from memgpt.memory.archival import over_insert_limit
from memgpt.memory.core import CoreMemory, edit_stored
from memgpt.storage import Storage
from memgpt.types import AgentState, Block

logger = logging.getLogger(__name__)
NAME = "memgpt"
INSTRUCTIONS = (
    "Long-term memory of a MemGPT agent, shared with the agent itself. Search archival memory for facts and "
    "documents, conversation_search for what was said before; save what should be remembered with "
    "archival_memory_insert; core memory blocks are always in the agent's prompt: keep them short."
)
MAX_SOURCE_HITS = 20
LEASE_SECONDS = 30.0  # an edit's hold on the agent; a process that dies holding it is taken over after this
BUSY_WAIT = 5.0  # how long an edit waits for the agent's running turn
Guard = Callable[[str], AbstractContextManager[None]]  # holds an agent (by id) while its blocks are edited


@dataclass(frozen=True)
class Caller:
    """Who calls a tool: the user, the agent asked for (name or id; None: the user's only agent), and
    how to ask for one, said when the user has several."""

    user_id: str
    agent: str | None
    how_to_choose: str


def choose_agent(storage: Storage, caller: Caller) -> AgentState:
    """The caller's agent: the one asked for, else their only one."""
    if caller.agent:
        return get_agent(storage, caller.user_id, caller.agent)
    names = sorted(storage.agents.names(caller.user_id))
    if not names:
        raise NotFoundError("there are no agents yet: create one with `memgpt run` (or the REST API)")
    if len(names) > 1:
        raise UserError(f"which agent? {caller.how_to_choose} (agents: {', '.join(names)})")
    state = storage.agents.get(caller.user_id, names[0])
    if state is None:
        raise NotFoundError(f"agent {names[0]!r} was deleted meanwhile")
    return state


@contextmanager
def _as_tool_errors(public: bool) -> Iterator[None]:
    """Our one-line errors become the tool's error result (the client's model reads them). With ``public`` (served
    over HTTP, to an API key's holder) a failure of ours is told by its public line and its detail is logged; over
    stdio the caller is the home's own user, who is told all of it."""
    try:
        yield
    except MemGPTError as exc:
        if not public or isinstance(exc, UserError):
            raise MCPToolError(str(exc)) from exc
        logger.warning("MCP tool failed: %s: %s", type(exc).__name__, exc)
        raise MCPToolError(public_message(exc)) from exc


@contextmanager
def lease_guard(storage: Storage, agent_id: str, *, wait: float = BUSY_WAIT) -> Iterator[None]:
    """Hold the agent's turn lease (the one `memgpt server` turns take, in SQL) for a block edit, so that a
    turn running elsewhere on the same storage neither overwrites the edit nor is overwritten by it."""
    with storage.turns.holding(
        agent_id, LEASE_SECONDS, wait, busy="the agent is busy with a turn; try the edit again in a moment"
    ):
        yield


def _stop_when(stopping: threading.Event | None) -> Callable[[], None]:
    """An insert's check: once ``stopping`` is set it ends, before anything is written."""

    def check() -> None:
        if stopping is not None and stopping.is_set():
            raise UnavailableError("the server is stopping: nothing was stored; send the text again when it is back")

    return check


def _describe_block(block: Block, verb: str) -> str:
    return f"{verb} the {block.label} block ({len(block.value)}/{block.limit} characters):\n{block.value}"


class _Memory:
    """What the tools reach: one storage, the embedding model (loaded on first use) and the caller."""

    def __init__(
        self, storage: Storage, embedding: Callable[[], EmbeddingModel], caller: Callable[[Context], Caller]
    ) -> None:
        self.storage = storage
        self._embedding = embedding
        self._model: EmbeddingModel | None = None
        self._caller = caller
        self._lock = threading.Lock()

    def model(self) -> EmbeddingModel:
        with self._lock:
            if self._model is None:
                self._model = self._embedding()
            return self._model

    def agent(self, ctx: Context) -> AgentState:
        return choose_agent(self.storage, self._caller(ctx))

    def open(self, ctx: Context) -> AgentMemory:
        return open_memory(self.storage, self.agent(ctx), self.model())


def memory_server(
    storage: Storage,
    embedding: Callable[[], EmbeddingModel],
    caller: Callable[[Context], Caller],
    *,
    max_insert_mb: float,
    guard: Guard | None = None,
    stopping: threading.Event | None = None,
    public_errors: bool = False,
) -> MCPServer:
    """The MCP server with the memory tools; ``caller`` says who asks for each call. An insert takes at most
    ``max_insert_mb`` of text (``server.max_passage_mb``, as the REST API's) and, once ``stopping`` is set (a server
    told to stop), ends at once (it checks while splitting and between embedding batches) with nothing stored. Block
    edits wait for the agent's running turn under ``guard`` (default: its lease in ``storage``; a server passes its
    own turns' hold) and are refused after a few seconds, as the REST API's are. With ``public_errors`` (served over
    HTTP) a failure that is not the caller's is told by its public line only (``public_message``), as REST's are."""
    memory = _Memory(storage, embedding, caller)
    hold: Guard = guard or (lambda agent_id: lease_guard(storage, agent_id))

    def edit(ctx: Context, change: Callable[[CoreMemory], Block]) -> str:
        with _as_tool_errors(public_errors):
            agent_id = memory.agent(ctx).id
            with hold(agent_id):
                return _describe_block(edit_stored(storage, agent_id, change), "Updated")

    def archival_memory_search(query: str, ctx: Context, page: int = 0) -> str:
        """Search the agent's archival memory (its saved notes and attached data sources) by meaning and by
        shared words, best first; the header says how many of the best-ranked passages share words with the
        query. Results come 5 to a page; ask for page 1, 2... for more.

        Args:
            query: What to look for, as a phrase or question.
            page: Which page of results to show; 0 is the first.
        """
        with _as_tool_errors(public_errors):
            return memory.open(ctx).archival.search(query, page).render("results")

    def archival_memory_insert(content: str, ctx: Context) -> str:
        """Save text in the agent's archival memory, where it (and you) can find it later by meaning.
        Phrase it so that it can be found: say who and what it is about.

        Args:
            content: The text to remember.
        """
        with _as_tool_errors(public_errors):
            problem = over_insert_limit(content, max_insert_mb, "content")
            if problem is not None:  # refused before any work: embedding it would outlast the client's timeout
                raise UserError(f"{problem}; nothing was stored: send it in parts")
            stored = len(memory.open(ctx).archival.add(content, check=_stop_when(stopping)))
            return f"Stored in archival memory ({stored} passage{'s' if stored != 1 else ''})."

    def conversation_search(
        query: str, ctx: Context, page: int = 0, start_date: str = "", end_date: str = "", role: str = ""
    ) -> str:
        """Search everything said in the agent's conversations (recall memory), ranked by meaning and by shared
        words (any word form; common words ignored), best first; each match is shown with the messages just
        before and after it.

        Args:
            query: What to look for, as a question or as key words; a day such as "14 March" also matches
                messages of that day.
            page: Which page of results to show; 0 is the first.
            start_date: Only messages from this day on, formatted YYYY-MM-DD; empty for no limit.
            end_date: Only messages up to this day, formatted YYYY-MM-DD; empty for no limit.
            role: "user" for only what the user said, "assistant" for only what the agent said; empty for both.
        """
        with _as_tool_errors(public_errors):
            found = memory.open(ctx).recall.search(query, page, start_date=start_date, end_date=end_date, role=role)
            return found.render("results")

    def conversation_search_date(start_date: str, end_date: str, ctx: Context, page: int = 0) -> str:
        """List what was said in the agent's conversations between two dates, inclusive.

        Args:
            start_date: First day to include, formatted YYYY-MM-DD.
            end_date: Last day to include, formatted YYYY-MM-DD.
            page: Which page of results to show; 0 is the first.
        """
        with _as_tool_errors(public_errors):
            return memory.open(ctx).recall.search_dates(start_date, end_date, page).render("results")

    def core_memory_read(ctx: Context) -> str:
        """Show the agent's core memory: the blocks always in its prompt (such as persona and human), each
        with its size and character limit."""
        with _as_tool_errors(public_errors):
            state = memory.agent(ctx)
            return f"Core memory of agent {state.name!r}:\n" + CoreMemory(storage.agents.blocks(state.id)).render()

    def core_memory_append(name: str, content: str, ctx: Context) -> str:
        """Add a line to one of the agent's core memory blocks. Refused, changing nothing, when the block
        would exceed its character limit.

        Args:
            name: The block to add to (persona or human, or another block core_memory_read shows).
            content: The text to add.
        """
        return edit(ctx, lambda core: core.append(name, content))

    def core_memory_replace(name: str, old_content: str, new_content: str, ctx: Context) -> str:
        """Replace text in one of the agent's core memory blocks (an empty new_content deletes it). Refused,
        changing nothing, when the text is not there or the block would exceed its character limit.

        Args:
            name: The block to edit (persona or human, or another block core_memory_read shows).
            old_content: The exact text to replace.
            new_content: The text to put in its place.
        """
        return edit(ctx, lambda core: core.replace(name, old_content, new_content))

    def list_sources(ctx: Context) -> str:
        """List the data sources (loaded documents) of the agent's user, and which are attached to the
        agent's archival memory."""
        with _as_tool_errors(public_errors):
            state = memory.agent(ctx)
            attached = set(storage.attachments.source_ids(state.id))
            lines = [
                f"{s.name}: {s.documents} documents, {s.passages} passages"
                + (" (attached to the agent's archival memory)" if s.id in attached else "")
                for s in sources_of(storage, state.user_id)
            ]
            return "\n".join(lines) if lines else "No data sources yet (load some with `memgpt load directory`)."

    def search_source(source: str, query: str, ctx: Context, limit: int = 5) -> str:
        """Search one data source by meaning (attached or not) and show its best passages.

        Args:
            source: The name of the source (list_sources shows them).
            query: What to look for, as a phrase or question.
            limit: How many passages to show (1-20).
        """
        with _as_tool_errors(public_errors):
            if not 1 <= limit <= MAX_SOURCE_HITS:
                raise UserError(f"limit must be between 1 and {MAX_SOURCE_HITS}")
            state = memory.agent(ctx)
            found = get_source(storage, state.user_id, source)
            hits = search_in(storage, found, memory.model(), query, k=limit)
            if not hits:
                return f"No passages in {found.name!r} match."
            lines = [f"Showing {len(hits)} passages of {found.name!r}:"]
            for hit in hits:
                meta = hit.passage.metadata
                where = str(meta.get("file_name", "?")) + (f", page {meta['page']}" if meta.get("page") else "")
                lines.append(f"[{where}] {hit.passage.text}")
            return "\n".join(lines)

    reading = [
        archival_memory_search,
        conversation_search,
        conversation_search_date,
        core_memory_read,
        list_sources,
        search_source,
    ]
    tools = [_tool(f, read_only=True) for f in reading] + [
        _tool(archival_memory_insert, read_only=False),
        _tool(core_memory_append, read_only=False),
        _tool(core_memory_replace, read_only=False, destructive=True),  # it may delete text
    ]
    return MCPServer(NAME, version=__version__, instructions=INSTRUCTIONS, tools=tools, log_level="WARNING")


class _MemoryTool(Tool):
    """An SDK tool whose argument errors are one line naming the argument: the SDK passes on pydantic's
    multi-line dump with a link to its docs, which a client's model reads as noise."""

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        try:
            return await super().run(arguments, context, convert_result)
        except MCPToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise MCPToolError(argument_problem(self.name, exc.__cause__)) from exc.__cause__
            raise


def argument_problem(tool: str, exc: ValidationError) -> str:
    """The first thing wrong with a tool call's arguments, as one line naming the argument."""
    problems = exc.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "arguments"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{tool}: argument {where!r}: {message}{more}; the tool's input schema lists its arguments"


def _tool(function: Callable[..., str], *, read_only: bool, destructive: bool = False) -> Tool:
    """``function`` as an MCP tool described by its docstring: the text before ``Args:`` describes the
    tool, each argument's line describes the argument (as for the agent's own tools)."""
    description, arguments = parse_docstring(inspect.getdoc(function) or "")
    tool = _MemoryTool.from_function(
        function,
        description=description,
        annotations=ToolAnnotations(read_only_hint=read_only, destructive_hint=destructive, open_world_hint=False),
        structured_output=False,
    )
    for name, schema in tool.parameters.get("properties", {}).items():
        schema.pop("title", None)
        if name in arguments:
            schema["description"] = arguments[name]
    return tool


def http_endpoint(server: MCPServer) -> tuple[Any, Callable[[], AbstractAsyncContextManager[None]]]:
    """The server's streamable-HTTP endpoint as an ASGI app, and what must run around serving it.

    Stateless with JSON answers: every request stands alone, so any worker of a multi-process server
    answers it and each request is authenticated by itself. DNS-rebinding protection (a browser page
    reaching a loopback server) is left to the API key every request must carry."""
    server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    manager = server.session_manager
    return StreamableHTTPASGIApp(manager), manager.run


async def run_stdio(server: MCPServer) -> None:
    await server.run_stdio_async()
