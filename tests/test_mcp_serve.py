"""`memgpt mcp serve`: an agent's memory as MCP tools, driven by the SDK's own client over stdio (a real
`memgpt mcp serve` process) and over HTTP (mounted in a real server, and standalone) with API keys; what
the client stores is what the agent's own tools then find, and a block edit is in the agent's next prompt."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import mcp
import pytest
from letta_client import Letta
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from memgpt.config import load_config, save_config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.memory.archival import ArchivalMemory
from memgpt.server.state import BAD_KEY, MISSING_KEY
from memgpt.storage import Storage
from memgpt.storage.turns import new_owner
from tests import web
from tests.agent_rig import Rig, new_agent, tool_results
from tests.conftest import DATA, USER, run_cli
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, free_port, use_scripted_llm

TOOLS = [
    "archival_memory_search",
    "conversation_search",
    "conversation_search_date",
    "core_memory_read",
    "list_sources",
    "search_source",
    "archival_memory_insert",
    "core_memory_append",
    "core_memory_replace",
]


class Session:
    """One MCP client session; ``call`` gives (text, is_error)."""

    def __init__(self, client: mcp.Client) -> None:
        self.client = client

    async def call(self, tool: str, **arguments: Any) -> tuple[str, bool]:
        result = await self.client.call_tool(tool, arguments)
        text = "\n".join(getattr(block, "text", "") for block in result.content)
        return text, bool(result.is_error)

    async def ok(self, tool: str, **arguments: Any) -> str:
        text, failed = await self.call(tool, **arguments)
        assert not failed, text
        return text

    async def refused(self, tool: str, **arguments: Any) -> str:
        text, failed = await self.call(tool, **arguments)
        assert failed, text
        return text


@asynccontextmanager
async def stdio(home: Path, *args: str) -> AsyncIterator[Session]:
    """A real `memgpt mcp serve` process, started the way an MCP client starts it."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "memgpt", "mcp", "serve", *args],
        env={**os.environ, "MEMGPT_HOME": str(home)},
    )
    async with mcp.Client(stdio_client(params)) as client:
        yield Session(client)


@asynccontextmanager
async def http(url: str, key: str) -> AsyncIterator[Session]:
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    transport = streamable_http_client(url, http_client=client)
    async with mcp.Client(transport) as client:
        yield Session(client)


def leaves(group: BaseExceptionGroup[MCPError]) -> list[MCPError]:
    return [
        e for inner in group.exceptions for e in (leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    ]


def _wait_for_port(process: subprocess.Popen[Any], port: int) -> None:
    """Until ``memgpt mcp serve --transport http`` (``process``) takes connections on ``port``."""
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "the MCP server did not start"
            time.sleep(0.1)


def test_stdio_reaches_the_memory_the_agent_itself_uses(
    home: Path, storage: Storage, model: LocalMiniLM, llm: ScriptedLLM
) -> None:
    owner = load_config(home).user_id
    new_agent(storage, model, "Sam", owner)
    for args in (
        ("load", "directory", "--name", "notes", "--input-files", str(DATA / "philosophical_question.txt")),
        ("attach", "--agent", "Sam", "--data-source", "notes"),
    ):
        assert run_cli(*args, home=home).returncode == 0

    async def use() -> None:
        async with stdio(home, "--agent", "Sam") as session:
            assert [t.name for t in (await session.client.list_tools()).tools] == TOOLS
            assert await session.ok("archival_memory_insert", content="The user's cat is called Miso.") == (
                "Stored in archival memory (1 passage)."
            )
            long_text = await session.refused("archival_memory_insert", content="Miso the cat. " * 50_000)
            assert "content: 0.7 MB is more than one insert takes (0.5 MB, server.max_passage_mb" in long_text
            found = await session.ok("archival_memory_search", query="What is the cat's name?")
            assert found.startswith("Showing ") and "The user's cat is called Miso." in found
            appended = await session.ok("core_memory_append", name="human", content="Has a cat named Miso.")
            assert appended.startswith("Updated the human block (")
            too_long = await session.refused("core_memory_append", name="human", content="x" * 3000)
            assert "edit refused: the human block would hold" in too_long and "Nothing was changed" in too_long
            missing = await session.refused("core_memory_replace", name="persona", old_content="nope", new_content="")
            assert "old_content was not found in the persona block" in missing
            core = await session.ok("core_memory_read")
            assert core.startswith("Core memory of agent 'Sam':") and "Has a cat named Miso." in core
            assert "xxx" not in core
            sources = await session.ok("list_sources")
            assert sources.startswith("notes: 1 documents, ")
            assert sources.endswith("(attached to the agent's archival memory)")
            passages = await session.ok("search_source", source="notes", query="who decided what success means?")
            assert passages.startswith("Showing ") and "[philosophical_question.txt]" in passages
            assert "no source named 'nope'" in await session.refused("search_source", source="nope", query="q")
            assert "limit must be between 1 and 20" in await session.refused(
                "search_source", source="notes", query="q", limit=500
            )
            # Arguments of the wrong type or missing: one line naming the argument, not pydantic's dump.
            schema = "; the tool's input schema lists its arguments"
            wrong = await session.refused("search_source", source="notes", query="q", limit="many")
            bad_int = "Input should be a valid integer, unable to parse string as an integer"
            assert wrong == f"search_source: argument 'limit': {bad_int}{schema}"
            no_query = await session.refused("search_source", source="notes")
            assert no_query == f"search_source: argument 'query': Field required{schema}"
            no_hits = await session.ok("conversation_search", query="cat")
            assert no_hits.startswith("No results found.")  # then how it ranks
            scoped = await session.ok("conversation_search", query="cat", start_date="2001-01-01", role="user")
            assert scoped == "No results found. Searched only user messages, only from 2001-01-01 to now."
            assert "role must be 'user' or 'assistant'" in await session.refused(
                "conversation_search", query="cat", role="system"
            )

            # It holds the Milvus Lite file while it runs: another memgpt process is told who and what to do.
            locked = await anyio.to_thread.run_sync(lambda: run_cli("search", "notes", "success", home=home))
            assert locked.returncode == 1
            assert locked.stderr.startswith("error: memgpt mcp serve (pid "), locked.stderr
            assert "the MCP server an MCP client such as Claude Desktop or Cursor started" in locked.stderr
            assert "quit the client" in locked.stderr and len(locked.stderr.strip().splitlines()) == 1

    anyio.run(use)

    # The agent's own tools find what the client stored, and its next prompt has the edited block.
    agent = Rig(storage, model, llm, user_id=owner).open("Sam")
    llm.add({"tool": "archival_memory_search", "args": {"query": "the cat's name", "request_heartbeat": True}})
    llm.reply("Your cat is Miso.")
    list(agent.send("What is my cat called?"))
    assert "Has a cat named Miso." in llm.requests[0]["messages"][0]["content"]
    assert "The user's cat is called Miso." in tool_results(llm.requests[1])[-1]["message"]


def test_stdio_serves_the_only_agent_or_asks_which(home: Path, storage: Storage, model: LocalMiniLM) -> None:
    owner = load_config(home).user_id

    async def use() -> None:
        async with stdio(home) as session:
            nothing = await session.refused("core_memory_read")
            assert "there are no agents yet: create one with `memgpt run`" in nothing
            new_agent(storage, model, "Alpha", owner)  # chosen at each call: agents made meanwhile count
            assert (await session.ok("core_memory_read")).startswith("Core memory of agent 'Alpha':")
            new_agent(storage, model, "Beta", owner)
            which = await session.refused("core_memory_read")
            assert "which agent? start `memgpt mcp serve` with --agent NAME (agents: Alpha, Beta)" in which
        # Another user's agents are never the home user's.
        new_agent(storage, model, "Stranger", "someone-else")
        async with stdio(home, "--agent", "Beta") as session:
            assert (await session.ok("core_memory_read")).startswith("Core memory of agent 'Beta':")
            # A turn holds Beta (a `memgpt server` on the same storage): an edit waits, then is refused.
            beta = storage.agents.get(owner, "Beta")
            assert beta is not None
            turn = new_owner()
            assert storage.turns.acquire(beta.id, turn, "run-elsewhere", 60)
            busy = await session.refused("core_memory_append", name="human", content="Likes tea.")
            assert "the agent is busy with a turn; try the edit again in a moment" in busy
            assert "Likes tea." not in storage.agents.blocks(beta.id)[0].value
            storage.turns.release(beta.id, turn)
            await session.ok("core_memory_append", name="human", content="Likes tea.")
            assert storage.turns.running_run(beta.id) is None  # the edit's own hold is gone

    anyio.run(use)
    wrong = run_cli("mcp", "serve", "--agent", "Stranger", home=home, stdin="")
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.strip() == "error: no agent named 'Stranger' (agents: Alpha, Beta)"
    assert "apply to --transport http" in run_cli("mcp", "serve", "--port", "9", home=home, stdin="").stderr


def test_http_on_the_server_api_keys_decide_the_user(
    live_server: LiveServer, model: LocalMiniLM, llm: ScriptedLLM
) -> None:
    storage = live_server.state.storage
    owner_key, alice_key = live_server.key(), live_server.key("alice")
    alice = live_server.users.by_name("alice")
    assert alice is not None
    sam = new_agent(storage, model, "Sam", live_server.state.owner.id)
    new_agent(storage, model, "Ally", alice.id)
    url = f"{live_server.url}/mcp"

    async def use() -> None:
        async with http(url, alice_key) as session:  # no ?agent=: her only agent
            assert [t.name for t in (await session.client.list_tools()).tools] == TOOLS
            await session.ok("archival_memory_insert", content="Alice drinks green tea every morning.")
            # A text over server.max_passage_mb is refused before it is embedded (~40 s for 0.7 MB), as on REST.
            started = time.monotonic()
            too_long = await session.refused("archival_memory_insert", content="Sentence about the harbour. " * 25_000)
            assert too_long == (
                "Error executing tool archival_memory_insert: content: 0.7 MB is more than one insert takes (0.5 MB, "
                "server.max_passage_mb in the server's config.toml); nothing was stored: send it in parts"
            )
            assert time.monotonic() - started < 10
            await session.ok("core_memory_append", name="human", content="Drinks green tea.")
            assert (await session.ok("core_memory_read")).startswith("Core memory of agent 'Ally':")
        for ref in (sam.id, "Sam"):  # the owner's agent does not exist for her, by id or by name
            async with http(f"{url}?agent={ref}", alice_key) as session:
                assert f"no agent named '{ref}' (agents: Ally)" in await session.refused("core_memory_read")
                assert f"no agent named '{ref}'" in await session.refused("archival_memory_search", query="tea")
        async with http(f"{url}?agent=Sam", owner_key) as session:
            assert await session.ok("archival_memory_search", query="green tea") == "No results found."
            assert "green tea" not in await session.ok("core_memory_read")

    anyio.run(use)
    for headers, detail in (({}, MISSING_KEY), ({"Authorization": "Bearer sk-wrong"}, BAD_KEY)):
        refused = web.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
        assert refused.status_code == 401 and refused.json() == {
            "detail": detail,  # as the REST API says it
            "jsonrpc": "2.0",  # and as a JSON-RPC error, which the mcp SDK shows
            "id": None,
            "error": {"code": -32001, "message": detail},
        }
        assert refused.headers["www-authenticate"] == "Bearer"

    async def bad_key() -> list[str]:  # the SDK's client says what was wrong, not "Server returned an error response"
        said: list[str] = []
        try:
            async with http(url, "sk-wrong"):
                pass
        except* MCPError as refused:  # (in the SDK's task groups' exception groups)
            said = [error.message for error in leaves(refused)]
        return said

    assert set(anyio.run(bad_key)) == {BAD_KEY}

    # The agent's own search finds the insert; the block edit is in its next prompt; recall then has the turn.
    ally = storage.agents.get(alice.id, "Ally")
    assert ally is not None
    found = ArchivalMemory(storage, model, agent_id=ally.id, user_id=alice.id)
    assert found.count() == 1  # the long text stored nothing
    assert "Alice drinks green tea every morning." in found.search("morning drink").render("results")
    agent = Rig(storage, model, llm, user_id=alice.id).open("Ally")
    llm.reply("Green tea, every morning.")
    list(agent.send("What do I drink in the mornings?"))
    assert "Drinks green tea." in llm.requests[0]["messages"][0]["content"]

    async def recall() -> None:
        async with http(url, alice_key) as session:
            said = await session.ok("conversation_search", query="drink mornings")
            assert "What do I drink in the mornings?" in said

    anyio.run(recall)


def test_http_a_body_over_the_limit_says_why_in_the_sdk(home: Path, model: LocalMiniLM) -> None:
    """A request body over server.max_upload_mb is refused with 413 before MCP sees it: the mcp SDK's client said
    "Server returned an error response"; it now shows the limit, which the body carries as a JSON-RPC error too (as a
    refused key's 401 does), whether the size is declared or found while the body is read."""
    config = load_config(home)
    config.server.max_upload_mb = 0.05
    save_config(config, home)
    server = LiveServer(home, load_config(home))
    try:
        key = server.key()
        new_agent(server.state.storage, model, "Sam", server.state.owner.id)
        url = f"{server.url}/mcp"
        limit = "request body is larger than the server's limit of 0.05 MB (server.max_upload_mb in the server's "
        limit += "config.toml)"

        async def insert() -> str:
            async with http(url, key) as session:
                await session.ok("core_memory_read")  # small requests go through
                with pytest.raises(MCPError) as refused:
                    await session.call("archival_memory_insert", content="The harbour. " * 5_000)  # 65 kB
                return refused.value.error.message

        assert anyio.run(insert) == limit
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "core_memory_read"}}
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
        big = json.dumps({**call, "padding": "x" * 60_000}).encode()

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is found while the body is read
            yield from (big[i : i + 10_000] for i in range(0, len(big), 10_000))

        for content in (big, chunked()):
            answer = web.post(url, content=content, headers={**headers, "Content-Type": "application/json"})
            assert (answer.status_code, answer.json()) == (
                413,
                {"detail": limit, "jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": limit}},
            )
    finally:
        server.stop()


def test_http_standalone(home: Path, storage: Storage, model: LocalMiniLM) -> None:
    owner = load_config(home).user_id
    storage.users.ensure(owner, "owner")
    _key_id, key = storage.users.create_key(owner)
    new_agent(storage, model, "Sam", owner)
    new_agent(storage, model, "Other", owner)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "memgpt", "mcp", "serve", "--transport", "http", "--port", str(port), "--agent", "Sam"],
        env={**os.environ, "MEMGPT_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        _wait_for_port(process, port)
        url = f"http://127.0.0.1:{port}/mcp"

        async def use() -> None:
            async with http(url, key) as session:  # --agent is the default when the URL names none
                assert (await session.ok("core_memory_read")).startswith("Core memory of agent 'Sam':")
            async with http(f"{url}?agent=Other", key) as session:
                assert (await session.ok("core_memory_read")).startswith("Core memory of agent 'Other':")

        anyio.run(use)
        assert web.post(url, json={}, headers={"Authorization": "Bearer sk-nope"}).status_code == 401
        assert web.get(f"http://127.0.0.1:{port}/v1/agents/").status_code == 404  # only /mcp is served
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert f"memgpt MCP server on http://127.0.0.1:{port}/mcp" in out


def test_http_standalone_stops_in_bounded_time_while_an_insert_is_embedding(
    home: Path, storage: Storage, model: LocalMiniLM
) -> None:
    """SIGTERM to `memgpt mcp serve --transport http` while an insert is being split and embedded: it waited for the
    insert without limit (minutes); now the insert ends at once, telling the client nothing was stored, and the
    server exits. server.shutdown_seconds, uvicorn's cut of what still runs, is longer than the test waits: only the
    insert's own check can end it."""
    config = load_config(home)
    config.server.max_passage_mb = 2  # let in a text that takes minutes to embed
    config.server.shutdown_seconds = 600
    save_config(config, home)
    owner = config.user_id
    storage.users.ensure(owner, "owner")
    _key_id, key = storage.users.create_key(owner)
    sam = new_agent(storage, model, "Sam", owner)
    port = free_port()
    log = home / "mcp-serve.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "memgpt", "mcp", "serve", "--transport", "http", "--port", str(port)],
            env={**os.environ, "MEMGPT_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    text = " ".join(f"Sentence {i} about the harbour and the weather." for i in range(30_000))  # 1.5 MB
    answers: list[tuple[str, bool]] = []

    def model_loaded() -> bool:  # the process loads the embedding model at its first insert, the request in hand
        return "onnxruntime" in Path(f"/proc/{process.pid}/maps").read_text()

    try:
        _wait_for_port(process, port)
        assert not model_loaded()

        async def insert() -> None:
            async with http(f"http://127.0.0.1:{port}/mcp", key) as session:
                answers.append(await session.call("archival_memory_insert", content=text))

        sending = threading.Thread(target=lambda: anyio.run(insert), daemon=True)
        sending.start()
        deadline = time.monotonic() + 120
        while not model_loaded():
            assert sending.is_alive() and time.monotonic() < deadline, (answers, log.read_text()[-2000:])
            time.sleep(0.05)
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"memgpt mcp serve did not exit within 40 s of SIGTERM:\n{log.read_text()[-2000:]}")
        took = time.monotonic() - stopped
    finally:
        if process.poll() is None:
            process.kill()
    sending.join(timeout=10)
    said = log.read_text(errors="replace")
    print(f"exited {took:.1f} s after SIGTERM; answered: {answers}")
    stopping = "the server is stopping: nothing was stored; send the text again when it is back"
    assert answers == [(f"Error executing tool archival_memory_insert: {stopping}", True)]
    assert "Traceback" not in said, said[-3000:]
    assert ArchivalMemory(storage, model, agent_id=sam.id, user_id=owner).count() == 0


def test_http_block_edits_wait_for_the_agents_turn_on_the_server(
    home: Path, model: LocalMiniLM, llm: ScriptedLLM
) -> None:
    """Mounted in `memgpt server`, a core memory edit waits for the agent's running turn (as the REST API's
    block edits do): neither the turn's own edit of the block nor the client's is lost."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        key = server.key()
        sam = new_agent(server.state.storage, model, "Sam", server.state.owner.id)
        note = {"name": "human", "content": "Loves sailing.", "request_heartbeat": False}
        llm.add({"tool": "core_memory_append", "args": note, "content": "Note it.", "delay": 1.5})
        letta = Letta(base_url=server.url, api_key=key, max_retries=0)
        sender = threading.Thread(target=letta.agents.messages.create, args=(sam.id,), kwargs={"input": "I sail"})
        sender.start()
        while not llm.requests:
            time.sleep(0.02)

        async def edit() -> None:
            async with http(f"{server.url}/mcp?agent=Sam", key) as session:
                await session.ok("core_memory_append", name="human", content="Drinks tea.")

        anyio.run(edit)
        assert server.state.storage.turns.running_run(sam.id) is None  # it waited for the turn to end
        sender.join(30)
        human = {b.label: b.value for b in server.state.storage.agents.blocks(sam.id)}["human"]
        assert human.endswith("Loves sailing.\nDrinks tea.")
    finally:
        server.stop()


def test_a_failure_of_ours_is_told_in_full_over_stdio_and_by_its_public_line_over_http(
    storage: Storage, model: LocalMiniLM
) -> None:
    """An embedding endpoint's failure names its host: the home's own user (stdio) is told it, an API key's holder
    (HTTP, ``public_errors``) only the class's public line, as REST tells it; a UserError is told in full to both."""
    from memgpt.errors import EmbeddingError
    from memgpt.mcp.serve import Caller, memory_server

    new_agent(storage, model, "Sam")

    def broken() -> LocalMiniLM:
        raise EmbeddingError("http://10.1.2.3:8080/embed refused: connection refused")

    async def said(public: bool) -> tuple[str, str]:
        caller = Caller(USER, None, "name one")
        server = memory_server(storage, broken, lambda _ctx: caller, max_insert_mb=0.5, public_errors=public)
        async with mcp.Client(server) as client:
            session = Session(client)
            failed = await session.refused("archival_memory_search", query="tea")
            wrong = await session.refused("search_source", source="docs", query="tea", limit=99)
            return failed, wrong

    local, local_wrong = anyio.run(said, False)
    remote, remote_wrong = anyio.run(said, True)
    assert "10.1.2.3" in local
    assert "10.1.2.3" not in remote and EmbeddingError.public is not None and EmbeddingError.public in remote
    assert local_wrong == remote_wrong and "limit must be between 1 and 20" in remote_wrong
