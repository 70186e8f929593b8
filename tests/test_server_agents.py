"""Agents, core memory blocks and archival passages through `memgpt server`, driven by Letta's own client
(letta-client 1.12.1, validating every response strictly) against a real server and the scripted LLM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from letta_client import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    Letta,
    NotFoundError,
    UnprocessableEntityError,
)

from memgpt.agent.manager import attach_source
from memgpt.config import save_config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.memory.archival import ArchivalMemory
from memgpt.storage import Storage
from tests import web
from tests.conftest import DATA, cli, load
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import LiveServer, ServerProcess, auth, retrying_letta, use_scripted_llm

HANDLE = "openai-compatible/scripted"


@pytest.fixture
def server(home: Path, llm: ScriptedLLM) -> Iterator[LiveServer]:
    running = LiveServer(home, use_scripted_llm(home, llm.url))
    yield running
    running.stop()


def client(server: LiveServer, user: str | None = None) -> Letta:
    """Letta's client as its users make it, but refusing any response that does not match its types."""
    return Letta(base_url=server.url, api_key=server.key(user), _strict_response_validation=True, max_retries=0)


@pytest.fixture
def letta(server: LiveServer) -> Letta:
    return client(server)


def sam(letta: Letta, name: str = "sam", extra_blocks: tuple[dict[str, object], ...] = (), **more: object) -> str:
    blocks = [{"label": "human", "value": "Name: Chad", "limit": 5000}, {"label": "persona", "value": "I am Sam."}]
    made = letta.agents.create(name=name, memory_blocks=[*blocks, *extra_blocks], model=HANDLE, **more)  # type: ignore[arg-type]
    return made.id


# -- agents -------------------------------------------------------------------------------------------
def test_create_retrieve_and_every_field_letta_requires(letta: Letta, server: LiveServer) -> None:
    created = letta.agents.create(
        name="sam",
        memory_blocks=[
            {"label": "human", "value": "Name: Chad", "limit": 5000},
            {"label": "persona", "value": "I am Sam.", "description": "who I am", "read_only": True},
            {"label": "project", "value": "memgpt server"},
        ],
        model=HANDLE,
        embedding="local/all-MiniLM-L6-v2",
        system="You are MemGPT, made by tests.",
        tags=["demo", "test"],
        description="a test agent",
        metadata={"team": "core"},
        tools=["archival_memory_search"],
    )
    assert created.id.startswith("agent-") and len(created.id) == len("agent-") + 36
    got = letta.agents.retrieve(created.id)
    assert got.name == "sam" and got.agent_type == "memgpt_agent"
    assert got.system == "You are MemGPT, made by tests."
    assert (got.description, got.tags, got.metadata) == ("a test agent", ["demo", "test"], {"team": "core"})
    blocks = {b.label: b for b in got.memory.blocks}
    assert set(blocks) == {"human", "persona", "project"} and [b.label for b in got.blocks] == list(blocks)
    assert blocks["human"].limit == 5000 and blocks["project"].limit == 2000  # memgpt's default limit
    assert blocks["persona"].read_only and blocks["persona"].description == "who I am"
    assert all(b.id and b.id.startswith("block-") for b in got.blocks)
    assert got.llm_config.model == "scripted" and got.llm_config.handle == HANDLE and got.model == HANDLE
    assert got.llm_config.context_window == 16_000 and got.llm_config.to_dict()["model_endpoint_type"] == "openai"
    assert got.embedding_config is not None and got.embedding_config.embedding_dim == 384
    assert got.embedding == "local/all-MiniLM-L6-v2"
    assert {t.name for t in got.tools} >= {"send_message", "archival_memory_search", "core_memory_append"}
    assert all(t.id.startswith("tool-") and t.tool_type == "letta_core" for t in got.tools)
    assert got.sources == [] and got.created_at is not None
    # Stored the way the CLI's agents are: the same agent for `memgpt run`.
    stored = server.state.storage.agents.by_id(server.state.owner.id, created.id)
    assert stored is not None and stored.persona == "custom" and stored.system_prompt == got.system


def test_an_agent_with_only_a_name_gets_the_servers_persona_and_human(letta: Letta) -> None:
    agent = letta.agents.create(name="plain")
    blocks = {b.label: b for b in agent.blocks}
    assert set(blocks) == {"persona", "human"}
    assert "Sam" in blocks["persona"].value and "Chad" in blocks["human"].value
    assert agent.llm_config.model == "scripted"
    assert len(agent.tools) == 8  # MemGPT's functions
    unnamed = letta.agents.create()
    assert unnamed.name and unnamed.name != "plain"


def test_persona_and_human_texts_make_those_blocks_and_clash_with_a_block_of_the_same_label(letta: Letta) -> None:
    """letta-client 1.12.1 has no persona=/human= keywords; pymemgpt users send them as extra fields. They were
    silently ignored (the agent got the server's templates); now they are the texts of those blocks."""
    made = letta.agents.create(name="told", extra_body={"persona": "I am Pat.", "human": "Name: Kim"})
    blocks = {b.label: b for b in made.blocks}
    assert (blocks["persona"].value, blocks["human"].value) == ("I am Pat.", "Name: Kim")
    assert blocks["human"].limit == 2000
    notes = [{"label": "notes", "value": "x"}]
    one = letta.agents.create(name="half", memory_blocks=notes, extra_body={"human": "Kim"})
    assert {b.label: b.value for b in one.blocks}["human"] == "Kim"
    with pytest.raises(BadRequestError, match="two blocks are labelled 'persona'"):
        letta.agents.create(
            name="both", memory_blocks=[{"label": "persona", "value": "I am A."}], extra_body={"persona": "I am B."}
        )
    with pytest.raises(UnprocessableEntityError):
        letta.agents.create(name="typed", extra_body={"persona": 5})
    assert [a.name for a in letta.agents.list(order="asc")] == ["told", "half"]


def test_tools_can_be_chosen_and_unknown_ones_are_refused(letta: Letta) -> None:
    only = letta.agents.create(name="quiet", tools=["send_message"], include_base_tools=False)
    assert [t.name for t in only.tools] == ["send_message"]
    with pytest.raises(BadRequestError, match="no tool named 'web_search'"):
        letta.agents.create(name="x", tools=["web_search"])
    all_ids = [t.id for t in letta.agents.create(name="full").tools]
    updated = letta.agents.update(only.id, tool_ids=all_ids[:2])
    assert [t.id for t in updated.tools] == all_ids[:2]


def test_models_and_embeddings_the_server_cannot_serve_are_refused_in_one_line(letta: Letta) -> None:
    with pytest.raises(BadRequestError) as other_provider:
        letta.agents.create(name="a", model="anthropic/claude-sonnet-4-5")
    assert "this server's LLM is openai-compatible" in str(other_provider.value)
    with pytest.raises(BadRequestError) as not_served:
        letta.agents.create(name="a", model="openai-compatible/gpt-9")
    assert "does not serve 'gpt-9'" in str(not_served.value) and HANDLE in str(not_served.value)
    with pytest.raises(BadRequestError) as embedding:
        letta.agents.create(name="a", embedding="openai/text-embedding-3-small")
    message = str(embedding.value)
    assert "openai/text-embedding-3-small" in message and "local/all-MiniLM-L6-v2" in message
    with pytest.raises(BadRequestError, match="1536"):
        letta.agents.create(
            name="a",
            embedding_config={
                "embedding_endpoint_type": "openai",
                "embedding_model": "all-MiniLM-L6-v2",
                "embedding_dim": 1536,
            },
        )
    assert letta.agents.create(name="a", model="openai/scripted").llm_config.model == "scripted"
    assert [a.name for a in letta.agents.list()] == ["a"]  # nothing half-made by the refusals


def test_models_list_gives_the_handles_agents_create_takes(letta: Letta, llm: ScriptedLLM) -> None:
    # A Letta user looks the handles up with client.models.list() / models.embeddings.list() (were 404s).
    llm.models = [{"id": "scripted"}, {"id": "bigger"}]
    listed = letta.models.list()
    assert [m.handle for m in listed] == [HANDLE, "openai-compatible/bigger"]
    assert (listed[0].name, listed[0].provider_type, listed[0].max_context_window) == ("scripted", "openai", 16_000)
    (embedding,) = letta.models.embeddings.list()
    assert (embedding.handle, embedding.embedding_dim) == ("local/all-MiniLM-L6-v2", 384)
    made = letta.agents.create(name="picked", model=listed[1].handle, embedding=embedding.handle)
    assert (made.llm_config.model, made.embedding_config.embedding_model) == ("bigger", "all-MiniLM-L6-v2")
    with pytest.raises(AuthenticationError):
        Letta(base_url=str(letta.base_url), api_key="sk-wrong", max_retries=0).models.list()


def test_what_an_agent_cannot_do_is_refused_naming_the_field_never_ignored(letta: Letta) -> None:
    """Letta's agent_type other than memgpt_agent, tool_rules and response_format would make another agent than
    the one made: a 400 naming the field, nothing created. Letta's defaults (what letta-client sends) and an
    agent_type of memgpt_agent still create one."""
    rule = {"tool_name": "send_message", "type": "exit_loop"}
    for fields, said in (
        ({"agent_type": "letta_v1_agent"}, "agent_type: 'letta_v1_agent' is not supported"),
        ({"tool_rules": [rule]}, "tool_rules: not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format: not supported"),
    ):
        with pytest.raises(BadRequestError) as refused:
            letta.agents.create(name="other", model=HANDLE, **fields)  # type: ignore[arg-type]
        assert said in str(refused.value), fields
    assert letta.agents.list().items == []
    made = letta.agents.create(name="sam", model=HANDLE, agent_type="memgpt_agent", tool_rules=[])
    assert made.agent_type == "memgpt_agent"
    with pytest.raises(BadRequestError, match="tool_rules: not supported"):
        letta.agents.update(made.id, tool_rules=[rule])  # type: ignore[list-item]


def test_a_context_window_too_small_is_refused_before_anything_is_stored(letta: Letta) -> None:
    with pytest.raises(BadRequestError) as refused:
        letta.agents.create(name="tiny", model=HANDLE, context_window_limit=2000)
    assert "the context window of agent 'tiny' (2,000 tokens) is too small" in str(refused.value)
    assert letta.agents.list().items == []  # not created first and refused at its first message
    agent_id = sam(letta)
    with pytest.raises(BadRequestError, match="is too small"):
        letta.agents.update(agent_id, context_window_limit=2000)
    assert letta.agents.retrieve(agent_id).llm_config.context_window == 16_000


def test_list_pages_by_cursor_in_both_orders_and_filters(letta: Letta) -> None:
    ids = [sam(letta, f"agent-{i}", tags=["even" if i % 2 == 0 else "odd", "all"]) for i in range(5)]
    assert [a.id for a in letta.agents.list()] == ids[::-1]  # newest first, as Letta
    assert [a.id for a in letta.agents.list(order="asc", limit=2).items] == ids[:2]
    assert [a.id for a in letta.agents.list(order="asc", limit=2, after=ids[1]).items] == ids[2:4]
    assert [a.id for a in letta.agents.list(order="asc", limit=2, before=ids[4]).items] == ids[2:4]
    assert [a.id for a in letta.agents.list(limit=2, after=ids[2]).items] == [ids[1], ids[0]]
    assert [a.id for a in letta.agents.list(limit=2, after=ids[0]).items] == []
    paged = letta.agents.list(limit=2, order="asc")
    assert [a.id for a in paged] == ids  # iterating fetches the next pages until an empty one
    assert letta.agents.list(after="agent-not-there").items == []
    assert [a.name for a in letta.agents.list(name="agent-3")] == ["agent-3"]
    assert [a.name for a in letta.agents.list(query_text="ENT-4")] == ["agent-4"]
    assert [a.name for a in letta.agents.list(tags=["odd"], order="asc")] == ["agent-1", "agent-3"]
    assert [a.name for a in letta.agents.list(tags=["odd", "even"], order="asc")] == [f"agent-{i}" for i in range(5)]
    assert letta.agents.list(tags=["odd", "even"], match_all_tags=True).items == []
    assert len(letta.agents.list(tags=["odd", "all"], match_all_tags=True).items) == 2


def test_update_changes_only_what_is_sent(letta: Letta, server: LiveServer) -> None:
    agent_id = sam(letta, tags=["a"], description="first", metadata={"k": 1})
    before = letta.agents.retrieve(agent_id)
    renamed = letta.agents.update(agent_id, name="sam2", description=None)  # null: left as it is
    assert renamed.name == "sam2"
    assert (renamed.description, renamed.tags, renamed.metadata, renamed.system) == (
        "first",
        ["a"],
        {"k": 1},
        before.system,
    )
    assert [b.value for b in renamed.blocks] == [b.value for b in before.blocks]
    changed = letta.agents.update(
        agent_id, system="New system prompt.", tags=["b", "c"], metadata={"k": 2}, model="openai-compatible/scripted"
    )
    assert (changed.system, changed.tags, changed.metadata, changed.name) == (
        "New system prompt.",
        ["b", "c"],
        {"k": 2},
        "sam2",
    )
    assert changed.updated_at is not None and changed.updated_at >= before.updated_at  # type: ignore[operator]
    ignored = letta.agents.update(agent_id, extra_body={"timezone": "Europe/Paris", "no_such_key": 1})
    assert ignored.name == "sam2"
    sam(letta, "taken")
    with pytest.raises(BadRequestError, match="already exists"):
        letta.agents.update(agent_id, name="taken")
    with pytest.raises(BadRequestError, match="block_ids"):
        letta.agents.update(agent_id, block_ids=["block-1"])
    with pytest.raises(BadRequestError, match="does not serve"):
        letta.agents.update(agent_id, model="openai-compatible/other")
    assert letta.agents.retrieve(agent_id).name == "sam2"


def test_a_taken_name_names_the_agent_that_has_it_and_no_cli_flag(letta: Letta) -> None:
    """An API user cannot pass the CLI's --agent: the answer names what every interface takes, the agent's id."""
    first, other = sam(letta, "sam"), sam(letta, "max")
    expected = {"detail": f"an agent named 'sam' already exists ({first}); pick another name"}
    with pytest.raises(BadRequestError) as created:
        letta.agents.create(name="sam", model=HANDLE)
    with pytest.raises(BadRequestError) as renamed:
        letta.agents.update(other, name=" sam ")
    assert created.value.body == expected and renamed.value.body == expected
    assert [a.name for a in letta.agents.list(order="asc")] == ["sam", "max"]


def test_an_update_with_blocks_is_refused_naming_the_field_and_changes_nothing(letta: Letta) -> None:
    """Letta's UpdateAgent has no memory_blocks and drops them without a word: the caller would think they took."""
    agent_id = sam(letta)
    before = letta.agents.retrieve(agent_id)
    for field, sent in (("memory_blocks", [{"label": "human", "value": "Name: Bob"}]), ("human", "Name: Bob")):
        with pytest.raises(BadRequestError) as refused:
            letta.agents.update(agent_id, name="renamed", extra_body={field: sent})
        detail = refused.value.body["detail"]  # type: ignore[index]
        assert detail.startswith(f"{field}: an agent's blocks are set when it is created; change ") and (
            "agents.blocks.update(" in detail
        )
    after = letta.agents.retrieve(agent_id)
    assert after.name == "sam" and {b.label: b.value for b in after.memory.blocks} == {
        b.label: b.value for b in before.memory.blocks
    }
    letta.agents.blocks.update("human", agent_id=agent_id, value="Name: Bob")  # the way the message names
    assert letta.agents.blocks.retrieve("human", agent_id=agent_id).value == "Name: Bob"


def test_delete_removes_the_agent_its_messages_and_passages(letta: Letta, server: LiveServer, llm: ScriptedLLM) -> None:
    agent_id = sam(letta)
    letta.agents.passages.create(agent_id, text="Chad likes tea.")
    llm.reply("Hi!")
    letta.agents.messages.create(agent_id, input="hello")
    answer = letta.agents.delete(agent_id)
    assert answer == {"message": f"Agent id={agent_id} successfully deleted"}
    with pytest.raises(NotFoundError):
        letta.agents.retrieve(agent_id)
    with pytest.raises(NotFoundError):
        letta.agents.delete(agent_id)
    assert server.state.storage.messages.count(agent_id) == 0
    store = server.state.storage.passages(LocalMiniLM().space)
    from memgpt.storage.filters import eq

    assert store.count(eq("agent_id", agent_id)) == 0


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_delete_leaves_no_row_of_the_agent_in_any_table(letta: Letta, server: LiveServer, llm: ScriptedLLM) -> None:
    """Every row that names the agent goes with it but its place as a paging cursor: its turns' runs, and what
    processes that died left behind (a lease, a recall indexing claim, a passage mark, a write recorded under
    ``passages:<agent id>`` with its lease); another agent's rows stay."""
    from memgpt.storage.claims import IndexClaims
    from memgpt.storage.turns import Run, new_owner

    storage = server.state.storage
    agent_id, other = sam(letta), sam(letta, name="bob")
    letta.agents.passages.create(agent_id, text="Chad likes tea.")
    for someone in (agent_id, other):
        llm.reply("Hi!")
        letta.agents.messages.create(someone, input="hello")
        dead = Run(f"run-{someone}", f"passages:{someone}", "digest")  # its process died while it wrote
        storage.turns.acquire(dead.id, new_owner(), dead.id, 3600, run=dead)
        IndexClaims(storage.metadata).claim([someone], new_owner(), 3600)
        storage.marks.record(someone, 12345)
    storage.turns.acquire(agent_id, new_owner(), "", 0.01)  # a turn's lease that expired with its process
    time.sleep(0.05)
    before, others = _rows_naming(storage, agent_id), _rows_naming(storage, other)
    for table in ("agents", "blocks", "messages", "agent_runs", "agent_leases", "recall_index_claims", "passage_marks"):
        assert before.get(table), (table, before)
    letta.agents.delete(agent_id)
    # But where it stood in its user's list (its id, user and creation time): a client paging on stays in place.
    assert _rows_naming(storage, agent_id) == {"deleted_agents": 1}
    assert _rows_naming(storage, other) == others


@pytest.mark.usefixtures("metadata_url")  # on SQLite and on PostgreSQL
def test_a_delete_while_a_turn_runs_is_409_agent_busy_and_deletes_nothing(
    letta: Letta, server: LiveServer, llm: ScriptedLLM
) -> None:
    server.timing(busy_wait=0.3, retry_after=1, ping_every=0.3)
    agent_id = sam(letta)
    answered = threading.Event()
    llm.reply("Slow answer.", until=answered)
    sender = threading.Thread(target=lambda: letta.agents.messages.create(agent_id, input="slow one"))
    sender.start()
    while not llm.requests:
        time.sleep(0.02)
    during = _rows_naming(server.state.storage, agent_id)
    raw = web.delete(f"{server.url}/v1/agents/{agent_id}", headers=auth(letta.api_key))
    assert raw.status_code == 409 and raw.json()["detail"]["code"] == "AGENT_BUSY"
    assert _rows_naming(server.state.storage, agent_id) == during
    answered.set()
    sender.join(30)
    letta.agents.delete(agent_id)
    assert _rows_naming(server.state.storage, agent_id) == {"deleted_agents": 1}  # its place as a paging cursor


def _rows_naming(storage: Storage, agent_id: str) -> dict[str, int]:
    """Per table, the rows with a text column that is the agent's id, a key of it (``<kind>:<agent id>``) or the id
    of one of its runs (a write's lease is named by its run)."""
    from sqlalchemy import String, Text, func, inspect, or_, select, table
    from sqlalchemy import column as sa_column

    engine = storage.metadata.engine
    with engine.connect() as c:
        tables = {name: inspect(c).get_columns(name) for name in inspect(c).get_table_names()}
        runs = table("agent_runs", sa_column("id"), sa_column("agent_id"))
        keyed = (runs.c.agent_id == agent_id) | runs.c.agent_id.endswith(f":{agent_id}", autoescape=True)
        names = [agent_id, *c.execute(select(runs.c.id).where(keyed)).scalars()]
        found = {}
        for name, columns in tables.items():
            texts = [sa_column(col["name"]) for col in columns if isinstance(col["type"], (String, Text))]
            if not texts:
                continue
            rows = table(name, *texts)
            naming = [col.in_(names) | col.endswith(f":{agent_id}", autoescape=True) for col in rows.c]
            count = c.execute(select(func.count()).select_from(rows).where(or_(*naming))).scalar_one()
            if count:
                found[name] = count
    return found


# -- core memory --------------------------------------------------------------------------------------
def test_an_agent_whose_block_is_over_its_limit_is_refused_naming_the_block(letta: Letta) -> None:
    with pytest.raises(BadRequestError) as too_long:
        sam(letta, extra_blocks=({"label": "notes", "value": "x" * 11, "limit": 10},))
    assert too_long.value.body == {
        "detail": "Edit failed: Exceeds 10 character limit (requested 11) in block 'notes'; "
        "shorten its value or raise its limit."
    }
    assert letta.agents.list().items == []  # nothing was made


def test_blocks_list_retrieve_update_and_limits(letta: Letta, llm: ScriptedLLM) -> None:
    agent_id = sam(letta)
    blocks = letta.agents.blocks.list(agent_id).items
    assert [b.label for b in blocks] == ["persona", "human"]  # newest... by label, desc
    assert [b.label for b in letta.agents.blocks.list(agent_id, order="asc").items] == ["human", "persona"]
    assert [b.label for b in letta.agents.blocks.list(agent_id, order="asc", after=blocks[1].id).items] == ["persona"]
    human = letta.agents.blocks.retrieve("human", agent_id=agent_id)
    assert (human.value, human.limit) == ("Name: Chad", 5000)
    assert letta.agents.blocks.retrieve(human.id, agent_id=agent_id).label == "human"  # by id too
    updated = letta.agents.blocks.update("human", agent_id=agent_id, value="Name: Chad B.")
    assert updated.value == "Name: Chad B." and updated.limit == 5000
    with pytest.raises(BadRequestError) as too_long:
        letta.agents.blocks.update("human", agent_id=agent_id, value="x" * 5001)
    assert too_long.value.body == {
        "detail": "Edit failed: Exceeds 5000 character limit (requested 5001) in block 'human'; "
        "shorten its value or raise its limit."
    }
    with pytest.raises(BadRequestError, match="more than the new limit of 5"):
        letta.agents.blocks.update("human", agent_id=agent_id, limit=5)
    both = letta.agents.blocks.update("human", agent_id=agent_id, value="Chad", limit=10)
    assert (both.value, both.limit) == ("Chad", 10)
    assert letta.agents.blocks.update("persona", agent_id=agent_id, limit=8000).limit == 8000
    with pytest.raises(NotFoundError, match="no core memory block 'nothing'"):
        letta.agents.blocks.retrieve("nothing", agent_id=agent_id)
    # The next turn sees the edit.
    llm.reply("Hi Chad!")
    letta.agents.messages.create(agent_id, input="hi")
    system = llm.requests[-1]["messages"][0]["content"]
    assert '<human characters="4/10">\nChad\n</human>' in system


def test_extra_blocks_are_core_memory_and_read_only_blocks_refuse_the_agents_edits(
    letta: Letta, llm: ScriptedLLM
) -> None:
    agent_id = sam(letta, extra_blocks=({"label": "rules", "value": "Be brief.", "read_only": True},))
    llm.add(
        {
            "tool": "core_memory_append",
            "args": {"name": "rules", "content": "Be long.", "request_heartbeat": True},
            "content": "Change the rules.",
        }
    )
    llm.reply("I cannot.")
    response = letta.agents.messages.create(agent_id, input="change your rules")
    result = next(m for m in response.messages if m.message_type == "tool_return_message")
    assert result.status == "error" and "read-only" in result.tool_return
    assert '<rules characters="9/2000">\nBe brief.\n</rules>' in llm.requests[0]["messages"][0]["content"]
    assert letta.agents.blocks.retrieve("rules", agent_id=agent_id).value == "Be brief."
    # People may still change it.
    assert letta.agents.blocks.update("rules", agent_id=agent_id, value="Be kind.").value == "Be kind."


# -- archival memory ----------------------------------------------------------------------------------
def test_passages_create_list_search_and_delete(letta: Letta, server: LiveServer) -> None:
    agent_id = sam(letta)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    made = letta.agents.passages.create(agent_id, text="Chad likes green tea.", tags=["pref", "drink"], created_at=old)
    assert isinstance(made, list) and len(made) == 1 and made[0].id.startswith("passage-")
    assert made[0].tags == ["pref", "drink"] and made[0].created_at == old
    coffee = letta.agents.passages.create(agent_id, text="Chad hates coffee.", tags=["pref"])[0]
    boat = letta.agents.passages.create(agent_id, text="Chad owns a sailing boat named Tern.")[0]
    long_text = " ".join(f"Sentence {i} about the harbour and the weather." for i in range(200))
    assert len(letta.agents.passages.create(agent_id, text=long_text)) > 1  # split like archival_memory_insert

    listed = letta.agents.passages.list(agent_id, limit=3)
    assert [p.id for p in listed] == [made[0].id, coffee.id, boat.id]  # oldest first by default
    assert [p.id for p in letta.agents.passages.list(agent_id, after=coffee.id, limit=1)] == [boat.id]
    assert letta.agents.passages.list(agent_id, ascending=False, limit=1)[0].text.startswith("Sentence")
    assert [p.id for p in letta.agents.passages.list(agent_id, search="TEA")] == [made[0].id]
    assert letta.agents.passages.list(agent_id, after="passage-unknown") == []

    found = letta.agents.passages.search(agent_id, query="what does Chad drink", top_k=2)
    assert found.count == 2 and len(found.results) == 2
    assert {r.id for r in found.results} <= {made[0].id, coffee.id, boat.id}
    assert found.results[0].timestamp.endswith("UTC+0000")
    by_tag = letta.agents.passages.search(agent_id, query="Chad", tags=["drink", "nothing"])
    assert [r.id for r in by_tag.results] == [made[0].id]
    both = letta.agents.passages.search(agent_id, query="Chad", tags=["pref", "drink"], tag_match_mode="all")
    assert [r.id for r in both.results] == [made[0].id]
    recent = letta.agents.passages.search(
        agent_id, query="Chad tea coffee", start_datetime=old + timedelta(days=1), tags=["pref"]
    )
    assert [r.id for r in recent.results] == [coffee.id]
    early = letta.agents.passages.search(agent_id, query="Chad", end_datetime=old + timedelta(seconds=1))
    assert [r.id for r in early.results] == [made[0].id]

    assert letta.agents.passages.delete(coffee.id, agent_id=agent_id) == {
        "message": f"Memory id={coffee.id} successfully deleted"
    }
    with pytest.raises(NotFoundError):
        letta.agents.passages.delete(coffee.id, agent_id=agent_id)
    other = sam(letta, "other")
    with pytest.raises(NotFoundError):  # another agent's passage
        letta.agents.passages.delete(boat.id, agent_id=other)
    assert boat.id in {p.id for p in letta.agents.passages.list(agent_id)}
    # The count an agent's prompt shows is kept in SQL beside each write (test_archival_count), deletes included.
    kept, _ = server.state.storage.agents.archival_count(agent_id)
    assert kept == len(letta.agents.passages.list(agent_id, limit=1000))


@pytest.mark.usefixtures("metadata_url")  # the run that records the insert, on SQLite and on PostgreSQL
def test_a_retried_passages_create_stores_the_text_once(server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long text takes a while to embed; letta-client gives up on it after its timeout and sends it again (twice,
    by default) while the server still works on it. The retries answer with the passages the first attempt made,
    never a second copy; the same text sent again on purpose is stored again, as in Letta."""
    from memgpt.memory.archival import ArchivalMemory

    calls: list[float] = []
    real = ArchivalMemory.add

    def slow(self: ArchivalMemory, *args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(2.0)  # outlasts the client's timeout below
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ArchivalMemory, "add", slow)
    letta = client(server)
    agent_id = sam(letta)
    impatient, retries = retrying_letta(server, max_retries=4, timeout=1.5)
    made = impatient.agents.passages.create(agent_id, text="Chad likes green tea.", tags=["pref"])
    assert retries[0] == "0" and len(retries) >= 2, retries  # it timed out at least once and was sent again
    assert len(calls) == 1, "a retry stored the text again"
    assert [p.id for p in letta.agents.passages.list(agent_id)] == [p.id for p in made]
    again = letta.agents.passages.create(agent_id, text="Chad likes green tea.", tags=["pref"])  # on purpose
    assert len(calls) == 2 and [p.id for p in again] != [p.id for p in made]
    assert len(letta.agents.passages.list(agent_id)) == 2


@pytest.mark.usefixtures("metadata_url")
def test_a_retry_that_overtakes_its_first_try_stores_the_text_once(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try is held up before it records its run (a busy server: in the suite at a load of 30 it was, for
    more than letta-client's timeout); the client sends it again, and the retry finds no run to wait for. It makes
    a run of its own (another id, so other passage ids), and the first try, going on, makes its own: the text is
    stored twice. The order is set by events, not by time."""
    from memgpt.server.retried import RetriedWrite

    real = RetriedWrite.run
    held, retried = threading.Event(), threading.Event()

    def overtaken(self: RetriedWrite[Any], work: Any) -> Any:
        if not held.is_set():  # the first try: held up until its retry answered
            held.set()
            assert retried.wait(60)
        return real(self, work)

    monkeypatch.setattr(RetriedWrite, "run", overtaken)
    letta = client(server)
    agent_id = sam(letta)
    url, key = f"{server.url}/v1/agents/{agent_id}/archival-memory", server.key()
    body = {"text": "Chad likes green tea.", "tags": ["pref"]}
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(web.post(url, json=body, headers=auth(key), timeout=120)))
    first.start()
    assert held.wait(60)
    again = web.post(url, json=body, headers={**auth(key), "X-Stainless-Retry-Count": "1"}, timeout=120)
    retried.set()
    first.join(120)
    assert again.status_code == 200 and answers and answers[0].status_code == 200, (again.text, answers)
    assert [p.id for p in letta.agents.passages.list(agent_id)] == [p["id"] for p in again.json()]


def test_a_stalled_first_try_writing_after_its_retry_leaves_one_copy(server: LiveServer, model: LocalMiniLM) -> None:
    """A first try whose lease ran out while it was stopped (its retry redid the write meanwhile) goes on and writes
    the same derived ids after the retry did: each passage is stored once (Milvus keeps both rows of an insert)."""
    agent_id = sam(client(server))
    archival = ArchivalMemory(server.state.storage, model, agent_id=agent_id, user_id=server.state.owner.id)
    text = " ".join(f"Sentence {i} about the harbour and the weather." for i in range(200))
    retried = archival.add(text, attempt="run-stalled")  # the retry, the first to write
    archival.add(text, attempt="run-stalled")  # the stalled first try, going on
    assert len(retried) > 1 and archival.count() == len(retried)


@pytest.mark.usefixtures("metadata_url")  # the kept run's lease taken again, on SQLite and on PostgreSQL
def test_a_retry_of_a_passages_create_that_failed_midway_stores_each_passage_once(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus takes a long text in batches; when it refuses the second, the first is stored already and the request
    fails with a 503, which letta-client sends again by itself. The retry rewrites the passages the failed try wrote
    (their ids derive from its run), so each is there once; its answer lists them all."""
    from pymilvus import MilvusClient

    from memgpt.storage.milvus import store

    monkeypatch.setattr(store, "_WRITE_BATCH", 2)
    real = MilvusClient.upsert  # a write a client may retry is upserted, each try (memory/archival.py)
    batches: list[int] = []

    def refuse_the_second(self: MilvusClient, collection_name: str, data: list[dict[str, Any]], **kwargs: Any) -> Any:
        batches.append(len(data))
        if len(batches) == 2:
            from pymilvus.exceptions import MilvusException

            raise MilvusException(message="the second batch is refused")
        return real(self, collection_name, data, **kwargs)

    monkeypatch.setattr(MilvusClient, "upsert", refuse_the_second)
    letta = client(server)
    agent_id = sam(letta)
    retrying, retries = retrying_letta(server, max_retries=2)
    long_text = " ".join(f"Sentence {i} about the harbour and the weather." for i in range(200))
    made = retrying.agents.passages.create(agent_id, text=long_text)
    assert retries[:2] == ["0", "1"], retries  # the first try failed and was sent again
    stored = letta.agents.passages.list(agent_id, limit=1000)
    assert len(made) > 2 and len(stored) == len(made), "the retry stored a second copy of what the failed try wrote"
    # the failed try's two batches (the second refused), then the retry's upserts of every passage
    assert batches == [2] * (2 + len(made) // 2), batches
    texts = {p.id: p.text for p in stored}
    assert [texts.get(p.id) for p in made] == [p.text for p in made]
    from sqlalchemy import select

    from memgpt.storage.turns import _RUNS

    with server.state.storage.metadata.connection() as c:
        (run,) = c.execute(select(_RUNS).where(_RUNS.c.agent_id == f"passages:{agent_id}")).all()
    assert run.status == "finished" and json.loads(run.response) == [p.id for p in made]  # ids, not the texts


def test_two_retries_of_one_failed_write_redo_it_once(server: LiveServer) -> None:
    """Retries of a write that failed redo it as its run; one that comes while another redoes it is told so (409)."""
    from pydantic import TypeAdapter

    from memgpt.errors import ConflictError
    from memgpt.server.retried import RetriedWrite

    def write() -> RetriedWrite[list[str]]:
        return RetriedWrite(server.state.turns(), "passages:x", "a" * 64, TypeAdapter(list[str]), "still running")

    failed = write()

    def refused() -> list[str]:
        raise ConflictError("refused")

    with pytest.raises(ConflictError, match="refused"):
        failed.run(refused)
    first, second = write(), write()
    assert first.earlier() is None and second.earlier() is None
    assert first.attempt == second.attempt == failed.attempt and first.again and second.again

    def redo() -> list[str]:
        with pytest.raises(ConflictError, match="still running"):
            second.run(lambda: ["passage-2"])
        return ["passage-1"]

    assert first.run(redo) == ["passage-1"]
    assert write().earlier() == ["passage-1"]


# `memgpt server` whose Milvus writes go two passages a batch, each batch 0.2 s: a long insert lasts long enough
# for the test to see it half done and kill the process then.
_SLOW_INSERTS = """
import sys, time
from memgpt.storage.milvus import store
store._WRITE_BATCH = 2
from pymilvus import MilvusClient
real = MilvusClient.upsert
def slow(self, collection_name, data, **kwargs):
    done = real(self, collection_name, data, **kwargs)
    time.sleep(0.2)
    return done
MilvusClient.upsert = slow
from memgpt.cli import executable
executable()
"""


class _SlowInserts(ServerProcess):
    def start(self) -> None:
        env = {**os.environ, "MEMGPT_HOME": str(self.home)}
        command = [sys.executable, "-c", _SLOW_INSERTS, "server", "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_a_retry_of_a_passages_create_whose_server_was_killed_midway_stores_each_passage_once(
    home: Path, llm: ScriptedLLM
) -> None:
    """kill -9 of the server while it writes a long text's passages: the run it recorded is unfinished, its lease's
    owner dead. letta-client's retry, to the restarted server, redoes the work as that run, rewriting the passages
    the dead try wrote (same ids) instead of adding a second copy."""
    use_scripted_llm(home, llm.url)
    created = cli("key", "create", home=home)  # in this process: not a start-up of its own (~2 CPU s)
    assert created.returncode == 0, created.stderr
    key = next(w for w in created.stdout.split() if w.startswith("sk-"))
    body = {"text": " ".join(f"Sentence {i} about the harbour and the weather." for i in range(600))}
    slow = _SlowInserts(home)
    slow.wait_ready()
    try:
        agent_id = sam(Letta(base_url=slow.url, api_key=key, max_retries=0))
        url = f"{slow.url}/v1/agents/{agent_id}/archival-memory"

        def first_try() -> None:
            with contextlib.suppress(httpx.TransportError):
                web.post(url, json=body, headers=auth(key), timeout=120)

        threading.Thread(target=first_try, daemon=True).start()
        deadline = time.monotonic() + 60
        while not (seen := web.get(url, params={"limit": 1000}, headers=auth(key)).json()):
            assert time.monotonic() < deadline, "the insert wrote nothing in 60 s"
            time.sleep(0.05)
        slow.process.send_signal(signal.SIGKILL)
        slow.process.wait(timeout=30)
    finally:
        if slow.process.poll() is None:
            slow.process.kill()
    server = ServerProcess(home)
    server.wait_ready()
    try:
        url = f"{server.url}/v1/agents/{agent_id}/archival-memory"
        before = web.get(url, params={"limit": 1000}, headers=auth(key)).json()
        retried = web.post(url, json=body, headers={**auth(key), "X-Stainless-Retry-Count": "1"}, timeout=120)
        assert retried.status_code == 200, retried.text
        made = retried.json()
        stored = web.get(url, params={"limit": 1000}, headers=auth(key)).json()
    finally:
        server.stop()
    print(f"seen before the kill: {len(seen)}, after the restart: {len(before)}, of {len(made)}")
    assert 0 < len(before) < len(made), (len(seen), len(before), len(made))  # killed halfway, some rows stored
    assert len(stored) == len(made), "the retry stored a second copy of what the killed try wrote"
    assert {p["id"]: p["text"] for p in stored} == {p["id"]: p["text"] for p in made}


def test_a_text_over_the_insert_limit_is_refused_at_once_naming_the_field_and_the_limit(letta: Letta) -> None:
    """A long text would be embedded within the request, past letta-client's 60 s; it is refused before any work."""
    agent_id = sam(letta)
    started = time.monotonic()
    with pytest.raises(APIStatusError) as refused:
        letta.agents.passages.create(agent_id, text="Sentence about the harbour. " * 25_000)  # 0.7 MB
    assert refused.value.status_code == 413
    assert refused.value.body == {
        "detail": "text: 0.7 MB is more than one insert takes (0.5 MB, server.max_passage_mb in the server's "
        "config.toml); send it in parts, or upload it as a file to a folder (loaded as a job)"
    }
    assert time.monotonic() - started < 10  # refused, not embedded first (0.7 MB takes ~40 s on 2 quiet cores)
    assert letta.agents.passages.list(agent_id) == []


def test_a_stopped_server_exits_in_bounded_time_while_an_insert_is_embedding_and_stores_nothing_of_it(
    home: Path, llm: ScriptedLLM
) -> None:
    """SIGTERM while a long insert is being split and embedded: the insert ends at once with a 503 (the client is
    told nothing was stored) and the server exits; after a restart nothing of it is stored and the agent takes
    inserts as before. (The server waited for the insert to finish: 16 minutes for 10 MB.) server.shutdown_seconds,
    uvicorn's cut of what still runs, is longer than the test waits: only the insert's own check can end it."""
    config = use_scripted_llm(home, llm.url)
    config.server.max_passage_mb = 2  # let in a text that takes minutes to embed
    config.server.shutdown_seconds = 600
    save_config(config, home)
    created = cli("key", "create", home=home)  # in this process: not a start-up of its own (~2 CPU s)
    assert created.returncode == 0, created.stderr
    key = next(w for w in created.stdout.split() if w.startswith("sk-"))
    body = {"text": " ".join(f"Sentence {i} about the harbour and the weather." for i in range(30_000))}  # 1.5 MB
    server = ServerProcess(home)
    server.wait_ready()
    try:
        agent_id = sam(Letta(base_url=server.url, api_key=key, max_retries=0))
        url = f"{server.url}/v1/agents/{agent_id}/archival-memory"

        answers: list[httpx.Response] = []

        def insert() -> None:
            with contextlib.suppress(httpx.TransportError):
                answers.append(web.post(url, json=body, headers=auth(key), timeout=None))  # it never gives up

        sending = threading.Thread(target=insert, daemon=True)
        sending.start()
        # Its run is recorded just before the work (~1 minute on 2 quiet cores, minutes on a busy one) starts.
        with contextlib.closing(sqlite3.connect(home / "metadata.sqlite")) as db:
            running = "SELECT count(*) FROM agent_runs WHERE agent_id = ? AND status = 'running'"
            deadline = time.monotonic() + 60
            while db.execute(running, (f"passages:{agent_id}",)).fetchone() != (1,):
                assert sending.is_alive() and time.monotonic() < deadline, (answers, server.log.read_text()[-2000:])
                time.sleep(0.05)
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pytest.fail(f"memgpt server did not exit within 40 s of SIGTERM:\n{server.log.read_text()[-2000:]}")
        took = time.monotonic() - stopped
    finally:
        if server.process.poll() is None:
            server.process.kill()
    print(f"exited {took:.1f} s after SIGTERM")
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    sending.join(timeout=10)
    assert [(a.status_code, a.json()) for a in answers] == [
        (503, {"detail": "the server is stopping: nothing was stored; send the text again when it is back"})
    ]
    again = ServerProcess(home)
    again.wait_ready()
    try:
        letta = Letta(base_url=again.url, api_key=key, max_retries=0)
        assert letta.agents.passages.list(agent_id) == []  # nothing half-written
        assert [p.text for p in letta.agents.passages.create(agent_id, text="The harbour is quiet.")] == [
            "The harbour is quiet."
        ]
    finally:
        again.stop()


def test_search_covers_attached_sources_but_list_and_delete_only_the_agents_own(
    letta: Letta, server: LiveServer, model: LocalMiniLM
) -> None:
    agent_id = sam(letta)
    storage, owner = server.state.storage, server.state.owner.id
    load(storage, model, "paper", DATA / "memgpt_research_paper.pdf", user_id=owner)
    state = storage.agents.by_id(owner, agent_id)
    assert state is not None
    attach_source(storage, state, "paper")
    found = letta.agents.passages.search(agent_id, query="virtual context management", top_k=3)
    assert found.count == 3 and all(r.source_id for r in found.results)
    assert letta.agents.passages.list(agent_id) == []
    with pytest.raises(BadRequestError) as refused:  # a folder's passage: its file and folder named, nothing deleted
        letta.agents.passages.delete(found.results[0].id, agent_id=agent_id)
    assert "memgpt_research_paper.pdf" in str(refused.value) and "folders.files.delete" in str(refused.value)
    again = letta.agents.passages.search(agent_id, query="virtual context management", top_k=3)
    assert [r.id for r in again.results] == [r.id for r in found.results]
    assert [s.name for s in letta.agents.retrieve(agent_id).sources] == ["paper"]


# -- isolation ----------------------------------------------------------------------------------------
def test_another_users_agents_blocks_passages_and_messages_are_404(server: LiveServer, llm: ScriptedLLM) -> None:
    alice, bob = client(server, "alice"), client(server, "bob")
    agent_id = sam(alice)
    passage = alice.agents.passages.create(agent_id, text="Alice's secret.")[0]
    llm.reply("Hi Alice")
    alice.agents.messages.create(agent_id, input="hi")
    mine = sam(bob, "bobs")
    assert [a.id for a in bob.agents.list()] == [mine]
    calls = [
        lambda: bob.agents.retrieve(agent_id),
        lambda: bob.agents.update(agent_id, name="stolen"),
        lambda: bob.agents.delete(agent_id),
        lambda: bob.agents.blocks.list(agent_id),
        lambda: bob.agents.blocks.retrieve("human", agent_id=agent_id),
        lambda: bob.agents.blocks.update("human", agent_id=agent_id, value="owned"),
        lambda: bob.agents.passages.create(agent_id, text="x"),
        lambda: bob.agents.passages.list(agent_id),
        lambda: bob.agents.passages.search(agent_id, query="secret"),
        lambda: bob.agents.passages.delete(passage.id, agent_id=agent_id),
        lambda: bob.agents.passages.delete(passage.id, agent_id=mine),  # a guessed passage id on his own agent
        lambda: bob.agents.messages.list(agent_id),
        lambda: bob.agents.messages.create(agent_id, input="hi"),
        lambda: bob.agents.messages.cancel(agent_id),
    ]
    for call in calls:
        with pytest.raises(NotFoundError) as caught:
            call()
        assert caught.value.body == {"detail": f"no agent with id {agent_id!r}"} or "passage" in str(caught.value)
    missing = web.get(
        f"{server.url}/v1/agents/agent-00000000-0000-4000-8000-000000000000", headers=auth(server.key("bob"))
    )
    assert missing.status_code == 404 and missing.json() == {
        "detail": "no agent with id 'agent-00000000-0000-4000-8000-000000000000'"
    }
    # Nothing of Alice's changed.
    assert alice.agents.retrieve(agent_id).name == "sam"
    assert alice.agents.blocks.retrieve("human", agent_id=agent_id).value == "Name: Chad"
    assert [p.text for p in alice.agents.passages.list(agent_id)] == ["Alice's secret."]
    assert len(llm.requests) == 1


def test_a_send_to_another_users_agent_while_it_answers_is_404_and_takes_nothing(
    server: LiveServer, llm: ScriptedLLM
) -> None:
    """The agent's ownership is read with its lease, and on its own while another turn holds the lease: a 404,
    never a wait for the lease and then 409; Alice's turn and her next one are untouched."""
    alice, bob = client(server, "alice"), client(server, "bob")
    agent_id = sam(alice)
    answering = threading.Event()

    def answer(_: dict[str, Any]) -> dict[str, Any]:
        assert answering.wait(30)
        return {"tool": "send_message", "args": {"message": "Later."}}

    llm.add(answer)
    llm.reply("Again.")
    first = threading.Thread(target=alice.agents.messages.create, args=(agent_id,), kwargs={"input": "slow"})
    first.start()
    deadline = time.monotonic() + 30
    while server.state.storage.turns.running_run(agent_id) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        with pytest.raises(NotFoundError) as caught:
            bob.agents.messages.create(agent_id, input="hi")
        assert caught.value.body == {"detail": f"no agent with id {agent_id!r}"}
    finally:
        answering.set()
        first.join(30)
    again = alice.agents.messages.create(agent_id, input="again")
    assert [m.content for m in again.messages if m.message_type == "assistant_message"] == ["Again."]
    said = [m.content for m in alice.agents.messages.list(agent_id, order="asc") if m.message_type == "user_message"]
    assert said == ["slow", "again"] and len(llm.requests) == 2


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_agent_requests_are_4xx_json_and_change_nothing(server: LiveServer, letta: Letta) -> None:
    headers = {**auth(server.key()), "content-type": "application/json"}
    url = f"{server.url}/v1/agents/"
    cases = [
        (b'{"name": ', 422),
        (b'{"name": 42}', 422),
        (b'{"memory_blocks": "persona"}', 422),
        (b'{"memory_blocks": [{"label": "human"}]}', 422),
        (
            json.dumps({"name": "a", "memory_blocks": [{"label": "human", "value": "x" * 30, "limit": 10}]}).encode(),
            400,
        ),
        (
            json.dumps(
                {"name": "a", "memory_blocks": [{"label": "h", "value": "1"}, {"label": "h", "value": "2"}]}
            ).encode(),
            400,
        ),
        (json.dumps({"name": "bad\nname"}).encode(), 400),
        (json.dumps({"name": "a", "system": "  "}).encode(), 400),
        (json.dumps({"name": "a", "folder_ids": ["source-1"]}).encode(), 400),
        (json.dumps({"name": "a", "context_window_limit": 10}).encode(), 422),
    ]
    for body, status in cases:
        answer = web.post(url, content=body, headers=headers)
        assert answer.status_code == status, (body, answer.text)
        assert "detail" in answer.json() and "Traceback" not in answer.text
    assert letta.agents.list().items == []
    agent_id = sam(letta)
    bad_patch = web.patch(f"{url}{agent_id}", content=b'{"tags": "x"}', headers=headers)
    assert bad_patch.status_code == 422
    for path in ("archival-memory/search?query=", "archival-memory?limit=0", "messages?order=sideways"):
        assert web.get(f"{url}{agent_id}/{path}", headers=headers).status_code == 422, path
    blank = web.post(f"{url}{agent_id}/archival-memory", json={"text": "   "}, headers=headers)
    assert blank.status_code == 400 and blank.json() == {"detail": "text: is empty; nothing was stored"}
    assert letta.agents.retrieve(agent_id).tags == []


def test_collections_answer_with_or_without_a_trailing_slash(server: LiveServer, letta: Letta) -> None:
    """`curl -H ... /v1/agents` is a list, as /v1/agents/ (letta-client's path) is: not an empty 307 that curl shows
    as nothing (found trying the API by hand: /v1/folders and /v1/health answered, /v1/agents redirected)."""
    headers = {**auth(server.key()), "content-type": "application/json"}
    made = web.post(f"{server.url}/v1/agents", json={"name": "sam", "model": HANDLE}, headers=headers)
    assert made.status_code == 200, made.text
    for path in ("agents", "folders", "models", "mcp-servers", "health"):
        answer = web.get(f"{server.url}/v1/{path}", headers=headers)
        assert answer.status_code == 200, (path, answer.status_code, answer.headers.get("location"))
        assert answer.json() == web.get(f"{server.url}/v1/{path}/", headers=headers).json(), path
    assert [a.name for a in letta.agents.list()] == ["sam"]


def test_numbers_too_large_and_text_that_is_not_unicode_are_4xx_not_500(server: LiveServer, letta: Letta) -> None:
    """A number past what the database column holds, or a JSON string with a lone surrogate escape (valid
    JSON, but no Unicode text), is the client's mistake: a 4xx naming the field, and nothing stored."""
    headers = {**auth(server.key()), "content-type": "application/json"}
    url = f"{server.url}/v1/agents/"
    huge = 10**20
    creates = [
        {"name": "a", "memory_blocks": [{"label": "human", "value": "x", "limit": huge}]},
        {"name": "a", "context_window_limit": huge},
        {"name": "a", "llm_config": {"context_window": huge}},
    ]
    for body in creates:
        answer = web.post(url, json=body, headers=headers, timeout=60)
        assert answer.status_code == 422, (body, answer.text)
        assert "less than or equal to 2147483647" in answer.text
    for raw in (b'{"name": "\\ud800x"}', b'{"name": "a", "memory_blocks": [{"label": "human", "value": "\\udfff"}]}'):
        answer = web.post(url, content=raw, headers=headers, timeout=60)
        assert answer.status_code == 400, (raw, answer.text)
        assert "not valid Unicode" in answer.json()["detail"]
    assert letta.agents.list().items == []
    agent_id = sam(letta)
    for path, body in (
        (f"{agent_id}/core-memory/blocks/human", {"limit": huge}),
        (agent_id, {"context_window_limit": huge}),
    ):
        assert web.patch(f"{url}{path}", json=body, headers=headers, timeout=60).status_code == 422, path
    lone = b'{"input": "hi \\ud83d"}'
    answer = web.post(f"{url}{agent_id}/messages", content=lone, headers=headers, timeout=60)
    assert answer.status_code == 400 and "not valid Unicode" in answer.json()["detail"]
    assert letta.agents.messages.list(agent_id).items == []  # the message was not stored
    assert letta.agents.retrieve(agent_id).llm_config.context_window < huge
