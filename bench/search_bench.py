"""Archival search latency (query embedding excluded) and bulk insert throughput on Milvus Lite.

Usage: python bench/search_bench.py --label "milvus-lite 2.5.1" [--sizes 10000,100000] [--queries 200]
Runs memgpt's own MilvusPassageStore on synthetic unit vectors (384 dims, the default model's size);
every query carries the filter an agent's archival search uses (user and its sources). Recall@10 is
measured against exact cosine similarity computed with NumPy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memgpt.storage.filters import all_of, eq, is_in
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from memgpt.types import Passage

DIM = 384
SOURCES = 10  # passages spread over 10 sources; the agent has 2 of them attached
TEXT = "MemGPT manages a hierarchy of memory tiers to give an LLM the illusion of unbounded context. " * 6


def vectors(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, DIM)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def run(label: str, size: int, queries: int) -> dict[str, str | int | float]:
    data = vectors(size, seed=size)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        connection = MilvusConnection(MilvusTarget(str(Path(tmp) / "bench.db")))
        store = connection.passages("bench-model", DIM)
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

        where = all_of(eq("user_id", "u1"), is_in("source_id", ["s1", "s2"]))
        attached = np.array([i % SOURCES in (1, 2) for i in range(size)])
        probes = vectors(queries + 10, seed=7)
        for q in probes[:10]:  # warm-up
            store.search(q.tolist(), limit=10, where=where)
        latencies, recalls = [], []
        for q in probes[10:]:
            began = time.perf_counter()
            hits = store.search(q.tolist(), limit=10, where=where)
            latencies.append((time.perf_counter() - began) * 1000)
            scores = np.where(attached, data @ q, -2.0)
            exact = {f"p{i}" for i in np.argsort(-scores)[:10]}
            recalls.append(len(exact & {h.passage.id for h in hits}) / 10)
        connection.close()
    latencies.sort()
    return {
        "backend": label,
        "passages": f"{size:,}",
        "insert passages/s": f"{size / insert_seconds:,.0f}",
        "search p50 ms": round(statistics.median(latencies), 2),
        "search p95 ms": round(latencies[int(len(latencies) * 0.95) - 1], 2),
        "recall@10": round(float(np.mean(recalls)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--header", action="store_true", help="print the table header first")
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        row = run(args.label, size, args.queries)
        if args.header:
            print("| " + " | ".join(row) + " |")
            print("|" + "---|" * len(row))
            args.header = False
        print("| " + " | ".join(str(v) for v in row.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
