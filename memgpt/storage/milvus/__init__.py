"""Milvus, the passage store: Milvus Lite (a local file) and Milvus servers share this code.

This package is the only place that imports pymilvus; what differs between deployments is read from
:class:`Capabilities`, never from ``if uri.startswith(...)`` elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from memgpt.config import display_path
from memgpt.errors import StorageError

# gRPC (under pymilvus) restarts its event-engine poller thread in a forked child when fork support is on,
# as it is by default. A child that then closes its inherited descriptors before exec -- pexpect, or
# subprocess with preexec_fn -- closes the poller's epoll fd under it, and gRPC aborts that child with
# "epoll_wait ... Bad file descriptor" (seen: 9 of 200 pexpect spawns from a process holding a Milvus
# Lite client). memgpt never uses gRPC in a forked child, so the support is off. It must be set before
# grpc is first imported, and everything in memgpt that imports pymilvus is below this package.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from memgpt.storage.milvus.client import (
    Capabilities,
    HeldLogs,
    LiteStart,
    MilvusTarget,
    call_logs,
    connect,
    detect,
    import_client_modules,
    milvus_errors,
    release,
    reserve,
    start_lite,
)
from memgpt.storage.milvus.schema import MAX_WINDOW, collection_name, legacy_collection_names, read_layout
from memgpt.storage.milvus.store import MilvusPassageStore
from memgpt.types import EmbeddingSpace

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_WINDOW",
    "Capabilities",
    "MilvusConnection",
    "MilvusPassageStore",
    "MilvusTarget",
    "OpeningConnection",
    "collection_name",
]


class MilvusConnection:
    """One client per process and target; hands out one store per embedding space, safely from any thread."""

    def __init__(self, target: MilvusTarget, starting: LiteStart | None = None) -> None:
        self.target = target
        self._client = connect(target, starting)
        self.capabilities = detect(self._client, target)
        self._stores: dict[EmbeddingSpace, MilvusPassageStore] = {}
        self._lock = threading.Lock()  # one store per space: opening one may create or upgrade its collection

    @property
    def client(self) -> Any:
        return self._client

    def passages(self, space: EmbeddingSpace, on_upgrade: Callable[[int], None] | None = None) -> MilvusPassageStore:
        """The store of ``space``; ``on_upgrade`` applies where opening it upgrades an earlier-schema
        collection (see ``MilvusPassageStore``)."""
        with self._lock:
            if space not in self._stores:
                self._stores[space] = MilvusPassageStore(
                    self._client, self.target, self.capabilities, space, on_upgrade
                )
            return self._stores[space]

    def warm(self, space: EmbeddingSpace) -> None:
        """Open the store of ``space`` (see :meth:`passages`): load its collection into the server's memory
        (Milvus Lite loads nothing when it starts; ~0.1 s for the seed paper), or create it where there is none
        yet -- a new home's first `memgpt load` or `memgpt run`, whose ~0.2-0.5 s of creating and priming the
        collection (see ``schema.PRIMER_ID``) then overlap the command's own start-up. Run in the connecting
        thread. Left to opening the store in the command, which says what is wrong: collections of an earlier
        schema to upgrade (the upgrade's hook is the command's), and any failure here -- a foreign collection,
        another embedding space, Milvus refusing."""
        try:
            names = self.ping()
            if any(name in names for name in legacy_collection_names(space)):
                return
            self.passages(space)
        except StorageError as exc:
            logger.debug("opening the store of %s failed (left to the command): %s", space, exc)

    def spaces(self) -> list[EmbeddingSpace]:
        """The embedding space of every memgpt passage collection here, first-release ones included."""
        found = set()
        for name in self.ping():
            if name.startswith(("memgpt_v", "memgpt_passages_")):
                found.add(read_layout(self._client, name).space)
        return sorted(found)

    def ping(self) -> list[str]:
        """Round-trip to the server; returns the collection names. A database the target names that the server
        does not have is one line saying so, not also pymilvus's ERROR of the call with its traceback."""
        records: list[logging.LogRecord] = []
        # The whole call under milvus_errors (as store._load): its hold takes pymilvus's "Connection recovery
        # failed" WARNING of a server out of reach, and the call's ERROR replayed here goes to that hold too.
        with milvus_errors("list collections"):
            try:
                with call_logs.held(records):
                    names = list(self._client.list_collections())
            except Exception as exc:
                if not (self.target.database and _database_missing(exc)):
                    HeldLogs.emit(records)  # to milvus_errors, which says them unless its StorageError does
                    raise
                HeldLogs.handled(records)
                raise StorageError(
                    f"Milvus at {display_path(self.target.uri)} has no database '{self.target.database}': create "
                    "it there, or leave --milvus-database out to use its default database"
                ) from exc
            HeldLogs.emit(records)
        return names

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing is best effort; the process may be exiting
            self._client.close()
        release(self.target)
        with self._lock:
            self._stores.clear()


class OpeningConnection:
    """A :class:`MilvusConnection` being opened in a background thread, so that a command's own start-up
    (imports, reading files, loading the embedding model) overlaps the slowest part of opening Milvus:
    starting the Milvus Lite server and connecting to it. pymilvus is imported first, by the caller:
    the thread imports nothing (see :func:`import_client_modules`).

    ``warm``, the embedding space the command will use, has its store opened in that thread too (see
    :meth:`MilvusConnection.warm`).

    A Milvus Lite file that another process holds (or a read-only one) is reported here, at once. Only
    the thread waits: Ctrl-C still reaches the main thread. :meth:`wait` hands over the connection (or
    raises what opening it raised); :meth:`discard` closes whatever was opened.
    """

    def __init__(
        self, target: MilvusTarget, meanwhile: Callable[[], None] | None = None, warm: EmbeddingSpace | None = None
    ) -> None:
        self.target = target
        self._warm = warm
        reserve(target)  # the connection takes its own hold; this one ends with the thread
        starting: LiteStart | None = None
        try:
            # Milvus Lite's server process starts first, so it boots while pymilvus is imported.
            starting = start_lite(target)
            if meanwhile is not None:
                meanwhile()  # see Storage.open_vectors_early
            import_client_modules()  # here, not in the thread: see import_client_modules
        except BaseException:
            if starting is not None:
                starting.join()  # then releasing the file stops the server it started
            release(target)
            raise
        self._starting = starting
        self._connection: MilvusConnection | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, name="milvus-connect", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        try:
            connection = MilvusConnection(self.target, self._starting)
            try:
                if self._warm is not None:
                    connection.warm(self._warm)
            except BaseException:
                connection.close()  # wait() raises what happened: nobody else would close it
                raise
            self._connection = connection
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for it
            self._error = exc
        finally:
            release(self.target)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> MilvusConnection:
        """The opened connection, now the caller's to close; or what opening it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        connection, self._connection = self._connection, None
        if connection is None:
            raise StorageError(f"the connection to {display_path(self.target.uri)} was already handed over")
        return connection

    def discard(self) -> None:
        self._thread.join()
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _database_missing(exc: BaseException) -> bool:
    """Whether a pymilvus error says the database asked for does not exist (Milvus's code 800)."""
    return getattr(exc, "code", None) == 800 or "database not found" in str(getattr(exc, "message", "") or exc)
