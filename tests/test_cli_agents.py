"""`memgpt run` and the agent commands through the real executable, against the scripted LLM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest
from letta_client import Letta

from memgpt.agent.agent import answer_reserve
from memgpt.agent.manager import open_memory
from memgpt.config import Config, load_config, save_config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.llm.base import ToolSpec
from memgpt.memory.messages import search_text
from memgpt.memory.recall import WORD_SEARCH_NOTE
from memgpt.server.state import OWNER_NAME
from memgpt.storage import Storage
from memgpt.storage.filters import all_of, eq
from memgpt.storage.turns import new_owner
from memgpt.tokens import count_message, count_tools
from tests import web
from tests.agent_rig import tool_results
from tests.conftest import DATA, PAPER, TERMINAL, cli, cli_env, run_cli
from tests.milvus_server import TOKEN
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import ServerProcess, auth, use_scripted_llm
from tests.test_configure_interactive import question


def held_by(pid: int) -> str:
    """How a wait for an agent's lease names the process holding it: its pid and host."""
    return f"(pid {pid} on host {socket.gethostname()})"


SEED_QUESTION = "The paper I loaded into your archival memory is called MemGPT. Can you tell me more about it?"


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLM]:
    server = ScriptedLLM()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    yield server
    server.close()


def stored_messages(home: Path, agent: str) -> list[Any]:
    config = load_config(home)
    with Storage(config, home) as storage:
        state = storage.agents.get(config.user_id, agent)
        assert state is not None
        return storage.messages.last(state.id, 1000)


@contextmanager
def chat_in_a_terminal(
    home: Path, cwd: Path, *args: str, timeout: int = 60, columns: int = 200, cpr: bool = False
) -> Iterator[pexpect.spawn]:
    """`memgpt run ARGS` in a real terminal (a pty, 50 rows), closed when the block ends. With ``cpr`` prompt_toolkit
    asks for the cursor position at each prompt, which pexpect never answers (see ``TERMINAL``)."""
    env = {**os.environ, "MEMGPT_HOME": str(home), **TERMINAL}
    if cpr:
        env.pop("PROMPT_TOOLKIT_NO_CPR")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "memgpt", "run", *args],
        env=env,
        encoding="utf-8",
        timeout=timeout,
        dimensions=(50, columns),
        cwd=str(cwd),
    )
    try:
        yield child
    finally:
        child.close()


def test_the_seed_chat_end_to_end_in_a_terminal(home: Path, llm: ScriptedLLM, tmp_path: Path) -> None:
    loaded = run_cli("load", "directory", "--name", "memgpt_research_paper", f"--input-files={PAPER}", home=home)
    assert loaded.returncode == 0, loaded.stderr
    llm.reply("Hi, I am an existing agent.")
    assert run_cli("run", "--agent", "Earlier", "--message", "hello", home=home).returncode == 0

    seen: dict[str, Any] = {}

    def answer_from_search(body: dict[str, Any]) -> dict[str, Any]:
        seen["request"] = body
        return {
            "tool": "send_message",
            "content": "Based on the found results, MemGPT manages memory tiers.",
            "args": {"message": "Certainly, Chad. MemGPT manages different storage tiers, like an OS."},
        }

    llm.reply(
        "Greetings Chad! I'm MemGPT. How may I assist you today?", thought="Interesting, I've got a first-time user."
    )
    llm.add(
        {
            "tool": "archival_memory_search",
            "args": {"query": "MemGPT overview", "request_heartbeat": True},
            "content": "Chad would like to know more about the paper. Time to search the archival memory.",
        }
    )
    llm.add(answer_from_search)

    with chat_in_a_terminal(home, tmp_path, "--persona", "memgpt_doc", timeout=90, columns=220) as child:
        child.expect(question("Would you like to select an existing agent?"))
        child.sendline("n")
        child.expect_exact("🧬 Creating new agent...")
        child.expect_exact("->  🤖 Using persona profile: 'memgpt_doc'")
        child.expect_exact("->  🧑 Using human profile: 'basic'")
        child.expect(r"🎉 Created new agent '([A-Z][a-z]+[A-Z][a-z]+)' \(id=agent-[0-9a-f-]{36}\)")
        child.expect_exact("Hit enter to begin (will request first MemGPT message)")
        child.sendline("")
        child.expect_exact("💭 Interesting, I've got a first-time user.")
        child.expect_exact("🤖 Greetings Chad! I'm MemGPT. How may I assist you today?")
        child.expect_exact("> Enter your message:")
        child.sendline("/attach")
        child.expect(question("Select data source"))
        child.send("\r")
        child.expect(r"Attached memgpt_research_paper \(\d+ passages\) to archival memory")
        child.expect_exact("> Enter your message:")
        child.sendline(SEED_QUESTION)
        child.expect_exact("⚡🧠 [function] searching memory with archival_memory_search")
        child.expect_exact("💭 Based on the found results, MemGPT manages memory tiers.")
        child.expect_exact("🤖 Certainly, Chad. MemGPT manages different storage tiers, like an OS.")
        child.expect_exact("> Enter your message:")
        child.sendline("/exit")
        child.expect(pexpect.EOF)

    results = [json.loads(m["content"]) for m in seen["request"]["messages"] if m["role"] == "tool"]
    found = results[-1]["message"]
    assert found.startswith("Showing results 1-5, best first (page 0; more on page 1). Ranked by meaning")
    assert "memgpt_research_paper.pdf, page" in found
    assert re.search(r"virtual context|memory|LLM", found)
    user_turn = [m for m in seen["request"]["messages"] if m["role"] == "user"]
    assert any(SEED_QUESTION in m["content"] for m in user_turn)


def test_no_llm_configured_is_one_line_before_anything_is_created(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = cli("run", "--agent", "x", "--message", "hi", home=home)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no LLM configured: set OPENAI_API_KEY")
    assert len(result.stderr.strip().splitlines()) == 1
    assert json.loads(cli("list", "agents", "--json", home=home).stdout) == []


def test_a_context_window_too_small_is_refused_before_the_agent_is_created(home: Path, llm: ScriptedLLM) -> None:
    tiny = cli("run", "--agent", "Tiny", "--context-window", "2000", "--message", "hi", home=home)
    assert tiny.returncode == 1
    assert tiny.stderr.startswith("error: the context window of agent 'Tiny' (2,000 tokens) is too small")
    assert len(tiny.stderr.strip().splitlines()) == 1
    assert json.loads(cli("list", "agents", "--json", home=home).stdout) == []
    llm.reply("hello")
    assert cli("run", "--agent", "Roomy", "--message", "hi", home=home).returncode == 0
    smaller = cli("run", "--agent", "Roomy", "--context-window", "2000", "--message", "hi", home=home)
    assert smaller.returncode == 1 and "is too small" in smaller.stderr
    config = load_config(home)
    with Storage(config, home) as storage:
        roomy = storage.agents.get(config.user_id, "Roomy")
    assert roomy is not None and roomy.context_window > 2000  # the refused window was not saved
    assert len(llm.requests) == 1


def test_a_model_the_endpoint_does_not_serve_is_refused_before_the_agent_is_made_or_switched(
    home: Path, llm: ScriptedLLM
) -> None:
    """`--model` was stored unchecked: the agent kept a model its endpoint does not serve and every later turn
    failed (the server's agent creation already refused it)."""
    llm.reply("hello")
    assert cli("run", "--agent", "Sam", "--model", "scripted", "--message", "hi", home=home).returncode == 0
    for agent in ("Sam", "New"):
        refused = cli("run", "--agent", agent, "--model", "nope", "--message", "hi", home=home)
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"error: --model: {llm.url} does not serve the model 'nope'; it serves: scripted; nothing was changed"
        )
    assert [(a["name"], a["model"]) for a in json.loads(cli("list", "agents", "--json", home=home).stdout)] == [
        ("Sam", "scripted")
    ]
    assert len(llm.requests) == 1


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_piped_commands_and_history_edits(home: Path, llm: ScriptedLLM) -> None:
    llm.reply("first answer", thought="first thought")
    llm.reply("second answer")
    llm.reply("retried answer")
    script = "\n".join(
        [
            "hello",
            "/memory",
            "/rethink a better thought",
            "/rewrite a better answer",
            "/dump 3",
            "again",
            "/retry",
            "/pop 3",
            "/dump 10",
            "/nonsense",
            "/exit",
            "never sent",
        ]
    )
    result = cli("run", "--agent", "Piper", home=home, stdin=script)
    assert result.returncode == 1, result.stderr  # /nonsense did not run: the script failed, all else ran
    out = result.stdout
    assert "🤖 first answer" in out and "🤖 second answer" in out and "🤖 retried answer" in out
    assert '<persona characters="' in out and "recall: " in out
    assert "assistant: a better thought | said: a better answer" in out
    assert "Removed 3 messages" in out
    assert "Unknown command /nonsense — type /help to see the commands" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # the only failure
    assert len(llm.requests) == 3  # "never sent" was after /exit
    assert "never sent" not in json.dumps(llm.requests)
    contents = [m.content for m in stored_messages(home, "Piper")]
    assert "again" not in contents and "hello" in contents  # /pop 3 took "again" and its retried answer


def test_an_unknown_command_says_the_closest_and_fails_a_message(home: Path, llm: ScriptedLLM) -> None:
    llm.reply("hello")
    assert cli("run", "--agent", "Typo", "--message", "hi", home=home).returncode == 0
    typo = cli("run", "--agent", "Typo", "--message", "/atach notes", home=home)
    assert typo.returncode == 1
    assert typo.stderr.strip() == "Unknown command /atach (did you mean /attach?) — type /help to see the commands"
    assert len(llm.requests) == 1  # nothing was sent to the agent


def test_adding_a_persona_or_human_of_a_taken_name_asks_first(home: Path) -> None:
    """`memgpt add persona --name sam_pov` replaced the shipped persona (for every new agent) without a word."""
    shipped = json.loads(cli("list", "personas", "--json", home=home).stdout)["sam_pov"]
    refused = cli("add", "persona", "--name", "sam_pov", "--text", "I am someone else.", home=home)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip() == (
        "error: Replace the persona 'sam_pov' shipped with memgpt (new agents get yours)? — not a terminal, "
        "so nothing was done; pass -y to confirm"
    )
    assert json.loads(cli("list", "personas", "--json", home=home).stdout)["sam_pov"] == shipped
    assert cli("add", "human", "--name", "ann", "--text", "Name: Ann", home=home).returncode == 0
    again = cli("add", "human", "--name", " ann ", "--text", "Name: Someone", home=home)  # the stripped name
    assert again.returncode == 1 and "Replace your human 'ann'?" in again.stderr and "pass -y" in again.stderr
    assert json.loads(cli("list", "humans", "--json", home=home).stdout)["ann"] == "Name: Ann"
    # In a terminal it asks; "no" changes nothing.
    env = {**os.environ, "MEMGPT_HOME": str(home), **TERMINAL}
    asked = ["-m", "memgpt", "add", "persona", "--name", "sam_pov", "--text", "I am someone else."]
    child = pexpect.spawn(sys.executable, asked, env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))
    try:
        child.expect(question("Replace the persona 'sam_pov' shipped with memgpt (new agents get yours)?"))
        child.send("n")
        child.expect_exact("Nothing changed.")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert json.loads(cli("list", "personas", "--json", home=home).stdout)["sam_pov"] == shipped
    for kind, name, text in (("persona", "sam_pov", "I am someone else."), ("human", "ann", "Name: Someone")):
        replaced = cli("add", kind, "--name", name, "--text", text, "-y", home=home)
        assert replaced.returncode == 0 and replaced.stdout.strip() == f"Saved {kind} '{name}'"
        assert json.loads(cli("list", f"{kind}s", "--json", home=home).stdout)[name] == text


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_agent_commands(home: Path, llm: ScriptedLLM, tmp_path: Path) -> None:
    # A small file: the test is about what is attached and listed, not what the file holds (the paper: a long load).
    assert cli("load", "directory", "--name", "notes", f"--input-files={DATA / 'test.md'}", home=home).returncode == 0
    persona = tmp_path / "pirate.txt"
    persona.write_text("I am a pirate. Arr.")
    assert cli("add", "persona", "--name", "pirate", "--file", str(persona), home=home).returncode == 0
    assert cli("add", "human", "--name", "ann", "--text", "Name: Ann", home=home).returncode == 0
    personas = json.loads(cli("list", "personas", "--json", home=home).stdout)
    assert {"sam_pov", "memgpt_doc", "memgpt_starter", "pirate"} <= set(personas)
    assert {"basic", "cs_phd", "ann"} <= set(json.loads(cli("list", "humans", "--json", home=home).stdout))

    llm.reply("Arr!")
    made = cli("run", "--agent", "Pete", "--persona", "pirate", "--human", "ann", "--message", "hi", home=home)
    assert made.returncode == 0, made.stderr
    assert "I am a pirate. Arr." in llm.requests[0]["messages"][0]["content"]
    assert "Name: Ann" in llm.requests[0]["messages"][0]["content"]

    attached = cli("attach", "--agent", "Pete", "--data-source", "notes", home=home)
    assert attached.returncode == 0 and "Attached notes (" in attached.stdout
    llm.reply("Arr again!")
    again = cli("run", "--agent", "Pete", "--attach", "notes", "--message", "hi", home=home)
    assert "notes was already attached" in again.stdout and "🤖 Arr again!" in again.stdout
    listed = json.loads(cli("list", "agents", "--json", home=home).stdout)
    assert [(a["name"], a["persona"], a["human"], a["sources"]) for a in listed] == [("Pete", "pirate", "ann", 1)]
    assert cli("detach", "--agent", "Pete", "--data-source", "notes", home=home).returncode == 0
    missing = cli("detach", "--agent", "Pete", "--data-source", "notes", home=home)
    assert missing.returncode == 1 and "is not attached" in missing.stderr

    unknown = cli("run", "--agent", "Nope", "--persona", "ghost", "--message", "x", home=home)
    assert unknown.returncode == 1 and "no persona named 'ghost'" in unknown.stderr

    refused = cli("delete", "agent", "Pete", home=home)
    assert refused.returncode == 1 and "pass -y" in refused.stderr
    assert cli("delete", "agent", "Pete", "-y", home=home).returncode == 0
    assert json.loads(cli("list", "agents", "--json", home=home).stdout) == []
    assert json.loads(cli("list", "sources", "--json", home=home).stdout)[0]["name"] == "notes"


def test_user_tools_from_the_tools_folder(home: Path, llm: ScriptedLLM) -> None:
    tools = home / "tools"
    tools.mkdir(parents=True)
    (tools / "weather.py").write_text(
        "def get_weather(city: str, days: int = 1) -> str:\n"
        '    """Look up the weather forecast.\n\n    Args:\n        city: Name of the city.\n'
        '        days: How many days ahead.\n    """\n'
        '    return f"Sunny in {city} for {days} days"\n\n'
        'def broken(x: int) -> int:\n    """Always fails."""\n    raise RuntimeError("boom")\n'
    )
    (tools / "bad.py").write_text("def oops(:\n")
    llm.add({"tool": "get_weather", "args": {"city": "Oslo", "days": "2", "request_heartbeat": True}})
    llm.add({"tool": "broken", "args": {"x": 1, "request_heartbeat": True}})
    llm.reply("It will be sunny.")
    result = cli("run", "--agent", "Tooly", "--message", "weather in Oslo?", home=home)
    assert result.returncode == 0, result.stderr
    assert "warning: " in result.stdout and "bad.py: cannot import it (SyntaxError" in result.stdout
    schema = next(t for t in llm.requests[0]["tools"] if t["function"]["name"] == "get_weather")["function"]
    assert schema["description"] == "Look up the weather forecast."
    assert schema["parameters"]["properties"]["city"] == {"type": "string", "description": "Name of the city."}
    assert schema["parameters"]["required"] == ["city", "request_heartbeat"]
    first = json.loads([m for m in llm.requests[1]["messages"] if m["role"] == "tool"][-1]["content"])
    assert first == {"status": "OK", "message": "Sunny in Oslo for 2 days", "time": first["time"]}
    second = json.loads([m for m in llm.requests[2]["messages"] if m["role"] == "tool"][-1]["content"])
    assert second["status"] == "Failed" and second["message"] == "Error: RuntimeError: boom"
    assert "⚡ [function] running get_weather" in result.stdout


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_a_kill_mid_step_keeps_the_message_and_the_agent_works_after(home: Path, llm: ScriptedLLM) -> None:
    llm.reply("first")
    assert cli("run", "--agent", "Sturdy", "--message", "one", home=home).returncode == 0
    llm.add({"delay": 60, "tool": "send_message", "args": {"message": "never delivered"}})
    env = {**os.environ, "MEMGPT_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memgpt", "run", "--agent", "Sturdy", "--message", "two"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(llm.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(llm.requests) == 2, "the second turn never reached the LLM"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    contents = [m.content for m in stored_messages(home, "Sturdy")]
    assert contents[-1] == "two"  # the user's message survived the kill; no half step was stored
    llm.reply("back again")
    after = cli("run", "--agent", "Sturdy", "--message", "three", home=home)
    assert after.returncode == 0, after.stderr
    assert "🤖 back again" in after.stdout
    last_request = [m["content"] for m in llm.requests[-1]["messages"] if m["role"] == "user"]
    assert any('"two"' in c for c in last_request) and any('"three"' in c for c in last_request)


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_timed_heartbeats_wake_an_idle_agent_unless_paused(home: Path, llm: ScriptedLLM, tmp_path: Path) -> None:
    llm.add(
        {
            "tool": "archival_memory_insert",
            "args": {"content": "The user went quiet.", "request_heartbeat": False},
            "content": "The user is idle; I'll make a note.",
        }
    )
    llm.add({"tool": "pause_heartbeats", "args": {"minutes": 60}, "content": "Let them be for an hour."})
    with chat_in_a_terminal(home, tmp_path, "--agent", "Idle", "--first", "--heartbeat-minutes", "0.03") as child:
        child.expect_exact("💭 The user is idle; I'll make a note.")
        child.expect_exact("💭 Let them be for an hour.")
        time.sleep(5)  # paused: no further heartbeat may reach the LLM
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    assert len(llm.requests) == 2
    beat = json.loads(llm.requests[0]["messages"][-1]["content"])
    assert beat["type"] == "heartbeat" and "Timed heartbeat" in beat["reason"]


@pytest.mark.parametrize("half", [0.0, 0.3])
def test_what_is_typed_as_a_timed_heartbeat_comes_is_kept(
    home: Path, llm: ScriptedLLM, tmp_path: Path, half: float
) -> None:
    """A 0.6 s heartbeat (paused: each one a quick step without the LLM). A line sent just before the heartbeat's
    prompt gave up is taken (the prompt waits up to 1 s for a cursor report pexpect never answers: cancelled
    meanwhile, the sent line was lost), and a half-typed line is neither lost nor cut short by the heartbeat."""
    llm.add({"tool": "pause_heartbeats", "args": {"minutes": 60}, "content": "Let them be for an hour."})
    # With the cursor report asked for: the wait for it is where a heartbeat cancelled the prompt and lost the line.
    chat = chat_in_a_terminal(home, tmp_path, "--agent", "Idle", "--first", "--heartbeat-minutes", "0.01", cpr=True)
    with chat as child:
        child.expect_exact("💭 Let them be for an hour.")
        for _ in range(4):
            time.sleep(half)
            child.sendline("/memory")
            child.expect_exact("recall: ", timeout=10)
        child.send("/memo")
        time.sleep(2)  # three heartbeat intervals with the line half-typed
        child.sendline("ry")
        child.expect_exact("recall: ", timeout=10)
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    assert len(llm.requests) == 1  # only the first heartbeat's: "ry" (or "/memo") never went to the agent


def test_names_are_stripped_on_lookup_and_empty_names_refused(home: Path, llm: ScriptedLLM) -> None:
    loaded = cli("load", "directory", "--name", "notes", f"--input-files={DATA / 'test.md'}", home=home)
    assert loaded.returncode == 0, loaded.stderr
    llm.reply("Hi!")
    assert cli("run", "--agent", "Pete", "--message", "hi", home=home).returncode == 0

    llm.reply("Hi again!")
    again = cli("run", "--agent", "  Pete  ", "--message", "hi", home=home)
    assert again.returncode == 0, again.stderr
    assert "Using existing agent 'Pete'" in again.stdout
    attached = cli("attach", "--agent", " Pete ", "--data-source", "  notes  ", home=home)
    assert attached.returncode == 0, attached.stderr
    assert "Attached notes (" in attached.stdout and "to agent 'Pete'" in attached.stdout
    found = cli("search", " notes ", "memory", "--json", home=home)
    assert found.returncode == 0 and json.loads(found.stdout)

    for args, message in [
        (["run", "--agent", "", "--message", "hi"], "error: an agent name must be 1-256 characters on one line"),
        (["run", "--agent", "   ", "--message", "hi"], "error: an agent name must be 1-256 characters on one line"),
        (["attach", "--agent", "Pete", "--data-source", " "], "error: a source name cannot be empty"),
        (["search", "", "memory"], "error: a source name cannot be empty"),
        (["delete", "source", "  ", "-y"], "error: a source name cannot be empty"),
    ]:
        refused = cli(*args, home=home)
        assert refused.returncode == 1, args
        assert refused.stderr.strip() == message, refused.stderr
    assert [a["name"] for a in json.loads(cli("list", "agents", "--json", home=home).stdout)] == ["Pete"]
    assert len(llm.requests) == 2  # the refused runs never reached the LLM


def test_square_brackets_in_the_history_are_shown_as_written_when_the_agent_is_resumed(
    home: Path, llm: ScriptedLLM
) -> None:
    """Resuming an agent shows its last messages; a message with "[/]" in it twice (rich's closing tag) made
    every later `memgpt run --agent` of that agent crash with rich's MarkupError, and "[red]" vanished."""
    said = "code: xs[/] + ys[/] and [red]text[/red] in C:\\temp\\"
    llm.reply(said)
    assert cli("run", "--agent", "Pete", "--message", "say [/] twice [/] and [bold]this", home=home).returncode == 0

    llm.reply("again")
    resumed = cli("run", "--agent", "Pete", "--message", "hi", home=home)
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    assert any(line.endswith("] user: say [/] twice [/] and [bold]this") for line in lines), resumed.stdout
    assert any(line.endswith(f"] assistant: said: {said}") for line in lines), resumed.stdout


def test_terminal_escapes_in_names_and_texts_are_written_out_in_every_output(
    home: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    """A file name, a passage, a source or agent name and a message holding a terminal escape sequence (ESC [,
    or its one-character form 0x9b, which names may hold) are shown as written, the ESC as "\\x1b": printed raw
    by `memgpt search`, `list sources` and the resume banner, they recoloured the terminal. NO_COLOR is set,
    so any ESC in the output came from the data."""
    red = "\x1b[31m"
    note = tmp_path / f"red{red}note.md"
    harbour = "The lighthouse stands at the harbour, white and tall, seen from every boat in the bay. " * 4
    note.write_text(f"# Colours\n\nThe {red}crimson{red} lighthouse. {harbour}\n")  # under 1% control: text
    source = "csi\x9b31mnotes"
    assert cli("load", "directory", "--name", source, f"--input-files={note}", home=home).returncode == 0

    found = cli("search", source, "lighthouse", home=home)
    listed = cli("list", "sources", home=home)
    llm.reply(f"a {red}red{red} reply")
    assert cli("run", "--agent", "Csi\x9bPete", "--message", f"say {red}red", home=home).returncode == 0
    llm.reply("again")
    resumed = cli("run", "--agent", "Csi\x9bPete", "--message", "hi", home=home)

    for result in (found, listed, resumed):
        assert result.returncode == 0, result.stderr
        shown = result.stdout + result.stderr
        assert "\x1b" not in shown and "\x9b" not in shown, shown
    assert "red\\x1b[31mnote.md" in found.stdout and "The \\x1b[31mcrimson\\x1b[31m lighthouse" in found.stdout
    assert "csi\\x9b31mnotes" in listed.stdout
    assert "Using existing agent 'Csi\\x9bPete'" in resumed.stdout
    assert "user: say \\x1b[31mred" in resumed.stdout and "a \\x1b[31mred\\x1b[31m reply" in resumed.stdout


def test_resuming_an_agent_shows_each_of_its_last_messages_cut_short(home: Path, llm: ScriptedLLM) -> None:
    """The resume banner printed each of the last messages whole: a 200,000-character reply came back in full on
    every `memgpt run --agent`. Each is cut at 1,000 characters or 20 lines, saying how much was left out."""
    from memgpt.cli.common import SHOWN_CHARS

    long_reply = "word " * 40_000
    llm.reply(long_reply)
    lines = "\n".join(f"line {n}" for n in range(100))
    assert cli("run", "--agent", "Long", "--message", lines, home=home).returncode == 0
    llm.reply("short")
    resumed = cli("run", "--agent", "Long", "--message", "hi", home=home)
    assert resumed.returncode == 0, resumed.stderr
    banner = resumed.stdout.split("Using existing agent", 1)[1]
    assert len(banner) < 4 * SHOWN_CHARS, len(banner)
    [cut] = [line for line in banner.splitlines() if "assistant: said: word word" in line]
    assert cut.endswith(" more characters not shown]"), cut[-200:]
    shown = len(cut) - len(cut.split("] assistant: ", 1)[0])
    left = int(cut.rsplit("[", 1)[1].split(" ")[0].replace(",", ""))
    assert left > len(long_reply) - SHOWN_CHARS and shown < SHOWN_CHARS + 100
    assert "line 19 … [" in banner and "line 20" not in banner  # 20 lines, "line 0" to "line 19"
    # /dump cuts them as the banner does (it printed them whole): the banner and /dump show the reply once each.
    dumped = cli("run", "--agent", "Long", home=home, stdin="/dump 6\n/exit")
    assert dumped.returncode == 0, dumped.stderr
    assert len(dumped.stdout) < 8 * SHOWN_CHARS, len(dumped.stdout)
    assert dumped.stdout.count(cut.split("assistant: ", 1)[1]) == 2


def test_configure_refuses_the_context_window_run_would_refuse_with_the_same_minimum(
    home: Path, llm: ScriptedLLM
) -> None:
    """`memgpt configure --llm-context-window 1500` was saved, and every `memgpt run` then refused its first agent.
    Configure refuses it now, with run's minimum and words; that minimum is saved, and run takes it."""
    run_refusal = cli("run", "--agent", "Small", "--context-window", "1500", "--message", "hi", home=home)
    assert run_refusal.returncode == 1
    needed = int(re.search(r"give it at least ([\d,]+) \(", run_refusal.stderr)[1].replace(",", ""))  # type: ignore[index]
    assert needed > 1500

    refused = cli("configure", "--llm-context-window", "1500", "--no-llm-check", home=home)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: the context window of a new agent (1,500 tokens) is too small: "
        + run_refusal.stderr.split(" is too small: ", 1)[1].split(f"{needed:,} (", 1)[0]
        + f"{needed:,} (--llm-context-window N, with a model that has that much)"
    )
    assert cli("configure", "--llm-context-window", str(needed - 1), "--no-llm-check", home=home).returncode == 1
    assert load_config(home).llm.context_window != needed - 1

    assert cli("configure", "--llm-context-window", str(needed), "--no-llm-check", home=home).returncode == 0
    assert load_config(home).llm.context_window == needed
    llm.reply("hello")
    result = cli("run", "--agent", "Small", "--message", "hi", home=home)
    assert result.returncode == 0, result.stderr


def test_help_lists_every_slash_command(home: Path, llm: ScriptedLLM) -> None:
    from memgpt.cli.chat import COMMANDS

    result = cli("run", "--agent", "Helper", home=home, stdin="/help\n/quit\n/help\n")
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stdout.splitlines() if line.startswith("/")]
    assert [line.split()[0] for line in shown] == [c.name for c in COMMANDS]  # once: /quit ended the chat
    assert "/attach [SOURCE]   attach a data source to archival memory" in shown
    assert "/exit              leave the chat (also /quit)" in shown
    assert not llm.requests


def test_run_message_exits_1_when_the_turn_fails_and_130_when_interrupted(home: Path, llm: ScriptedLLM) -> None:
    llm.reply("fine")
    assert cli("run", "--agent", "Flaky", "--message", "hi", home=home).returncode == 0
    config = load_config(home)
    config.llm.timeout_seconds = 3  # the whole turn's LLM budget, retries included
    save_config(config, home)

    llm.add(*[{"status": 503, "message": "overloaded"}] * 10)
    failed = cli("run", "--agent", "Flaky", "--message", "are you there?", home=home)
    assert failed.returncode == 1, failed.stdout
    assert "answered 503: overloaded" in failed.stderr and "your message is saved; /retry" in failed.stderr
    llm.script.clear()

    llm.add({"hang": True})
    hung = cli("run", "--agent", "Flaky", "--message", "hello?", home=home)
    assert hung.returncode == 1, hung.stdout
    assert "did not answer within" in hung.stderr

    config.llm.timeout_seconds = 120
    save_config(config, home)
    llm.add({"delay": 60, "tool": "send_message", "args": {"message": "too late"}})
    asked = len(llm.requests)
    env = {**os.environ, "MEMGPT_HOME": str(home), "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memgpt", "run", "--agent", "Flaky", "--message", "wait for it"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(llm.requests) == asked and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(llm.requests) > asked, "the turn never reached the LLM"
    proc.send_signal(signal.SIGINT)  # Ctrl-C while the LLM thinks
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted (your message is saved; /retry lets the agent answer it)" in err
    assert "Traceback" not in err


def test_run_message_exits_1_when_no_answer_reached_the_user(home: Path, llm: ScriptedLLM) -> None:
    loop = {"tool": "archival_memory_search", "args": {"query": "x", "request_heartbeat": True}}
    llm.add(*[loop] * 10)  # `run` allows 10 steps in a row
    limited = cli("run", "--agent", "Loopy", "--message", "search forever", home=home)
    assert limited.returncode == 1, limited.stderr
    assert [line for line in limited.stderr.splitlines() if line] == [
        "error: stopped after 10 steps in a row; send a message to continue"
    ]
    assert "stopped after" not in limited.stdout
    llm.add({"content": ""})
    empty = cli("run", "--agent", "Loopy", "--message", "hello?", home=home)
    assert empty.returncode == 1, empty.stderr
    assert "error: the model sent an empty reply" in empty.stderr
    llm.add(loop, {"tool": "send_message", "args": {"message": "found it"}})
    answered = cli("run", "--agent", "Loopy", "--message", "one more", home=home)
    assert answered.returncode == 0, answered.stderr
    assert "found it" in answered.stdout
    llm.add(*[loop] * 10)
    piped = cli("run", "--agent", "Loopy", home=home, stdin="/retry\n")  # slash commands that run steps too
    assert piped.returncode == 1 and "stopped after 10 steps" in piped.stderr


def test_run_message_leaves_recall_indexing_to_the_next_search_which_sees_every_message(
    home: Path, llm: ScriptedLLM, model: LocalMiniLM
) -> None:
    """`run --message` loads no embedding model for a turn that does not embed (test_startup): its messages stay in
    the recall backlog (SQL marks them unindexed), and the next search of the agent, in another process, indexes
    them first and ranks them by meaning; nothing is lost or indexed twice."""
    llm.reply("Noted!")
    told = run_cli("run", "--agent", "Kit", "--message", "My cat is called Biscuit and loves sardines.", home=home)
    assert told.returncode == 0, told.stderr
    config = load_config(home)
    with Storage(config, home) as storage:
        state = storage.agents.get(config.user_id, "Kit")
        assert state is not None
        assert storage.messages.backlog(state.id) >= 2  # the user's message and the reply: not indexed

    # No word of the query is in the message: only the ranked search (the index) finds it.
    llm.add({"tool": "conversation_search", "args": {"query": "what is the name of my pet", "request_heartbeat": True}})
    llm.reply("Biscuit.")
    asked = run_cli("run", "--agent", "Kit", "--message", "Do you remember my pet?", home=home)
    assert asked.returncode == 0, asked.stderr
    found = tool_results(llm.requests[-1])[-1]
    assert found["status"] == "OK", found
    assert "My cat is called Biscuit" in found["message"] and "said: Noted!" in found["message"]
    assert WORD_SEARCH_NOTE not in found["message"]

    with Storage(config, home) as storage:  # what that turn stored after its search is indexed at the next one
        recall = open_memory(storage, state, model).recall
        assert recall.wait_indexed(60)
        assert storage.messages.backlog(state.id) == 0
        worded = [m for m in storage.messages.last(state.id, 1000) if search_text(m)]
        entries = storage.passages(state.space).count(all_of(eq("kind", "recall"), eq("agent_id", state.id)))
        assert entries == len(worded) == 4  # every message with words (two turns: two said, two replies), once
        recall.close()


def test_list_agents_never_cuts_an_agent_name(home: Path, llm: ScriptedLLM) -> None:
    from tests.test_cli import run_at_width

    name = "ResearchAssistantForPapers2024"  # 30 characters beside six other columns
    llm.reply("Hello.")
    assert cli("run", "--agent", name, "--message", "hi", home=home).returncode == 0
    table = run_at_width("list", "agents", home=home, columns=80)
    assert "…" not in table and f"│ {name} " in table


PRESSURE_WINDOW = 6144  # room for messages ~3,100 tokens: 25% of it (~770) is far more than what follows the alert
# An answer (the call of send_message and its result) may take this many tokens more than an earlier one: a scripted
# call's id ("call_" and 10 random hex digits) takes 5-12 tokens, and "Noted again N." is a word longer than "Noted N.".
ANSWER_SLACK = 8


def conversation_and_room(request: dict[str, Any], window: int) -> tuple[list[int], int]:
    """A request's conversation messages in our tokenizer's count (what the agent compared with its room before
    sending it), and the room: the window less the answer's reserve and the system message and tool schemas
    (the scripted LLM reports 1 prompt token, so the agent's ratio to the server's count stays 1)."""
    tools = [
        ToolSpec(t["function"]["name"], t["function"]["description"], t["function"]["parameters"])
        for t in request.get("tools", [])
    ]
    system, *conversation = request["messages"]
    fixed = count_message("scripted", system) + count_tools("scripted", tools)
    return [count_message("scripted", m) for m in conversation], window - answer_reserve(window) - fixed


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_the_memory_pressure_alert_is_sent_once_a_summary_not_once_a_process(home: Path, llm: ScriptedLLM) -> None:
    """Each `run --message` is a process of its own: the ones after the one that sent the alert (the context
    still past 75% of the window, no summary since) do not send it again.

    The two turns after the alert must fit in the 25% of the room left above the alert's threshold. In a 4096
    window that is 326 tokens, and the alert (~60) with two short turns (~120 each: the JSON envelope, the tool
    call and its result) took all but 0-25 of them, by the random tool call ids: it flaked. Here the band is
    ~770 tokens and the counts are read from the requests: what the turns need is asserted to fit, with room."""
    story = "Here is a long story about sailing and weather. "
    outputs = []
    at, room = 0, PRESSURE_WINDOW  # the conversation's tokens at the last step, and the room it had
    for turn in range(12):  # in this process (the same main(); a process each took ~5 s): up to the alert
        llm.reply(f"Noted {turn}.")
        # Steps of ~620 tokens (an answer and 50 stories) while a short step could follow before 75% of the room,
        # then of ~170 (5 stories): the step that crosses it overshoots little.
        long = at + 620 + 170 < 0.75 * room
        message = f"{turn}: {story * (50 if long else 5)}"
        result = cli(
            "run", "--agent", "Full", "--context-window", str(PRESSURE_WINDOW), "--message", message, home=home
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
        if "memory pressure" in result.stdout:
            break
        sizes, room = conversation_and_room(llm.requests[-1], PRESSURE_WINDOW)
        at = sum(sizes)
    assert "memory pressure" in outputs[-1], outputs
    assert not any("summarized" in out for out in outputs), outputs
    # The request the alert went with: [..., the last answer (call, result), the message, the alert].
    sizes, room = conversation_and_room(llm.requests[-1], PRESSURE_WINDOW)
    crossed, alert, message, answer = sum(sizes[:-1]), sizes[-1], sizes[-2], sizes[-4] + sizes[-3] + ANSWER_SLACK
    assert 0.75 * room < crossed <= 0.75 * room + 200, (crossed, room)  # the step that crossed was a small one
    # The second short turn is checked with the alert, two answers and two messages (shorter than this one) more.
    needed = crossed + alert + 2 * answer + 2 * message
    assert needed <= room - 100, (crossed, alert, answer, message, needed, room)
    for turn in range(2):
        llm.reply(f"Noted again {turn}.")
        again = run_cli("run", "--agent", "Full", "--message", f"and {turn}", home=home)
        assert again.returncode == 0, again.stderr
        assert "memory pressure" not in again.stdout and "summarized" not in again.stdout, again.stdout
    sizes, last_room = conversation_and_room(llm.requests[-1], PRESSURE_WINDOW)
    assert 0.75 * last_room < sum(sizes) <= min(needed, last_room), (sizes, needed, last_room)
    alerts = [
        m
        for m in llm.requests[-1]["messages"]
        if m["role"] == "user" and json.loads(m["content"]).get("type") == "system_alert"
    ]
    assert len(alerts) == 1, alerts  # the one the first process sent, still in the window


def lines(stderr: str) -> list[str]:
    """The lines on stderr but Milvus 2.3's note that it has no BM25 (the fixture's server)."""
    return [line for line in stderr.strip().splitlines() if "has no BM25 full-text search" not in line]


@dataclass
class _ServerTurns:
    """A `memgpt server` process on ``home`` (a Milvus server for the vectors, busy wait 1 s) with one agent, "sam",
    whose turns the test holds in their LLM call: for a CLI command to meet a turn of another process."""

    home: Path
    config: Config
    llm: ScriptedLLM
    server: ServerProcess
    key: str
    agent_id: str

    def turn(
        self, gate: threading.Event, answers: list[httpx.Response], said: str = "Hello, Chad."
    ) -> threading.Thread:
        """A turn of the agent in the server, its LLM call held until ``gate`` is set."""
        self.llm.add({"tool": "send_message", "args": {"message": said}, "content": "Greet.", "until": gate})
        asked = len(self.llm.requests)
        url = f"{self.server.url}/v1/agents/{self.agent_id}/messages"
        headers = auth(self.key)
        running = threading.Thread(
            target=lambda: answers.append(web.post(url, json={"input": "Hi"}, headers=headers, timeout=120))
        )
        running.start()
        deadline = time.monotonic() + 60
        while len(self.llm.requests) == asked and time.monotonic() < deadline:  # the turn is in its LLM call
            time.sleep(0.05)
        return running

    def busy_wait(self, seconds: float) -> None:
        """The CLI's wait for a turn; the server keeps the one it started with."""
        self.config.server.busy_wait_seconds = seconds
        save_config(self.config, self.home)

    def start_cli(self, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
        """`memgpt ARGS` started, and the lines of its stderr as a thread reads them."""
        command = [sys.executable, "-m", "memgpt", *args]
        started = subprocess.Popen(
            command, env=cli_env(self.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        said: list[str] = []
        threading.Thread(target=lambda: said.extend(started.stderr or []), daemon=True).start()
        return started, said


@pytest.fixture
def server_turns(home: Path, llm: ScriptedLLM, milvus_server: str, server_database: str) -> Iterator[_ServerTurns]:
    config = use_scripted_llm(home, llm.url)
    config.milvus.uri, config.milvus.database, config.milvus.token = milvus_server, server_database, TOKEN
    config.server.busy_wait_seconds = 1
    save_config(config, home)
    with Storage(config, home) as storage:
        key = storage.users.create_key(storage.users.ensure(config.user_id, OWNER_NAME).id)[1]
    server = ServerProcess(home)
    try:
        server.wait_ready()
        blocks = [{"label": "human", "value": "Name: Chad"}, {"label": "persona", "value": "I am Sam."}]
        agent = Letta(base_url=server.url, api_key=key, max_retries=0).agents.create(
            name="sam", memory_blocks=blocks, model="openai-compatible/scripted"
        )  # type: ignore[arg-type]
        yield _ServerTurns(home, config, llm, server, key, agent.id)
    finally:
        server.stop()


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_delete_agent_waits_for_a_server_turn_of_the_agent_or_says_it_is_busy(
    home: Path, server_turns: _ServerTurns
) -> None:
    """`memgpt delete agent` while a `memgpt server` process on the same home (a Milvus server for the vectors) runs
    a turn of that agent: it deleted the agent under the turn, whose next write then failed. It holds the agent's
    lease, as the server's own delete does: it waits for the turn up to the server's busy wait, else says in one
    line that the agent is busy and deletes nothing."""
    config, pid = server_turns.config, server_turns.server.process.pid

    def exists() -> bool:
        with Storage(config, home) as storage:
            return storage.agents.get(config.user_id, "sam") is not None

    gate, answers = threading.Event(), []
    running = server_turns.turn(gate, answers)
    refused = run_cli("delete", "agent", "sam", "--yes", home=home)
    gate.set()
    running.join(60)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert lines(refused.stderr) == [
        f"waiting for the agent's turn in another memgpt process {held_by(pid)}...",
        f"error: agent 'sam' is busy with a turn in another memgpt process {held_by(pid)}; nothing deleted: "
        "try again in a moment",
    ], refused.stderr
    assert answers[0].status_code == 200, answers[0].text
    assert exists()

    server_turns.busy_wait(60)
    gate, answers = threading.Event(), []
    running = server_turns.turn(gate, answers)
    deleting, said_on_stderr = server_turns.start_cli("delete", "agent", "sam", "--yes")
    try:
        deadline = time.monotonic() + 50  # (the held LLM call answers after 60 s anyway)
        while (
            not any("waiting for the agent's turn" in line for line in said_on_stderr)
            and deleting.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)  # the CLI starts and opens the agent (seconds), then waits for the lease
        assert deleting.poll() is None, deleting.communicate()  # it waits for the turn ...
        assert lines("".join(said_on_stderr)) == [
            f"waiting for the agent's turn in another memgpt process {held_by(pid)}..."
        ]
        assert exists()  # ... having deleted nothing
        gate.set()
        running.join(60)
        out = deleting.communicate(timeout=60)[0]
        err = "".join(said_on_stderr)
    finally:
        if deleting.poll() is None:
            deleting.kill()
    assert deleting.returncode == 0, err
    assert lines(err) == [f"waiting for the agent's turn in another memgpt process {held_by(pid)}..."], err
    assert out.strip() == "Deleted agent 'sam' and 0 archival passages"  # its recall index entries not counted
    assert answers[0].status_code == 200, answers[0].text
    assert "Hello, Chad." in answers[0].text
    assert not exists()


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_run_message_waits_for_a_server_turn_of_the_agent_and_reopens_it_or_says_it_was_not_sent(
    home: Path, llm: ScriptedLLM, server_turns: _ServerTurns
) -> None:
    """`memgpt run --message` while a `memgpt server` process on the same home (a Milvus server for the vectors) runs
    a turn of that agent: it took no lease, so its turn ran between the server's steps (its message stored before
    the server's answer) with the agent as it opened it (the server's turn unseen by its LLM). It holds the agent's
    lease for its turn, as the server's turns do: it waits for the server's turn up to the busy wait (one line
    saying so), opens the agent afresh since that turn moved it, and answers after it; past the wait it says in one
    line that the message was not sent, and stores nothing."""
    pid = server_turns.server.process.pid

    def users_said() -> list[str]:
        return [m.content for m in stored_messages(home, "sam") if m.role.value == "user"]

    gate, answers = threading.Event(), []
    running = server_turns.turn(gate, answers, "Hello, Chad.")
    llm.reply("Not this one.")  # what the refused message would have been answered with
    refused = run_cli("run", "--agent", "sam", "--message", "refused words", home=home)
    gate.set()
    running.join(60)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert lines(refused.stderr) == [
        f"waiting for the agent's turn in another memgpt process {held_by(pid)}...",
        f"error: the agent is busy with a turn in another memgpt process {held_by(pid)}; "
        "your message was not sent: send it again",
    ], refused.stderr
    assert answers[0].status_code == 200, answers[0].text
    assert not any("refused words" in said for said in users_said())
    llm.requests.clear()
    llm.script.clear()

    server_turns.busy_wait(60)
    gate, answers = threading.Event(), []
    running = server_turns.turn(gate, answers, "Hello again, Chad.")
    llm.reply("Noted, after your greeting.")
    sending, said_on_stderr = server_turns.start_cli("run", "--agent", "sam", "--message", "second words")
    try:
        deadline = time.monotonic() + 50  # (the held LLM call answers after 60 s anyway)
        while (
            len(llm.requests) < 2
            and not any("waiting for the agent's turn" in line for line in said_on_stderr)
            and sending.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)  # the CLI opens the agent (seconds), then waits for the lease or asks its LLM
        time.sleep(1.0)
        assert len(llm.requests) == 1, llm.requests[-1]  # it waits for the server's turn
        gate.set()
        running.join(60)
        out = sending.communicate(timeout=60)[0]
        err = "".join(said_on_stderr)
    finally:
        if sending.poll() is None:
            sending.kill()
    assert sending.returncode == 0, err
    assert lines(err) == [f"waiting for the agent's turn in another memgpt process {held_by(pid)}..."], err
    assert "Noted, after your greeting." in out
    assert answers[0].status_code == 200, answers[0].text
    # Its message after the server's turn's answer, never between that turn's steps.
    history = [repr(m) for m in stored_messages(home, "sam")]
    greeted = next(i for i, text in enumerate(history) if "Hello again, Chad." in text)
    second = next(i for i, text in enumerate(history) if "second words" in text)
    assert greeted < second, history
    # The CLI's LLM saw the server's turn: the agent was opened afresh after it.
    assert "Hello again, Chad." in json.dumps(llm.requests[-1]["messages"])


def test_memgpt_run_stalled_past_its_lease_says_so_naming_itself_and_stores_nothing_more(
    home: Path, llm: ScriptedLLM
) -> None:
    """`memgpt run` holds the agent's lease for its turn, renewed while it runs (the LeaseRenewer the server's turns
    use too). Stopped (SIGSTOP) inside its LLM call past the lease, it has the agent taken over by another process;
    going on, its step is refused: one line in the wording of the server's 409, naming this memgpt run process (not
    "this server process"), saying what is stored: its message, not the step."""
    llm.reply("Hello.")
    assert run_cli("run", "--agent", "sam", "--message", "hi", home=home).returncode == 0
    config = load_config(home)
    config.server.lease_seconds = 3  # (the least allowed) renewed every second while the turn runs
    save_config(config, home)
    gate = threading.Event()
    llm.add({"tool": "send_message", "args": {"message": "Too late."}, "content": "Answer.", "until": gate})
    env = {**os.environ, "MEMGPT_HOME": str(home), "NO_COLOR": "1"}
    command = [sys.executable, "-m", "memgpt", "run", "--agent", "sam", "--message", "stalled words"]
    sending = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(llm.requests) < 2 and sending.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the CLI opens the agent, takes its lease, stores the message and asks its LLM
        assert len(llm.requests) == 2, sending.poll()
        os.kill(sending.pid, signal.SIGSTOP)
        with Storage(config, home) as storage:
            state = storage.agents.get(config.user_id, "sam")
            assert state is not None
            taker = new_owner()
            deadline = time.monotonic() + 30
            while storage.turns.acquire(state.id, taker, "", 60) is None:  # free once its lease expired
                assert time.monotonic() < deadline, "the stopped memgpt run's lease did not expire"
                time.sleep(0.2)
            os.kill(sending.pid, signal.SIGCONT)
            gate.set()
            out, err = sending.communicate(timeout=60)
            storage.turns.release(state.id, taker)
    finally:
        gate.set()
        if sending.poll() is None:
            os.kill(sending.pid, signal.SIGCONT)
            sending.kill()
    assert sending.returncode == 1, (out, err)
    assert err.strip().splitlines() == [
        f"error: agent {state.id}: this memgpt run process stalled past its lease and another process took the "
        "agent over; this turn's steps since then are not stored, the message is (the agent's next turn sees it)"
    ], err
    history = [m.content or "" for m in stored_messages(home, "sam")]
    assert sum("stalled words" in text for text in history) == 1, history
    assert not any("Too late." in text for text in history), history


def test_a_typed_message_the_busy_agent_did_not_get_is_put_back_at_the_prompt(
    home: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    """The chat in a terminal while another process holds the agent's lease past the busy wait (here this test's):
    one line says it waits, one that the message was not sent, and the text is back at the prompt: Enter sends it
    once the agent is free."""
    llm.reply("Hello.")
    assert run_cli("run", "--agent", "sam", "--message", "hi", home=home).returncode == 0
    config = load_config(home)
    config.server.busy_wait_seconds = 1
    save_config(config, home)
    llm.reply("Got your kept words.")
    with Storage(config, home) as storage:
        state = storage.agents.get(config.user_id, "sam")
        assert state is not None
        with chat_in_a_terminal(home, tmp_path, "--agent", "sam") as child:
            child.expect_exact("> Enter your message:")
            with storage.turns.holding(state.id, 60, 0):
                child.sendline("kept words")
                child.expect_exact(f"waiting for the agent's turn in another memgpt process {held_by(os.getpid())}...")
                child.expect_exact(
                    f"error: the agent is busy with a turn in another memgpt process {held_by(os.getpid())}; "
                    "your message was not sent (it is back at the prompt)"
                )
                child.expect_exact("> Enter your message: kept words")
            child.send("\r")
            child.expect_exact("🤖 Got your kept words.")
            child.expect_exact("> Enter your message:")
            child.sendline("/exit")
            child.expect(pexpect.EOF)
    sent = [m for m in stored_messages(home, "sam") if "kept words" in (m.content or "")]
    assert len(sent) == 1, sent
    assert len(llm.requests) == 2


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_a_chat_opens_its_agent_once_across_its_own_writes(
    home: Path, tmp_path: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's chat: `/attach` a source, then questions (and a `/pop`). The chat's own writes move the agent's
    version under its lease; the next turn must not take them for another process's change and open the agent
    afresh (it did after `/attach` and `/pop`: a wait for the last turn's recall indexing, MCP servers started
    again, warnings said again)."""
    from memgpt.agent import manager

    notes = tmp_path / "notes.txt"
    notes.write_text("The codeword of the expedition is aubergine.\n")
    assert cli("load", "directory", "--name", "notes", f"--input-files={notes}", home=home).returncode == 0
    opened: list[str] = []
    real = manager.open_agent

    def counted(*args: Any, **kwargs: Any) -> Any:
        opened.append("open")
        return real(*args, **kwargs)

    monkeypatch.setattr(manager, "open_agent", counted)
    for answer in ("First.", "Second.", "Third."):
        llm.reply(answer)
    script = "/attach notes\nfirst question\n/pop 3\nsecond question\nthird question\n/exit\n"
    result = cli("run", "--agent", "Seedy", home=home, stdin=script)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Attached notes" in result.stdout and "🤖 Third." in result.stdout, result.stdout
    assert opened == ["open"], result.stdout


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_a_ctrl_c_during_a_timed_heartbeat_says_so_in_one_line_and_the_chat_goes_on(
    home: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    """A real Ctrl-C in the terminal while a timed heartbeat's second step waits for the LLM (its first step asked
    for it): one line says it was interrupted, no traceback, the chat's prompt comes back, the agent's lease is given
    back at once (another process can take it), and what the first step stored is kept, nothing of the second."""
    go_on = threading.Event()
    llm.add(
        {
            "tool": "archival_memory_insert",
            "args": {"content": "The user went quiet.", "request_heartbeat": True},
            "content": "The user is idle; I'll make a note.",
        },
        {"until": go_on, "tool": "send_message", "args": {"message": "never shown"}},
        {"tool": "pause_heartbeats", "args": {"minutes": 60}, "content": "Let them be for an hour."},
    )
    env = {**os.environ, "MEMGPT_HOME": str(home), **TERMINAL}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "memgpt", "run", "--agent", "Idle", "--first", "--heartbeat-minutes", "0.03"],
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
        cwd=str(tmp_path),
    )
    try:
        child.expect_exact("💭 The user is idle; I'll make a note.")
        deadline = time.monotonic() + 30
        while len(llm.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(llm.requests) == 2, "the heartbeat's second step never reached the LLM"
        child.sendintr()
        child.expect_exact("interrupted (the timed heartbeat stopped; what it stored before is kept)")
        child.expect_exact("> Enter your message:")
        config = load_config(home)
        with Storage(config, home) as storage:
            state = storage.agents.get(config.user_id, "Idle")
            assert state is not None
            with storage.turns.holding(state.id, 30, 0):  # free now: else AgentBusyError at once
                pass
        go_on.set()
        child.sendline("/exit")
        child.expect(pexpect.EOF)
        out = child.before or ""
    finally:
        go_on.set()
        child.close()
    assert "Traceback" not in out, out
    assert child.exitstatus == 0, out
    stored = stored_messages(home, "Idle")
    assert "The user is idle; I'll make a note." in [m.content for m in stored]  # the first step, kept
    called = [call.name for m in stored for call in m.tool_calls]
    assert "send_message" not in called, called  # nothing of the interrupted step


def test_keys_typed_during_a_timed_heartbeat_are_not_echoed_among_its_output(
    home: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    """A line typed while a timed heartbeat's step runs (it comes unasked) was echoed raw by the terminal among the
    agent's output, before the next prompt took it; now only that prompt shows it, and runs it."""
    go_on = threading.Event()
    pause = {"tool": "pause_heartbeats", "args": {"minutes": 60}, "content": "Let them be for an hour."}
    llm.add({"until": go_on, **pause})
    try:
        with chat_in_a_terminal(home, tmp_path, "--agent", "Idle", "--first", "--heartbeat-minutes", "0.01") as child:
            deadline = time.monotonic() + 30
            while not llm.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert llm.requests, "the timed heartbeat never reached the LLM"
            child.sendline("/memory")  # typed while the heartbeat's step waits for the LLM
            time.sleep(0.5)  # (a terminal echoes at once)
            go_on.set()
            child.expect_exact("💭 Let them be for an hour.")
            assert "/memory" not in (child.before or "")
            child.expect_exact("/memory")  # at the next prompt, which takes it
            child.expect_exact("recall: ", timeout=10)
            child.sendline("/exit")
            child.expect(pexpect.EOF)
    finally:
        go_on.set()
    assert len(llm.requests) == 1
