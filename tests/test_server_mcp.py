"""MCP servers on `memgpt server`: Letta's /v1/mcp-servers/ through the real letta-client (the owner registers,
every user lists and attaches), an agent's servers, and an agent opened for a turn with its servers' tools."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from letta_client import Letta, NotFoundError, PermissionDeniedError

from memgpt.agent.manager import create_agent
from memgpt.embeddings.local import LocalMiniLM
from memgpt.types import AgentState
from tests import web
from tests.agent_rig import tool_results
from tests.mcp_helpers import API_KEY, alive_with, fixture_command, http_fixture, time_command, wait_until
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, auth, use_scripted_llm

SECRET = "s-" + uuid.uuid4().hex  # an environment value that must never come back from the API


def client(server: LiveServer, key: str) -> Letta:
    return Letta(base_url=server.url, api_key=key, max_retries=0)


def agent_of(server: LiveServer, user_name: str | None, name: str, model: LocalMiniLM) -> AgentState:
    user = server.state.owner if user_name is None else server.users.by_name(user_name)
    assert user is not None
    return create_agent(
        server.state.storage,
        user_id=user.id,
        name=name,
        persona="sam_pov",
        human="basic",
        model="scripted",
        context_window=16_000,
        embedding=model.space,
    )


def test_the_owner_registers_servers_and_every_user_sees_them_without_secrets(live_server: LiveServer) -> None:
    owner = client(live_server, live_server.key())
    alice_key = live_server.key("alice")
    alice = client(live_server, alice_key)
    command = time_command()
    created = owner.mcp_servers.create(
        server_name="time",
        config={"mcp_server_type": "stdio", "command": command[0], "args": command[1:], "env": {"TOKEN": SECRET}},
    )
    assert created.server_name == "time" and created.id == "time" and created.env == {"TOKEN": "***"}
    with http_fixture() as (url, _process):
        owner.mcp_servers.create(
            server_name="web",
            config={
                "mcp_server_type": "streamable_http",
                "server_url": url,
                "auth_header": "X-Api-Key",
                "auth_token": API_KEY,
            },
        )
        # Alice may look, not register: a stdio server runs commands on the server's machine.
        with pytest.raises(PermissionDeniedError) as refused:
            alice.mcp_servers.create(server_name="mine", config={"command": "sh", "args": ["-c", "id"]})
        # The answer says what is refused (MCP servers), not the users-and-keys wording of /v1/admin.
        assert refused.value.body == {
            "detail": "only the server's owner (the home's own user) may register, change or remove MCP servers "
            "(they run commands or reach URLs from this machine)"
        }
        for method in ("PATCH", "DELETE"):
            other = web.request(method, f"{live_server.url}/v1/mcp-servers/time", json={}, headers=auth(alice_key))
            assert other.status_code == 403 and "MCP servers" in other.json()["detail"], other.text
        listed = web.get(f"{live_server.url}/v1/mcp-servers/", headers=auth(live_server.key("alice")))
        assert listed.status_code == 200
        assert SECRET not in listed.text and API_KEY not in listed.text
        shapes = {s["server_name"]: s for s in listed.json()}
        assert shapes["time"]["mcp_server_type"] == "stdio" and shapes["time"]["args"] == command[1:]
        assert shapes["web"]["mcp_server_type"] == "streamable_http" and shapes["web"]["server_url"] == url
        assert shapes["web"]["custom_headers"] == {"X-Api-Key": "***"}
        assert [s.server_name for s in alice.mcp_servers.list()] == ["time", "web"]

        # The header reached the HTTP server (it refuses requests without it), and tools come named as agents see them.
        web_tools = {t.name: t for t in alice.mcp_servers.tools.list("web")}
        assert "web__echo" in web_tools and web_tools["web__echo"].tool_type == "external_mcp"
        assert web_tools["web__echo"].json_schema["parameters"]["required"] == ["text", "request_heartbeat"]
    time_tools = [t.name for t in alice.mcp_servers.tools.list("time")]
    assert time_tools == ["time__get_current_time", "time__convert_time"]

    updated = owner.mcp_servers.update(
        "time", config={"command": command[0], "args": command[1:], "timeout_seconds": 9}
    )
    assert updated.env is None or updated.env == {}  # settings are replaced whole: the env went
    assert owner.mcp_servers.retrieve("time").timeout_seconds == 9  # type: ignore[attr-defined]
    owner.mcp_servers.delete("web")
    with pytest.raises(NotFoundError):
        alice.mcp_servers.retrieve("web")


def test_bad_registrations_are_one_line_4xx_and_change_nothing(live_server: LiveServer) -> None:
    headers = auth(live_server.key())
    url = f"{live_server.url}/v1/mcp-servers/"
    cases = [
        ({"server_name": "two__parts", "config": {"command": "x"}}, 400, "a server name must be"),
        ({"server_name": "s", "config": {"mcp_server_type": "sse", "server_url": "http://h/sse"}}, 400, "SSE"),
        ({"server_name": "s", "config": {}}, 400, "give the command that starts the server"),
        ({"server_name": "s", "config": {"server_url": "ftp://h"}}, 400, "must start with http:// or https://"),
        ({"server_name": "s", "config": {"command": "x", "env": {"BAD NAME": "v"}}}, 400, "environment variable"),
        ({"server_name": "s"}, 422, "config"),
        # In the API's field names, not the CLI's flags (--url, --env, --header).
        ({"server_name": "s", "config": {"command": "x", "auth_token": "t"}}, 400, "apply to a server_url, not to"),
        ({"server_name": "s", "config": {"server_url": "http://h/mcp", "args": ["a"]}}, 400, "args and env apply to"),
    ]
    for body, status, words in cases:
        response = web.post(url, json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
        assert words in json.dumps(response.json()["detail"]), (body, response.text)
        assert "--" not in json.dumps(response.json()["detail"]), (body, response.text)
    assert web.get(url, headers=headers).json() == []
    assert not (live_server.home / "mcp.toml").exists()
    created = web.post(url, json={"server_name": "s", "config": {"command": "x"}}, headers=headers)
    assert created.status_code == 200
    again = web.post(url, json={"server_name": "s", "config": {"command": "y"}}, headers=headers)
    assert again.status_code == 400 and "exists" in again.json()["detail"]
    renamed = web.patch(f"{url}s", json={"server_name": "t", "config": {"command": "x"}}, headers=headers)
    assert renamed.status_code == 400 and "register it under the new name" in renamed.json()["detail"]
    assert web.get(f"{url}nope", headers=headers).status_code == 404
    assert web.get(url).status_code == 401


def test_users_attach_servers_to_their_own_agents_only(live_server: LiveServer, model: LocalMiniLM) -> None:
    owner_key, alice_key = live_server.key(), live_server.key("alice")
    owner_agent = agent_of(live_server, None, "Sam", model)
    alice_agent = agent_of(live_server, "alice", "Ally", model)
    command = time_command()
    client(live_server, owner_key).mcp_servers.create(
        server_name="time", config={"command": command[0], "args": command[1:]}
    )
    base = f"{live_server.url}/v1/agents"
    attached = web.patch(f"{base}/{alice_agent.id}/mcp-servers/attach/time", headers=auth(alice_key))
    assert attached.status_code == 200, attached.text
    assert [s["server_name"] for s in attached.json()["mcp_servers"]] == ["time"]
    again = web.patch(f"{base}/Ally/mcp-servers/attach/time", headers=auth(alice_key))  # by name; once
    assert [s["server_name"] for s in again.json()["mcp_servers"]] == ["time"]

    # Another user's agent is not found, by id or by name, exactly like a missing one.
    for ref in (owner_agent.id, "Sam", "agent-" + str(uuid.uuid4())):
        for verb in ("attach", "detach"):
            refused = web.patch(f"{base}/{ref}/mcp-servers/{verb}/time", headers=auth(alice_key))
            assert refused.status_code == 404, (ref, verb)
        assert web.get(f"{base}/{ref}/mcp-servers", headers=auth(alice_key)).status_code == 404
    assert live_server.state.storage.mcp_servers.names(owner_agent.id) == []

    unknown = web.patch(f"{base}/Ally/mcp-servers/attach/nope", headers=auth(alice_key))
    assert unknown.status_code == 404 and "no MCP server named 'nope'" in unknown.json()["detail"]
    not_attached = web.patch(f"{base}/{owner_agent.id}/mcp-servers/detach/time", headers=auth(owner_key))
    assert not_attached.status_code == 400 and "is not attached to agent 'Sam'" in not_attached.json()["detail"]

    # Removed from the registry: still attached by name (shown as missing) until detached.
    client(live_server, owner_key).mcp_servers.delete("time")
    listed = web.get(f"{base}/{alice_agent.id}/mcp-servers", headers=auth(alice_key)).json()
    assert listed == {"agent_id": alice_agent.id, "mcp_servers": [], "missing": ["time"]}
    detached = web.patch(f"{base}/{alice_agent.id}/mcp-servers/detach/time", headers=auth(alice_key))
    assert detached.status_code == 200 and detached.json()["missing"] == []


def offered(request: dict[str, object]) -> set[str]:
    return {t["function"]["name"] for t in request.get("tools") or []}  # type: ignore[index,union-attr]


def test_a_turn_on_the_server_calls_the_agents_mcp_tools(home: Path, model: LocalMiniLM, llm: ScriptedLLM) -> None:
    """messages.create through letta-client: the turn runner opens the agent with its servers' tools, the
    model's call goes through the SDK to the server and its result comes back; the server keeps running
    between turns (one process, one start), another user's agent never gets its tools, and it stops with
    the server."""
    server = LiveServer(home, use_scripted_llm(home, llm.url))
    try:
        tag = "srv-mcp-" + uuid.uuid4().hex
        alice_key = server.key("alice")
        alice_agent = agent_of(server, "alice", "Ally", model)
        bob_agent = agent_of(server, None, "Bob", model)
        command = fixture_command("--tag", tag)
        client(server, server.key()).mcp_servers.create(
            server_name="fx", config={"command": command[0], "args": command[1:]}
        )
        attach = f"{server.url}/v1/agents/{alice_agent.id}/mcp-servers/attach/fx"
        assert web.patch(attach, headers=auth(alice_key)).status_code == 200

        alice = client(server, alice_key)
        llm.add({"tool": "fx__echo", "args": {"text": "hello from the server", "request_heartbeat": True}})
        llm.reply("It echoed.")
        response = alice.agents.messages.create(alice_agent.id, input="echo something")
        assert response.messages[-1].content == "It echoed."
        call = next(m for m in response.messages if m.message_type == "tool_call_message")
        assert call.tool_call.name == "fx__echo"
        assert "fx__echo" in offered(llm.requests[0])
        result = tool_results(llm.requests[1])[-1]
        assert (result["status"], result["message"]) == ("OK", "hello from the server")

        llm.reply("Still here.")
        assert alice.agents.messages.create(alice_agent.id, input="again").messages[-1].content == "Still here."
        assert "fx__echo" in offered(llm.requests[-1]) and len(alive_with(tag)) == 1  # started once

        llm.reply("Hi Bob.")
        bob = client(server, server.key())
        assert bob.agents.messages.create(bob_agent.id, input="hi").messages[-1].content == "Hi Bob."
        assert "fx__echo" not in offered(llm.requests[-1])
    finally:
        server.stop()
    assert wait_until(lambda: alive_with(tag) == [], 20)
