"""MCP servers attached to agents: stored per agent, started whenever the agent runs, attached and detached
mid-chat with /mcp, and shared by every agent of a process (the pool a server's turns use)."""

from __future__ import annotations

import json
import shlex
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from memgpt.agent.agentfile import ImportSettings, export_agent, export_text, import_agent_file
from memgpt.agent.agentfile_format import read_agent_file
from memgpt.agent.manager import delete_agent
from memgpt.config import EmbeddingSettings, load_config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import NotFoundError, UserError
from memgpt.mcp.pool import ServerPool, attach_server, attached_servers, detach_server
from memgpt.mcp.registry import ServerSpec, add_server, remove_server, replace_server
from memgpt.storage import Storage
from tests.agent_rig import new_agent
from tests.conftest import USER, cli
from tests.mcp_helpers import alive_with, fixture_command, stdio_spec, time_command, wait_until
from tests.scripted_llm import ScriptedLLM
from tests.test_cli_mcp import llm, ok  # noqa: F401 - the fixture, and a command that must succeed


@pytest.fixture
def tag() -> str:
    return "mcp-attach-" + uuid.uuid4().hex


@pytest.mark.usefixtures("metadata_url")
def test_links_belong_to_one_agent_and_go_with_it(storage: Storage, model: LocalMiniLM, home: Path) -> None:
    add_server(home, stdio_spec("time", time_command()))
    add_server(home, stdio_spec("fx", fixture_command()))
    first, second = new_agent(storage, model, "First"), new_agent(storage, model, "Second")
    assert attach_server(storage, home, first, "time")[1] is True
    assert attach_server(storage, home, first, " time ")[1] is False  # once, blanks ignored
    attach_server(storage, home, first, "fx")
    attach_server(storage, home, second, "fx")
    assert attached_servers(storage, first) == ["time", "fx"]
    assert attached_servers(storage, second) == ["fx"]

    with pytest.raises(NotFoundError, match=r"no MCP server named 'nope' \(servers: fx, time\)"):
        attach_server(storage, home, first, "nope")
    assert detach_server(storage, second, "fx") == "fx"
    with pytest.raises(UserError, match=r"MCP server 'fx' is not attached to agent 'Second' \(attached: none\)"):
        detach_server(storage, second, "fx")
    assert attached_servers(storage, first) == ["time", "fx"]

    delete_agent(storage, first)
    with storage.metadata.session() as s:
        assert s.execute(text("select count(*) from agent_mcp_servers")).scalar() == 0


def test_an_attached_server_comes_back_every_run(home: Path, llm: ScriptedLLM) -> None:  # noqa: F811
    ok("mcp", "add", "time", "--", *time_command(), home=home)
    attached = ok("run", "--agent", "Clock", "-m", "/mcp attach time", home=home).stdout
    assert (
        "Attached MCP server 'time' to agent 'Clock' (tools: time__get_current_time, time__convert_time); "
        "it is started whenever this agent runs"
    ) in attached
    assert not llm.requests

    llm.add({"tool": "time__get_current_time", "args": {"timezone": "Asia/Tokyo", "request_heartbeat": True}})
    llm.reply("It is evening in Tokyo.")
    out = ok("run", "--agent", "Clock", "-m", "time?", home=home).stdout  # no --mcp
    assert '⚡ [function] running time__get_current_time({"timezone": "Asia/Tokyo"})' in out
    assert "🤖 It is evening in Tokyo." in out
    assert {"time__get_current_time", "time__convert_time"} <= {t["function"]["name"] for t in llm.requests[0]["tools"]}
    envelope = json.loads([m for m in llm.requests[1]["messages"] if m["role"] == "tool"][-1]["content"])
    assert envelope["status"] == "OK" and json.loads(envelope["message"])["timezone"] == "Asia/Tokyo"

    listed = ok("run", "--agent", "Clock", "--mcp", "time", "-m", "/mcp", home=home).stdout
    assert "time (attached): 2 tools: time__get_current_time, time__convert_time" in listed

    detached = ok("run", "--agent", "Clock", "-m", "/mcp detach time", home=home).stdout
    assert "Detached MCP server 'time' from agent 'Clock'" in detached
    llm.reply("No clock here.")
    ok("run", "--agent", "Clock", "-m", "and now?", home=home)
    assert not any(t["function"]["name"].startswith("time__") for t in llm.requests[-1]["tools"])
    # Another agent never had it.
    llm.reply("Hello.")
    ok("run", "--agent", "Other", "-m", "hi", home=home)
    assert not any(t["function"]["name"].startswith("time__") for t in llm.requests[-1]["tools"])


def test_attach_and_detach_mid_chat_start_and_stop_the_server(home: Path, llm: ScriptedLLM, tag: str) -> None:  # noqa: F811
    ok("mcp", "add", "fx", "--", *fixture_command("--tag", tag), home=home)
    seen: dict[str, Any] = {}

    def answer(key: str, message: str) -> Any:
        def note(body: dict[str, Any]) -> dict[str, Any]:
            seen[key] = alive_with(tag)
            return {"tool": "send_message", "args": {"message": message}}

        return note

    llm.add(answer("attached", "one"), answer("detached", "two"))
    stdin = "/mcp attach fx\nfirst\n/mcp\n/mcp detach fx\nsecond\n/mcp\n"
    result = cli("run", "--agent", "Live", home=home, stdin=stdin)
    assert result.returncode == 0, result.stderr
    names = [{t["function"]["name"] for t in request["tools"]} for request in llm.requests]
    assert "fx__echo" in names[0] and not any(n.startswith("fx__") for n in names[1])
    assert len(seen["attached"]) == 1 and seen["detached"] == []  # stopped at once, while the chat goes on
    out = result.stdout
    assert "fx (attached): 15 tools: fx__echo, fx__add, " in out
    assert "No MCP servers. Attach one with /mcp attach NAME (see `memgpt mcp list`)." in out
    assert result.stderr == ""


def test_bad_mcp_commands_and_a_removed_server_cost_one_line(home: Path, llm: ScriptedLLM) -> None:  # noqa: F811
    ok("mcp", "add", "time", "--", *time_command(), home=home)
    stdin = "/mcp attach nope\n/mcp detach time\n/mcp frob\n/mcp attach time\n/mcp attach time\n"
    result = cli("run", "--agent", "Picky", home=home, stdin=stdin)
    # Each bad command is one line on stderr and the chat goes on; piped input that had errors exits 1.
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "error: no MCP server named 'nope' (servers: time); add it with `memgpt mcp add nope -- COMMAND`",
        "error: MCP server 'time' is not attached to agent 'Picky' (attached: none)",
        "error: use /mcp, /mcp attach NAME or /mcp detach NAME",
    ]
    assert "MCP server 'time' was already attached" in result.stdout

    ok("mcp", "remove", "time", home=home)
    llm.reply("Still here.")
    out = ok("run", "--agent", "Picky", "-m", "hi", home=home).stdout
    assert (
        "warning: MCP server 'time' is attached but no longer added (add it again with `memgpt mcp add time ...`, "
        "or detach it with /mcp detach time)"
    ) in out
    assert "🤖 Still here." in out
    assert "Detached MCP server 'time'" in ok("run", "--agent", "Picky", "-m", "/mcp detach time", home=home).stdout


def _call(tools: list[Any], name: str, **arguments: Any) -> str:
    tool = next(t for t in tools if t.name == name)
    return str(tool.call(None, {**arguments, "request_heartbeat": False}))


def test_the_pool_starts_a_server_once_for_all_and_restarts_it_when_changed(home: Path, tag: str) -> None:
    add_server(home, stdio_spec("fx", fixture_command("--tag", tag)))
    pool = ServerPool(home)
    try:
        results: list[tuple[list[Any], list[str]]] = []
        threads = [threading.Thread(target=lambda: results.append(pool.tools(["fx"]))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 4
        assert all(not warnings and "fx__echo" in {t.name for t in tools} for tools, warnings in results)
        assert len(alive_with(tag)) == 1
        first_pid = _call(results[0][0], "fx__pid")
        assert _call(results[3][0], "fx__pid") == first_pid  # one session, shared

        replace_server(home, stdio_spec("fx", fixture_command("--tag", tag), timeout_seconds=5))
        tools, warnings = pool.tools(["fx"])
        assert not warnings
        assert _call(tools, "fx__pid") != first_pid  # restarted with the new settings
        assert wait_until(lambda: len(alive_with(tag)) == 1)
    finally:
        pool.close()
    assert wait_until(lambda: alive_with(tag) == [])


def test_a_server_that_fails_to_start_is_tried_again_only_after_a_while(home: Path, tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    script = f"open({str(starts)!r}, 'a').write('x')"  # records each start, then exits without answering
    add_server(home, stdio_spec("flaky", [sys.executable, "-c", script], startup_timeout_seconds=10))
    now = [1000.0]
    pool = ServerPool(home, retry_seconds=30, clock=lambda: now[0])
    try:
        tools, warnings = pool.tools(["flaky"])
        assert tools == []
        assert warnings == ["MCP server 'flaky' is not available: exited or closed the connection before it answered"]
        now[0] += 10
        assert pool.tools(["flaky"])[1] == warnings  # the same reason, without starting it again
        assert starts.read_text() == "x"
        now[0] += 25
        assert pool.tools(["flaky"])[1] == warnings
        assert starts.read_text() == "xx"
    finally:
        pool.close()


@pytest.mark.usefixtures("metadata_url")
def test_an_agent_file_carries_its_mcp_servers_without_secrets_and_attaches_only_the_same_ones(
    storage: Storage, model: LocalMiniLM, home: Path
) -> None:
    """Decision: an export names the agent's MCP servers with their command or URL (Letta's ``mcp_servers``
    entries) and never a secret; an import attaches a server only when this home has one registered under
    that name running the same thing, and never registers one (a file must not make a machine run a
    command); each other server is one note saying what to do."""
    secret = "s-" + uuid.uuid4().hex
    add_server(home, stdio_spec("time", time_command(), env={"TOKEN": secret}))
    add_server(home, ServerSpec(name="web", url="http://127.0.0.1:9/mcp", headers={"Authorization": secret}))
    add_server(home, stdio_spec("gone", fixture_command()))
    state = new_agent(storage, model, "Sam")
    for name in ("web", "time", "gone"):
        attach_server(storage, home, state, name)
    remove_server(home, "gone")  # attached, no longer added: exported by name only

    document = export_agent(storage, state, chunk_size=250, home=home)
    text = export_text(document)
    assert secret not in text and "TOKEN" not in text and "Authorization" not in text
    assert document["memgpt"]["agents"]["agent-0"]["mcp_servers"] == ["web", "time", "gone"]
    entries = {e["server_name"]: e for e in document["mcp_servers"]}
    assert set(entries) == {"web", "time"} and {e["id"] for e in entries.values()} == {"mcp_server-0", "mcp_server-1"}
    assert (entries["web"]["server_type"], entries["web"]["server_url"]) == ("streamable_http", "http://127.0.0.1:9/mcp")
    stdio = entries["time"]["stdio_config"]
    assert entries["time"]["server_type"] == "stdio" and [stdio["command"], *stdio["args"]] == time_command()

    settings = ImportSettings(home, model, EmbeddingSettings(), llm_model="scripted", context_window=16_000)
    (same,) = import_agent_file(storage, read_agent_file(text, "sam.af"), user_id=USER, settings=settings)
    assert same.mcp_servers == ["web", "time"]
    assert attached_servers(storage, same.state) == ["web", "time"]
    assert [n for n in same.notes if "MCP" in n] == [
        "MCP server 'gone' is not attached: it is not added here (add it with `memgpt mcp add gone ...`, with its "
        "secrets, which files never carry; on a server its owner registers it), then attach it (/mcp attach gone)"
    ]

    # Another home's 'web' is another server: not attached. A server it lacks is named with its command.
    replace_server(home, ServerSpec(name="web", url="http://127.0.0.1:9/other"))
    remove_server(home, "time")
    (other,) = import_agent_file(storage, read_agent_file(text, "sam.af"), user_id=USER, settings=settings)
    assert other.mcp_servers == [] and attached_servers(storage, other.state) == []
    notes = [n for n in other.notes if "MCP" in n]
    assert notes[0] == (
        "MCP server 'web' is not attached: the one added here under that name runs something else than the "
        "file's (http://127.0.0.1:9/mcp); attach it (/mcp attach web) if it is the same server"
    )
    added = f"add it with `memgpt mcp add time -- {shlex.join(time_command())}`, with its secrets"
    assert notes[1].startswith(f"MCP server 'time' is not attached: it is not added here ({added}")
    assert len(notes) == 3 and "'gone'" in notes[2]
    assert storage.mcp_servers.names(other.state.id) == []


def test_export_and_import_commands_carry_the_servers(storage: Storage, model: LocalMiniLM, home: Path) -> None:
    secret = "s-" + uuid.uuid4().hex
    add_server(home, stdio_spec("time", time_command(), env={"TOKEN": secret}))
    attach_server(storage, home, new_agent(storage, model, "Sam", load_config(home).user_id), "time")
    target = home / "sam.af"
    exported = ok("export", "agent", "Sam", "-o", str(target), home=home)
    assert "MCP servers (commands and URLs, without their secrets): time" in exported.stdout
    document = json.loads(target.read_text(encoding="utf-8"))
    assert [e["server_name"] for e in document["mcp_servers"]] == ["time"] and secret not in target.read_text()
    (result,) = json.loads(ok("import", str(target), "--json", home=home).stdout)
    assert result["name"] == "Sam_2" and result["mcp_servers_attached"] == ["time"]
    assert storage.mcp_servers.names(result["id"]) == ["time"]


@pytest.mark.usefixtures("metadata_url")
def test_a_letta_file_links_servers_through_its_mcp_tools(storage: Storage, model: LocalMiniLM, home: Path) -> None:
    """Letta attaches an MCP server's tools (tool_type external_mcp, tagged mcp:SERVER), not the server."""
    add_server(home, stdio_spec("time", time_command()))
    add_server(home, stdio_spec("fx", fixture_command()))
    command = time_command()
    letta = {
        "agents": [{"id": "agent-0", "name": "letta", "tool_ids": ["tool-0", "tool-1"], "block_ids": []}],
        "tools": [
            {"id": "tool-0", "name": "send_message", "tool_type": "letta_core"},
            {"id": "tool-1", "name": "get_current_time", "tool_type": "external_mcp", "tags": ["mcp:time"]},
        ],
        "mcp_servers": [
            {
                "id": "mcp_server-0",
                "server_type": "stdio",
                "server_name": "time",
                "stdio_config": {"command": command[0], "args": command[1:]},
            },
            {"id": "mcp_server-1", "server_type": "stdio", "server_name": "fx", "stdio_config": None},
        ],
    }
    settings = ImportSettings(home, model, EmbeddingSettings(), llm_model="scripted", context_window=16_000)
    (result,) = import_agent_file(storage, read_agent_file(json.dumps(letta), "l.af"), user_id=USER, settings=settings)
    assert result.mcp_servers == ["time"]  # fx: in the file, but none of this agent's tools come from it
    assert result.tools_without_equivalent == [] and "get_current_time" not in result.tools_mapped
    assert not [n for n in result.notes if "MCP" in n]
