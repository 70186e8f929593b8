"""The passage collection's schema, how it is named and described, and upgrades from earlier versions.

Schema 4 (current): every field typed; ``kind`` tells archival passages from recall messages; where the
deployment has BM25, ``text`` is analysed by ``ANALYZER`` (English stemming, function words dropped) and a
BM25 function fills ``sparse`` for full-text and hybrid search. The fields searches filter on (user, kind,
agent, source) each have a 64-bit key beside them (see ``memgpt.storage.filters``); on servers
``user_key`` is the partition key, so one user's searches touch only their partitions. Schema 3 had
Milvus's default analyzer (no stemming, no stop words), schema 2 also lacked the keys, schema 1 also
``kind`` and ``sparse``; all are copied into a schema-4 collection on open. The analyzer is part of the
schema: changing ``ANALYZER`` or ``STOP_WORDS`` needs a new schema version, or old and new rows would be
tokenised differently.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memgpt.errors import SchemaMismatchError, StorageError
from memgpt.storage.filters import KEYED_FIELDS
from memgpt.storage.milvus.client import Capabilities, MilvusTarget, milvus_errors
from memgpt.types import EmbeddingSpace

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 4
ID_LENGTH = 64
TEXT_MAX_BYTES = 65_535
MAX_WINDOW = 16_384  # Milvus caps offset + limit of one search or query here
FIELDS = [
    "id",
    "kind",
    "text",
    "user_id",
    "source_id",
    "document_id",
    "agent_id",
    "chunk_index",
    "created_at",
    "metadata",
]
# Words that carry no topic: questions are full of them ("how long have you been..."), and unanalysed they
# ranked short turns made of the same function words first. Milvus's built-in "english" analyzer drops
# only 33 words (not "how", "what", "you", "have"...); this list adds pronouns, auxiliaries, question words
# and the pieces the standard tokenizer leaves of contractions ("didn't" -> "didn", "t"; not "don" or "won",
# which are also a name and a verb).
_FUNCTION_WORDS = """a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each either few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself just let
me might more most must my myself neither no nor not now of off on once only or other ought our ours
ourselves out over own same shall she should so some such than that the their theirs them themselves then
there these they this those through to too under until up upon us very was we were what when where which
while who whom whose why will with would yet you your yours yourself yourselves
s t d m ll re ve didn doesn isn wasn aren weren haven hasn hadn wouldn couldn shouldn"""
STOP_WORDS = sorted(set(_FUNCTION_WORDS.split()))
# Tokenise on word boundaries, lower-case, drop function words, then stem ("climbing" and "climbed" match
# "climb"). Milvus Lite 2.5.1 and servers from 2.5 accept these parameters (tested in tests/test_milvus_store.py).
ANALYZER: dict[str, Any] = {
    "tokenizer": "standard",
    "filter": ["lowercase", {"type": "stop", "stop_words": STOP_WORDS}, {"type": "stemmer", "language": "english"}],
}
_DESCRIPTION = re.compile(r"memgpt passages schema=(\d+) model=(.*?) dim=(\d+)(?: hybrid=([01]))?$")


def _slug(model: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:180] or "model"


def collection_name(space: EmbeddingSpace) -> str:
    """One collection per embedding space, so vectors of different models never mix."""
    return f"memgpt_v{SCHEMA_VERSION}_{_slug(space.model)}_{space.dimensions}"


def legacy_collection_names(space: EmbeddingSpace) -> list[str]:
    """Collections of earlier schemas for the same embedding space, oldest first."""
    slug = f"{_slug(space.model)}_{space.dimensions}"
    return [f"memgpt_passages_{slug}", *(f"memgpt_v{version}_{slug}" for version in range(2, SCHEMA_VERSION))]


@dataclass(frozen=True)
class Layout:
    """What an existing (or about to be created) collection has."""

    version: int
    model: str
    dimensions: int
    hybrid: bool

    @property
    def space(self) -> EmbeddingSpace:
        return EmbeddingSpace(self.model, self.dimensions)

    def description(self) -> str:
        return (
            f"memgpt passages schema={self.version} model={self.model} dim={self.dimensions} hybrid={int(self.hybrid)}"
        )


def read_layout(client: Any, collection: str) -> Layout:
    with milvus_errors(f"describe collection {collection}"):
        info = client.describe_collection(collection)
    found = _DESCRIPTION.match(info.get("description", "") or "")
    if not found:
        raise SchemaMismatchError(
            f"Milvus collection {collection} was not created by memgpt; drop it or use another database"
        )
    return Layout(int(found[1]), found[2], int(found[3]), found[4] == "1")


def create(client: Any, target: MilvusTarget, capabilities: Capabilities, collection: str, layout: Layout) -> None:
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=layout.description())
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_LENGTH)
    schema.add_field("kind", DataType.VARCHAR, max_length=16)  # "archival" or "recall"
    text_options: dict[str, Any] = {"enable_analyzer": True, "analyzer_params": ANALYZER} if layout.hybrid else {}
    schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES, **text_options)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=layout.dimensions)
    if layout.hybrid:
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
    for name in ("user_id", "source_id", "document_id", "agent_id"):
        schema.add_field(name, DataType.VARCHAR, max_length=ID_LENGTH)
    for name in KEYED_FIELDS.values():
        partition = name == "user_key" and capabilities.partition_key
        schema.add_field(name, DataType.INT64, is_partition_key=partition)
    schema.add_field("chunk_index", DataType.INT64)
    schema.add_field("created_at", DataType.INT64)  # milliseconds since the epoch, UTC
    schema.add_field("metadata", DataType.JSON)  # file name, page, role: shown, never filtered on
    with milvus_errors(f"create collection {collection}"):
        client.create_collection(collection, schema=schema, consistency_level="Strong")
        _create_indexes(client, target, collection, _index_names(layout))
        client.load_collection(collection)
        if target.starts_lite:
            _prime(client, collection, layout)
    logger.info("created Milvus collection %s (%s)", collection, layout.description())


def _index_names(layout: Layout) -> list[str]:
    return ["embedding", "sparse"] if layout.hybrid else ["embedding"]


def _create_indexes(client: Any, target: MilvusTarget, collection: str, names: list[str]) -> None:
    index = client.prepare_index_params()
    if "embedding" in names:
        index.add_index(field_name="embedding", index_name="embedding", **target.index_params)
    if "sparse" in names:
        index.add_index(
            field_name="sparse", index_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25"
        )
    # pymilvus's own wait for an index sleeps 0.5 s before it first looks (a second per new collection,
    # most of a first load's start-up), though an empty collection's index is ready at once.
    client.create_index(collection, index, sync=False)
    _wait_for_indexes(client, collection, names)


# The id of the one row a new Milvus Lite collection is primed with (written, then deleted at once). Milvus
# Lite 2.5.1 makes the first write to a loaded collection wait ~0.1-0.3 s, mostly asleep (its own CPU ~30 ms),
# whatever is written and however long after the load; later writes take milliseconds. Made as the collection
# is, in the background connection of a command (see MilvusConnection.warm), that wait overlaps the command's
# own start-up instead of delaying the first load's first passages. A deleted row changes no count and no
# BM25 statistic (checked in tests/test_milvus_store.py); one a crash left behind is deleted on the next open.
PRIMER_ID = "memgpt-collection-primer"


def _prime(client: Any, collection: str, layout: Layout) -> None:
    row: dict[str, Any] = {
        "id": PRIMER_ID,
        "kind": "primer",
        "text": "",
        "embedding": [1.0] + [0.0] * (layout.dimensions - 1),  # a unit vector: COSINE refuses a zero one
        "user_id": "",
        "source_id": "",
        "document_id": "",
        "agent_id": "",
        "chunk_index": 0,
        "created_at": 0,
        "metadata": {},
    }
    row.update({key: 0 for key in KEYED_FIELDS.values()})
    client.insert(collection, [row])
    client.delete(collection, ids=[PRIMER_ID])


def repair(client: Any, target: MilvusTarget, collection: str, layout: Layout) -> None:
    """Finish what a process killed while creating ``collection`` left undone, then load it: indexes not yet
    made, and (a Milvus Lite file this process holds) a primer row not yet deleted.

    Without its indexes Milvus Lite loads and writes such a collection but fails every search with "index
    not found", so Lite's opens always look (a local call); a Milvus server refuses to load it, so a
    server's opens call this only when the load said so (see ``index_missing``), costing the common path
    nothing. Other processes may open, or still be creating, the same collection at once: creating an
    index with the parameters it has or is being built with succeeds (tests/test_interrupted_setup.py), so
    no open fails for meeting another."""
    with milvus_errors(f"open collection {collection}"):
        missing = [name for name in _index_names(layout) if name not in set(client.list_indexes(collection))]
        if missing:
            logger.warning("creating the %s index of %s, which an interrupted set-up left out", missing, collection)
            _create_indexes(client, target, collection, missing)
        client.load_collection(collection)
        if target.starts_lite and client.get(collection, ids=[PRIMER_ID], output_fields=["id"]):
            client.delete(collection, ids=[PRIMER_ID])


_INDEX_NOT_FOUND = 700  # Milvus's error code for "index not found" (servers 2.3 to 2.5)


def index_missing(exc: Exception) -> bool:
    """Whether a server refused to load a collection because an index of it is missing."""
    return getattr(exc, "code", None) == _INDEX_NOT_FOUND or "index not found" in str(exc).lower()


_INDEX_WAIT_SECONDS = 120.0


def _wait_for_indexes(client: Any, collection: str, names: list[str]) -> None:
    """Poll until every index is built, first after milliseconds, then less and less often."""
    deadline = time.monotonic() + _INDEX_WAIT_SECONDS
    pause = 0.005
    pending = list(names)
    while pending:
        info = client.describe_index(collection, pending[0])
        state = str(info.get("state", "")) if info else ""
        if state == "Finished":
            pending.pop(0)
            continue
        if state == "Failed":
            reason = info.get("index_state_fail_reason") or "no reason given"
            raise StorageError(f"Milvus could not build the {pending[0]} index of {collection}: {reason}")
        if time.monotonic() > deadline:
            raise StorageError(
                f"Milvus did not build the {pending[0]} index of {collection} within {_INDEX_WAIT_SECONDS:.0f} s"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def check(layout: Layout, collection: str, space: EmbeddingSpace) -> None:
    if layout.version != SCHEMA_VERSION:
        raise SchemaMismatchError(
            f"Milvus collection {collection} has passage schema v{layout.version}, this memgpt reads "
            f"v{SCHEMA_VERSION}; upgrade memgpt"
        )
    if layout.space != space:
        raise SchemaMismatchError(
            f"Milvus collection {collection} holds {layout.model} vectors of dimension {layout.dimensions}, not "
            f"{space}; check the embedding settings in `memgpt configure`"
        )


def upgrade(client: Any, old: str, target: str, write: Any, before_drop: Callable[[], None] | None = None) -> int:
    """Copy an earlier-schema collection into ``target`` through ``write``, then drop it.

    ``write`` takes rows as read (schema 1 has no ``kind``: its passages are archival) and writes them
    in the current schema. Upserts are idempotent, so an interrupted upgrade is simply run again;
    the old collection is dropped only once ``target`` holds at least as many passages, and after
    ``before_drop`` returned (what else must follow the upgrade happens while it can still be redone).
    """
    copied = 0
    with milvus_errors(f"upgrade collection {old}"):
        client.load_collection(old)
        have = {f["name"] for f in client.describe_collection(old)["fields"]}
        fields = [name for name in (*FIELDS, "embedding") if name in have]
        expected = int(client.query(old, filter="", output_fields=["count(*)"])[0]["count(*)"])
        iterator = client.query_iterator(old, batch_size=1000, filter="", output_fields=fields)
        try:
            while batch := iterator.next():
                write([{"kind": "archival", **row} for row in batch])
                copied += len(batch)
        finally:
            iterator.close()
        found = int(client.query(target, filter="", output_fields=["count(*)"])[0]["count(*)"])
        if found < expected:
            raise SchemaMismatchError(
                f"upgrading {old} copied {found} of {expected} passages; nothing was dropped, run memgpt again"
            )
    if before_drop is not None:
        before_drop()
    with milvus_errors(f"drop collection {old}"):
        client.drop_collection(old)
    logger.warning("upgraded %d passages from %s to %s", copied, old, target)
    return copied
