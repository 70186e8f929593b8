"""`memgpt mcp add|list|remove` and `memgpt run --mcp` through the real executable, with real MCP servers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli
from tests.mcp_helpers import API_KEY, alive_with, fixture_command, http_fixture, time_command, wait_until
from tests.scripted_llm import ScriptedLLM

TOKEN = "tok-" + uuid.uuid4().hex  # an environment "secret"


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLM]:
    server = ScriptedLLM()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    yield server
    server.close()


def ok(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    result = cli(*args, home=home)
    assert result.returncode == 0, result.stderr
    return result


def refused(*args: str, home: Path) -> str:
    """The one-line error of a command that must fail."""
    result = cli(*args, home=home)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_the_cli_imports_the_sdk_only_when_a_server_is_used() -> None:
    script = "import sys\nfrom memgpt.cli import app\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'mcp'))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_add_list_remove_keep_secrets_private(home: Path) -> None:
    tag = "cli-" + uuid.uuid4().hex
    with http_fixture() as (url, _process):
        ok("mcp", "add", "fx", "--env", f"FIXTURE_TOKEN={TOKEN}", "--", *fixture_command("--tag", tag), home=home)
        ok("mcp", "add", "time", "--timeout", "20", "--", *time_command(), home=home)
        ok("mcp", "add", "web", "--url", url, "--header", f"X-Api-Key={API_KEY}", home=home)
        ok("mcp", "add", "nokey", "--url", url, home=home)
        ok("mcp", "add", "broken", "--", "no-such-mcp-server-anywhere", "--flag", home=home)
        path = home / "mcp.toml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert TOKEN in path.read_text() and API_KEY in path.read_text()

        listed = ok("mcp", "list", home=home)
        as_json = ok("mcp", "list", "--json", home=home)
    for output in (listed, as_json):
        assert TOKEN not in output.stdout + output.stderr and API_KEY not in output.stdout + output.stderr
    text = listed.stdout
    assert "fx (stdio) " in text and "(env: FIXTURE_TOKEN=***)" in text
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "fx__look_up_item A tool whose name OpenAI would not accept as it is." in lines
    assert "time__get_current_time Get current time in a specific timezone" in lines
    assert f"web (http) {url} (headers: X-Api-Key: ***)" in text and "  web__echo " in text
    assert f"  error: {url} answered HTTP 401 Unauthorized; check its --header values" in text
    assert "  error: cannot start 'no-such-mcp-server-anywhere': no such command or file" in text

    servers = {s["name"]: s for s in json.loads(as_json.stdout)}
    assert list(servers) == ["fx", "time", "web", "nokey", "broken"]
    assert servers["fx"]["env"] == {"FIXTURE_TOKEN": "***"} and servers["web"]["headers"] == {"X-Api-Key": "***"}
    assert servers["time"]["timeout_seconds"] == 20 and servers["time"]["error"] is None
    assert {t["exposed_as"] for t in servers["time"]["tools"]} == {"time__get_current_time", "time__convert_time"}
    assert servers["broken"]["tools"] == [] and servers["broken"]["error"].startswith("cannot start")
    assert wait_until(lambda: alive_with(tag) == [], 10)

    ok("mcp", "remove", "broken", home=home)
    assert "broken" not in path.read_text()
    assert refused("mcp", "remove", "broken", home=home) == (
        "error: no MCP server named 'broken' (servers: fx, nokey, time, web)"
    )


def test_bad_input_is_one_line_and_changes_nothing(home: Path) -> None:
    ok("mcp", "add", "time", "--", *time_command(), home=home)
    before = (home / "mcp.toml").read_text()
    cases = {
        ("mcp", "add", "time", "--", "other"): "an MCP server named 'time' exists",
        ("mcp", "add", "two__parts", "--", "x"): "a server name must be",
        ("mcp", "add", "x"): "give the command that starts the server (after --) or its --url",
        ("mcp", "add", "x", "--url", "http://h/mcp", "--", "cmd"): "give a command or a URL, not both",
        ("mcp", "add", "x", "--url", "ftp://h/mcp"): "the URL must start with http:// or https://",
        ("mcp", "add", "x", "--env", "NOVALUE", "--", "cmd"): "--env takes KEY=VALUE",
        ("mcp", "add", "x", "--header", "X-Key=v", "--", "cmd"): "--header applies to --url",
        ("mcp", "add", "x", "--url", "http://h/mcp", "--header", "Bad Name=v"): "is not an HTTP header name",
        ("mcp", "add", "x", "--timeout", "0", "--", "cmd"): "timeout_seconds: Input should be greater than 0",
    }
    for args, expected in cases.items():
        assert expected in refused(*args, home=home), args
    assert (home / "mcp.toml").read_text() == before

    (home / "mcp.toml").write_text('[servers.time]\ncommand = ""\n')
    assert refused("mcp", "list", home=home).endswith(
        "servers.time: give the command that starts the server (after --) or its --url; fix it or remove the server"
    )
    (home / "mcp.toml").write_text("[servers.time\n")
    assert "is not valid TOML" in refused("mcp", "list", home=home)


def test_run_with_the_time_server(home: Path, llm: ScriptedLLM) -> None:
    ok("mcp", "add", "time", "--", *time_command(), home=home)
    ok("mcp", "add", "broken", "--", "no-such-mcp-server-anywhere", home=home)
    ok("mcp", "add", "slow", "--startup-timeout", "1", "--", *fixture_command("--start", "hang"), home=home)
    llm.add(
        {
            "tool": "time__get_current_time",
            "args": {"timezone": "Asia/Tokyo", "request_heartbeat": True},
            "content": "The user wants the time in Tokyo.",
        }
    )
    llm.reply("It is evening in Tokyo.")
    result = ok(
        "run", "--agent", "Clock", "--mcp", "time", "--mcp", "broken", "--mcp", "slow", "-m", "time?", home=home
    )
    out = result.stdout
    assert "warning: MCP server 'broken' is not available: cannot start 'no-such-mcp-server-anywhere'" in out
    assert "warning: MCP server 'slow' is not available: did not answer within 1 s" in out
    assert result.stderr == ""
    assert '⚡ [function] running time__get_current_time({"timezone": "Asia/Tokyo"})' in out
    assert "🤖 It is evening in Tokyo." in out
    names = {t["function"]["name"] for t in llm.requests[0]["tools"]}
    assert {"time__get_current_time", "time__convert_time", "send_message"} <= names
    tool_message = [m for m in llm.requests[1]["messages"] if m["role"] == "tool"][-1]
    envelope = json.loads(tool_message["content"])
    assert envelope["status"] == "OK" and json.loads(envelope["message"])["timezone"] == "Asia/Tokyo"

    assert refused("run", "--agent", "Clock", "--mcp", "nope", "-m", "hi", home=home) == (
        "error: no MCP server named 'nope' (servers: broken, slow, time); add it with `memgpt mcp add nope -- COMMAND`"
    )
    # Without --mcp the agent has no MCP tools.
    llm.reply("No clock here.")
    ok("run", "--agent", "Clock", "-m", "and now?", home=home)
    assert not any(t["function"]["name"].startswith("time__") for t in llm.requests[-1]["tools"])


def test_run_stops_its_servers_when_it_ends_or_is_killed(home: Path, llm: ScriptedLLM) -> None:
    tag = "cli-run-" + uuid.uuid4().hex
    ok("mcp", "add", "fx", "--", *fixture_command("--tag", tag), home=home)
    seen: dict[str, Any] = {}

    def note_running_server(body: dict[str, Any]) -> dict[str, Any]:
        seen["alive"] = alive_with(tag)
        return {"calls": [("fx__chatter", {}), ("fx__crash", {})]}

    llm.add(note_running_server)
    llm.add({"tool": "fx__echo", "args": {"text": "back again", "request_heartbeat": True}})
    llm.reply("The server crashed once and came back.")
    result = ok("run", "--agent", "Sturdy", "--mcp", "fx", "-m", "crash it", home=home)
    assert len(seen["alive"]) == 1
    assert "⚡ [function] fx__crash failed: Error: MCP server 'fx' closed the connection during crash" in result.stdout
    assert "🤖 The server crashed once and came back." in result.stdout
    assert result.stderr == ""  # neither the server's stderr nor the SDK's log of its stray output
    assert json.loads([m for m in llm.requests[2]["messages"] if m["role"] == "tool"][-1]["content"])["status"] == "OK"
    assert alive_with(tag) == []

    # Killed while the LLM is thinking: the server sees its stdin close and exits too.
    llm.add({"delay": 60, "tool": "send_message", "args": {"message": "never delivered"}})
    env = {**os.environ, "MEMGPT_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memgpt", "run", "--agent", "Sturdy", "--mcp", "fx", "-m", "wait"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: len(llm.requests) == 4, 120)
        assert len(alive_with(tag)) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert wait_until(lambda: alive_with(tag) == [], 15)
