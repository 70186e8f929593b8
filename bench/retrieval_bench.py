"""Retrieval quality: dense vs BM25 vs hybrid archival search on a labelled query set.

Usage: python bench/retrieval_bench.py (bench/recall_bench.py prints this table too)
Loads tests/data into Milvus Lite with the default local model, then asks every question in
bench/retrieval_queries.json; a hit is relevant when its text contains the labelled answer.
Prints recall@5, recall@10 and MRR@10 per mode: dense, BM25, reciprocal-rank fusion (memgpt's hybrid
before issue 11) and memgpt's hybrid search (normalised-score fusion, ``memgpt.storage.fusion``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.recall_adapter import rrf
from memgpt.config import Config
from memgpt.data.ingest import SourceLoader
from memgpt.data.sources import get_source, visible_passages
from memgpt.embeddings.base import EmbeddingModel
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage
from memgpt.storage.fusion import CANDIDATES

ROOT = Path(__file__).resolve().parent.parent
QUERIES = ROOT / "bench" / "retrieval_queries.json"
K = 10


def _flat(text: str) -> str:
    return " ".join(text.split())


def archival(model: EmbeddingModel) -> None:
    queries = json.loads(QUERIES.read_text())
    files = sorted({ROOT / "tests" / "data" / q["file"] for q in queries})
    config = Config()
    with tempfile.TemporaryDirectory() as tmp, Storage(config, Path(tmp)) as storage:
        loader = SourceLoader(
            storage,
            model,
            user_id=config.user_id,
            chunk_size=config.embedding.chunk_size,
            chunk_overlap=config.embedding.chunk_overlap,
        )
        report = loader.load("bench", files)
        assert report.ok, report.failures
        source = get_source(storage, config.user_id, "bench")
        where = visible_passages(storage, source)
        store = storage.passages(model.space)
        all_texts = [_flat(p.text) for batch in store.iterate(where) for p in batch]
        ranks: dict[str, list[int | None]] = {"dense": [], "BM25": [], "hybrid RRF k=60": [], "hybrid": []}
        unanswerable = 0
        for query in queries:
            answer = _flat(query["answer"])
            if not any(answer in text for text in all_texts):
                unanswerable += 1  # the answer was cut across two passages
            vector = model.embed(query["question"])
            dense = store.search(vector, limit=CANDIDATES, where=where)
            words = store.keyword_search(query["question"], limit=CANDIDATES, where=where)
            results = {
                "dense": dense[:K],
                "BM25": words[:K],
                "hybrid RRF k=60": rrf(dense, words)[:K],
                "hybrid": store.search(vector, text=query["question"], limit=K, where=where),
            }
            for mode, hits in results.items():
                found = [i for i, hit in enumerate(hits) if answer in _flat(hit.passage.text)]
                ranks[mode].append(found[0] + 1 if found else None)
    print(
        f"\n### Retrieval quality ({len(queries)} labelled questions over {len(files)} files, "
        f"{report.passages} passages; {unanswerable} answers split across passages)\n"
    )
    print("| mode | recall@5 | recall@10 | MRR@10 |")
    print("|---|---|---|---|")
    for mode, found in ranks.items():
        r5 = sum(1 for r in found if r and r <= 5) / len(found)
        r10 = sum(1 for r in found if r) / len(found)
        mrr = sum(1 / r for r in found if r) / len(found)
        print(f"| {mode} | {r5:.3f} | {r10:.3f} | {mrr:.3f} |")


def main() -> None:
    archival(LocalMiniLM())


if __name__ == "__main__":
    main()
