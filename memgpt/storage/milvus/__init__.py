"""Milvus, the passage store: Milvus Lite (a local file) and Milvus servers share this code.

This package is the only place that imports pymilvus; what differs between deployments is read from
:class:`Capabilities`, never from ``if uri.startswith(...)`` elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

# gRPC (under pymilvus) restarts its event-engine poller thread in a forked child when fork support is on,
# as it is by default. A child that then closes its inherited descriptors before exec -- pexpect, or
# subprocess with preexec_fn -- closes the poller's epoll fd under it, and gRPC aborts that child with
# "epoll_wait ... Bad file descriptor" (seen: 9 of 200 pexpect spawns from a process holding a Milvus
# Lite client). memgpt never uses gRPC in a forked child, so the support is off. It must be set before
# grpc is first imported, and everything in memgpt that imports pymilvus is below this package.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from memgpt.storage.milvus.client import (
    Capabilities,
    MilvusTarget,
    connect,
    detect,
    milvus_errors,
    release,
)
from memgpt.storage.milvus.schema import MAX_WINDOW, collection_name, read_layout
from memgpt.storage.milvus.store import MilvusPassageStore
from memgpt.types import EmbeddingSpace

__all__ = ["MAX_WINDOW", "Capabilities", "MilvusConnection", "MilvusPassageStore", "MilvusTarget", "collection_name"]


class MilvusConnection:
    """One client per process and target; hands out one store per embedding space, safely from any thread."""

    def __init__(self, target: MilvusTarget) -> None:
        self.target = target
        self._client = connect(target)
        self.capabilities = detect(self._client, target)
        self._stores: dict[EmbeddingSpace, MilvusPassageStore] = {}
        self._lock = threading.Lock()  # one store per space: opening one may create or upgrade its collection

    @property
    def client(self) -> Any:
        return self._client

    def passages(self, space: EmbeddingSpace) -> MilvusPassageStore:
        with self._lock:
            if space not in self._stores:
                self._stores[space] = MilvusPassageStore(self._client, self.target, self.capabilities, space)
            return self._stores[space]

    def spaces(self) -> list[EmbeddingSpace]:
        """The embedding space of every memgpt passage collection here, first-release ones included."""
        found = set()
        for name in self.ping():
            if name.startswith(("memgpt_v", "memgpt_passages_")):
                found.add(read_layout(self._client, name).space)
        return sorted(found)

    def ping(self) -> list[str]:
        """Round-trip to the server; returns the collection names."""
        with milvus_errors("list collections"):
            return list(self._client.list_collections())

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing is best effort; the process may be exiting
            self._client.close()
        release(self.target)
        with self._lock:
            self._stores.clear()
