"""Agent Files: Letta's own example files import into runnable agents; an export imports back with its
blocks, messages, archival passages and attached sources' files; bad files are one line and leave nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sqlalchemy import text

from memgpt.agent import prompts
from memgpt.agent.agentfile import (
    ImportedAgent,
    ImportOptions,
    ImportSettings,
    export_agent,
    export_text,
    import_agent_file,
)
from memgpt.agent.agentfile_format import read_agent_file
from memgpt.agent.manager import attach_source, attached_sources
from memgpt.config import EmbeddingSettings
from memgpt.data.sources import get_source
from memgpt.embeddings.local import LocalMiniLM
from memgpt.errors import AlreadyExistsError, InputFileError, UserError
from memgpt.memory.archival import ArchivalMemory
from memgpt.storage import Storage
from memgpt.storage.agents import StepChanges
from memgpt.storage.filters import eq
from memgpt.types import FileStatus, Role
from tests.agent_rig import Rig, replies
from tests.conftest import DATA, USER, cli, load
from tests.scripted_llm import ScriptedLLM

pytestmark = pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
AGENT_FILES = DATA / "agent-files"
LETTA_FILES = sorted(p.name for p in AGENT_FILES.glob("*.af"))


@pytest.fixture
def llm() -> ScriptedLLM:
    server = ScriptedLLM()
    yield server  # type: ignore[misc]
    server.close()


@pytest.fixture
def rig(storage: Storage, model: LocalMiniLM, llm: ScriptedLLM) -> Rig:
    return Rig(storage, model, llm)


@pytest.fixture
def settings(home: Path, model: LocalMiniLM) -> ImportSettings:
    return ImportSettings(home, model, EmbeddingSettings(), llm_model="scripted", context_window=16_000)


def imported(storage: Storage, path: Path | str, settings: ImportSettings, **options: object) -> ImportedAgent:
    data = Path(path).read_bytes() if isinstance(path, Path) else path
    document = read_agent_file(data, str(path)[:40])
    (result,) = import_agent_file(storage, document, user_id=USER, settings=settings, options=ImportOptions(**options))  # type: ignore[arg-type]
    return result


EXPECTED = {
    "customer_service.af": (
        "customer_service",
        {"human": 20000, "persona": 20000},
        {"conversation_search", "memory_insert", "memory_replace"},
        [],
        ["cancel_order", "check_order_status", "escalate", "terminate_chat"],
    ),
    "deep_research_agent.af": (
        "deep-thought-research-agent",
        {"human": 20000, "persona": 20000, "research_citations": 5000, "research_plan": 20000},
        {"conversation_search", "memory"},
        ["web_search"],
        ["create_research_plan", "reset_research"],
    ),
    "memgpt_agent.af": (
        "memgpt_agent",
        {"human": 20000, "persona": 20000},
        {"conversation_search", "memory_insert", "memory_replace"},
        [],
        [],
    ),
    "memgpt_agent_with_convo.af": (
        "memgpt_agent",
        {"human": 20000, "persona": 20000},
        {"conversation_search", "memory_insert", "memory_replace"},
        [],
        [],
    ),
}


@pytest.mark.parametrize("file_name", LETTA_FILES)
def test_lettas_example_files_import_into_agents_that_run(
    rig: Rig, storage: Storage, settings: ImportSettings, file_name: str
) -> None:
    name, limits, mapped, dropped, custom = EXPECTED[file_name]
    raw = json.loads((AGENT_FILES / file_name).read_text(encoding="utf-8"))
    letta = json.loads(raw) if isinstance(raw, str) else raw  # two of the four are encoded twice
    result = imported(storage, AGENT_FILES / file_name, settings)
    state = result.state
    assert state.name == name and state.id.startswith("agent-")
    blocks = {b.label: b for b in storage.agents.blocks(state.id)}
    assert {label: b.limit for label, b in blocks.items()} == limits
    by_id = {b["id"]: b for b in letta["blocks"]}
    for block_id in letta["agents"][0]["block_ids"]:
        assert blocks[by_id[block_id]["label"]].value == by_id[block_id]["value"]
    assert set(result.tools_mapped) == mapped
    assert result.tools_mapped.get("memory_insert", ["core_memory_append"]) == ["core_memory_append"]
    assert result.tools_mapped.get("memory", ["core_memory_append", "core_memory_replace"]) == [
        "core_memory_append",
        "core_memory_replace",
    ]
    assert sorted(result.tools_without_equivalent) == dropped
    assert sorted(result.custom_tools) == custom
    assert state.tools is None  # every MemGPT tool: the report says which of the file's they stand in for
    assert blocks["persona"].read_only == (file_name == "deep_research_agent.af")
    # Letta's compiled system message is regenerated from memgpt's prompt, not kept as a message.
    assert state.system_prompt == prompts.system_prompt()
    assert result.messages == 0 and storage.messages.count(state.id) == 0
    assert "the system prompt is memgpt's: the file's describes Letta's tools" in result.notes
    assert state.llm_model == "scripted"

    rig.llm.reply("How can I help?")
    agent = rig.open(state.name)
    assert replies(list(agent.send("hello"))) == ["How can I help?"]
    system = rig.llm.requests[-1]["messages"][0]["content"]
    assert system.startswith(prompts.system_prompt().strip())
    assert by_id[letta["agents"][0]["block_ids"][0]]["value"].strip()[:40] in system  # core memory rendered


def test_both_encodings_read_alike() -> None:
    for name in LETTA_FILES:
        document = read_agent_file((AGENT_FILES / name).read_bytes(), name)
        assert len(document.agents) == 1 and document.agents[0].messages[0].role == "system"


def _converse(rig: Rig) -> None:
    agent = rig.create("sam")
    rig.llm.add(
        {
            "tool": "archival_memory_insert",
            "args": {"content": "Chad's cat is called Miso.", "request_heartbeat": True},
            "content": "Worth keeping.",
        }
    )
    rig.llm.reply("Noted, Miso it is!", thought="Tell him.")
    list(agent.send("My cat is called Miso."))
    rig.llm.add(
        {
            "tool": "core_memory_append",
            "args": {"name": "human", "content": "Has a cat, Miso.", "request_heartbeat": True},
            "content": "Core memory too.",
        }
    )
    rig.llm.reply("Done.")
    list(agent.send("Remember that."))


def test_an_export_imports_back_whole(rig: Rig, storage: Storage, model: LocalMiniLM, settings: ImportSettings) -> None:
    _converse(rig)
    state = storage.agents.get(USER, "sam")
    assert state is not None
    load(storage, model, "docs", DATA / "test.md", DATA / "philosophical_question.txt")
    attach_source(storage, state, "docs")
    storage.agents.commit_step(state.id, StepChanges(summary="Chad talked about his cat."))
    tools = ("archival_memory_insert", "archival_memory_search", "core_memory_append", "send_message")
    described = {"description": "Chad's companion", "tags": ("home", "pets"), "metadata": {"k": 1}, "tools": tools}
    storage.agents.update(state.id, **described)
    state = storage.agents.get(USER, "sam")
    assert state is not None
    old_history = storage.messages.last(state.id, 100)
    old_context = {m.id for m in storage.messages.in_context(state.id)}
    storage.agents.commit_step(state.id, StepChanges(evicted_ids=[old_history[0].id]))  # one message out of context
    old_context.discard(old_history[0].id)

    document = export_agent(storage, state, chunk_size=250)
    text = export_text(document)
    for key in ("agents", "groups", "blocks", "files", "sources", "tools", "mcp_servers"):
        assert isinstance(document[key], list), key
    ids = [e["id"] for key in ("agents", "blocks", "files", "sources", "tools") for e in document[key]]
    ids += [m["id"] for m in document["agents"][0]["messages"]]
    assert all(re.fullmatch(r"(agent|block|file|source|tool|message)-\d+", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert document["agents"][0]["messages"][0]["role"] == "system"  # the compiled prompt, as Letta writes it
    assert set(document["memgpt"]) == {"version", "archival_passages", "agents"}
    assert [p["text"] for p in document["memgpt"]["archival_passages"]["agent-0"]] == ["Chad's cat is called Miso."]
    assert "embedding" not in text.lower().replace("embedding_", "").replace('"embedding": null', "")

    result = imported(storage, text, settings)
    new = result.state
    assert new.name == "sam_2" and new.id != state.id
    assert new.summary == "Chad talked about his cat." and new.system_prompt == state.system_prompt
    assert (new.persona, new.human) == (state.persona, state.human)
    assert {k: getattr(new, k) for k in described} == described
    assert sorted(t["name"] for t in document["tools"]) == list(tools)
    assert storage.agents.blocks(new.id) == storage.agents.blocks(state.id)
    assert "Has a cat, Miso." in {b.label: b.value for b in storage.agents.blocks(new.id)}["human"]

    def shape(messages: list) -> list:
        calls = [[(c.id, c.name, c.arguments) for c in m.tool_calls] for m in messages]
        pairs = zip(messages, calls, strict=True)
        return [(m.role, m.content, m.name, m.tool_call_id, c, m.created_at) for m, c in pairs]

    new_history = storage.messages.last(new.id, 100)
    assert shape(new_history) == shape(old_history) and result.messages == len(old_history)
    new_context = {m.id for m in storage.messages.in_context(new.id)}
    assert [m.id in new_context for m in new_history] == [m.id in old_context for m in old_history]
    assert any(m.role is Role.TOOL for m in new_history)

    assert result.passages == 1
    archival = ArchivalMemory(storage, model, agent_id=new.id, user_id=USER)
    own = storage.passages(model.space).count(eq("agent_id", new.id))
    assert own == 1
    assert "Miso" in archival.search("what is the cat called").items[0]

    (source,) = attached_sources(storage, new)
    assert source.name == "docs_2" and source.id != get_source(storage, USER, "docs").id
    files = {f.file_name: f for f in result.files}
    assert set(files) == {"test.md", "philosophical_question.txt"}
    assert all(f.status is FileStatus.COMPLETED and f.total_chunks > 0 for f in files.values())
    assert archival.count() == 1 + sum(f.total_chunks for f in files.values())
    assert any("philosophical_question.txt" in hit for hit in archival.search("the meaning of life").items)

    rig.llm.reply("Miso, of course.")
    assert replies(list(rig.open("sam_2").send("What's my cat's name?"))) == ["Miso, of course."]


def test_import_options_name_and_strip_messages(rig: Rig, storage: Storage, settings: ImportSettings) -> None:
    _converse(rig)
    state = storage.agents.get(USER, "sam")
    assert state is not None
    text = export_text(export_agent(storage, state, chunk_size=250, scrub_messages=True))
    assert read_agent_file(text, "x").agents[0].messages == []
    plain = imported(storage, text, settings, name="kim")
    assert plain.state.name == "kim" and plain.messages == 0
    whole = export_text(export_agent(storage, state, chunk_size=250))
    copied = imported(storage, whole, settings, copy_suffix=True, strip_messages=True)
    assert copied.state.name == "sam_copy" and storage.messages.count(copied.state.id) == 0
    with pytest.raises(AlreadyExistsError, match="an agent named 'kim' already exists"):
        imported(storage, text, settings, name="kim", on_clash="error")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an agent file (not JSON: Expecting value at line 1)"),
        (b"\xff\xfe\x00garbage", "not an agent file (not UTF-8 text)"),
        (b"[1, 2]", "not an agent file (the JSON is not an object)"),
        (b'"{\\"agents\\": 5}"', "it has no 'agents' list"),
        (b'{"agent": {"name": "x"}}', "it has no 'agents' list"),
        (b'{"agents": []}', "not a valid agent file: agents: List should have at least 1 item"),
        (b'{"agents": [{"id": "agent-0"}]}', "not a valid agent file: agents.0.name: Field required"),
        (
            b'{"agents": [{"id": "agent-0", "name": "a", "block_ids": ["block-9"]}], "blocks": []}',
            "agent 'a' refers to block 'block-9', which is not in the file",
        ),
        (
            b'{"agents": [{"id": "agent-0", "name": "a"}], "blocks": [{"id": "agent-0", "label": "x"}]}',
            "id 'agent-0' is used twice",
        ),
        (b"[" * 100_000, "not an agent file (JSON nested too deeply)"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(content: bytes, message: str) -> None:
    with pytest.raises(InputFileError) as caught:
        read_agent_file(content, "bad.af")
    assert str(caught.value).startswith("bad.af: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def _snapshot(storage: Storage, model: LocalMiniLM, home: Path) -> tuple[object, ...]:
    store = storage.passages(model.space)
    uploads = sorted(str(p) for p in (home / "files").rglob("*")) if (home / "files").exists() else []
    return (
        sorted(storage.agents.names(USER)),
        sorted(s.name for s in storage.metadata.list_sources(USER)),
        store.count(eq("user_id", USER)),
        uploads,
    )


def test_an_import_that_fails_midway_leaves_nothing(
    rig: Rig, storage: Storage, model: LocalMiniLM, settings: ImportSettings, home: Path
) -> None:
    rig.create("sam")
    document = {
        "agents": [
            {"id": "agent-0", "name": "first", "source_ids": ["source-0"], "block_ids": []},
            {"id": "agent-1", "name": "sam", "block_ids": []},
        ],
        "sources": [{"id": "source-0", "name": "notes"}],
        "files": [{"id": "file-0", "source_id": "source-0", "file_name": "a.md", "content": "Miso is a cat."}],
        "memgpt": {"version": 1, "archival_passages": {"agent-0": [{"text": "kept only if it all works"}]}},
    }
    before = _snapshot(storage, model, home)
    with pytest.raises(AlreadyExistsError):
        import_agent_file(
            storage,
            read_agent_file(json.dumps(document), "two.af"),
            user_id=USER,
            settings=settings,
            options=ImportOptions(on_clash="error"),
        )
    assert _snapshot(storage, model, home) == before


def test_an_agent_whose_window_is_too_small_is_refused_before_anything_is_written(
    storage: Storage, model: LocalMiniLM, settings: ImportSettings, home: Path
) -> None:
    """An agent that could never be opened (its core memory leaves its context window no room) is refused with
    the window check's one line before any of the file is written: its sources, files, passages, the other
    agents, their blocks and messages."""
    document = {
        "agents": [
            {
                "id": "agent-0",
                "name": "fits",
                "source_ids": ["source-0"],
                "block_ids": [],
                "messages": [{"id": "message-0", "role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "in_context_message_ids": ["message-0"],
            },
            {"id": "agent-1", "name": "crammed", "block_ids": ["block-0"]},
        ],
        "blocks": [{"id": "block-0", "label": "human", "value": "Chad likes long walks. " * 4000, "limit": 100_000}],
        "sources": [{"id": "source-0", "name": "notes"}],
        "files": [{"id": "file-0", "source_id": "source-0", "file_name": "a.md", "content": "Miso is a cat."}],
        "memgpt": {"version": 1, "archival_passages": {"agent-0": [{"text": "kept only if it all works"}]}},
    }

    def rows() -> tuple[int, int]:
        with storage.metadata.session() as s:
            return (
                s.execute(text("select count(*) from blocks")).scalar_one(),
                s.execute(text("select count(*) from messages")).scalar_one(),
            )

    before, before_rows = _snapshot(storage, model, home), rows()
    with pytest.raises(UserError) as caught:
        import_agent_file(storage, read_agent_file(json.dumps(document), "big.af"), user_id=USER, settings=settings)
    said = str(caught.value)
    assert "the context window of agent 'crammed' (16,000 tokens) is too small" in said, said
    assert "nothing was imported" in said and "\n" not in said
    assert _snapshot(storage, model, home) == before
    assert rows() == before_rows


def test_export_and_import_commands(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "agent.af"
    first = cli("import", str(AGENT_FILES / "customer_service.af"), home=home)
    assert first.returncode == 0, first.stderr
    assert "Imported agent 'customer_service'" in first.stdout
    assert "custom tools not installed: terminate_chat, escalate, cancel_order, check_order_status" in first.stderr
    exported = cli("export", "agent", "customer_service", "-o", str(target), home=home)
    assert exported.returncode == 0, exported.stderr
    assert f"Exported agent 'customer_service' to {target}" in exported.stdout
    assert target.stat().st_mode & 0o077 == 0  # the conversation is private
    again = cli("import", str(target), "--json", home=home)
    assert again.returncode == 0, again.stderr
    (report,) = json.loads(again.stdout)
    assert report["name"] == "customer_service_2" and report["custom_tools_not_installed"] == []
    clash = cli("import", str(target), "--name", "customer_service", "--on-clash", "error", home=home)
    assert clash.returncode == 1
    expected = "error: an agent named 'customer_service' already exists; import it under another name"
    assert clash.stderr == expected + "\n"  # one line: no empty one before it where bars would have been drawn
    corrupt = tmp_path / "corrupt.af"
    corrupt.write_text('{"agents": [', encoding="utf-8")
    bad = cli("import", str(corrupt), home=home)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith(f"error: {corrupt}: not an agent file (not JSON")
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = cli("export", "agent", "nobody", home=home)
    assert missing.returncode == 1 and "no agent named 'nobody'" in missing.stderr


def test_lettas_messages_become_memgpt_history(storage: Storage, settings: ImportSettings) -> None:
    """Letta wraps what the user says in MemGPT's JSON envelope, keeps inner thoughts as content parts and may
    list a tool call without its result in context: the history reads as memgpt's own, and a call and its
    result are in the context window together or not at all."""

    def message(number: int, role: str, content: object, **more: object) -> dict[str, object]:
        return {"id": f"message-{number}", "role": role, "content": content,
                "created_at": f"2026-01-01T00:00:{number:02d}+00:00", **more}

    search = {"name": "conversation_search", "arguments": '{"query": "x"}'}
    call = {"id": "call-1", "type": "function", "function": search}
    orphan = {"id": "call-2", "type": "function", "function": {"name": "send_message", "arguments": "{}"}}
    messages = [
        message(9, "user", [{"type": "text", "text": json.dumps({"type": "user_message", "message": "Hi there"})}]),
        message(0, "system", [{"type": "text", "text": "compiled prompt"}]),
        message(10, "user", json.dumps({"type": "heartbeat", "reason": "wake up"})),
        message(11, "assistant", [{"type": "reasoning", "reasoning": "Search first."}], tool_calls=[call]),
        message(12, "tool", '{"status": "OK"}', tool_call_id="call-1", name="conversation_search"),
        message(13, "assistant", [{"type": "text", "text": "Say hi."}], tool_calls=[orphan]),
        message(14, "approval", [{"type": "text", "text": "approve?"}]),
        message(15, "tool", "late result", tool_call_id="call-9"),
    ]
    document = {
        "agents": [
            {
                "id": "agent-0",
                "name": "chatty",
                "messages": messages,
                "in_context_message_ids": [f"message-{n}" for n in (0, 9, 11, 12, 13, 15)],
            }
        ]
    }
    result = imported(storage, json.dumps(json.dumps(document)), settings)  # encoded twice, as Letta wrote some
    history = storage.messages.last(result.state.id, 100)
    assert [(m.role, m.content, m.name) for m in history] == [
        (Role.USER, "Hi there", ""),
        (Role.USER, "wake up", "heartbeat"),
        (Role.ASSISTANT, "Search first.", ""),
        (Role.TOOL, '{"status": "OK"}', "conversation_search"),
        (Role.ASSISTANT, "Say hi.", ""),
        (Role.TOOL, "late result", ""),
    ]
    assert history[2].tool_calls[0].name == "conversation_search" and history[3].tool_call_id == "call-1"
    in_context = [m.content for m in storage.messages.in_context(result.state.id)]
    # The call whose result is missing, and the result whose call is missing, stay in recall only.
    assert in_context == ["Hi there", "Search first.", '{"status": "OK"}']
