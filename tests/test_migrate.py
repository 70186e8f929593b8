"""`memgpt migrate --to URI`: from Milvus Lite to the real server, resumable, then everything works there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from memgpt.config import load_config, save_config
from tests.conftest import DATA, cli
from tests.milvus_server import TOKEN
from tests.scripted_llm import ScriptedLLM


def test_move_up_to_a_server(
    home: Path, milvus_server: str, server_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = ScriptedLLM()
    monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
    try:
        notes = DATA / "test.md"  # small: copied in one batch of 1,000, as the paper's 92 passages were
        assert cli("load", "directory", "--name", "notes", f"--input-files={notes}", home=home).returncode == 0
        llm.add({"tool": "archival_memory_insert", "args": {"content": "Chad keeps bees.", "request_heartbeat": True}})
        llm.reply("Noted.")
        assert cli("run", "--agent", "Keeper", "--message", "I keep bees", home=home).returncode == 0
        before = json.loads(cli("list", "sources", "--json", home=home).stdout)
        lite = load_config(home).milvus_uri(home)

        moved = cli(
            "migrate", "--to", milvus_server, "--database", server_database, "--token", TOKEN, "-y", home=home
        )
        assert moved.returncode == 0, moved.stderr
        copied = int(re.search(r"Copied (\d+) passages \(0 were there already\)", moved.stdout)[1])
        # the notes and the agent's memory; `run --message` left its turn's recall entries to recall's backlog
        # (indexed by the agent's next conversation_search or chat, into whichever Milvus the home then uses)
        assert copied == before[0]["passages"] + 1
        config = load_config(home)
        assert (config.milvus.uri, config.milvus.database) == (milvus_server, server_database)
        assert json.loads(cli("list", "sources", "--json", home=home).stdout) == before
        found = json.loads(cli("search", "notes", "heading", "--json", home=home).stdout)
        assert found and found[0]["file_name"] == "test.md"

        llm.add({"tool": "archival_memory_search", "args": {"query": "bees", "request_heartbeat": True}})
        llm.reply("You keep bees.")
        assert cli("run", "--agent", "Keeper", "--message", "what do I keep?", home=home).returncode == 0
        result = json.loads([m for m in llm.requests[-1]["messages"] if m["role"] == "tool"][-1]["content"])
        assert "Chad keeps bees." in result["message"]

        again = cli(
            "migrate", "--to", milvus_server, "--database", server_database, "--token", TOKEN, "-y", home=home
        )
        assert again.returncode == 1 and "already uses" in again.stderr
        config.milvus.uri, config.milvus.database = lite, ""  # back to Lite: a second run copies nothing
        save_config(config, home)
        resumed = cli(
            "migrate", "--to", milvus_server, "--database", server_database, "--token", TOKEN, "-y", home=home
        )
        assert resumed.returncode == 0, resumed.stderr
        assert f"Copied 0 passages ({copied} were there already)" in resumed.stdout
    finally:
        llm.close()


def test_unreachable_target_changes_nothing(home: Path) -> None:
    assert cli("list", "sources", home=home).returncode == 0
    result = cli("migrate", "--to", "http://127.0.0.1:1", "-y", home=home)
    assert result.returncode == 1 and "cannot connect to Milvus at http://127.0.0.1:1" in result.stderr
    assert load_config(home).milvus.uri == ""


def test_secured_server_needs_the_right_token(home: Path, milvus_server: str, server_database: str) -> None:
    wrong = cli("configure", "--milvus-uri", milvus_server, "--milvus-token", "root:wrong", home=home)
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(f"error: cannot connect to Milvus at {milvus_server}")
    assert len(wrong.stderr.strip().splitlines()) == 1
    right = cli(
        "configure",
        "--milvus-uri",
        milvus_server,
        "--milvus-token",
        TOKEN,
        "--milvus-database",
        server_database,
        home=home,
    )
    assert right.returncode == 0, right.stderr
    assert f"(Milvus server, database {server_database})" in right.stdout


def test_a_refused_token_and_a_missing_database_are_said_as_such(home: Path, milvus_server: str) -> None:
    """pymilvus says "server unavailable" for a server that refused the token, and a database the server lacks
    came with pymilvus's ERROR and its traceback before memgpt's line."""
    for token, said in [("root:wrong", "it refused the token (auth check failure"), ("", "it needs a token")]:
        result = cli("configure", "--milvus-uri", milvus_server, "--milvus-token", token, "--no-llm-check", home=home)
        assert result.returncode == 1
        assert said in result.stderr and "--milvus-token" in result.stderr, result.stderr
        assert "server unavailable" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    args = ("--milvus-uri", milvus_server, "--milvus-token", TOKEN, "--milvus-database", "nosuchdb", "--no-llm-check")
    missing = cli("configure", *args, home=home)
    assert missing.returncode == 1
    assert f"error: Milvus at {milvus_server} has no database 'nosuchdb'" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr and "RPC error" not in missing.stderr
    assert load_config(home).milvus.uri == ""  # nothing was saved
