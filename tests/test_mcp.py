"""Agents using tools from real MCP servers: the fixture server (stdio and streamable HTTP, built with
the SDK) and mcp-server-time from PyPI, with the scripted LLM checking what the model receives."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memgpt.agent.events import FunctionCall, FunctionResult
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import MCPServerError
from memgpt.mcp.client import MAX_RESULT_CHARS, MCPClients
from memgpt.mcp.registry import ServerSpec
from memgpt.mcp.tools import VALID_NAME, exposed_name, mcp_tools
from memgpt.storage import Storage
from tests.agent_rig import Rig, replies, tool_results
from tests.conftest import REPO
from tests.mcp_helpers import (
    API_KEY,
    alive_with,
    fixture_command,
    http_fixture,
    stdio_spec,
    time_command,
    wait_until,
)
from tests.scripted_llm import ScriptedLLM


@pytest.fixture
def rig(storage: Storage, model: LocalMiniLM, llm: ScriptedLLM) -> Iterator[Rig]:
    made = Rig(storage, model, llm)
    yield made
    made.close()


@pytest.fixture
def tag() -> str:
    return "mcp-test-" + uuid.uuid4().hex


@pytest.fixture
def fixture_clients(tag: str, tmp_path: Path) -> Iterator[MCPClients]:
    """The fixture server over stdio with a 3 s call timeout, started."""
    spec = stdio_spec("fx", fixture_command("--tag", tag), timeout_seconds=3)
    with MCPClients([spec], log_dir=tmp_path / "logs") as clients:
        assert clients.start() == {}
        yield clients


def _agent_with(rig: Rig, clients: MCPClients) -> Any:
    rig.create()
    tools, warnings = mcp_tools(clients, set())
    assert warnings == []
    return rig.open("tester", extra_tools=tools)


def _results(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tool messages of one request by the name of the function they answer."""
    names = {
        call["id"]: call["function"]["name"]
        for m in request["messages"]
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or []
    }
    return {names[m["tool_call_id"]]: json.loads(m["content"]) for m in request["messages"] if m["role"] == "tool"}


# -- names -------------------------------------------------------------------------------------
def test_exposed_names_follow_openai_rules_stay_unique_and_stable() -> None:
    taken: set[str] = {"send_message"}
    cases = [
        ("time", "get_current_time"),
        ("fx", "look.up/item"),
        ("fx", "look_up_item"),  # the same as the line above once '.' and '/' are replaced
        ("fx", "ünïcode tool"),
        ("github", "x" * 80),
        ("github", "x" * 81),
        ("a-very-long-server-name1", "another_rather_long_tool_name_that_goes_on"),
    ]
    names = []
    for server, tool in cases:
        name = exposed_name(server, tool, taken)
        taken.add(name)
        names.append(name)
    assert all(VALID_NAME.match(n) for n in names), names
    assert len(set(names)) == len(names)
    assert names[0] == "time__get_current_time"
    assert names[1] == "fx__look_up_item" and names[2].startswith("fx__look_up_item_")
    assert all(n.startswith(f"{server}__") for n, (server, _) in zip(names, cases, strict=True))
    assert exposed_name("github", "x" * 80, set()) == exposed_name("github", "x" * 80, set())


# -- the fixture server over stdio ---------------------------------------------------------------
def test_tools_reach_the_model_and_results_come_back(rig: Rig, llm: ScriptedLLM, fixture_clients: MCPClients) -> None:
    agent = _agent_with(rig, fixture_clients)
    llm.add(
        {
            "calls": [
                ("fx__echo", {"text": "hello there", "request_heartbeat": True}),
                ("fx__add", {"a": 2, "b": 40}),
                ("fx__structured_only", {}),
                ("fx__picture", {}),
                ("fx__look_up_item", {"item": "lamp"}),
                ("fx__long_text", {"chars": MAX_RESULT_CHARS + 500}),
            ],
            "content": "Let me use the fixture's tools.",
        }
    )
    llm.reply("Done.")
    events = list(agent.send("use your tools"))

    offered = {t["function"]["name"]: t["function"] for t in llm.requests[0]["tools"]}
    echo = offered["fx__echo"]
    assert echo["description"] == "Repeat the text back."
    assert echo["parameters"]["properties"]["text"]["type"] == "string"
    assert echo["parameters"]["properties"]["request_heartbeat"]["type"] == "boolean"
    assert echo["parameters"]["required"] == ["text", "request_heartbeat"]
    assert "fx__look_up_item" in offered and "send_message" in offered

    results = _results(llm.requests[1])
    assert {r["status"] for r in results.values()} == {"OK"}
    assert results["fx__echo"]["message"] == "hello there"
    assert json.loads(results["fx__add"]["message"]) == {"total": 42}
    assert json.loads(results["fx__structured_only"]["message"]) == {"answer": 42}
    assert results["fx__picture"]["message"] == "[image: image/png, 72 bytes, not shown]"
    assert results["fx__look_up_item"]["message"] == "found lamp"
    long = results["fx__long_text"]["message"]
    assert long.startswith("x" * MAX_RESULT_CHARS) and long.endswith("[... 500 more characters cut]")

    calls = [e for e in events if isinstance(e, FunctionCall)]
    assert [c.name for c in calls][:2] == ["fx__echo", "fx__add"]
    assert calls[0].arguments["text"] == "hello there"
    assert replies(events) == ["Done."]


def test_each_failure_costs_one_call_and_the_turn_goes_on(
    rig: Rig, llm: ScriptedLLM, fixture_clients: MCPClients, tag: str
) -> None:
    agent = _agent_with(rig, fixture_clients)
    first_pid = int(fixture_clients.call("fx", "pid", {}).text)
    llm.add(
        {
            "calls": [
                ("fx__fail", {"reason": "the lamp is broken"}),
                ("fx__add", {"a": "two", "b": 1}),
                ("fx__refuse", {}),
                ("fx__garble", {}),
                ("fx__chatter", {}),
                ("fx__hang", {"seconds": 30}),
                ("fx__echo", {"text": "still here"}),
                ("fx__nosuch", {}),
                ("fx__crash", {}),
            ]
        }
    )
    llm.add({"tool": "fx__pid", "args": {"request_heartbeat": True}})
    llm.reply("Some tools failed, but I am fine.")
    events = list(agent.send("try everything"))

    results = _results(llm.requests[1])
    failed = {name for name, r in results.items() if r["status"] == "Failed"}
    assert failed == {"fx__fail", "fx__add", "fx__refuse", "fx__garble", "fx__hang", "fx__nosuch", "fx__crash"}
    assert results["fx__fail"]["message"] == "Error: Error executing tool fail: the lamp is broken"
    assert "validation error" in results["fx__add"]["message"] and "a" in results["fx__add"]["message"]
    assert results["fx__refuse"]["message"] == "Error: MCP server 'fx' refused refuse: refusing on purpose"
    assert results["fx__garble"]["message"].startswith("Error: MCP server 'fx' sent a malformed answer to garble")
    assert results["fx__chatter"]["message"] == "answered after the chatter"
    assert results["fx__hang"]["message"] == "Error: MCP server 'fx' did not answer hang within 3 s"
    assert results["fx__echo"]["message"] == "still here"  # the session outlived the timeout
    assert results["fx__nosuch"]["message"].startswith("Error: there is no function named 'fx__nosuch'")
    assert "closed the connection during crash" in results["fx__crash"]["message"]

    # The crashed server was started again for the next call.
    restarted = _results(llm.requests[2])["fx__pid"]
    assert restarted["status"] == "OK" and int(restarted["message"]) != first_pid
    assert replies(events) == ["Some tools failed, but I am fine."]
    failures = [e for e in events if isinstance(e, FunctionResult) and not e.ok]
    assert len(failures) == 7
    assert all("\n" not in e.text for e in failures if e.name != "fx__add")  # the server's own text may wrap
    assert len(alive_with(tag)) == 1


def test_request_heartbeat_false_ends_the_turn_after_the_call(
    rig: Rig, llm: ScriptedLLM, fixture_clients: MCPClients
) -> None:
    agent = _agent_with(rig, fixture_clients)
    llm.add({"tool": "fx__echo", "args": {"text": "quiet", "request_heartbeat": False}})
    events = list(agent.send("echo quietly"))
    assert len(llm.requests) == 1
    assert [e.text for e in events if isinstance(e, FunctionResult)] == ["quiet"]
    llm.add({"tool": "fx__echo", "args": {"text": "loud", "request_heartbeat": True}})
    llm.reply("ok")
    list(agent.send("echo and go on"))
    assert _results(llm.requests[2])["fx__echo"]["message"] == "loud"


def test_servers_that_cannot_start_cost_one_line_each_and_leave_nothing_running(tag: str, tmp_path: Path) -> None:
    specs = [
        stdio_spec("good", fixture_command("--tag", tag)),
        stdio_spec("missing", ["no-such-mcp-server-anywhere"]),
        stdio_spec("exits", fixture_command("--tag", tag, "--start", "exit")),
        stdio_spec("hangs", fixture_command("--tag", tag + "-hang", "--start", "hang"), startup_timeout_seconds=2),
        ServerSpec(name="offline", url="http://127.0.0.1:9/mcp", startup_timeout_seconds=2),
    ]
    with MCPClients(specs, log_dir=tmp_path / "logs") as clients:
        failures = clients.start()
        assert set(failures) == {"missing", "exits", "hangs", "offline"}
        assert failures["missing"] == "cannot start 'no-such-mcp-server-anywhere': no such command or file"
        assert failures["exits"].startswith("exited or closed the connection before it answered; it said: ")
        assert "fixture: told to exit at start" in failures["exits"] and "mcp-exits.log" in failures["exits"]
        assert failures["hangs"] == "did not answer within 2 s"
        assert failures["offline"].startswith("cannot connect to http://127.0.0.1:9/mcp")
        assert all("\n" not in why for why in failures.values())
        assert clients.call("good", "echo", {"text": "works"}).text == "works"
        assert {t.server for t in clients.tools()} == {"good"}
        with pytest.raises(MCPServerError, match="MCP server 'exits' could not be started again: exited or closed"):
            clients.call("exits", "echo", {"text": "x"})
        assert alive_with(tag + "-hang") == []  # the one that hung was stopped at its timeout
    assert wait_until(lambda: alive_with(tag) == [], 10)


def test_closing_stops_the_stdio_servers_even_one_that_lingers(tag: str) -> None:
    specs = [stdio_spec("a", fixture_command("--tag", tag)), stdio_spec("b", fixture_command("--tag", tag, "--linger"))]
    clients = MCPClients(specs)
    assert clients.start() == {}
    assert len(alive_with(tag)) == 2
    clients.close()
    assert alive_with(tag) == []
    clients.close()  # twice is harmless


def test_a_process_that_forgets_to_close_still_stops_its_servers(tag: str) -> None:
    script = (
        "from memgpt.mcp.client import MCPClients\n"
        "from tests.mcp_helpers import fixture_command, stdio_spec\n"
        f"clients = MCPClients([stdio_spec('fx', fixture_command('--tag', {tag!r}, '--linger'))])\n"
        "assert clients.start() == {}\n"
        "print(clients.call('fx', 'pid', {}).text)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0
    assert alive_with(tag) == []  # stopped on the way out, not a minute later


def test_stderr_goes_to_the_log_file_not_the_terminal(
    tmp_path: Path, tag: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with MCPClients([stdio_spec("fx", fixture_command("--tag", tag))], log_dir=tmp_path / "logs") as clients:
        clients.start()
        clients.call("fx", "chatter", {})  # the SDK logs the stray line with a traceback
        clients.call("fx", "fail", {"reason": "logged by the server"})
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert "logged by the server" in (tmp_path / "logs" / "mcp-fx.log").read_text()


def test_environment_reaches_a_stdio_server(tag: str) -> None:
    spec = stdio_spec("fx", fixture_command("--tag", tag), env={"FIXTURE_TOKEN": "t0ken"})
    with MCPClients([spec]) as clients:
        assert clients.start() == {}
        assert clients.call("fx", "env", {"name": "FIXTURE_TOKEN"}).text == "t0ken"
        assert clients.call("fx", "env", {"name": "MEMGPT_HOME"}).text == "(unset)"  # only a safe default set


# -- mcp-server-time from PyPI ------------------------------------------------------------------
def test_the_time_server_from_pypi(rig: Rig, llm: ScriptedLLM, tmp_path: Path) -> None:
    with MCPClients([stdio_spec("time", time_command())], log_dir=tmp_path) as clients:
        assert clients.start() == {}
        agent = _agent_with(rig, clients)
        llm.add({"tool": "time__get_current_time", "args": {"timezone": "Europe/Oslo", "request_heartbeat": True}})
        llm.add({"tool": "time__get_current_time", "args": {"timezone": "Mars/Olympus", "request_heartbeat": True}})
        llm.reply("It is late in Oslo.")
        events = list(agent.send("What time is it in Oslo?"))

    convert = next(t["function"] for t in llm.requests[0]["tools"] if t["function"]["name"] == "time__convert_time")
    assert convert["description"] == "Convert time between timezones"
    assert convert["parameters"]["required"] == ["source_timezone", "time", "target_timezone", "request_heartbeat"]
    assert "IANA timezone name" in convert["parameters"]["properties"]["source_timezone"]["description"]

    oslo = tool_results(llm.requests[1])[-1]
    assert oslo["status"] == "OK"
    found = json.loads(oslo["message"])
    assert found["timezone"] == "Europe/Oslo" and set(found) == {"timezone", "datetime", "day_of_week", "is_dst"}
    mars = tool_results(llm.requests[2])[-1]
    assert mars["status"] == "Failed" and "Invalid timezone" in mars["message"]
    assert replies(events) == ["It is late in Oslo."]
    assert [e.name for e in events if isinstance(e, FunctionCall)] == ["time__get_current_time"] * 2


# -- the fixture server over streamable HTTP ------------------------------------------------------
def test_an_http_server_with_a_header_and_one_that_goes_away(rig: Rig, llm: ScriptedLLM) -> None:
    with http_fixture() as (url, process):
        good = ServerSpec(name="web", url=url, headers={"X-Api-Key": API_KEY}, timeout_seconds=3)
        keyless = ServerSpec(name="keyless", url=url)
        with MCPClients([good, keyless]) as clients:
            failures = clients.start()
            assert failures == {"keyless": f"{url} answered HTTP 401 Unauthorized; check its --header values"}
            agent = _agent_with(rig, clients)
            llm.add(
                {"calls": [("web__secret_header", {}), ("web__add", {"a": 1, "b": 2}), ("web__hang", {"seconds": 30})]}
            )

            def kill_the_server(_: dict[str, Any]) -> dict[str, Any]:
                process.kill()
                process.wait()
                return {"tool": "web__echo", "args": {"text": "anyone?"}}

            llm.add(kill_the_server)
            llm.add({"tool": "web__echo", "args": {"text": "still nobody?", "request_heartbeat": True}})
            llm.reply("The web server went away.")
            events = list(agent.send("use the web tools"))

    first = _results(llm.requests[1])
    assert first["web__secret_header"]["message"] == "has key"
    assert json.loads(first["web__add"]["message"]) == {"total": 3}
    assert first["web__hang"]["message"] == "Error: MCP server 'web' did not answer hang within 3 s"
    gone = _results(llm.requests[2])["web__echo"]
    assert gone["status"] == "Failed" and gone["message"].startswith("Error: MCP server 'web' closed the connection")
    again = _results(llm.requests[3])["web__echo"]
    assert again["message"].startswith(f"Error: MCP server 'web' could not be started again: cannot connect to {url}")
    assert replies(events) == ["The web server went away."]
