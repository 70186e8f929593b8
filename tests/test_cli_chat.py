"""The chat of `memgpt run` (memgpt/cli/chat.py) in this process, on real storage and the scripted LLM: what it says
when a line fails or is interrupted, and its agent's lease when the metadata database goes away (a real PostgreSQL
stopped and started again) or a real Ctrl-C (SIGINT) comes at a chosen statement."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from memgpt.agent.agent import Agent
from memgpt.cli.chat import FAILED, INTERRUPTED, Chat, Leases
from memgpt.config import load_config, save_config
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage
from memgpt.types import Role
from tests.agent_rig import Rig
from tests.postgres import PostgresServer
from tests.scripted_llm import ScriptedLLM

BUSY_WAIT = 3.0  # seconds a line waits for the agent's lease before it is said not sent


@pytest.fixture
def pg_storage(home: Path, postgres_url: str) -> Iterator[Storage]:
    config = load_config(home)
    config.metadata_url = postgres_url
    save_config(config, home)
    with Storage(load_config(home), home) as storage:
        yield storage


def _chat(rig: Rig) -> Chat:
    agent = rig.create("sam")

    def reopen(old: Agent) -> Agent:
        return rig.open(old.state.name)

    leases = Leases(30.0, BUSY_WAIT, reopen, rig.storage.turns.settled_version(agent.state.id))
    chat = Chat(agent, rig.storage, leases=leases)
    chat.at_prompt = True  # as at a terminal: a line not sent is put back at the prompt
    return chat


@pytest.fixture
def pg_chat(pg_storage: Storage, model: LocalMiniLM, llm: ScriptedLLM) -> Iterator[Chat]:
    rig = Rig(pg_storage, model, llm)
    yield _chat(rig)
    rig.close()


@pytest.fixture
def chat(storage: Storage, model: LocalMiniLM, llm: ScriptedLLM) -> Iterator[Chat]:
    rig = Rig(storage, model, llm)
    yield _chat(rig)
    rig.close()


def _user_messages(chat: Chat) -> list[str]:
    stored = chat.storage.messages.last(chat.agent.state.id, 100)
    return [m.content or "" for m in stored if m.role is Role.USER and not m.name]


def test_a_turn_whose_lease_cannot_be_given_back_frees_the_agent_for_the_next_line_once_the_database_is_back(
    pg_chat: Chat, llm: ScriptedLLM, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL stops while the LLM answers: the step is not stored, nor is the lease given back. The line says its
    message is saved (it was, before the LLM was asked), and the lease is given back once PostgreSQL answers again,
    not left to lapse (30 s): the next line is answered at once, without waiting for this very process's turn."""
    llm.reply("Hello.")
    pg_chat.handle("hi")
    go_on = threading.Event()
    llm.reply("never stored", until=go_on)
    asked = len(llm.requests)
    during = threading.Thread(target=pg_chat.handle, args=("during",))
    during.start()
    deadline = time.monotonic() + 30
    while len(llm.requests) == asked and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(llm.requests) > asked, "the turn never reached the LLM"
    with postgres_server.down():
        go_on.set()
        during.join(60)
    assert not during.is_alive()
    err = capsys.readouterr().err
    assert err.rstrip().endswith("(your message is saved; /retry to try again)"), err
    llm.reply("after")
    pg_chat.handle("next")
    out, err = capsys.readouterr()
    # At once: its first try took the lease. Had the lease been left held, each try after the first pauses, and the
    # first pause says "waiting for the agent's turn" (then, after the busy wait, the line is not sent, no "after").
    # Observed as that order of events, not as a time against the busy wait, which a loaded machine can pass.
    assert "waiting for the agent's turn" not in err, err
    assert "after" in out, (out, err)
    assert pg_chat.exit_code == FAILED  # ("during" failed)
    assert _user_messages(pg_chat) == ["hi", "during", "next"]


def test_a_line_that_fails_before_its_message_is_stored_says_it_was_not_saved_and_puts_it_back(
    pg_chat: Chat, llm: ScriptedLLM, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL is down as a line is sent: taking the agent's lease fails, nothing is stored. The line says so and
    the text is back at the prompt (not "your message is saved; /retry", which would answer the last message
    stored); once PostgreSQL is back, Enter sends it."""
    llm.reply("Hello.")
    pg_chat.handle("hi")
    capsys.readouterr()
    with postgres_server.down():
        pg_chat.handle("while down")
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert err.rstrip().endswith("; your message was not saved (it is back at the prompt)"), err
    assert "is saved" not in err
    assert pg_chat.unsent == "while down"
    llm.reply("Got it now.")
    pg_chat.handle(pg_chat.unsent)
    assert "Got it now." in capsys.readouterr().out
    assert _user_messages(pg_chat) == ["hi", "while down"]


def _interrupt_at(storage: Storage, table: str) -> Any:
    """A real Ctrl-C (SIGINT to this process) as the next statement reading ``table`` runs; the hook to remove."""
    armed = [True]

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if armed[0] and f"FROM {table}" in statement:
            armed[0] = False
            signal.raise_signal(signal.SIGINT)

    event.listen(storage.metadata.engine, "before_cursor_execute", before)
    return before


def test_a_ctrl_c_in_a_command_that_took_no_lease_says_what_that_command_did(
    chat: Chat, llm: ScriptedLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a turn (which held the agent's lease), a Ctrl-C in /dump (which takes none) says /dump changed nothing:
    not the turn's "your message is saved; /retry", nor that a message waited for the agent's turn."""
    llm.reply("Hello.")
    chat.handle("hi")
    capsys.readouterr()
    hook = _interrupt_at(chat.storage, "messages")
    try:
        chat.handle("/dump")
    finally:
        event.remove(chat.storage.metadata.engine, "before_cursor_execute", hook)
    err = capsys.readouterr().err
    assert err.strip() == "interrupted (/dump changed nothing)", err
    assert chat.exit_code == INTERRUPTED
    assert chat.unsent is None
