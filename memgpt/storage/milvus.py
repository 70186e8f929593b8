"""Passages in Milvus, through pymilvus ``MilvusClient``. The only module that imports pymilvus.

Milvus Lite (a local file) and a Milvus server (``http://host:19530``) share this code; what differs
is read from :class:`MilvusTarget` capabilities, never from ``if uri.startswith(...)`` elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from memgpt.config import display_path, is_server_uri
from memgpt.errors import SchemaMismatchError, StorageError, StorageLockedError
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import MATCH_ALL, Filter
from memgpt.types import Passage, SearchHit

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ID_LENGTH = 64
TEXT_MAX_BYTES = 65_535
# Milvus caps offset + limit of one search or query at 16,384.
MAX_WINDOW = 16_384
_WRITE_BATCH = 1000
_PASSAGE_FIELDS = [
    "id",
    "text",
    "user_id",
    "source_id",
    "document_id",
    "agent_id",
    "chunk_index",
    "created_at",
    "metadata",
]
_DESCRIPTION = re.compile(r"memgpt passages schema=(\d+) model=(.*) dim=(\d+)$")


@dataclass(frozen=True)
class MilvusTarget:
    """Where passages live and what that deployment can do."""

    uri: str
    token: str = ""
    database: str = ""

    @property
    def is_lite(self) -> bool:
        return not is_server_uri(self.uri)

    @property
    def index_params(self) -> dict[str, Any]:
        # Milvus Lite 2.5 offers FLAT, IVF_FLAT and AUTOINDEX, but ignores nlist/nprobe/ef: measured here on
        # text embeddings, AUTOINDEX and IVF are exact up to ~95k rows and then silently approximate
        # (recall@10 0.84 with an agent's filter at 100k, nothing raises it). FLAT is always exact.
        # A server gets HNSW: milliseconds at millions of vectors, recall tunable with ef.
        if self.is_lite:
            return {"index_type": "FLAT", "metric_type": "COSINE"}
        return {"index_type": "HNSW", "metric_type": "COSINE", "params": {"M": 16, "efConstruction": 200}}

    def search_params(self, limit: int) -> dict[str, Any]:
        if self.is_lite:
            return {"metric_type": "COSINE"}
        return {"metric_type": "COSINE", "params": {"ef": max(64, 2 * limit)}}


def collection_name(model: str, dimensions: int) -> str:
    """One collection per embedding space, so vectors of different models never mix."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:180] or "model"
    return f"memgpt_passages_{slug}_{dimensions}"


class _LiteLocks:
    """memgpt's own per-file lock for Milvus Lite, shared by every connection in this process.

    milvus-lite locks ``.<name>.lock`` itself, but a process that fails to open the file deletes that
    lock file on its way out, letting a third process in. Our lock file is never deleted, and a
    ``flock`` on it is held for as long as this process has the database open.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, tuple[IO[str], int]] = {}

    def acquire(self, db_file: Path) -> None:
        key = str(db_file)
        with self._guard:
            if key in self._held:
                handle, count = self._held[key]
                self._held[key] = (handle, count + 1)
                return
            handle = open(db_file.parent / f".{db_file.name}.memgpt.lock", "a")  # noqa: SIM115 - held open
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.close()
                raise StorageLockedError(
                    f"another memgpt process is using {display_path(db_file)} — close it or use a Milvus server"
                ) from exc
            self._held[key] = (handle, 1)

    def release(self, db_file: Path) -> None:
        key = str(db_file)
        with self._guard:
            if key not in self._held:
                return
            handle, count = self._held.pop(key)
            if count > 1:
                self._held[key] = (handle, count - 1)
                return
            _stop_lite_server(db_file)
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


_lite_locks = _LiteLocks()


def _stop_lite_server(db_file: Path) -> None:
    """Stop this process's Milvus Lite server for ``db_file``; closing a client does not."""
    from milvus_lite.server_manager import server_manager_instance

    if str(db_file.resolve()) in getattr(server_manager_instance, "_servers", {}):
        server_manager_instance.release_server(str(db_file))


class _DropLiteIteratorNotice(logging.Filter):
    """pymilvus warns on every iterator over Milvus Lite that it uses a client-side timestamp; harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


def connect(target: MilvusTarget) -> Any:
    """A ``MilvusClient`` for ``target``, with failures turned into one actionable message."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # milvus-lite otherwise writes INFO logs into /tmp
    pymilvus_logger = logging.getLogger("pymilvus.client.iterator.query_iterator")
    if not any(isinstance(f, _DropLiteIteratorNotice) for f in pymilvus_logger.filters):
        pymilvus_logger.addFilter(_DropLiteIteratorNotice())
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    where = display_path(target.uri)
    if target.is_lite:
        db_file = Path(target.uri)
        db_file.parent.mkdir(parents=True, exist_ok=True)
        _lite_locks.acquire(db_file)
    # Milvus Lite is a local socket: client keepalive pings only earn "too_many_pings" GOAWAYs from it
    # during long loads (seen here mid-way through a 5 MB load), so they are turned off there.
    options: dict[str, Any] = {}
    if target.is_lite:
        options["grpc_options"] = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}
    elif target.database:
        options["db_name"] = target.database
    try:
        return MilvusClient(uri=target.uri, token=target.token, timeout=10, **options)
    except MilvusException as exc:
        if target.is_lite:
            _lite_locks.release(Path(target.uri))
            raise StorageLockedError(
                f"cannot open {where}: another program is using it, or it is damaged — close the other program "
                "or use a Milvus server"
            ) from exc
        raise StorageError(f"cannot connect to Milvus at {where}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return str(message).strip().splitlines()[0] if message else type(exc).__name__


@contextlib.contextmanager
def _milvus_errors(action: str) -> Iterator[None]:
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as exc:
        raise StorageError(f"Milvus failed to {action}: {_reason(exc)}") from exc


def _to_millis(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _row(passage: Passage, dimensions: int) -> dict[str, Any]:
    if passage.embedding is None or len(passage.embedding) != dimensions:
        got = "none" if passage.embedding is None else len(passage.embedding)
        raise StorageError(f"passage {passage.id} has an embedding of dimension {got}, expected {dimensions}")
    if len(passage.text.encode("utf-8")) > TEXT_MAX_BYTES:
        raise StorageError(f"passage {passage.id} is longer than {TEXT_MAX_BYTES} bytes; chunk it first")
    return {
        "id": passage.id,
        "text": passage.text,
        "embedding": list(passage.embedding),
        "user_id": passage.user_id,
        "source_id": passage.source_id,
        "document_id": passage.document_id,
        "agent_id": passage.agent_id,
        "chunk_index": passage.chunk_index,
        "created_at": _to_millis(passage.created_at),
        "metadata": passage.metadata,
    }


def _passage(entity: dict[str, Any], fallback_id: Any = None) -> Passage:
    return Passage(
        id=str(entity.get("id", fallback_id)),
        text=entity["text"],
        user_id=entity["user_id"],
        source_id=entity["source_id"],
        document_id=entity["document_id"],
        agent_id=entity["agent_id"],
        chunk_index=int(entity["chunk_index"]),
        created_at=datetime.fromtimestamp(entity["created_at"] / 1000, UTC),
        metadata=dict(entity.get("metadata") or {}),
    )


class MilvusPassageStore(PassageStore):
    """One Milvus collection holding the passages of one embedding model."""

    def __init__(self, client: Any, target: MilvusTarget, *, model: str, dimensions: int) -> None:
        self._client = client
        self._target = target
        self.model = model
        self.dimensions = dimensions
        self.collection = collection_name(model, dimensions)
        self._ensure_collection()

    # -- schema -------------------------------------------------------------------------------
    def _ensure_collection(self) -> None:
        with _milvus_errors(f"open collection {self.collection}"):
            if self._client.has_collection(self.collection):
                self._check_existing()
                self._client.load_collection(self.collection)
            else:
                self._create()

    def _description(self) -> str:
        return f"memgpt passages schema={SCHEMA_VERSION} model={self.model} dim={self.dimensions}"

    def _check_existing(self) -> None:
        info = self._client.describe_collection(self.collection)
        found = _DESCRIPTION.match(info.get("description", "") or "")
        if not found:
            raise SchemaMismatchError(
                f"Milvus collection {self.collection} was not created by memgpt; drop it or use another database"
            )
        version, model, dim = int(found[1]), found[2], int(found[3])
        if version != SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"Milvus collection {self.collection} has passage schema v{version}, this memgpt needs "
                f"v{SCHEMA_VERSION}; upgrade memgpt or run its migration"
            )
        if model != self.model or dim != self.dimensions:
            raise SchemaMismatchError(
                f"Milvus collection {self.collection} holds {model} vectors of dimension {dim}, not "
                f"{self.model}/{self.dimensions}; check the embedding settings in `memgpt configure`"
            )

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=self._description())
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_LENGTH)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dimensions)
        for name in ("user_id", "source_id", "document_id", "agent_id"):
            schema.add_field(name, DataType.VARCHAR, max_length=ID_LENGTH)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("created_at", DataType.INT64)  # milliseconds since the epoch, UTC
        schema.add_field("metadata", DataType.JSON)  # file name, page: shown, never filtered on
        index = self._client.prepare_index_params()
        index.add_index(field_name="embedding", **self._target.index_params)
        self._client.create_collection(self.collection, schema=schema, index_params=index, consistency_level="Strong")
        logger.info("created Milvus collection %s", self.collection)

    # -- writes -------------------------------------------------------------------------------
    def upsert(self, passages: Sequence[Passage]) -> None:
        rows = [_row(p, self.dimensions) for p in passages]
        with _milvus_errors(f"write {len(rows)} passages"):
            for start in range(0, len(rows), _WRITE_BATCH):
                self._client.upsert(self.collection, rows[start : start + _WRITE_BATCH])

    def delete(self, where: Filter) -> int:
        if not where.expr:
            raise StorageError("refusing to delete passages with an empty filter")
        with _milvus_errors("delete passages"):
            result = self._client.delete(self.collection, filter=where.expr)
        # Milvus Lite returns the deleted ids, a server returns {"delete_count": n}.
        if isinstance(result, dict):
            return int(result.get("delete_count", 0))
        return len(result)

    def flush(self) -> None:
        """Seal what was written: Milvus Lite searches growing segments much more slowly."""
        with _milvus_errors("flush"):
            self._client.flush(self.collection)

    # -- reads --------------------------------------------------------------------------------
    def search(
        self, vector: Sequence[float], *, limit: int, where: Filter = MATCH_ALL, offset: int = 0
    ) -> list[SearchHit]:
        if len(vector) != self.dimensions:
            raise StorageError(f"query vector has dimension {len(vector)}, collection expects {self.dimensions}")
        if limit <= 0:
            return []
        if offset + limit > MAX_WINDOW:
            raise StorageError(f"search window offset+limit must be at most {MAX_WINDOW}")
        with _milvus_errors("search passages"):
            results = self._client.search(
                self.collection,
                data=[list(vector)],
                anns_field="embedding",
                limit=limit,
                offset=offset,
                filter=where.expr,
                output_fields=_PASSAGE_FIELDS,
                search_params=self._target.search_params(offset + limit),
            )
        return [SearchHit(_passage(hit["entity"], hit.get("id")), float(hit["distance"])) for hit in results[0]]

    def query(self, where: Filter, *, limit: int, offset: int = 0) -> list[Passage]:
        if offset + limit > MAX_WINDOW:
            raise StorageError(f"query window offset+limit must be at most {MAX_WINDOW}; use iterate()")
        with _milvus_errors("query passages"):
            rows = self._client.query(
                self.collection, filter=where.expr, output_fields=_PASSAGE_FIELDS, limit=limit, offset=offset
            )
        return [_passage(row) for row in rows]

    def iterate(self, where: Filter = MATCH_ALL, *, batch_size: int = 1000) -> Iterator[list[Passage]]:
        with _milvus_errors("iterate passages"):
            iterator = self._client.query_iterator(
                self.collection, batch_size=batch_size, filter=where.expr, output_fields=_PASSAGE_FIELDS
            )
        try:
            while True:
                with _milvus_errors("iterate passages"):
                    batch = iterator.next()
                if not batch:
                    return
                yield [_passage(row) for row in batch]
        finally:
            iterator.close()

    def count(self, where: Filter = MATCH_ALL) -> int:
        with _milvus_errors("count passages"):
            rows = self._client.query(self.collection, filter=where.expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def close(self) -> None:
        """Closing the client does not stop a shared Milvus Lite server; see :class:`MilvusConnection`."""


class MilvusConnection:
    """One client per process and target; hands out a store per embedding space."""

    def __init__(self, target: MilvusTarget) -> None:
        self.target = target
        self._client = connect(target)
        self._stores: dict[str, MilvusPassageStore] = {}

    def passages(self, model: str, dimensions: int) -> MilvusPassageStore:
        key = collection_name(model, dimensions)
        if key not in self._stores:
            self._stores[key] = MilvusPassageStore(self._client, self.target, model=model, dimensions=dimensions)
        return self._stores[key]

    def ping(self) -> list[str]:
        """Round-trip to the server; returns the collection names."""
        with _milvus_errors("list collections"):
            return list(self._client.list_collections())

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing is best effort; the process may be exiting
            self._client.close()
        if self.target.is_lite:
            _lite_locks.release(Path(self.target.uri))
        self._stores.clear()
