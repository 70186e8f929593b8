"""The Python client (``memgpt.create_client``): every test runs against the local client (in this process, on
the home) and the REST client (over real HTTP to a `memgpt server`), which must answer alike."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memgpt import create_client
from memgpt.client.base import Client
from memgpt.client.types import (
    AgentInfo,
    AssistantMessage,
    FileJob,
    ReasoningMessage,
    ToolCallMessage,
    ToolReturnMessage,
    TurnEnd,
    TurnResponse,
    UserMessage,
)
from memgpt.errors import (
    AgentBusyError,
    AlreadyExistsError,
    ConflictError,
    InputFileError,
    NotFoundError,
    UnsupportedFileTypeError,
    UserError,
)
from memgpt.server.turns import Timing
from tests.conftest import run_cli
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, use_scripted_llm

TEA = "Chad drinks green tea every morning at seven."
TIMING = Timing(busy_wait=0.5, retry_after=1, ping_every=0.3)


@pytest.fixture
def server(home: Path, llm: ScriptedLLM) -> Iterator[LiveServer]:
    running = LiveServer(home, use_scripted_llm(home, llm.url))
    running.state.turns().timing = TIMING
    yield running
    running.stop()


@pytest.fixture(params=["local", "rest"])
def client(request: pytest.FixtureRequest, home: Path, llm: ScriptedLLM) -> Iterator[Client]:
    if request.param == "local":
        use_scripted_llm(home, llm.url)
        local = create_client()  # the home is $MEMGPT_HOME
        local.state.turns().timing = TIMING  # type: ignore[attr-defined]
        yield local
        local.close()
    else:
        server: LiveServer = request.getfixturevalue("server")
        remote = create_client(base_url=server.url, token=server.key())
        yield remote
        remote.close()


@pytest.fixture
def sam(client: Client) -> AgentInfo:
    return client.create_agent("sam", persona="I am Sam.", human="Name: Chad")


def search_then_reply(llm: ScriptedLLM, reply: str = "You like tea.", delay: float = 0) -> None:
    llm.add({"tool": "archival_memory_search", "args": {"query": "tea", "request_heartbeat": True}, "content": "Look."})
    llm.reply(reply, thought="Answer him.", delay=delay)


def test_agents_are_created_listed_found_and_deleted(client: Client) -> None:
    sam = client.create_agent("sam", persona="I am Sam.", human="Name: Chad", memory={"notes": "none yet"})
    assert isinstance(sam, AgentInfo) and sam.id.startswith("agent-")
    assert sam.memory == {"persona": "I am Sam.", "notes": "none yet", "human": "Name: Chad"}
    assert "send_message" in sam.tools
    other = client.create_agent("max", tags=["test"], description="another")
    assert set(other.memory) == {"persona", "human"}  # the configured templates
    assert [a.name for a in client.list_agents()] == ["sam", "max"]
    assert client.get_agent(sam.id) == sam
    assert client.get_agent_id("max") == other.id
    assert client.agent_exists(agent_name="sam") and not client.agent_exists(agent_name="nobody")
    with pytest.raises(UserError, match="already exists"):
        client.create_agent("sam")
    with pytest.raises(UserError, match="no tool named 'fly'"):
        client.create_agent("bird", tools=["fly"])
    renamed = client.rename_agent(sam.id, "samuel")
    assert renamed.name == "samuel" and renamed.memory == sam.memory
    changed = client.update_agent(sam.id, description="the first one", tags=["a", "b"])
    assert (changed.name, changed.description, changed.tags) == ("samuel", "the first one", ["a", "b"])
    with pytest.raises(UserError, match="already exists"):
        client.rename_agent(sam.id, "max")
    client.delete_agent(sam.id)
    with pytest.raises(NotFoundError):
        client.get_agent(sam.id)
    assert not client.agent_exists(agent_id=sam.id)
    assert [a.name for a in client.list_agents()] == ["max"]


def test_send_message_returns_the_whole_turn(client: Client, sam: AgentInfo, llm: ScriptedLLM) -> None:
    search_then_reply(llm)
    turn = client.send_message(sam.id, "What do I like?")
    assert isinstance(turn, TurnResponse)
    kinds = [type(m) for m in turn.messages]
    assert kinds == [ReasoningMessage, ToolCallMessage, ToolReturnMessage, ReasoningMessage, AssistantMessage]
    call = turn.messages[1]
    assert isinstance(call, ToolCallMessage) and call.name == "archival_memory_search"
    assert json.loads(call.arguments)["query"] == "tea"
    assert turn.assistant_messages == ["You like tea."]
    assert turn.stop_reason == "end_turn" and turn.usage.step_count == 2
    assert client.get_agent_memory(sam.id).recall_memory >= 4  # the user's message, two steps, a tool result

    llm.reply("Still tea.")
    again = client.user_message(sam.id, "And now?")
    assert again.assistant_messages == ["Still tea."]
    history = client.get_messages(sam.id)
    said = [m.text for m in history if isinstance(m, UserMessage) and m.text in ("What do I like?", "And now?")]
    assert said == ["What do I like?", "And now?"]
    assert [m.text for m in history if isinstance(m, AssistantMessage)][-2:] == ["You like tea.", "Still tea."]
    last_two = client.get_messages(sam.id, limit=2)
    assert last_two == history[-2:]
    assert client.get_messages(sam.id, before=last_two[0].id, limit=1000) == history[:-2]
    assert isinstance(history[0], UserMessage)  # a new agent's history starts with the first message
    assert client.get_messages(sam.id, after=history[0].id, limit=2) == history[1:3]  # thought and call: one message


def test_streaming_yields_each_step_as_it_happens(client: Client, sam: AgentInfo, llm: ScriptedLLM) -> None:
    search_then_reply(llm, delay=1.5)
    seen: list[tuple[float, object]] = []
    for event in client.send_message(sam.id, "What do I like?", stream=True):
        seen.append((time.monotonic(), event))
    events = [e for _, e in seen]
    assert [type(e) for e in events] == [
        ReasoningMessage,
        ToolCallMessage,
        ToolReturnMessage,
        ReasoningMessage,
        AssistantMessage,
        TurnEnd,
    ]
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.stop_reason == "end_turn" and end.error is None
    assert end.usage.step_count == 2
    assert seen[-1][0] - seen[0][0] > 1.0  # the first step arrived before the second was answered


def test_core_memory_is_read_and_updated(client: Client, sam: AgentInfo) -> None:
    memory = client.get_agent_memory(sam.id)
    assert memory.core_memory == {"persona": "I am Sam.", "human": "Name: Chad"}
    assert memory.recall_memory == 0 and memory.archival_memory == 0
    updated = client.update_agent_core_memory(sam.id, {"human": "Name: Chad\nLikes: green tea"})
    assert updated.core_memory["human"] == "Name: Chad\nLikes: green tea"
    assert client.get_agent(sam.id).memory["human"] == "Name: Chad\nLikes: green tea"
    with pytest.raises(UserError, match="Exceeds"):
        client.update_agent_core_memory(sam.id, {"human": "x" * 100_000})
    with pytest.raises(NotFoundError, match="no core memory block 'hobbies'"):
        client.update_agent_core_memory(sam.id, {"hobbies": "chess"})
    assert client.get_agent_memory(sam.id).core_memory["human"] == "Name: Chad\nLikes: green tea"


def test_archival_memory_is_inserted_listed_searched_and_deleted(client: Client, sam: AgentInfo) -> None:
    [tea] = client.insert_archival_memory(sam.id, TEA)
    [chess] = client.insert_archival_memory(sam.id, "Chad plays chess on Sundays.")
    assert tea.text == TEA
    assert [p.id for p in client.get_agent_archival_memory(sam.id)] == [tea.id, chess.id]
    assert [p.id for p in client.get_archival_memory(sam.id, after=tea.id)] == [chess.id]
    hits = client.search_archival(sam.id, "what does Chad drink in the morning", limit=2)
    assert hits[0].id == tea.id and hits[0].score >= hits[-1].score
    assert client.get_agent_memory(sam.id).archival_memory == 2
    client.delete_archival_memory(sam.id, tea.id)
    assert [p.id for p in client.get_agent_archival_memory(sam.id)] == [chess.id]
    with pytest.raises(NotFoundError):
        client.delete_archival_memory(sam.id, tea.id)


def test_sources_load_attach_search_detach_delete(client: Client, sam: AgentInfo, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("# Garden\n\nThe heron visits the pond behind the garden every dawn.\n", encoding="utf-8")
    source = client.create_source("garden", description="garden notes")
    with pytest.raises(ConflictError):
        client.create_source("garden")
    job = client.load_file_into_source(notes, source.id)
    assert isinstance(job, FileJob) and job.status == "completed" and job.total_chunks >= 1
    assert client.get_job(job.id, source.id) == job
    [listed] = client.list_sources()
    assert listed.id == source.id and listed.passages >= 1
    assert client.get_source_id("garden") == source.id
    assert client.get_source(source.id) == listed

    later = tmp_path / "later.txt"
    later.write_text("The fox sleeps under the old oak.", encoding="utf-8")
    pending = client.load_file_into_source(later, source.id, blocking=False)
    deadline = time.monotonic() + 120
    while not pending.finished and time.monotonic() < deadline:
        time.sleep(0.1)
        pending = client.get_job(pending.id, source.id)
    assert pending.status == "completed" and pending.file_name == "later.txt"

    client.attach_source_to_agent(sam.id, source_name="garden")
    assert [s.id for s in client.list_attached_sources(sam.id)] == [source.id]
    assert client.get_agent(sam.id).source_ids == [source.id]
    hits = client.search_archival(sam.id, "which bird visits the pond")
    assert hits and hits[0].source_id == source.id and "heron" in hits[0].text
    client.detach_source(sam.id, source.id)
    assert client.list_attached_sources(sam.id) == []
    assert client.search_archival(sam.id, "which bird visits the pond") == []

    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):  # refused before anything is stored
        client.load_file_into_source(tmp_path / "empty.txt", source.id)
    with pytest.raises(InputFileError):
        client.load_file_into_source(tmp_path / "missing.txt", source.id)
    client.delete_source(source.id)
    assert client.list_sources() == []
    with pytest.raises(NotFoundError):
        client.get_source(source.id)


def test_agents_are_exported_and_imported(client: Client, sam: AgentInfo, llm: ScriptedLLM, tmp_path: Path) -> None:
    llm.reply("Hello Chad.")
    client.send_message(sam.id, "Hi!")
    client.insert_archival_memory(sam.id, TEA)
    target = tmp_path / "sam.af"
    text = client.export_agent(sam.id, target)
    assert json.loads(target.read_text(encoding="utf-8")) == json.loads(text)
    copy = client.import_agent(target, name="sam2")
    assert copy.name == "sam2" and copy.id != sam.id and copy.memory == sam.memory
    assert [p.text for p in client.get_agent_archival_memory(copy.id)] == [TEA]
    said = [m.text for m in client.get_messages(copy.id) if isinstance(m, AssistantMessage)]
    assert said[-1] == "Hello Chad."
    from_text = client.import_agent(text)
    assert from_text.name == "sam_copy" and from_text.memory == sam.memory
    with pytest.raises(ConflictError, match="sam2"):
        client.import_agent(text, name="sam2")


def test_errors_are_memgpts_own(client: Client, sam: AgentInfo, llm: ScriptedLLM) -> None:
    with pytest.raises(NotFoundError):
        client.get_agent("agent-00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFoundError):
        client.send_message("agent-nope", "hello")
    with pytest.raises(NotFoundError):
        client.send_message("agent-nope", "hello", stream=True)
    with pytest.raises(UserError, match="empty"):
        client.send_message(sam.id, "   ")
    with pytest.raises(UserError, match="empty"):
        client.search_archival(sam.id, "  ")
    with pytest.raises(UserError, match="text"):
        client.insert_archival_memory(sam.id, "")

    # The first turn's LLM answers once the second message was refused (it answered after 2 s: a loaded
    # machine's slower second request found the agent free).
    answered = threading.Event()
    llm.reply("Slowly.", until=answered)
    answers: list[TurnResponse] = []
    thread = threading.Thread(target=lambda: answers.append(client.send_message(sam.id, "one")))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not llm.requests and time.monotonic() < deadline:  # the first turn has the agent
            time.sleep(0.05)
        with pytest.raises(AgentBusyError) as busy:
            client.send_message(sam.id, "two")
        assert busy.value.retry_after == 1
    finally:
        answered.set()
        thread.join(timeout=30)
    assert answers[0].assistant_messages == ["Slowly."]


def test_both_clients_raise_the_same_class_of_error(client: Client, tmp_path: Path) -> None:
    """Code written against one client catches the same exceptions from the other: over REST the server names
    the class (found trying a taken name, a .bin upload and a broken agent file on both: the REST client raised
    their 409/415/400 as ConflictError/UserError/UserError)."""
    source = client.create_source("docs")
    with pytest.raises(ConflictError) as taken:
        client.create_source("docs")
    assert type(taken.value) is AlreadyExistsError
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01")
    with pytest.raises(UserError) as unreadable:
        client.load_file_into_source(tmp_path / "blob.bin", source.id)
    assert type(unreadable.value) is UnsupportedFileTypeError and "blob.bin" in str(unreadable.value)
    (tmp_path / "broken.af").write_text('{"agents": [', encoding="utf-8")
    with pytest.raises(UserError) as broken:
        client.import_agent(tmp_path / "broken.af")
    assert type(broken.value) is InputFileError and broken.value.path == "broken.af"
    assert broken.value.reason.startswith("not an agent file")


def test_a_servers_other_users_see_nothing_of_yours(server: LiveServer) -> None:
    with create_client(base_url=server.url, token=server.key()) as mine:
        sam = mine.create_agent("sam")
        source = mine.create_source("docs")
    with create_client(base_url=server.url, token=server.key("bob")) as bobs:
        assert bobs.list_agents() == [] and bobs.list_sources() == []
        with pytest.raises(NotFoundError):
            bobs.get_agent(sam.id)
        with pytest.raises(NotFoundError):
            bobs.get_source(source.id)
        bobs.create_agent("sam")  # names are per user
    with create_client(base_url=server.url, token="sk-wrong") as stranger, pytest.raises(UserError, match="API key"):
        stranger.list_agents()


def test_the_local_client_holds_the_home_until_closed(home: Path, llm: ScriptedLLM, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("The heron visits the pond.", encoding="utf-8")
    use_scripted_llm(home, llm.url)
    with create_client() as client:
        client.create_agent("sam")
        load = run_cli("load", "directory", "--name", "notes", "--input-files", str(note), home=home)
        assert load.returncode == 1 and "(a memgpt Python client, pid" in load.stderr
        assert "Traceback" not in load.stderr
    assert run_cli("load", "directory", "--name", "notes", "--input-files", str(note), home=home).returncode == 0
    with create_client(home=home) as again:
        assert [a.name for a in again.list_agents()] == ["sam"]
        assert [s.name for s in again.list_sources()] == ["notes"]
        again.close()  # closing twice is harmless


def test_import_memgpt_stays_light() -> None:
    """The client (and with it FastAPI) loads only when create_client is used."""
    code = "import sys, memgpt; print(sorted(m for m in sys.modules if m.startswith(('memgpt.', 'fastapi', 'httpx'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    code = "import memgpt; f = memgpt.create_client; print(f.__module__)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == (
        "memgpt.client"
    )
