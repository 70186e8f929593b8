"""What a message says has one owner (memory/messages.py): the recall index and the SQL word search read
the same text, summaries are written from messages, and databases from before keep their rule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from memgpt.embeddings.local import LocalMiniLM
from memgpt.memory.messages import HEARTBEAT, LOGIN, day, search_text, summary_line
from memgpt.storage import Storage
from memgpt.storage.filters import all_of, eq
from memgpt.storage.messages import MessageRow, MessageStore
from memgpt.storage.sql import MetadataStore
from memgpt.types import Message, Role, ToolCall
from tests.agent_rig import Rig
from tests.scripted_llm import ScriptedLLM


@pytest.fixture
def rig(storage: Storage, model: LocalMiniLM) -> Iterator[Rig]:
    server = ScriptedLLM()
    made = Rig(storage, model, server)
    yield made
    made.close()
    server.close()


def test_the_index_and_the_word_search_read_the_same_text(rig: Rig, storage: Storage, model: LocalMiniLM) -> None:
    agent = rig.create()
    rig.llm.add(
        {
            "tool": "archival_memory_insert",
            "args": {"content": "Chad keeps honeybees.", "request_heartbeat": True},
            "content": "Worth remembering.",
        }
    )
    rig.llm.reply("Noted, bees!", thought="Answer briefly.")
    list(agent.send("I keep bees in the garden"))
    assert agent.recall.wait_indexed(timeout=60)  # indexing runs in the background, after each step

    with storage.metadata.session() as s:
        rows = {r.id: r for r in s.scalars(select(MessageRow).where(MessageRow.agent_id == agent.state.id))}
    where = all_of(eq("kind", "recall"), eq("agent_id", agent.state.id))
    indexed = {p.id: p.text for p in storage.passages(model.space).query(where, limit=100)}
    assert set(indexed) == {i for i, r in rows.items() if r.searchable}
    assert len(indexed) == 3  # the user's message and the two assistant messages; no tool results, no heartbeat
    # Since issue 11 the index holds each message after its day and the end of the message before it; its own
    # words, the last line, are the SQL search text.
    for message_id, indexed_text in indexed.items():
        assert rows[message_id].search_text == indexed_text.splitlines()[-1].lower()
        assert indexed_text.splitlines()[0] == day(rows[message_id].created_at)
    assert sorted(text.splitlines()[-1] for text in indexed.values()) == [
        "Answer briefly. | said: Noted, bees!",
        "I keep bees in the garden",
        "Worth remembering.",
    ]

    # The word search no longer matches a tool's arguments (it did before): only what was said is searched.
    found, total = storage.messages.search(agent.state.id, "honeybees", offset=0, limit=5)
    assert (found, total) == ([], 0)
    found, total = storage.messages.search(agent.state.id, "BEES", offset=0, limit=5)
    assert [m.content for m in found] == ["I keep bees in the garden", "Answer briefly."] and total == 2


def test_summaries_are_written_from_messages() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    call = ToolCall("c1", "send_message", '{"message": "Hello!"}')
    lines = [
        summary_line(Message("1", "a", Role.USER, "hi there", when)),
        summary_line(Message("2", "a", Role.USER, "the user is idle", when, name=HEARTBEAT)),
        summary_line(Message("3", "a", Role.USER, "Never (first login)", when, name=LOGIN)),
        summary_line(Message("4", "a", Role.ASSISTANT, "Greet them.", when, tool_calls=(call,))),
        summary_line(Message("5", "a", Role.TOOL, '{"status": "OK"}', when, tool_call_id="c1", name="send_message")),
    ]
    assert lines == [
        "user: hi there",
        "system: the user is idle",
        "system: last login: Never (first login)",
        'assistant: Greet them. [called send_message {"message": "Hello!"}]',
        'tool: {"status": "OK"}',
    ]
    assert search_text(Message("2", "a", Role.USER, "the user is idle", when, name=HEARTBEAT)) == ""


def test_an_older_database_keeps_the_old_rule_for_its_messages(tmp_path: Path) -> None:
    """Rows written before memory decided what is searchable: the person's own messages and every
    assistant message are, heartbeats and tool results are not; their search text stays as it was."""
    from memgpt.storage.migrations import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        for _name, migrate in MIGRATIONS[:3]:
            migrate(conn)
        conn.execute(text("create table schema_migrations (name varchar(128) primary key, applied_at timestamp)"))
        for name, _ in MIGRATIONS[:3]:
            conn.execute(text("insert into schema_migrations values (:n, '2026-01-01')"), {"n": name})
        conn.execute(
            text(
                "insert into agents values ('a1', 'u', 'old', 'sam_pov', 'basic', '', 'm', 8000, 'e', 384, '', NULL, "
                "'2026-01-01 00:00:00')"
            )
        )
        rows = [
            ("m1", 1, "user", "", "i keep bees", "i keep bees"),
            ("m2", 2, "assistant", "", "noting it", 'noting it chad keeps honeybees'),
            ("m3", 3, "user", "heartbeat", "bees heartbeat", "bees heartbeat"),
            ("m4", 4, "tool", "archival_memory_insert", "bees stored", "bees stored"),
        ]
        for seq_id, seq, role, name, content, search in rows:
            conn.execute(
                text(
                    "insert into messages (id, agent_id, seq, role, content, tool_calls, tool_call_id, name, "
                    "created_at, in_context, search_text, indexed) values "
                    "(:id, 'a1', :seq, :role, :content, '[]', '', :name, '2026-01-01 00:00:00', 1, :search, 0)"
                ),
                {"id": seq_id, "seq": seq, "role": role, "content": content, "name": name, "search": search},
            )
    engine.dispose()

    metadata = MetadataStore(url)  # applies 0004
    try:
        messages = MessageStore(metadata)
        found, total = messages.search("a1", "bees", offset=0, limit=10)
        assert [m.id for m in found] == ["m1", "m2"] and total == 2  # not the heartbeat, not the tool result
        found, total = messages.search("a1", "honeybees", offset=0, limit=10)
        assert [m.id for m in found] == ["m2"]  # old rows keep their old search text
        start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
        assert [m.id for m in messages.between("a1", start, end, offset=0, limit=10)[0]] == ["m1", "m2"]
        assert [m.id for m in messages.unindexed("a1", 10)] == ["m1", "m2"]
    finally:
        metadata.close()
