"""A Milvus server that stops answering (its address cut by a relay between memgpt and a real Milvus server: the
test server is one per machine, shared by every test session running, so it is not stopped): memgpt's StorageError
of each failed call is not accompanied by pymilvus's "Connection recovery failed" WARNING with a traceback, nor by
its ERROR of the call ("RPC error: [query], ..." with a traceback in its text); both go to DEBUG. What pymilvus logs
during an error memgpt does not handle, and its ERROR of a call a server that answers refused
(test_milvus_store), still show."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from memgpt.errors import StorageError, StorageUnavailable
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from memgpt.storage.milvus.client import milvus_errors
from memgpt.types import EmbeddingSpace
from tests.milvus_server import TOKEN

DIM = 8


class Relay:
    """Forwards a loopback port to the Milvus server until :meth:`cut`, which closes every connection and
    the port, as a server that went down does."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reopen(self) -> None:
        """Listen again on the same address after :meth:`cut`, as a server started again does."""
        self.listener = socket.create_server(("127.0.0.1", int(self.uri.rsplit(":", 1)[1])))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accepting thread, which a close alone leaves listening
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def relay(milvus_server: str) -> Iterator[Relay]:
    running = Relay(milvus_server)
    yield running
    running.cut()


def test_a_milvus_server_gone_is_one_storage_error_without_pymilvus_tracebacks(
    relay: Relay, server_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    connection = MilvusConnection(MilvusTarget(relay.uri, TOKEN, database=server_database))
    try:
        store = connection.passages(EmbeddingSpace("test-model", DIM))
        assert store.count() == 0
        relay.cut()
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            for _ in range(2):  # each failed call
                # Out of reach, not refused: a load meeting it is tried again later (StorageUnavailable).
                with pytest.raises(StorageUnavailable, match="Milvus failed to count passages"):
                    store.count()
        said = [r.getMessage() for r in caplog.records if r.name.startswith("pymilvus") and r.levelno >= logging.INFO]
        assert said == []  # neither "Connection recovery failed" nor "RPC error: [query], ..." with its traceback
        kept = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert sum("as pymilvus logged it: RPC error: [query]" in m for m in kept) == 2  # at DEBUG, for a developer
        # What a load meets first (its store opened after the cut): pymilvus's reconnect finds no server (its
        # "Fail connecting to server", code CONNECT_FAILED): out of reach too, so the server loads it again later.
        with pytest.raises(StorageUnavailable, match=r"Milvus failed to open collection .*Fail connecting to server"):
            connection.passages(EmbeddingSpace("other-model", DIM))
    finally:
        connection.close()


def _fail_in_pymilvus_then_elsewhere() -> None:
    try:
        raise OSError("gone")
    except OSError:
        logging.getLogger("pymilvus.client.connection_manager").warning("Connection recovery failed", exc_info=True)
    raise RuntimeError("not pymilvus's")


def test_what_pymilvus_logs_during_an_error_memgpt_does_not_handle_is_still_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError), milvus_errors("count passages"):
        _fail_in_pymilvus_then_elsewhere()
    assert [(r.getMessage(), r.exc_info is not None) for r in caplog.records] == [("Connection recovery failed", True)]


def test_a_ping_of_a_milvus_server_gone_is_one_storage_error_without_pymilvus_tracebacks(
    relay: Relay, server_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    connection = MilvusConnection(MilvusTarget(relay.uri, TOKEN, database=server_database))
    try:
        connection.ping()
        # A call the answering server refuses (here: a collection it does not have) fails the same way every time:
        # a plain StorageError in one line, not StorageUnavailable (a load meeting it is not tried again).
        refusal = pytest.raises(StorageError, match=r"^Milvus failed to query nothing: [^\n]*$")
        with refusal as refused, milvus_errors("query nothing"):
            connection.client.query(collection_name="memgpt_no_such_collection", filter="id != ''")
        assert not isinstance(refused.value, StorageUnavailable)
        relay.cut()
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            for _ in range(2):  # each failed call
                with pytest.raises(StorageUnavailable, match="Milvus failed to list collections"):
                    connection.ping()
        said = [r.getMessage() for r in caplog.records if r.name.startswith("pymilvus") and r.levelno >= logging.INFO]
        assert said == []  # neither "Connection recovery failed" nor "RPC error: [list_collections]" with traceback
        kept = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert sum("as pymilvus logged it: RPC error: [list_collections]" in m for m in kept) == 2
    finally:
        connection.close()
