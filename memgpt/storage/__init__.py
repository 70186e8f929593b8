"""Where the bytes go: metadata in SQL, passages in Milvus, opened together from the config."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from memgpt.config import Config
from memgpt.errors import StorageError
from memgpt.types import EmbeddingSpace

if TYPE_CHECKING:
    from memgpt.storage.agents import AgentStore
    from memgpt.storage.attachments import AttachmentStore
    from memgpt.storage.base import PassageStore
    from memgpt.storage.files import FileStore
    from memgpt.storage.marks import PassageMarks
    from memgpt.storage.mcp_servers import AgentMCPServerStore
    from memgpt.storage.messages import MessageStore
    from memgpt.storage.milvus import MilvusConnection, MilvusTarget, OpeningConnection
    from memgpt.storage.sql import MetadataStore
    from memgpt.storage.templates import TemplateStore
    from memgpt.storage.turns import TurnStore
    from memgpt.storage.users import UserStore


def milvus_target(config: Config, home: Path, lite_server: str = "") -> MilvusTarget:
    """The Milvus the config points at; ``lite_server``: the socket of its Milvus Lite file's server that another
    process runs (see :func:`serving_lite`)."""
    from memgpt.storage.milvus import MilvusTarget

    target = MilvusTarget(config.milvus_uri(home), config.milvus.token, config.milvus.database)
    if lite_server and target.is_lite:
        return MilvusTarget(target.uri, target.token, target.database, lite_server)
    return target


@contextmanager
def serving_lite(config: Config, home: Path, on_end: Callable[[int | None], None]) -> Iterator[str | None]:
    """Run the home's Milvus Lite server for other processes while this context lasts, holding the file (see
    ``memgpt.storage.milvus.client.serve_lite``, ``on_end`` included); yields its socket for
    ``Storage(..., lite_server=)``. None, and nothing started, where the config names a Milvus server, which
    every process reaches by itself."""
    target = milvus_target(config, home)
    if not target.is_lite:
        yield None
        return
    from memgpt.storage.milvus.client import serve_lite

    with serve_lite(target, on_end) as uri:
        yield uri


def check_milvus(target: MilvusTarget) -> None:
    """Connect to ``target`` and list its collections, so a bad URI or token fails now, in one line."""
    from memgpt.storage.milvus import MilvusConnection

    connection = MilvusConnection(target)
    try:
        connection.ping()
    finally:
        connection.close()


class Storage:
    """Every store of one memgpt home, built once and safe to share between threads.

    SQL stores, one per table family: ``metadata`` (sources and documents), ``files`` (a source's files
    and how their loads went), ``agents`` (agents and their blocks), ``messages``, ``attachments``
    (sources linked to agents), ``mcp_servers`` (MCP servers an agent uses), ``templates`` (a user's
    personas and humans), ``users`` (a server's users and their API keys), ``turns`` (which agent runs
    a turn where, and a record of each turn) and ``marks`` (where each agent's and source's passages stand
    in the vector store's history, so other processes' searches see them). Passages live in Milvus,
    connected on first use: listing sources needs only SQL, and opening Milvus Lite costs most of a second
    and takes its file lock.

    Storage serves every user alike: each call that reads or writes a user's data names the user.
    """

    def __init__(
        self,
        config: Config,
        home: Path,
        *,
        vectors_early: EmbeddingSpace | None = None,
        meanwhile: Callable[[], None] | None = None,
        lite_server: str = "",
    ) -> None:
        """``vectors_early``: the embedding space of a command that will search or write passages. Milvus then
        starts opening (see :meth:`open_vectors_early`, ``meanwhile`` included) before the SQL stores are, so
        that importing SQLAlchemy (~0.2 CPU seconds) and the command's first SQL overlap connecting to Milvus
        and opening that space's collection (making it in a new home). ``lite_server``: the socket of the Milvus
        Lite server another process runs for the home's file (a worker of `memgpt server --workers N`); this
        process then neither holds the file nor starts a server for it."""
        self.milvus_target = milvus_target(config, home, lite_server)
        self._vectors: MilvusConnection | None = None
        self._opening: OpeningConnection | None = None
        self._lock = threading.Lock()
        early_error: StorageError | None = None
        if vectors_early is not None:
            try:
                self.open_vectors_early(meanwhile, vectors_early)
            except StorageError as exc:
                # A Milvus Lite file that is read-only or another process holds: said once the SQL stores are
                # open, so that their own errors (a read-only home) still come first.
                early_error = exc
        try:
            from memgpt.storage.files import FileStore
            from memgpt.storage.marks import PassageMarks
            from memgpt.storage.sql import MetadataStore

            # A server's lease lasts this long: no transaction stopped midway blocks its takeover for longer.
            url, idle = config.metadata_database_url(home), config.server.lease_seconds
            self.metadata: MetadataStore = MetadataStore(url, idle_transaction_seconds=idle)
            # A recall indexing pass's claim on an agent (storage/claims.py) lasts as long as a lease: a process
            # stopped holding one keeps others from indexing that agent no longer than from taking it over.
            self.claim_seconds: float = idle
        except BaseException:
            self._close_vectors()
            raise
        self.files: FileStore = FileStore(self.metadata)
        self.marks: PassageMarks = PassageMarks(self.metadata)
        if early_error is not None:
            self.metadata.close()
            raise early_error
        self._agent_stores: _AgentStores | None = None  # the stores below are made on first use
        self._templates: TemplateStore | None = None
        self._users: UserStore | None = None
        self._building = threading.Lock()

    # The stores of agents, users and templates are made on first use: their modules (and SQLAlchemy's
    # PostgreSQL dialect, which turns.py needs) cost a tenth of a CPU second to import, and the commands on
    # sources (`list sources`, `search`, `load`) never use them. The agent family is made at once: its
    # tables refer to each other, and SQLAlchemy resolves a foreign key only to a table whose module is loaded.
    def _agent_family(self) -> _AgentStores:
        with self._building:
            if self._agent_stores is None:
                self._agent_stores = _AgentStores.of(self.metadata)
            return self._agent_stores

    @property
    def agents(self) -> AgentStore:
        return self._agent_family().agents

    @property
    def messages(self) -> MessageStore:
        return self._agent_family().messages

    @property
    def attachments(self) -> AttachmentStore:
        return self._agent_family().attachments

    @property
    def mcp_servers(self) -> AgentMCPServerStore:
        return self._agent_family().mcp_servers

    @property
    def turns(self) -> TurnStore:
        return self._agent_family().turns

    @property
    def templates(self) -> TemplateStore:
        with self._building:
            if self._templates is None:
                from memgpt.storage.templates import TemplateStore

                self._templates = TemplateStore(self.metadata)
            return self._templates

    @property
    def users(self) -> UserStore:
        with self._building:
            if self._users is None:
                from memgpt.storage.users import UserStore

                self._users = UserStore(self.metadata)
            return self._users

    def open_vectors_early(
        self, meanwhile: Callable[[], None] | None = None, space: EmbeddingSpace | None = None
    ) -> None:
        """Start connecting to Milvus in the background, for a command that will need it: opening Milvus
        Lite takes most of a second, which then overlaps the command's other start-up work. The first use
        of :attr:`vectors` waits for it (and raises what connecting raised). ``meanwhile`` runs once the
        Milvus Lite file is known to be free and writable, just before pymilvus is imported: work to start
        in a thread of its own during that import (e.g. ``EmbeddingModel.load_early``). ``space``, the
        embedding space the command will use, has its store opened in the background as well: its collection
        loaded, or made where there is none (see MilvusConnection.warm)."""
        with self._lock:
            if self._vectors is None and self._opening is None:
                from memgpt.storage.milvus import OpeningConnection

                self._opening = OpeningConnection(self.milvus_target, meanwhile, space)
            elif meanwhile is not None:
                meanwhile()

    @property
    def vectors(self) -> MilvusConnection:
        with self._lock:
            if self._vectors is None:
                if self._opening is not None:
                    # A Ctrl-C while waiting leaves the opening for close() to discard.
                    opening = self._opening
                    try:
                        self._vectors = opening.wait()
                    finally:
                        if opening.done:
                            self._opening = None
                else:
                    from memgpt.storage.milvus import MilvusConnection

                    self._vectors = MilvusConnection(self.milvus_target)
            return self._vectors

    def passages(self, space: EmbeddingSpace) -> PassageStore:
        return self.vectors.passages(space, on_upgrade=lambda version: self._upgraded(space, version))

    def passages_at_first_use(self, space: EmbeddingSpace) -> PassageStore:
        """The store of ``space`` as :meth:`passages` gives it, but Milvus opens only when the store is first used
        (pymilvus's import, Milvus Lite's start and the connection: ~0.15-0.2 CPU s), for a process that may
        never need it (`memgpt run --message`, whose turn most often neither searches nor stores). What opening
        it raises is raised by that first use."""
        return cast("PassageStore", _AtFirstUse(self, space))

    def _upgraded(self, space: EmbeddingSpace, version: int) -> None:
        """A collection of an earlier schema was copied into ``space``'s: recall entries made before schema
        4 hold single messages, so the messages of this home's agents in that space are indexed again (with
        their context). Runs before the old collection is dropped, so a crash here repeats the upgrade."""
        if version < 4:
            self.agents.unindex_messages(space)

    def close(self) -> None:
        self._close_vectors()
        if self._agent_stores is not None:
            self._agent_stores.turns.close()  # leases left to give back (the database was away): a last try
        self.metadata.close()

    def _close_vectors(self) -> None:
        with self._lock:
            if self._opening is not None:
                self._opening.discard()
                self._opening = None
            if self._vectors is not None:
                self._vectors.close()
                self._vectors = None

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AtFirstUse:
    """See :meth:`Storage.passages_at_first_use`. ``shared`` is known without opening anything."""

    def __init__(self, storage: Storage, space: EmbeddingSpace) -> None:
        self._storage, self._space = storage, space
        self.shared = not storage.milvus_target.starts_lite  # as MilvusPassageStore says it

    @functools.cached_property
    def _store(self) -> PassageStore:
        return self._storage.passages(self._space)  # one store per space and process, however often asked

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._store, name)


@dataclass(frozen=True)
class _AgentStores:
    agents: AgentStore
    messages: MessageStore
    attachments: AttachmentStore
    mcp_servers: AgentMCPServerStore
    turns: TurnStore

    @classmethod
    def of(cls, metadata: MetadataStore) -> _AgentStores:
        from memgpt.storage.agents import AgentStore
        from memgpt.storage.attachments import AttachmentStore
        from memgpt.storage.mcp_servers import AgentMCPServerStore
        from memgpt.storage.messages import MessageStore
        from memgpt.storage.turns import TurnStore

        return cls(
            AgentStore(metadata),
            MessageStore(metadata),
            AttachmentStore(metadata),
            AgentMCPServerStore(metadata),
            TurnStore(metadata),
        )
