"""Two `memgpt server` processes on one PostgreSQL and one Milvus server, for the scale-out tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from letta_client import Letta

from memgpt.config import Config, ServerSettings, save_config
from memgpt.server.state import OWNER_NAME
from memgpt.storage import Storage
from memgpt.types import Role
from tests.milvus_server import TOKEN, milvus_database
from tests.postgres import PostgresServer
from tests.scripted_llm import ScriptedLLM
from tests.server_rig import ServerProcess, environment, start_servers, use_scripted_llm

SCRIPTED_HANDLE = "openai-compatible/scripted"


@dataclass
class ServerPair:
    """Two `memgpt server` processes on one home (PostgreSQL + a Milvus server), the LLM they share and a key."""

    home: Path
    config: Config
    llm: ScriptedLLM
    key: str
    a: ServerProcess
    b: ServerProcess

    def client(self, server: ServerProcess, **options: Any) -> Letta:
        return Letta(base_url=server.url, api_key=self.key, **{"max_retries": 0, **options})

    def user_messages(self, agent_id: str) -> list[str]:
        """What the user said to ``agent_id``, as stored (alerts and other named messages left out)."""
        with _test_storage(self.config, self.home) as storage:
            found = storage.messages.last(agent_id, 1000)
            return [m.content for m in found if m.role is Role.USER and not m.name]

    def agent(self, server: ServerProcess) -> str:
        blocks = [{"label": "human", "value": "Name: Chad"}, {"label": "persona", "value": "I am Sam."}]
        name = f"sam-{uuid.uuid4().hex[:6]}"
        made = self.client(server).agents.create(name=name, memory_blocks=blocks, model=SCRIPTED_HANDLE)  # type: ignore[arg-type]
        return made.id

    def history(self, agent_id: str) -> list[tuple[str, str]]:
        """(role, text) of every stored message of the agent, oldest first, read from the database itself."""
        with _test_storage(self.config, self.home) as storage:
            return [(m.role.value, m.content) for m in storage.messages.last(agent_id, 1000)]


def _test_storage(config: Config, home: Path) -> Storage:
    """The pytest process's own storage of the servers' home, with the default lease's idle transaction timeout
    (30 s) whatever lease ``configure`` gave the servers: PostgreSQL ends a session whose transaction waits that
    long for its client, and on a machine at load ~20 a gen-2 GC of the pytest process (~0.1 CPU s) took 3-4.4 s:
    with the servers' 3 s one, such a pause inside the migrations' transaction of the new database (70 statements)
    ends it, and the fixture's set-up fails."""
    return Storage(config.model_copy(update={"server": ServerSettings()}), home)


def serialized(config: Config) -> None:
    """Sends that meet must wait for each other, however loaded the machine (the 409 after a short wait is tested
    in test_server_messages); only a dead owner frees a lease, never its expiry."""
    config.server.busy_wait_seconds = 60
    config.server.lease_seconds = 600


@contextmanager
def server_pair(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    milvus_server: str,
    *,
    label: str,
    workers: tuple[int, int],
    configure: Callable[[Config], None],
) -> Iterator[tuple[Path, Config, ScriptedLLM, str, ServerProcess, ServerProcess]]:
    """Start two servers (``workers`` uvicorn workers each) on a new home whose metadata is a fresh PostgreSQL
    database and whose vectors are a fresh database of the Milvus server; ``configure`` adjusts the config
    first. Yields (home, config, llm, key, a, b); stops both and puts the environment back afterwards."""
    home = tmp_path_factory.mktemp(label) / "home"
    llm = ScriptedLLM()
    tiktoken = str(tmp_path_factory.mktemp("tiktoken"))
    try:
        with (
            environment(MEMGPT_HOME=str(home), TIKTOKEN_CACHE_DIR=tiktoken),  # the child processes inherit them
            postgres_server.database() as metadata_url,
            milvus_database(milvus_server) as database,
        ):
            config = use_scripted_llm(home, llm.url)
            config.metadata_url = metadata_url
            config.milvus.uri, config.milvus.database, config.milvus.token = milvus_server, database, TOKEN
            configure(config)
            save_config(config, home)
            with _test_storage(config, home) as storage:  # migrates the new database
                owner = storage.users.ensure(config.user_id, OWNER_NAME)
                key = storage.users.create_key(owner.id)[1]
            a, b = start_servers(home, *workers)
            try:
                yield home, config, llm, key, a, b
            finally:
                a.stop()
                b.stop()
    finally:
        llm.close()
