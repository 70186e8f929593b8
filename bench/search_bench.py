"""Archival search latency (query embedding excluded) and bulk insert throughput, on Milvus Lite or a
Milvus server that this script starts (``--server``, the pip package ``milvus``).

Usage: python bench/search_bench.py --label NAME --vectors V.npy --queries Q.npy [--sizes 10000,100000]
       [--index FLAT|AUTOINDEX] [--server]
Runs memgpt's own MilvusPassageStore on the vectors from bench/vectors.py; every query carries the
filter an agent's archival search uses (its user and 2 of 10 sources). Recall@10 is measured against
exact cosine similarity computed with NumPy over the passages the filter allows.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memgpt.storage.filters import all_of, eq, is_in
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from memgpt.types import EmbeddingSpace, Passage

DIM = 384
SOURCES = 10  # passages spread over 10 sources; the agent has 2 of them attached
TEXT = "MemGPT manages a hierarchy of memory tiers to give an LLM the illusion of unbounded context. " * 6


@dataclass(frozen=True)
class IndexOverride(MilvusTarget):
    """The same store with another Lite index, to measure the alternative memgpt does not use."""

    index_type: str = "AUTOINDEX"

    @property
    def index_params(self) -> dict[str, object]:
        return {"index_type": self.index_type, "metric_type": "COSINE"}


def _wait_for_index(client: object, collection: str) -> None:
    while True:
        info = client.describe_index(collection, "embedding")  # type: ignore[attr-defined]
        if int(info.get("pending_index_rows", 0)) == 0 and info.get("state", "Finished") == "Finished":
            return
        time.sleep(2)


def settle(connection: MilvusConnection, collection: str) -> None:
    """A server indexes and compacts segments in the background after a bulk load, and searches an
    unindexed segment by brute force meanwhile. Measure the steady state a user meets afterwards:
    index built, segments compacted, the compacted segments indexed too."""
    client = connection.client
    _wait_for_index(client, collection)
    job = client.compact(collection)
    while client.get_compaction_state(job) != "Completed":
        time.sleep(2)
    time.sleep(10)  # compacted segments are handed to the query node, then indexed
    _wait_for_index(client, collection)


def run(
    label: str, data: np.ndarray, probes: np.ndarray, index: str | None, server: tuple[str, str] | None
) -> dict[str, str | int | float]:
    size = len(data)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "bench.db")
        if server:
            target = MilvusTarget(server[0], server[1])
        else:
            target = IndexOverride(uri, index_type=index) if index else MilvusTarget(uri)
        connection = MilvusConnection(target)
        store = connection.passages(EmbeddingSpace("bench-model", DIM))
        began = time.perf_counter()
        batch = 2000
        for start in range(0, size, batch):
            store.upsert(
                [
                    Passage(
                        id=f"p{i}",
                        text=TEXT,
                        user_id="u1",
                        source_id=f"s{i % SOURCES}",
                        document_id=f"d{i // 50}",
                        chunk_index=i % 50,
                        created_at=now,
                        metadata={"page": i % 13},
                        embedding=data[i].tolist(),
                    )
                    for i in range(start, min(size, start + batch))
                ]
            )
        store.flush()
        insert_seconds = time.perf_counter() - began
        if server:
            settle(connection, store.collection)

        where = all_of(eq("user_id", "u1"), is_in("source_id", ["s1", "s2"]))
        attached = np.array([i % SOURCES in (1, 2) for i in range(size)])
        # Exact answers first: NumPy's threads would otherwise compete with Milvus for the CPU mid-search.
        exact = [{f"p{i}" for i in np.argsort(-np.where(attached, data @ q, -2.0))[:10]} for q in probes[10:]]
        for q in probes[:10]:  # warm-up
            store.search(q.tolist(), limit=10, where=where)
        latencies, found = [], []
        for q in probes[10:]:
            began = time.perf_counter()
            hits = store.search(q.tolist(), limit=10, where=where)
            latencies.append((time.perf_counter() - began) * 1000)
            found.append({h.passage.id for h in hits})
        recalls = [len(e & f) / 10 for e, f in zip(exact, found, strict=True)]
        if server:
            connection.client.drop_collection(store.collection)
        connection.close()
    latencies.sort()
    return {
        "backend": label,
        "index": index or target.index_params["index_type"],
        "passages": f"{size:,}",
        "insert passages/s": f"{size / insert_seconds:,.0f}",
        "search p50 ms": round(statistics.median(latencies), 2),
        "search p95 ms": round(latencies[int(len(latencies) * 0.95) - 1], 2),
        "recall@10": round(float(np.mean(recalls)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True)
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--index", default=None, help="override memgpt's Lite index (e.g. AUTOINDEX)")
    parser.add_argument("--server", action="store_true", help="start a Milvus server (pip package milvus) and use it")
    parser.add_argument("--header", action="store_true", help="print the table header first")
    args = parser.parse_args()
    data, probes = np.load(args.vectors, mmap_mode="r"), np.load(args.queries)
    process = None
    server = None
    if args.server:
        from tests.milvus_server import TOKEN, start_server, stop_server

        scratch = tempfile.mkdtemp(prefix="memgpt-bench-milvus-")
        process, uri = start_server(Path(scratch))
        server = (uri, TOKEN)
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            row = run(args.label, np.asarray(data[:size]), probes, args.index, server)
            if args.header:
                print("| " + " | ".join(row) + " |")
                print("|" + "---|" * len(row))
                args.header = False
            print("| " + " | ".join(str(v) for v in row.values()) + " |", flush=True)
    finally:
        if process is not None:
            stop_server(process)
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
