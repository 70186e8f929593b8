"""`memgpt server`'s front door: API keys decide the user, the owner administers, bad requests are 4xx JSON."""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from memgpt.config import load_config, save_config
from memgpt.server.app import KEY_TRUST_SECONDS
from memgpt.storage import Storage
from memgpt.types import User
from tests import web
from tests.conftest import DATA, cli, run_cli
from tests.server_rig import LiveServer, ServerProcess, auth, free_port, http_stack
from tests.test_cli import run_at_width


def test_health_needs_no_key_and_ignores_one(live_server: LiveServer) -> None:
    for headers in ({}, auth("sk-not-a-key")):
        response = web.get(f"{live_server.url}/v1/health/", headers=headers)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


def test_every_other_request_needs_a_valid_key(live_server: LiveServer) -> None:
    url = f"{live_server.url}/v1/admin/users"
    missing = web.get(url)
    assert missing.status_code == 401
    assert "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["x-should-retry"] == "false"
    for bad in ("sk-not-a-key", "Bearer", live_server.key()[:-1] + "x", "x" * 5000):
        assert web.get(url, headers=auth(bad)).status_code == 401, bad
    assert web.get(url, headers={"Authorization": "Basic abc"}).status_code == 401


def test_a_revoked_key_stops_working_at_once(live_server: LiveServer) -> None:
    key = live_server.key()
    url = f"{live_server.url}/v1/admin/users"
    assert web.get(url, headers=auth(key)).status_code == 200
    live_server.users.revoke_key(key[:12])
    assert web.get(url, headers=auth(key)).status_code == 401


def test_a_key_revoked_by_another_process_stops_working_within_the_trust_bound(
    live_server: LiveServer, home: Path
) -> None:
    """The server trusts a checked key for ``trust_seconds`` (KEY_TRUST_SECONDS) without reading it again; a
    revocation it does not see itself (`memgpt key revoke` on the same home) takes effect within that bound."""
    assert live_server.users.trust_seconds == KEY_TRUST_SECONDS
    live_server.users.trust_seconds = 1.0
    key = live_server.key()
    url = f"{live_server.url}/v1/agents/"
    assert web.get(url, headers=auth(key)).status_code == 200
    with Storage(load_config(home), home) as elsewhere:
        elsewhere.users.revoke_key(key[:12])
    time.sleep(1.0)
    assert web.get(url, headers=auth(key)).status_code == 401


def test_requests_that_come_while_a_key_is_checked_wait_for_that_check(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One check of a key at a time: when its trust lapsed under load, every request in flight read the key from the
    database on a thread of its own. Here each read takes 0.5 s more, so all the requests come during the first."""
    key = live_server.key()
    users = live_server.users
    reads: list[str] = []  # the keys read
    read = users._authenticate

    def slow_read(secret: str) -> User | None:
        reads.append(secret)
        time.sleep(0.5)
        return read(secret)

    monkeypatch.setattr(users, "_authenticate", slow_read)
    url = f"{live_server.url}/v1/agents/"
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: web.get(url, headers=auth(key)).status_code, range(8)))
    assert codes == [200] * 8
    assert len(reads) == 1, f"{len(reads)} reads of one key"
    revoked = live_server.key()
    users.revoke_key(revoked[:12])
    with ThreadPoolExecutor(4) as pool:  # a refusal is shared too, and trusted by none
        assert list(pool.map(lambda _: web.get(url, headers=auth(revoked)).status_code, range(4))) == [401] * 4
    assert web.get(url, headers=auth(revoked)).status_code == 401


def test_only_the_owner_administers_users_and_keys(live_server: LiveServer) -> None:
    owner = auth(live_server.key())
    created = web.post(f"{live_server.url}/v1/admin/users", json={"name": "alice"}, headers=owner)
    assert created.status_code == 201, created.text
    alice = created.json()
    assert alice["name"] == "alice" and alice["key"]["key"].startswith("sk-")
    alice_key = auth(alice["key"]["key"])
    # Alice's key is valid (not 401) but she is not the owner.
    refused = web.get(f"{live_server.url}/v1/admin/users", headers=alice_key)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "only the server's owner (the home's own user) may manage users and keys"
    listed = web.get(f"{live_server.url}/v1/admin/users", headers=owner).json()
    assert {u["name"]: u["is_owner"] for u in listed} == {"owner": True, "alice": False}
    assert "key" not in json.dumps(listed)  # keys are never listed
    extra = web.post(f"{live_server.url}/v1/admin/users/alice/keys", json={"name": "laptop"}, headers=owner)
    assert extra.status_code == 201
    keys = web.get(f"{live_server.url}/v1/admin/users/{alice['id']}/keys", headers=owner).json()
    assert sorted(k["name"] for k in keys) == ["first key", "laptop"]
    assert all("digest" not in k and "key" not in k for k in keys)
    # A truncated id or prefix (a script's cut value) revokes nothing: the route takes whole ones only.
    for start in (alice["key"]["id"][:-1], alice["key"]["key"][:10]):
        cut = web.delete(f"{live_server.url}/v1/admin/keys/{start}", headers=owner)
        assert cut.status_code == 404 and "whole" in cut.json()["detail"], cut.text
    assert web.get(f"{live_server.url}/v1/agents/", headers=alice_key).status_code == 200
    revoked = web.delete(f"{live_server.url}/v1/admin/keys/{alice['key']['id']}", headers=owner)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    again = web.delete(f"{live_server.url}/v1/admin/keys/{alice['key']['id']}", headers=owner)  # a retried DELETE
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
    assert web.get(f"{live_server.url}/v1/admin/users", headers=alice_key).status_code == 401
    duplicate = web.post(f"{live_server.url}/v1/admin/users", json={"name": "alice"}, headers=owner)
    assert duplicate.status_code == 400 and "already exists" in duplicate.json()["detail"]
    unknown = web.get(f"{live_server.url}/v1/admin/users/nobody/keys", headers=owner)
    assert unknown.status_code == 404


def test_keys_are_stored_as_digests_only(live_server: LiveServer) -> None:
    key = live_server.key()
    from sqlalchemy import text

    with live_server.state.storage.metadata.session() as s:
        stored = " ".join(str(v) for row in s.execute(text("select * from api_keys")) for v in row)
    assert key not in stored and key[:12] in stored


def test_bad_requests_are_4xx_json(live_server: LiveServer) -> None:
    owner = auth(live_server.key())
    url = f"{live_server.url}/v1/admin/users"
    broken = web.post(url, content=b'{"name": ', headers={**owner, "content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"
    wrong = web.post(url, json={"name": 42}, headers=owner)
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "name"]
    assert web.get(f"{live_server.url}/v1/nothing-here", headers=owner).status_code == 404


def test_an_unknown_url_says_which_and_a_base_url_ending_in_v1_is_told_so(live_server: LiveServer) -> None:
    """A base URL with /v1 in it (as for OpenAI's SDK) made every call of both clients a bare 'Not Found'."""
    from letta_client import Letta
    from letta_client import NotFoundError as LettaNotFound

    from memgpt import create_client
    from memgpt.errors import NotFoundError

    key = live_server.key()
    missing = web.delete(f"{live_server.url}/v1/nothing-here", headers=auth(key))
    assert missing.status_code == 404
    assert missing.json()["detail"].startswith("Not Found: DELETE /v1/nothing-here (no such route;")
    wrong_method = web.put(f"{live_server.url}/v1/agents/", headers=auth(key))
    assert wrong_method.status_code == 405
    assert wrong_method.json()["detail"].startswith("Method Not Allowed: PUT /v1/agents/ (the route takes other")
    hint = "the base URL is the server's address, without /v1"
    with pytest.raises(NotFoundError, match=hint):
        create_client(base_url=f"{live_server.url}/v1", token=key).list_agents()
    with pytest.raises(LettaNotFound, match=hint):
        Letta(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0).agents.list()
    known = web.get(f"{live_server.url}/v1/agents/agent-nope", headers=auth(key)).json()["detail"]
    assert known == "no agent with id 'agent-nope'"  # a route's own 404 keeps its message


def test_request_bodies_over_the_limit_are_refused(home: Path) -> None:
    config = load_config(home)
    config.server.max_upload_mb = 0.001  # 1,000 bytes
    save_config(config, home)
    server = LiveServer(home, config)
    try:
        owner = auth(server.key())
        url = f"{server.url}/v1/admin/users"
        big = {"name": "x" * 2000}
        declared = web.post(url, json=big, headers=owner)
        assert declared.status_code == 413
        assert "server.max_upload_mb" in declared.json()["detail"]

        def chunks():  # no Content-Length: the body is counted as it arrives
            yield b'{"name": "'
            for _ in range(20):
                yield b"y" * 100
            yield b'"}'

        streamed = web.post(url, content=chunks(), headers={**owner, "content-type": "application/json"})
        assert streamed.status_code == 413
        assert web.post(url, json={"name": "small"}, headers=owner).status_code == 201
    finally:
        server.stop()


def test_user_and_key_commands(home: Path) -> None:
    created = cli("user", "create", "carol", home=home)
    assert created.returncode == 0, created.stderr
    secret = next(w for w in created.stdout.split() if w.startswith("sk-"))
    listed = json.loads(cli("key", "list", "--json", home=home).stdout)
    assert [(k["user"], k["prefix"], k["revoked"]) for k in listed] == [("carol", secret[:12], False)]
    assert secret not in cli("key", "list", home=home).stdout
    # The ids `key revoke` and `--user` take are whole in an 80-column terminal or a pipe, never "key-3f2…".
    narrow = run_at_width("key", "list", home=home, columns=80)
    assert "…" not in narrow and f"│ {listed[0]['id']} " in narrow
    users_narrow = run_at_width("user", "list", home=home, columns=80)
    assert "…" not in users_narrow and "│ carol " in users_narrow  # ids too long for the width fold, whole
    users = json.loads(cli("user", "list", "--json", home=home).stdout)
    assert {u["name"]: u["owner"] for u in users} == {"owner": True, "carol": False}
    assert cli("key", "revoke", secret[:12], home=home).returncode == 0
    assert json.loads(cli("key", "list", "--json", home=home).stdout)[0]["revoked"] is True
    again = cli("user", "create", "carol", home=home)
    assert again.returncode == 1 and again.stderr.strip() == "error: a user named 'carol' already exists"
    missing = cli("key", "create", "--user", "dave", home=home)
    assert missing.returncode == 1 and "no user named 'dave'" in missing.stderr
    assert "Traceback" not in missing.stderr + again.stderr


def test_key_revoke_by_a_start_says_what_is_wrong(home: Path) -> None:
    """A start of a key's prefix or id names it when unique; too short or ambiguous is one line saying which
    (was: "no API key" for both)."""
    for _ in "ab":
        assert cli("key", "create", home=home).returncode == 0
    with Storage(load_config(home), home) as storage, storage.metadata.session() as s:
        # Two prefixes sharing their first 5 random characters, as keys would by chance one day.
        s.execute(sa.text("UPDATE api_keys SET prefix = 'sk-Ab_1d' || substr(prefix, 9)"))
    listed = json.loads(cli("key", "list", "--json", home=home).stdout)
    prefixes = sorted(k["prefix"] for k in listed)
    assert len(prefixes) == 2 and all(p.startswith("sk-Ab_1d") for p in prefixes)
    short = cli("key", "revoke", "sk-Ab", home=home)
    assert short.returncode == 1
    assert short.stderr == "error: 'sk-Ab' is too short to name a key: give at least 4 characters after 'sk-'\n"
    ambiguous = cli("key", "revoke", "sk-Ab_1", home=home)
    assert ambiguous.returncode == 1 and len(ambiguous.stderr.splitlines()) == 1
    assert ambiguous.stderr.startswith("error: 'sk-Ab_1' matches 2 keys: ")
    assert all(f"{p}..." in ambiguous.stderr for p in prefixes) and "give more of it" in ambiguous.stderr
    # "_" is no wildcard, and case counts (SQLite's LIKE ignores it).
    for other in ("sk-AbX1", "sk-ab_1d"):
        assert cli("key", "revoke", other, home=home).stderr == f"error: no API key {other!r}\n"
    assert cli("key", "revoke", prefixes[0][:-1], home=home).returncode == 0
    other = next(k["id"] for k in listed if k["prefix"] != prefixes[0])
    assert cli("key", "revoke", other[:9], home=home).returncode == 0
    assert all(k["revoked"] for k in json.loads(cli("key", "list", "--json", home=home).stdout))


def test_server_refuses_what_would_be_unsafe_or_cannot_work(home: Path) -> None:
    exposed = run_cli("server", "--host", "0.0.0.0", "--port", str(free_port()), home=home, timeout=60)
    assert exposed.returncode == 1
    assert "refusing to listen on 0.0.0.0 while no API key exists" in exposed.stderr
    # With workers too: the host is checked before anything (a Milvus Lite server for the workers) starts.
    port = str(free_port())
    workers = run_cli("server", "--host", "0.0.0.0", "--workers", "2", "--port", port, home=home, timeout=60)
    assert workers.returncode == 1
    assert "refusing to listen on 0.0.0.0 while no API key exists" in workers.stderr
    assert "Traceback" not in exposed.stderr + workers.stderr


def test_a_port_in_use_is_one_line_before_anything_starts(home: Path) -> None:
    """It printed the banner (the server runs at URL), opened the home, then uvicorn's own ERROR line, exit code 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("server", "--port", str(port), home=home, timeout=60)
    assert busy.returncode == 1, busy.stdout + busy.stderr
    assert busy.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: the address is in use (another server?); "
        "stop it or pick another --port"
    )
    assert "memgpt server on" not in busy.stdout


def test_a_running_server_owns_the_lite_file_and_the_cli_says_so(home: Path, tmp_path: Path) -> None:
    import os

    port = free_port()
    env = {**os.environ, "MEMGPT_HOME": str(home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "memgpt", "server", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start: {server.stdout.read() if server.stdout else ''}")
            time.sleep(0.2)
        note = tmp_path / "note.txt"
        note.write_text("hello")
        load = run_cli("load", "directory", "--name", "notes", "--input-files", str(note), home=home)
        assert load.returncode == 1
        assert f"a memgpt server at http://127.0.0.1:{port}" in load.stderr
        assert "use its API" in load.stderr and "Traceback" not in load.stderr
        # An import writes its agent's rows before its passages: it must stop before writing anything.
        imported = run_cli("import", str(DATA / "agent-files" / "memgpt_agent.af"), home=home)
        assert imported.returncode == 1
        assert imported.stderr.strip().splitlines() == [load.stderr.strip()], imported.stderr
        assert "No agents yet" in run_cli("list", "agents", home=home).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "No API keys yet" in (server.stdout.read() if server.stdout else "")


def test_the_server_speaks_http_with_httptools_on_uvloop(home: Path) -> None:
    """`memgpt server` serves with uvicorn's C HTTP parser and libuv event loop (dependencies of memgpt, which
    uvicorn picks by itself): a request costs the server ~0.18 ms of CPU against ~0.40 with h11 on asyncio."""
    home.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(home)
    server.wait_ready()
    try:
        assert http_stack(server.process.pid) == {"httptools", "uvloop"}
        # uvicorn's access line, made by memgpt's formatter (memgpt/server/access_log.py)
        assert re.search(
            r'^INFO:     127\.0\.0\.1:\d+ - "GET /v1/health/ HTTP/1\.1" 200 OK$', server.log.read_text(), re.M
        )
    finally:
        server.stop()


def test_an_idle_connection_outlives_the_clients_own_keep_alive(home: Path) -> None:
    """`memgpt server` keeps an idle connection open longer than httpx's 5 s keep-alive (letta-client's, the
    openai SDK's): a client reusing one at its 5 s never meets the server closing it (a reset, its request unread)."""
    home.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(home)
    server.wait_ready()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
        connection.request("GET", "/v1/health/")
        first = connection.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close
        sock = connection.sock
        time.sleep(6)
        assert sock is not None and not select.select([sock], [], [], 0)[0]  # a close would make it readable
        connection.request("GET", "/v1/health/")
        again = connection.getresponse()
        again.read()
        assert again.status == 200 and connection.sock is sock
        connection.close()
    finally:
        server.stop()


def test_key_revoke_by_a_start_prefers_the_active_key_and_says_when_one_was_revoked_already(home: Path) -> None:
    """Two keys share a start and one is revoked: the start names the active one. Revoking a revoked key says so."""
    for _ in "ab":
        assert cli("key", "create", home=home).returncode == 0
    with Storage(load_config(home), home) as storage, storage.metadata.session() as s:
        s.execute(sa.text("UPDATE api_keys SET prefix = 'sk-Ab_1d' || substr(prefix, 9)"))
    prefixes = sorted(k["prefix"] for k in json.loads(cli("key", "list", "--json", home=home).stdout))
    assert cli("key", "revoke", prefixes[0], home=home).returncode == 0
    told = cli("key", "revoke", "sk-Ab_1", home=home)
    assert told.returncode == 0 and f"({prefixes[1]}...)" in told.stdout, told.stdout + told.stderr
    again = cli("key", "revoke", prefixes[0], home=home)
    assert again.returncode == 0 and f"({prefixes[0]}...) was already revoked (" in again.stdout, again.stdout
