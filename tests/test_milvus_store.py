"""The passage-store contract, run on a real Milvus Lite file and on a real Milvus server."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from memgpt.errors import SchemaMismatchError, StorageError
from memgpt.storage.filters import KEYED_FIELDS, MATCH_ALL, all_of, between, eq, is_in, key_of, not_in
from memgpt.storage.milvus import MilvusConnection, MilvusPassageStore, MilvusTarget
from memgpt.types import EmbeddingSpace, Passage
from tests.conftest import REPO
from tests.milvus_server import TOKEN

DIM = 8
HOSTILE = ['it\'s "x"', "back\\slash", 'x" or source_id != "', "end\\", '" || 1==1 || "', "ü 中 tab\there"]


def unit(index: int) -> list[float]:
    """Distinct directions on a quarter circle: passage i is the i-th closest to unit(0)."""
    angle = index * (math.pi / 2) / 3000
    return [math.cos(angle), math.sin(angle)] + [0.0] * (DIM - 2)


def passage(i: int, **fields: object) -> Passage:
    base: dict[str, object] = {
        "id": f"p{i}",
        "text": f"passage number {i}",
        "user_id": "alice",
        "source_id": "s1",
        "document_id": f"d{i // 10}",
        "chunk_index": i % 10,
        "created_at": datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=i),
        "metadata": {"file_name": "f.txt", "page": i},
        "embedding": unit(i),
    }
    base.update(fields)
    return Passage(**base)  # type: ignore[arg-type]


@pytest.fixture
def connection(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MilvusConnection]:
    if backend == "server":
        target = MilvusTarget(
            request.getfixturevalue("milvus_server"), TOKEN, database=request.getfixturevalue("server_database")
        )
    else:
        target = MilvusTarget(str(tmp_path / "milvus.db"))
    conn = MilvusConnection(target)
    yield conn
    conn.close()


@pytest.fixture
def store(connection: MilvusConnection) -> MilvusPassageStore:
    return connection.passages(EmbeddingSpace("test-model", DIM))


def test_upsert_is_idempotent(store: MilvusPassageStore) -> None:
    store.upsert([passage(i) for i in range(25)])
    store.upsert([passage(i) for i in range(25)])
    assert store.count() == 25
    store.upsert([passage(3, text="replaced")])
    assert store.count() == 25
    assert store.query(eq("id", "p3"), limit=5)[0].text == "replaced"


def test_search_ranks_by_cosine_and_round_trips_fields(store: MilvusPassageStore) -> None:
    store.upsert([passage(i) for i in range(20)])
    hits = store.search(unit(5), limit=3)
    assert [h.passage.id for h in hits] in (["p5", "p4", "p6"], ["p5", "p6", "p4"])
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    found = hits[0].passage
    original = passage(int(found.id[1:]))
    assert found.created_at == original.created_at
    assert found.metadata == original.metadata
    assert (found.user_id, found.source_id, found.document_id, found.chunk_index) == (
        "alice",
        "s1",
        original.document_id,
        original.chunk_index,
    )


def test_search_paging_and_filters(store: MilvusPassageStore) -> None:
    store.upsert([passage(i) for i in range(30)])
    first = store.search(unit(0), limit=5)
    second = store.search(unit(0), limit=5, offset=5)
    assert [h.passage.id for h in first + second] == [f"p{i}" for i in range(10)]
    only_d1 = store.search(unit(0), limit=50, where=eq("document_id", "d1"))
    assert {h.passage.id for h in only_d1} == {f"p{i}" for i in range(10, 20)}
    without = store.search(unit(0), limit=50, where=not_in("document_id", ["d0", "d1"]))
    assert {h.passage.document_id for h in without} == {"d2"}
    january = store.query(
        between("created_at", None, int(datetime(2024, 1, 5, tzinfo=UTC).timestamp() * 1000)), limit=50
    )
    assert {p.id for p in january} == {"p0", "p1", "p2", "p3", "p4"}


def test_hostile_values_match_exactly_and_never_widen(store: MilvusPassageStore) -> None:
    rows = [passage(i, id=f"h{i}", source_id=value) for i, value in enumerate(HOSTILE)]
    store.upsert([*rows, passage(100, source_id="plain")])
    for i, value in enumerate(HOSTILE):
        assert [p.id for p in store.query(eq("source_id", value), limit=50)] == [f"h{i}"]
        hits = store.search(unit(0), limit=50, where=eq("source_id", value))
        assert [h.passage.id for h in hits] == [f"h{i}"]
    assert store.count(is_in("source_id", ["nothing", 'x" or 1==1 or "'])) == 0
    assert store.delete(eq("source_id", HOSTILE[2])) == 1
    assert store.count() == len(HOSTILE)


def test_delete_and_refuse_empty_filter(store: MilvusPassageStore) -> None:
    store.upsert([passage(i) for i in range(20)])
    with pytest.raises(StorageError, match="empty filter"):
        store.delete(MATCH_ALL)
    assert store.delete(all_of(eq("user_id", "alice"), eq("document_id", "d0"))) == 10
    assert store.count() == 10
    assert store.count(is_in("document_id", [])) == 0


def test_iterate_returns_everything(store: MilvusPassageStore) -> None:
    store.upsert([passage(i) for i in range(2500)])
    store.flush()
    seen = [p.id for batch in store.iterate(batch_size=700) for p in batch]
    assert len(seen) == len(set(seen)) == 2500


def test_wrong_dimension_is_a_clear_error(store: MilvusPassageStore) -> None:
    with pytest.raises(StorageError, match="dimension 3, expected 8"):
        store.upsert([passage(0, embedding=[1.0, 0.0, 0.0])])
    with pytest.raises(StorageError, match="dimension 2"):
        store.search([1.0, 0.0], limit=1)


def test_models_never_share_a_collection(connection: MilvusConnection) -> None:
    a = connection.passages(EmbeddingSpace("model-a", DIM))
    b = connection.passages(EmbeddingSpace("model-b", DIM))
    c = connection.passages(EmbeddingSpace("model-a", 4))
    assert len({a.collection, b.collection, c.collection}) == 3
    a.upsert([passage(1)])
    assert b.count() == 0


def test_foreign_or_mismatched_collection_is_refused(connection: MilvusConnection) -> None:
    store = connection.passages(EmbeddingSpace("model-a", DIM))
    client = connection.client
    client.create_collection("memgpt_v3_model_x_8", dimension=DIM)
    with pytest.raises(SchemaMismatchError, match="not created by memgpt"):
        MilvusPassageStore(client, connection.target, connection.capabilities, EmbeddingSpace("model-x", DIM))
    # Same collection name, different model string: the description tells them apart.
    with pytest.raises(SchemaMismatchError, match="holds model-a vectors"):
        MilvusPassageStore(client, connection.target, connection.capabilities, EmbeddingSpace("model_a", DIM))
    assert store.count() == 0


def _create_old_collection(client: Any, name: str, description: str, *, with_kind: bool) -> None:
    """A collection laid out as an earlier memgpt made it (schema 1 has no ``kind``)."""
    from pymilvus import DataType, MilvusClient

    old = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
    old.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    if with_kind:
        old.add_field("kind", DataType.VARCHAR, max_length=16)
    old.add_field("text", DataType.VARCHAR, max_length=65535)
    old.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
    for field in ("user_id", "source_id", "document_id", "agent_id"):
        old.add_field(field, DataType.VARCHAR, max_length=64)
    old.add_field("chunk_index", DataType.INT64)
    old.add_field("created_at", DataType.INT64)
    old.add_field("metadata", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index(field_name="embedding", index_type="FLAT", metric_type="COSINE")
    client.create_collection(name, schema=old, index_params=index, consistency_level="Strong")


def test_a_first_release_collection_is_migrated_on_open(connection: MilvusConnection) -> None:
    client = connection.client
    legacy = "memgpt_passages_old_model_8"
    _create_old_collection(client, legacy, "memgpt passages schema=1 model=old-model dim=8", with_kind=False)
    rows = [_row_v1(i) for i in range(1200)]
    client.insert(legacy, rows)
    store = connection.passages(EmbeddingSpace("old-model", DIM))
    assert not client.has_collection(legacy)
    assert store.count() == 1200
    assert store.count(eq("kind", "archival")) == 1200
    moved = store.query(eq("id", "p7"), limit=1)[0]
    assert (moved.text, moved.source_id, moved.metadata) == ("passage number 7", "s1", {"page": 7})
    assert [h.passage.id for h in store.search(unit(7), limit=1)] == ["p7"]


def test_a_schema_2_collection_is_migrated_on_open_keeping_kinds(connection: MilvusConnection) -> None:
    client = connection.client
    old_name = "memgpt_v2_old_model_8"
    _create_old_collection(client, old_name, "memgpt passages schema=2 model=old-model dim=8 hybrid=0", with_kind=True)
    client.insert(old_name, [{**_row_v1(i), "kind": "recall" if i % 2 else "archival"} for i in range(300)])
    store = connection.passages(EmbeddingSpace("old-model", DIM))
    assert not client.has_collection(old_name)
    assert (store.count(eq("kind", "archival")), store.count(eq("kind", "recall"))) == (150, 150)
    # Searches filter on the keys the migration computed.
    hits = store.search(unit(7), limit=3, where=all_of(eq("user_id", "alice"), eq("kind", "recall")))
    assert hits[0].passage.id == "p7"
    assert all(h.passage.kind == "recall" for h in hits)
    assert store.search(unit(7), limit=3, where=eq("user_id", "bob")) == []


def create_schema_3_collection(
    client: Any, name: str, *, hybrid: bool, model: str = "old-model", dim: int = DIM
) -> None:
    """A collection as memgpt's schema 3 made it: keys beside the filtered fields, Milvus's default analyzer."""
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    description = f"memgpt passages schema=3 model={model} dim={dim} hybrid={int(hybrid)}"
    old = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
    old.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    old.add_field("kind", DataType.VARCHAR, max_length=16)
    old.add_field("text", DataType.VARCHAR, max_length=65535, **({"enable_analyzer": True} if hybrid else {}))
    old.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    if hybrid:
        old.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        bm25 = FunctionType.BM25
        old.add_function(Function("text_bm25", bm25, input_field_names=["text"], output_field_names=["sparse"]))
    for field in ("user_id", "source_id", "document_id", "agent_id"):
        old.add_field(field, DataType.VARCHAR, max_length=64)
    for key in ("user_key", "kind_key", "agent_key", "source_key"):
        old.add_field(key, DataType.INT64)
    old.add_field("chunk_index", DataType.INT64)
    old.add_field("created_at", DataType.INT64)
    old.add_field("metadata", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index(field_name="embedding", index_type="FLAT", metric_type="COSINE")
    if hybrid:
        index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(name, schema=old, index_params=index, consistency_level="Strong")


CLIMBING = [
    "I have been climbing for five years",
    "How long have you been doing it?",
    "The books I read",
    "She reads a book",
]


def _row_v3(i: int, text: str) -> dict[str, object]:
    row = {**_row_v1(i), "text": text, "kind": "recall" if i % 2 else "archival"}
    return {**row, **{key: key_of(str(row[name])) for name, key in KEYED_FIELDS.items()}}


def test_a_schema_3_collection_is_migrated_to_the_english_analyzer(connection: MilvusConnection) -> None:
    client = connection.client
    old_name = "memgpt_v3_old_model_8"
    create_schema_3_collection(client, old_name, hybrid=connection.capabilities.bm25)
    client.insert(old_name, [_row_v3(i, CLIMBING[i % 4]) for i in range(40)])
    told: list[tuple[int, bool]] = []
    store = connection.passages(
        EmbeddingSpace("old-model", DIM), on_upgrade=lambda v: told.append((v, client.has_collection(old_name)))
    )
    assert told == [(3, True)]  # told before the old collection was dropped
    assert not client.has_collection(old_name) and store.collection == "memgpt_v4_old_model_8"
    assert (store.count(eq("kind", "archival")), store.count(eq("kind", "recall"))) == (20, 20)
    assert store.search(unit(7), limit=1, where=eq("kind", "recall"))[0].passage.id == "p7"
    if not store.supports_hybrid:
        pytest.skip("this Milvus has no BM25: the copy is checked, the analyzer cannot be")
    # The copied rows are analysed by the new schema's analyzer: word forms match, function words do not.
    assert {h.passage.text for h in store.keyword_search("climbs", limit=40)} == {CLIMBING[0]}
    assert {h.passage.text for h in store.keyword_search("books", limit=40)} == {CLIMBING[2], CLIMBING[3]}


def test_an_interrupted_upgrade_keeps_the_old_collection_and_runs_again(connection: MilvusConnection) -> None:
    client = connection.client
    old_name = "memgpt_v3_old_model_8"
    create_schema_3_collection(client, old_name, hybrid=connection.capabilities.bm25)
    client.insert(old_name, [_row_v3(i, CLIMBING[i % 4]) for i in range(30)])

    def crash(version: int) -> None:
        raise RuntimeError("killed during the upgrade")

    with pytest.raises(RuntimeError, match="killed"):
        connection.passages(EmbeddingSpace("old-model", DIM), on_upgrade=crash)
    assert client.has_collection(old_name)  # nothing was dropped
    store = connection.passages(EmbeddingSpace("old-model", DIM))
    assert not client.has_collection(old_name) and store.count() == 30


def test_the_analyzer_stems_and_drops_function_words(store: MilvusPassageStore, backend: str) -> None:
    if not store.supports_hybrid:
        pytest.skip(f"this Milvus ({backend}) has no BM25")
    store.upsert([passage(i, text=text) for i, text in enumerate(CLIMBING)])
    assert [h.passage.id for h in store.keyword_search("climbed", limit=5)] == ["p0"]
    assert store.keyword_search("How have you been?", limit=5) == []  # only function words: nothing matches
    assert store.keyword_search("   ", limit=5) == []
    # "how long have you been" used to rank p1 first on its function words; now only "long" counts.
    assert store.keyword_search("How long have you been climbing?", limit=5)[0].passage.id in {"p0", "p1"}
    hybrid = store.search(unit(3), text="climbing books", limit=4, with_text=False)
    assert {h.passage.id for h in hybrid} == {"p0", "p1", "p2", "p3"} and all(h.passage.text == "" for h in hybrid)
    assert {h.passage.id for h in hybrid if h.shares_words} == {"p0", "p2", "p3"}
    assert [h.passage.text for h in store.search(unit(3), text="climbing books", limit=4)] == [
        dict(enumerate(CLIMBING))[int(h.passage.id[1:])] for h in hybrid
    ]


def _row_v1(i: int) -> dict[str, object]:
    return {
        "id": f"p{i}",
        "text": f"passage number {i}",
        "embedding": unit(i),
        "user_id": "alice",
        "source_id": "s1",
        "document_id": f"d{i // 10}",
        "agent_id": "",
        "chunk_index": i % 10,
        "created_at": 1_700_000_000_000 + i,
        "metadata": {"page": i},
    }


def test_hybrid_search_finds_exact_words_where_bm25_exists(store: MilvusPassageStore, backend: str) -> None:
    assert store.search(unit(0), limit=5, text="anything") == []  # an empty collection is no error
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    store.upsert([passage(i, text=f"note about {words[i % 10]} number {i}") for i in range(40)])
    store.upsert([passage(999, text="the secret codeword is periwinkle", embedding=unit(2900))])
    dense = store.search(unit(0), limit=5, text=None)
    assert "p999" not in [h.passage.id for h in dense]  # far away by meaning
    hybrid = store.search(unit(0), limit=5, text="periwinkle codeword")
    if not store.supports_hybrid:
        assert [h.passage.id for h in hybrid] == [h.passage.id for h in dense]  # dense only, no error
        pytest.skip(f"this Milvus ({backend}) has no BM25; hybrid search falls back to dense, checked above")
    assert "p999" in [h.passage.id for h in hybrid]
    keyword = store.keyword_search("periwinkle", limit=3)
    assert [h.passage.id for h in keyword] == ["p999"]
    filtered = store.search(unit(0), limit=5, text="periwinkle", where=eq("document_id", "d0"))
    assert all(h.passage.document_id == "d0" for h in filtered)


def test_pages_past_the_search_window(store: MilvusPassageStore) -> None:
    from memgpt.storage.milvus import MAX_WINDOW

    store.upsert([passage(i) for i in range(60)])
    store.flush()
    near_end = store.search(unit(0), limit=5, offset=MAX_WINDOW - 2)  # through the search iterator
    assert near_end == []  # only 60 passages exist: past the end is empty, not an error
    deep = store._deep(unit(0), limit=5, offset=10, where=MATCH_ALL)
    assert [h.passage.id for h in deep] == [f"p{i}" for i in range(10, 15)]


def test_texts_read_after_ranking_leave_out_a_passage_removed_since(store: MilvusPassageStore) -> None:
    """A search without texts, then its hits' texts read: a passage deleted in between is left out (there is
    nothing of it to show), never shown with an empty text; the others keep their rank order."""
    store.upsert([passage(i) for i in range(4)])
    hits = store.search(unit(0), limit=4, with_text=False)
    assert [h.passage.text for h in hits] == ["", "", "", ""]
    store.delete(eq("id", "p1"))
    read = store.with_texts(hits)
    assert [h.passage.id for h in read] == ["p0", "p2", "p3"]
    assert [h.passage.text for h in read] == [passage(i).text for i in (0, 2, 3)]
    assert store.with_texts([]) == []


@pytest.mark.parametrize(
    ("version", "bm25", "partition_key"),
    [
        ("v2.3.5-lite", False, False),
        ("v2.4.15", False, True),
        ("v2.5.4", True, True),
        ("Zilliz Cloud Vector Database(Compatible with Milvus 2.5)", True, True),
        ("unknown", False, False),
    ],
)
def test_capabilities_follow_the_server_version(version: str, bm25: bool, partition_key: bool) -> None:
    from memgpt.storage.milvus import Capabilities

    found = Capabilities.of_server(version)
    assert (found.bm25, found.partition_key) == (bm25, partition_key)


def test_a_row_whose_keys_collide_is_never_shown_to_the_wrong_user(store: MilvusPassageStore) -> None:
    """Searches filter on 64-bit keys; a row carrying alice's key but mallory's id (what a crafted
    collision would look like) is dropped by the exact re-check, in plain and deep-paged search."""
    from memgpt.storage.milvus.store import _row, _with_keys

    store.upsert([passage(i, user_id="alice") for i in range(3)])
    forged = _with_keys(_row(passage(99, user_id="mallory", embedding=unit(0)), store.space))
    forged["user_key"] = key_of("alice")
    store._client.upsert(store.collection, [forged])
    alice = eq("user_id", "alice")
    assert store.count(alice) == 3  # exact string filters never see it
    assert [h.passage.id for h in store.search(unit(0), limit=10, where=alice)] == ["p0", "p1", "p2"]
    deep = store._deep(unit(0), limit=10, offset=0, where=alice)  # the search-iterator path
    assert [h.passage.id for h in deep] == ["p0", "p1", "p2"]
    assert [h.passage.id for h in store.search(unit(0), limit=1, where=eq("user_id", "mallory"))] == []


def test_text_search_of_an_empty_lite_collection_is_silent(tmp_path: Path) -> None:
    """Milvus Lite fails BM25 on a collection without rows; its server process printed a C++ assertion and
    pymilvus a traceback around the correct empty answer. A child process, so its stderr is all seen."""
    code = (
        "import sys\n"
        "from memgpt.storage.milvus import MilvusConnection, MilvusTarget\n"
        "from memgpt.types import EmbeddingSpace\n"
        "from memgpt.storage.filters import eq\n"
        "conn = MilvusConnection(MilvusTarget(sys.argv[1]))\n"
        "store = conn.passages(EmbeddingSpace('test-model', 8))\n"
        "vector = [1.0] + [0.0] * 7\n"
        "print(store.search(vector, limit=5, text='anything', where=eq('agent_id', 'a')),\n"
        "      store.keyword_search('anything', limit=5), store.search(vector, limit=5, text='x'))\n"
        "conn.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "milvus.db")], capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "[] [] []", out.stderr
    assert out.stderr == ""


FORK_WHILE_CONNECTED = """
import sys, threading
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from memgpt.types import EmbeddingSpace
import pexpect

conn = MilvusConnection(MilvusTarget(sys.argv[1]))
store = conn.passages(EmbeddingSpace("test-model", 8))
done = threading.Event()

def busy():
    while not done.is_set():
        store.count()

threading.Thread(target=busy, daemon=True).start()
crashed = []
for attempt in range(int(sys.argv[2])):
    child = pexpect.spawn("/bin/echo", ["ok"], timeout=60)
    output = child.read().decode(errors="replace")
    child.close()
    if child.signalstatus is not None or "ok" not in output:
        crashed.append(f"spawn {attempt}: signal {child.signalstatus}: {output.strip()[:200]}")
done.set()
conn.close()
print("\\n".join(crashed) or "none crashed")
"""


def test_a_process_holding_a_milvus_client_can_fork_children(tmp_path: Path) -> None:
    """gRPC's fork support restarts its poller in a forked child, and a child that closes its descriptors
    before exec (pexpect, as the pty tests use it) then aborts with "epoll_wait ... Bad file descriptor":
    9 of 200 spawns died so before memgpt turned the support off. How `memgpt run` "died at start-up".

    At that rate (p = 0.045 a spawn) all of n spawns survive the bug with probability 0.955^n: 1.0% for
    n = 100, so this test fails on the old code 99 times in 100. (150 spawns would make it 99.9%, for 50 more
    forks beside a busy client: about 4 s on a loaded two-core machine; the start-up costs most of the rest.)"""
    out = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_CONNECTED, str(tmp_path / "milvus.db"), "100"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.stdout.strip() == "none crashed", out.stdout + out.stderr


class _Spy:
    """Counts calls of one MilvusClient write method and passes them on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: Any, name: str) -> None:
        self.calls = 0
        real = getattr(client, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(client, name, counted)


def _read_back(store: MilvusPassageStore, count: int) -> None:
    """Every inserted passage once, with its fields and vector as written."""
    assert store.count() == count
    found = {p.id: p for p in store.query(MATCH_ALL, limit=count + 10)}
    assert sorted(found) == sorted(f"p{i}" for i in range(count))
    for i in range(count):
        got, want = found[f"p{i}"], passage(i)
        assert (got.text, got.document_id, got.chunk_index, got.metadata) == (
            want.text,
            want.document_id,
            want.chunk_index,
            want.metadata,
        )
        assert got.created_at == want.created_at
    assert [h.passage.id for h in store.search(unit(7), limit=1)] == ["p7"]


def test_insert_sends_columns_not_rows(store: MilvusPassageStore) -> None:
    with pytest.MonkeyPatch.context() as patch:
        inserts = _Spy(patch, store._client, "insert")
        upserts = _Spy(patch, store._client, "upsert")
        store.insert([passage(i) for i in range(12)])
        store.insert([passage(i) for i in range(12, 25)])
        assert (inserts.calls, upserts.calls) == (0, 0)  # the column path, not MilvusClient's row insert
    _read_back(store, 25)


class _Reshaped:
    """The connection handler as a pymilvus release with other internals would show it to memgpt's column
    insert: the attributes given are replaced; everything else, MilvusClient's own insert and upsert
    included, is the real handler's."""

    def __init__(self, real: Any, **replaced: Any) -> None:
        self._real = real
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _schema_as_dict(real: Any) -> _Reshaped:
    return _Reshaped(real, _get_schema=lambda name, **kwargs: real._get_schema(name, **kwargs)[0])


def _field_type_renamed(real: Any) -> _Reshaped:
    def renamed(name: str, **kwargs: Any) -> tuple[dict[str, Any], int]:
        found, stamp = real._get_schema(name, **kwargs)
        fields = [{("data_type" if k == "type" else k): v for k, v in f.items()} for f in found["fields"]]
        return {**found, "fields": fields}, stamp

    return _Reshaped(real, _get_schema=renamed)


def _batch_insert_without_schema_keyword(real: Any) -> _Reshaped:
    def narrower(collection_name: str, entities: list[Any], partition_name: Any = None, context: Any = None) -> Any:
        return real.batch_insert(collection_name, entities, partition_name, context=context)

    return _Reshaped(real, batch_insert=narrower)


def _batch_insert_result_reshaped(real: Any) -> _Reshaped:
    """Fails after the rows are written: the fallback must not write them twice."""

    def written_then_failed(*args: Any, **kwargs: Any) -> Any:
        real.batch_insert(*args, **kwargs)
        raise TypeError("MutationResult takes no argument 'response'")

    return _Reshaped(real, batch_insert=written_then_failed)


def _as_pymilvus_wraps_it(change: Any) -> Any:
    """``change`` with its batch_insert inside pymilvus's own error handler, as the real method is: an error of
    another shape raised in it comes out as MilvusException("Unexpected error ..."), logged as an ERROR."""

    def wrapped(real: Any) -> _Reshaped:
        from pymilvus.decorators import error_handler

        reshaped = change(real)
        reshaped.batch_insert = error_handler(func_name="batch_insert")(reshaped.batch_insert)
        return reshaped

    return wrapped


class _PymilvusRecords(logging.Handler):
    """What pymilvus logs to its own console handler (its loggers do not propagate: caplog never sees them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


@pytest.fixture
def pymilvus_records() -> Iterator[_PymilvusRecords]:
    records = _PymilvusRecords()
    logging.getLogger("pymilvus").addHandler(records)
    try:
        yield records
    finally:
        logging.getLogger("pymilvus").removeHandler(records)


@pytest.mark.parametrize(
    ("change", "fallback"),
    [
        (_schema_as_dict, "insert"),
        (_field_type_renamed, "insert"),
        (_batch_insert_without_schema_keyword, "upsert"),
        (_batch_insert_result_reshaped, "upsert"),
        (_as_pymilvus_wraps_it(_batch_insert_without_schema_keyword), "upsert"),
        (_as_pymilvus_wraps_it(_batch_insert_result_reshaped), "upsert"),
    ],
)
def test_insert_falls_back_to_rows_when_pymilvus_changes_shape(
    store: MilvusPassageStore,
    change: Any,
    fallback: str,
    caplog: pytest.LogCaptureFixture,
    pymilvus_records: _PymilvusRecords,
) -> None:
    """The column insert uses MilvusClient internals; a pymilvus release that shapes them otherwise gets the
    row insert (one warning), never a traceback on every insert, and never a row lost or written twice; nor
    the ERROR pymilvus logs for the failure that memgpt handles."""
    reshaped = change(store._client._get_connection())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store._client, "_get_connection", lambda: reshaped)
        spies = {name: _Spy(patch, store._client, name) for name in ("insert", "upsert")}
        with caplog.at_level("WARNING", logger="memgpt.storage.milvus.store"):
            store.insert([passage(i) for i in range(12)])
            assert spies[fallback].calls == 1
            store.insert([passage(i) for i in range(12, 25)])  # straight to rows: the column path is not tried
        assert spies["insert"].calls == (2 if fallback == "insert" else 1)
        assert len([r for r in caplog.records if "inserts rows from now on" in r.getMessage()]) == 1
    assert pymilvus_records.errors() == []
    _read_back(store, 25)


def test_insert_with_a_stale_cached_schema_refreshes_it(
    store: MilvusPassageStore, pymilvus_records: _PymilvusRecords
) -> None:
    """pymilvus signals a cached schema that is not the collection's with DataNotMatchException; the column
    insert then clears it and inserts through MilvusClient, whose own insert retries with a fresh one. pymilvus's
    "RPC error: [batch_insert]" ERROR (with its traceback) for what is handled so is not shown."""
    from pymilvus.client.cache import GlobalCache
    from pymilvus.orm.types import DataType

    handler, context = store._client._get_connection(), store._client._generate_call_context()
    key = (handler.server_address, context.get_db_name(), store.collection)
    fresh, _ = handler._get_schema(store.collection, context=context)
    stale = [{**f, "type": DataType.INT64} if f["name"] == "embedding" else f for f in fresh["fields"]]
    GlobalCache.schema.set(*key, {**fresh, "fields": stale})
    try:
        with pytest.MonkeyPatch.context() as patch:
            inserts = _Spy(patch, store._client, "insert")
            store.insert([passage(i) for i in range(25)])
            assert inserts.calls == 1
        cached = GlobalCache.schema.get(*key)
        assert cached is None or cached["fields"] == fresh["fields"]
        with pytest.MonkeyPatch.context() as patch:
            inserts = _Spy(patch, store._client, "insert")
            store.insert([passage(i) for i in range(25, 30)])
            assert inserts.calls == 0  # the column path again: a stale schema says nothing about pymilvus
    finally:
        GlobalCache.schema.invalidate(*key)
    _read_back(store, 30)
    assert pymilvus_records.errors() == []


def test_a_column_insert_failure_memgpt_does_not_handle_is_still_logged_by_pymilvus(
    store: MilvusPassageStore, pymilvus_records: _PymilvusRecords
) -> None:
    """Only what the column insert handles is kept quiet: a failure it raises keeps pymilvus's ERROR too."""
    from pymilvus.decorators import error_handler
    from pymilvus.exceptions import MilvusException

    store.insert([passage(0)])
    reshaped = _Reshaped(store._client._get_connection())
    failure = MilvusException(message="the server refused it")

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise failure

    reshaped.batch_insert = error_handler(func_name="batch_insert")(refused)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store._client, "_get_connection", lambda: reshaped)
        with pytest.raises(StorageError, match="the server refused it"):
            store.insert([passage(1)])
    assert [m.startswith("RPC error: [batch_insert]") for m in pymilvus_records.errors()] == [True]


def _keyword_scores(store: MilvusPassageStore) -> list[tuple[str, float]]:
    texts = ["the climber climbed the wall", "a wall of books", "climbing shoes and ropes", "books about climbing"]
    store.upsert([passage(i, text=text) for i, text in enumerate(texts)])
    return [(h.passage.id, h.score) for h in store.keyword_search("climbing books", limit=10)]


def test_a_new_lite_collection_is_primed_and_its_primer_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new Milvus Lite collection gets one row written and deleted as it is made (schema.PRIMER_ID: the first
    write's wait is paid then, in the background of a command): nothing of it shows -- not in counts, not in
    the BM25 statistics a keyword search scores with."""
    from memgpt.storage.milvus import schema

    space = EmbeddingSpace("test-model", DIM)
    writes: list[str] = []
    original = schema._prime
    monkeypatch.setattr(schema, "_prime", lambda *a: (writes.append("primed"), original(*a)))
    primed = MilvusConnection(MilvusTarget(str(tmp_path / "primed.db")))
    try:
        store = primed.passages(space)
        assert writes == ["primed"]
        assert store.count() == 0
        assert store._client.get(store.collection, ids=[schema.PRIMER_ID]) == []
        scores = _keyword_scores(store)
        assert store.count() == 4
    finally:
        primed.close()
    monkeypatch.setattr(schema, "_prime", lambda *a: None)
    plain = MilvusConnection(MilvusTarget(str(tmp_path / "plain.db")))
    try:
        assert _keyword_scores(plain.passages(space)) == scores
    finally:
        plain.close()


@pytest.mark.parametrize("left", ["no indexes", "the primer"])
def test_a_lite_collection_whose_creation_was_cut_short_is_finished_on_open(tmp_path: Path, left: str) -> None:
    """What a process killed while creating a collection leaves (see tests/test_interrupted_setup.py for the
    kills): a collection without its indexes (every search failed "index not found", for good), or the primer
    row not yet deleted. The next open finishes the job."""
    from pymilvus import MilvusClient

    from memgpt.storage.milvus import schema

    space = EmbeddingSpace("test-model", DIM)
    target = MilvusTarget(str(tmp_path / "milvus.db"))
    first = MilvusConnection(target)
    try:
        if left == "no indexes":
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(schema, "_create_indexes", lambda *a: None)
                patch.setattr(schema, "_prime", lambda *a: None)
                patch.setattr(MilvusClient, "load_collection", lambda *a, **k: None)
                first.passages(space)
        else:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(MilvusClient, "delete", lambda *a, **k: None)
                first.passages(space)
    finally:
        first.close()
    second = MilvusConnection(target)
    try:
        store = second.passages(space)
        assert store.count() == 0
        store.upsert([passage(i) for i in range(5)])
        assert [h.passage.id for h in store.search(unit(0), limit=2)] == ["p0", "p1"]
        assert store.keyword_search("passage number", limit=10)
        assert store.count() == 5
    finally:
        second.close()


def test_a_data_error_in_the_column_insert_does_not_switch_to_rows(
    store: MilvusPassageStore, caplog: pytest.LogCaptureFixture, pymilvus_records: _PymilvusRecords
) -> None:
    """A ValueError inside batch_insert may be the data's, not a pymilvus of another shape: when the row retry
    fails as well, the insert fails as it is (pymilvus's ERROR said) and the store keeps its column insert, with
    no warning that it inserts rows from now on."""
    from pymilvus.decorators import error_handler
    from pymilvus.exceptions import MilvusException

    reshaped = _Reshaped(store._client._get_connection())

    def bad_value(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a value the collection does not take")

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise MilvusException(message="the server refused the rows too")

    reshaped.batch_insert = error_handler(func_name="batch_insert")(bad_value)
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("WARNING", logger="memgpt.storage.milvus.store"):
        patch.setattr(store._client, "_get_connection", lambda: reshaped)
        patch.setattr(store._client, "upsert", refused)
        with pytest.raises(StorageError, match="the server refused the rows too"):
            store.insert([passage(0)])
    assert [r.getMessage() for r in caplog.records if "inserts rows from now on" in r.getMessage()] == []
    assert [m.startswith("Unexpected error: [batch_insert]") for m in pymilvus_records.errors()] == [True]
    with pytest.MonkeyPatch.context() as patch:
        spies = {name: _Spy(patch, store._client, name) for name in ("insert", "upsert")}
        store.insert([passage(i) for i in range(12)])
        assert (spies["insert"].calls, spies["upsert"].calls) == (0, 0)  # still the column insert
    _read_back(store, 12)


def test_pymilvus_lines_below_error_pass_while_its_errors_are_held(
    store: MilvusPassageStore, caplog: pytest.LogCaptureFixture, pymilvus_records: _PymilvusRecords
) -> None:
    """Only pymilvus's ERRORs of a failure memgpt handles are kept from the user (and logged at DEBUG); what it
    logs below that meanwhile, a retry line say, is shown as ever."""
    retry = "[batch_insert] retry:1, cost: 0.01s, reason: <_MultiThreadedRendezvous: StatusCode.UNAVAILABLE>"

    def reshape(real: Any) -> _Reshaped:
        def retried_then_reshaped(*args: Any, **kwargs: Any) -> Any:
            logging.getLogger("pymilvus.decorators").warning(retry)
            raise TypeError("MutationResult takes no argument 'response'")

        return _Reshaped(real, batch_insert=retried_then_reshaped)

    reshaped = _as_pymilvus_wraps_it(reshape)(store._client._get_connection())
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("DEBUG", logger="memgpt.storage.milvus"):
        patch.setattr(store._client, "_get_connection", lambda: reshaped)
        store.insert([passage(i) for i in range(12)])
    assert [r.getMessage() for r in pymilvus_records.records if r.levelno >= logging.WARNING] == [retry]
    handled = [
        r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "handled here" in r.getMessage()
    ]
    assert len(handled) == 1 and "Unexpected error: [batch_insert]" in handled[0], handled
    _read_back(store, 12)
