"""One Milvus collection of passages (one embedding space): writes, dense, keyword and hybrid search."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from memgpt.errors import StorageError, WrongDimensionError
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import KEYED_FIELDS, MATCH_ALL, Filter, is_in, key_of
from memgpt.storage.fusion import CANDIDATES, Weights, fuse
from memgpt.storage.milvus import schema
from memgpt.storage.milvus.client import Capabilities, HeldLogs, MilvusTarget, call_logs, milvus_errors
from memgpt.storage.milvus.schema import FIELDS, MAX_WINDOW, TEXT_MAX_BYTES, Layout
from memgpt.types import EmbeddingSpace, Passage, SearchHit

logger = logging.getLogger(__name__)

_WRITE_BATCH = 1000
_LIGHT = [name for name in FIELDS if name != "text"]  # what ranking and filtering need of a candidate
_ITERATOR_BATCH = 1000
# What a pymilvus whose internals changed shape raises in the column insert (see _insert_columns)
_OTHER_SHAPES = (AttributeError, TypeError, ValueError, KeyError)


def _shape_change(exc: Exception) -> Exception | None:
    """The error of a pymilvus whose internals changed shape, if ``exc`` is one: raised as it is, or as the
    MilvusException("Unexpected error ...") that pymilvus's own error handler makes of it inside its methods."""
    if isinstance(exc, _OTHER_SHAPES):
        return exc
    from pymilvus.exceptions import MilvusException

    if isinstance(exc, MilvusException) and isinstance(exc.__cause__, _OTHER_SHAPES):
        return exc.__cause__
    return None


# pymilvus's error handler logs every failure as an ERROR with a traceback ("RPC error: [batch_insert], ..."),
# which a user saw before the column insert fell back to rows as intended: its ERRORs (not its retry lines) are
# held during the calls whose failure memgpt handles (_insert_columns, _load).


def _pymilvus_version() -> str:
    import pymilvus

    return str(getattr(pymilvus, "__version__", "?"))


@functools.cache
def _schema_mismatches() -> tuple[type[Exception], ...]:
    """How pymilvus (3.0.2) says the schema it cached is not the collection's: DataNotMatchException before
    sending, SchemaMismatchRetryableException from the server. Looked up by name: a release without one of
    them must not fail every insert on an import."""
    from pymilvus import exceptions

    names = ("DataNotMatchException", "SchemaMismatchRetryableException")
    return tuple(getattr(exceptions, name) for name in names if hasattr(exceptions, name))


def _to_millis(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _row(passage: Passage, space: EmbeddingSpace) -> dict[str, Any]:
    dimensions = space.dimensions
    if passage.embedding is None or len(passage.embedding) != dimensions:
        got = "none" if passage.embedding is None else len(passage.embedding)
        # The same every time: a UserError, so a load is not retried as if Milvus were away.
        raise WrongDimensionError(
            f"passage {passage.id} has an embedding of dimension {got}, expected {dimensions} for {space.model}: the"
            " embedding model answers in another size; set its dimensions in `memgpt configure`"
        )
    if len(passage.text.encode("utf-8")) > TEXT_MAX_BYTES:
        raise StorageError(f"passage {passage.id} is longer than {TEXT_MAX_BYTES} bytes; chunk it first")
    return {
        "id": passage.id,
        "kind": passage.kind,
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


def _with_keys(row: dict[str, Any]) -> dict[str, Any]:
    """The row plus the 64-bit keys searches filter on (see ``memgpt.storage.filters``)."""
    return {**row, **{key: key_of(row[name]) for name, key in KEYED_FIELDS.items()}}


def _passage(entity: dict[str, Any], fallback_id: Any = None) -> Passage:
    return Passage(
        id=str(entity.get("id", fallback_id)),
        text=entity.get("text", ""),
        user_id=entity["user_id"],
        source_id=entity["source_id"],
        document_id=entity["document_id"],
        agent_id=entity["agent_id"],
        chunk_index=int(entity["chunk_index"]),
        created_at=datetime.fromtimestamp(entity["created_at"] / 1000, UTC),
        metadata=dict(entity.get("metadata") or {}),
        kind=entity.get("kind", "archival"),
        embedding=[float(v) for v in entity["embedding"]] if "embedding" in entity else None,
    )


def _hits(results: Any, where: Filter, *, words: bool = False) -> list[SearchHit]:
    """Search hits that pass the exact filter: searches filter on keys (see ``memgpt.storage.filters``)."""
    kept = [
        SearchHit(_passage(hit["entity"], hit.get("id")), float(hit["distance"]), shares_words=words)
        for hit in results[0]
        if _passes(where, hit["entity"], hit.get("id"))
    ]
    if len(kept) < len(results[0]):
        logger.error("dropped %d search hits whose 64-bit keys collided with the filter", len(results[0]) - len(kept))
    return kept


def _passes(where: Filter, entity: dict[str, Any], hit_id: Any) -> bool:
    return where.matches(entity if "id" in entity else {**entity, "id": hit_id})


class MilvusPassageStore(PassageStore):
    """Passages of one embedding model. Collections of earlier schemas are upgraded on open; ``on_upgrade``
    is told the old schema version before the old collection is dropped (see ``schema.upgrade``)."""

    weights = Weights()

    def __init__(
        self,
        client: Any,
        target: MilvusTarget,
        capabilities: Capabilities,
        space: EmbeddingSpace,
        on_upgrade: Callable[[int], None] | None = None,
    ) -> None:
        self._client = client
        self._target = target
        self.space = space
        self.dimensions = space.dimensions
        self.collection = schema.collection_name(space)
        self.supports_partition_key = capabilities.partition_key
        self._on_upgrade = on_upgrade
        self.supports_hybrid = self._open(capabilities)
        self._caught_up = False  # whether a Strong search has run yet; see MilvusTarget.search_consistency
        self.tracks_writes = not target.is_lite
        self.shared = not target.starts_lite  # a served Lite file has other processes as clients too
        self._has_rows = False  # known to hold a row; see _can_rank_text
        self._by_columns = True  # see _insert_columns

    def _open(self, capabilities: Capabilities) -> bool:
        """Create or check the collection (upgrading earlier-schema ones); returns whether it has BM25."""
        with milvus_errors(f"open collection {self.collection}"):
            names = set(self._client.list_collections())  # one round trip, not one per name asked about
        exists = self.collection in names
        legacy = [name for name in schema.legacy_collection_names(self.space) if name in names]
        versions = {}
        for name in legacy:  # checked before anything is created, so a foreign collection changes nothing
            old = schema.read_layout(self._client, name)
            schema.check(Layout(schema.SCHEMA_VERSION, old.model, old.dimensions, False), name, self.space)
            versions[name] = old.version
        if exists:
            layout = schema.read_layout(self._client, self.collection)
            schema.check(layout, self.collection, self.space)
            if self._target.is_lite:
                schema.repair(self._client, self._target, self.collection, layout)  # loads it too
            else:
                self._load(layout)
        else:
            layout = Layout(schema.SCHEMA_VERSION, self.space.model, self.dimensions, capabilities.bm25)
            schema.create(self._client, self._target, capabilities, self.collection, layout)
        for name in legacy:
            schema.upgrade(self._client, name, self.collection, self._write_rows, self._before_drop(versions[name]))
        return layout.hybrid

    def _load(self, layout: Layout) -> None:
        """Load the collection, finishing it first where a process killed while creating it left an index out
        (the server then refuses the load; see ``schema.repair``)."""
        records: list[logging.LogRecord] = []
        try:
            with call_logs.held(records):
                self._client.load_collection(self.collection)
        except Exception as exc:
            if not schema.index_missing(exc):
                with milvus_errors(f"load collection {self.collection}"):
                    HeldLogs.emit(records)  # to milvus_errors, which says them unless its StorageError does
                    raise
            HeldLogs.handled(records)
            schema.repair(self._client, self._target, self.collection, layout)

    def _before_drop(self, version: int) -> Callable[[], None] | None:
        hook = self._on_upgrade
        return None if hook is None else lambda: hook(version)

    # -- writes -------------------------------------------------------------------------------
    def _write_rows(self, rows: list[dict[str, Any]], *, replace: bool = True) -> None:
        keyed = [_with_keys(row) for row in rows]
        write = self._client.upsert if replace else self._client.insert
        with milvus_errors(f"write {len(rows)} passages"):
            for start in range(0, len(keyed), _WRITE_BATCH):
                write(self.collection, keyed[start : start + _WRITE_BATCH])

    def upsert(self, passages: Sequence[Passage]) -> None:
        self._write_rows([_row(p, self.space) for p in passages])
        self._has_rows = self._has_rows or bool(passages)

    def insert(self, passages: Sequence[Passage]) -> None:
        rows = [_with_keys(_row(p, self.space)) for p in passages]
        with milvus_errors(f"write {len(rows)} passages"):
            for start in range(0, len(rows), _WRITE_BATCH):
                self._insert_columns(rows[start : start + _WRITE_BATCH])

    def _insert_columns(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` as one list of values per field: pymilvus turns a list of rows into its request field by
        field and value by value with checks on each (~60 us a row of this schema, against ~25 for columns; recall
        indexing inserts every message). MilvusClient has rows only, so this goes through its connection handler
        as its own ``insert`` does (the same database, the schema it caches). Those internals may change in any
        pymilvus release: where they are missing or shaped otherwise, this store inserts rows from then on."""
        if not rows:
            return
        client = self._client
        if not self._by_columns:
            client.insert(self.collection, rows)
            return
        try:  # nothing is sent before the columns are built
            handler, context = client._get_connection(), client._generate_call_context()
            schema, _ = handler._get_schema(self.collection, context=context)
            fields = [f for f in schema["fields"] if not f.get("is_function_output")]  # BM25's sparse is computed
            columns = [{"name": f["name"], "type": f["type"], "values": [r[f["name"]] for r in rows]} for f in fields]
        except _OTHER_SHAPES as exc:
            client.insert(self.collection, rows)
            self._insert_rows_from_now(exc)  # once the rows went in: a data error is no change of shape
            return
        held: list[logging.LogRecord] = []
        try:
            with call_logs.held(held):
                handler.batch_insert(self.collection, columns, context=context, schema=schema)
            return
        except _schema_mismatches() as exc:
            # nothing was written: pymilvus's own insert clears the cached schema and retries once on these
            # (retry_on_schema_mismatch), which batch_insert lacks; so does this
            logger.debug(
                "the column insert into %s met a stale cached schema (%s); inserting rows", self.collection, exc
            )
            call_logs.handled(held)
            self._forget_schema(handler, context)
            client.insert(self.collection, rows)
            return
        except Exception as exc:
            changed = _shape_change(exc)
            if changed is None:  # not handled here: what pymilvus logged about it is said after all
                call_logs.emit(held)
                raise
            try:  # perhaps raised after the rows were written: upsert replaces them by id
                client.upsert(self.collection, rows)
            except Exception:  # rows fail too: the data, not pymilvus's shape; the column insert stays
                call_logs.emit(held)
                raise
        call_logs.handled(held)
        self._insert_rows_from_now(changed)  # only now: the rows went in where the columns did not

    def _insert_rows_from_now(self, exc: Exception) -> None:
        self._by_columns = False
        logger.warning(
            "pymilvus %s is shaped otherwise than memgpt's column insert expects (%s: %s); collection %s inserts"
            " rows from now on, which is slower",
            _pymilvus_version(),
            type(exc).__name__,
            exc,
            self.collection,
        )

    def _forget_schema(self, handler: Any, context: Any) -> None:
        try:
            handler._invalidate_schema(self.collection, db_name=context.get_db_name())
        except AttributeError:  # client.insert still clears it on its own schema-mismatch retry
            logger.debug("pymilvus has no _invalidate_schema; its insert refreshes the schema itself")

    def delete(self, where: Filter, *, count: bool = True) -> int:
        """Returns how many passages matched (a query before the delete: Milvus Lite reports the deleted ids,
        but a server's ``delete_count`` is 0 for filtered deletes on a partition-key collection, seen on 2.3.5)."""
        if not where.expr:
            raise StorageError("refusing to delete passages with an empty filter")
        matched = self.count(where) if count else 0
        with milvus_errors("delete passages"):
            self._client.delete(self.collection, filter=where.expr)
        self._has_rows = False  # perhaps none left: count again before the next text search
        return matched

    def flush(self) -> None:
        """Seal what was written: Milvus Lite searches growing segments much more slowly."""
        with milvus_errors("flush"):
            self._client.flush(self.collection)

    # -- other processes' writes ----------------------------------------------------------------
    def _session(self) -> tuple[str, str] | None:
        """The key pymilvus files this process's write timestamps under (its server address and database):
        what a Session read waits for. None on Milvus Lite, which is always consistent."""
        if self._target.is_lite:
            return None
        try:  # pymilvus keeps no public handle on it; without one, searches stay Session reads
            return self._client._get_connection().server_address, self._client._config.db_name
        except AttributeError:
            return None

    def write_mark(self) -> int:
        from pymilvus.client import ts_utils

        session = self._session()
        return int(ts_utils.get_collection_ts(self.collection, *session) or 0) if session else 0

    def read_after(self, mark: int) -> None:
        """Move the timestamp this process's Session reads wait for up to ``mark`` (never back): Milvus then
        answers once it has applied everything written up to ``mark``, at once if it already has."""
        from pymilvus.client import ts_utils

        session = self._session()
        if session and mark > 0:
            ts_utils.update_collection_ts(self.collection, mark, *session)

    # -- search -------------------------------------------------------------------------------
    def _read_options(self) -> dict[str, Any]:
        return self._target.search_consistency(self._caught_up)

    @property
    def search_window(self) -> int | None:
        """Milvus caps offset + limit of one search; deeper pages go through a search iterator (``_deep``)."""
        return MAX_WINDOW

    def _can_rank_text(self) -> bool:
        """Whether BM25 can run here. Milvus Lite 2.5.1 fails every BM25 search of a collection without
        rows (its average document length is 0/0: "NaN or Inf value"), and its server process prints a
        C++ assertion and pymilvus logs a traceback when it does, around what is a correct empty answer.
        So an empty collection is never asked; once a row is seen, that is remembered until a delete."""
        if not self.supports_hybrid:
            return False
        if not self._has_rows:
            self._has_rows = self.count() > 0
        return self._has_rows

    def search(
        self,
        vector: Sequence[float],
        *,
        limit: int,
        where: Filter = MATCH_ALL,
        offset: int = 0,
        text: str | None = None,
        with_text: bool = True,
        weights: Weights | None = None,
    ) -> list[SearchHit]:
        if len(vector) != self.dimensions:
            raise StorageError(f"query vector has dimension {len(vector)}, collection expects {self.dimensions}")
        if limit <= 0:
            return []
        if offset + limit > MAX_WINDOW:
            return self._deep(vector, limit=limit, offset=offset, where=where)
        fields = FIELDS if with_text else _LIGHT
        if text and text.strip() and self._can_rank_text():
            hits = self._hybrid(vector, text, limit=limit, offset=offset, where=where, weights=weights or self.weights)
            return self.with_texts(hits) if with_text else hits
        return self._dense(vector, limit=limit, offset=offset, where=where, fields=fields)

    def _dense(
        self, vector: Sequence[float], *, limit: int, offset: int, where: Filter, fields: list[str] = FIELDS
    ) -> list[SearchHit]:
        with milvus_errors("search passages"):
            results = self._client.search(
                self.collection,
                data=[list(vector)],
                anns_field="embedding",
                limit=limit,
                offset=offset,
                filter=where.keyed,
                output_fields=fields,
                search_params=self._target.search_params(offset + limit),
                **self._read_options(),
            )
        self._caught_up = True
        return _hits(results, where)

    def _hybrid(
        self, vector: Sequence[float], text: str, *, limit: int, offset: int, where: Filter, weights: Weights
    ) -> list[SearchHit]:
        """Dense and BM25 candidates, each normalised and summed (see ``memgpt.storage.fusion``), without
        their texts: a hundred candidates' texts cost more to fetch than both searches."""
        depth = min(MAX_WINDOW, max(CANDIDATES, offset + limit))
        dense = self._dense(vector, limit=depth, offset=0, where=where, fields=_LIGHT)
        keyword = self._keyword(text, limit=depth, where=where, fields=_LIGHT)
        return fuse(dense, keyword, weights)[offset : offset + limit]

    def with_texts(self, hits: Sequence[SearchHit]) -> list[SearchHit]:
        if not hits:
            return []
        with milvus_errors("read passage texts"):
            rows = self._client.query(
                self.collection, filter=is_in("id", [h.passage.id for h in hits]).expr, output_fields=["id", "text"]
            )
        texts = {row["id"]: row["text"] for row in rows}
        return [replace(h, passage=replace(h.passage, text=texts[h.passage.id])) for h in hits if h.passage.id in texts]

    def keyword_search(self, text: str, *, limit: int, where: Filter = MATCH_ALL) -> list[SearchHit]:
        """BM25 full-text search alone. Scores are BM25 relevance: higher is better, unbounded. Only
        passages sharing an analysed word with ``text`` are found (none when it has only function words)."""
        if not self.supports_hybrid:
            raise StorageError(f"collection {self.collection} has no full-text index on this Milvus")
        if limit <= 0 or not text.strip() or not self._can_rank_text():
            return []
        return self._keyword(text, limit=min(limit, MAX_WINDOW), where=where)

    def _keyword(self, text: str, *, limit: int, where: Filter, fields: list[str] = FIELDS) -> list[SearchHit]:
        with milvus_errors("run a full-text search"):
            results = self._client.search(
                self.collection,
                data=[text],
                anns_field="sparse",
                limit=limit,
                filter=where.keyed,
                output_fields=fields,
                search_params={"metric_type": "BM25"},
                **self._read_options(),
            )
        self._caught_up = True
        return _hits(results, where, words=True)

    def _deep(self, vector: Sequence[float], *, limit: int, offset: int, where: Filter) -> list[SearchHit]:
        """Pages past Milvus's 16,384-result window, through a search iterator (dense ranking)."""
        with milvus_errors("page through search results"):
            iterator = self._client.search_iterator(
                self.collection,
                data=[list(vector)],
                batch_size=_ITERATOR_BATCH,
                filter=where.keyed or None,
                limit=offset + limit,
                output_fields=FIELDS,
                search_params=self._target.search_params(_ITERATOR_BATCH),
                anns_field="embedding",
            )
        found: list[SearchHit] = []
        seen = 0
        try:
            while len(found) < limit:
                with milvus_errors("page through search results"):
                    batch = iterator.next()
                if not batch:
                    break
                for hit in batch:
                    entity = hit.get("entity", hit) if isinstance(hit, dict) else hit.fields
                    if not _passes(where, entity, hit.get("id")):
                        logger.error("dropped a search hit whose 64-bit keys collided with the filter")
                        continue
                    if seen >= offset and len(found) < limit:
                        found.append(SearchHit(_passage(entity, hit.get("id")), float(hit["distance"])))
                    seen += 1
        finally:
            iterator.close()
        return found

    # -- reads --------------------------------------------------------------------------------
    def query(self, where: Filter, *, limit: int, offset: int = 0) -> list[Passage]:
        if offset + limit > MAX_WINDOW:
            raise StorageError(f"query window offset+limit must be at most {MAX_WINDOW}; use iterate()")
        with milvus_errors("query passages"):
            rows = self._client.query(
                self.collection, filter=where.expr, output_fields=FIELDS, limit=limit, offset=offset
            )
        return [_passage(row) for row in rows]

    def iterate(
        self, where: Filter = MATCH_ALL, *, batch_size: int = 1000, with_embeddings: bool = False
    ) -> Iterator[list[Passage]]:
        fields = [*FIELDS, "embedding"] if with_embeddings else FIELDS
        with milvus_errors("iterate passages"):
            iterator = self._client.query_iterator(
                self.collection, batch_size=batch_size, filter=where.expr, output_fields=fields
            )
        try:
            while True:
                with milvus_errors("iterate passages"):
                    batch = iterator.next()
                if not batch:
                    return
                yield [_passage(row) for row in batch]
        finally:
            iterator.close()

    def count(self, where: Filter = MATCH_ALL) -> int:
        with milvus_errors("count passages"):
            rows = self._client.query(self.collection, filter=where.expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def close(self) -> None:
        """The connection owns the client; see ``MilvusConnection.close``."""
