"""Retrieval quality: dense vs BM25 vs hybrid archival search on labelled query sets.

Usage: python bench/retrieval_bench.py [--misses MODE] (bench/recall_bench.py prints these tables too)
Loads tests/data into Milvus Lite with the default local model, then asks every question in
bench/retrieval_queries.json (the tuning set) and bench/retrieval_heldout.json (never tuned on: 40 questions
written before the heading-aware loader, 88 more (``held2-*``) written from the documents alone and committed
before any search ran them); a hit is relevant when its text contains the labelled answer.
Prints recall@5, recall@10 and MRR@10 per mode and set: dense, BM25, reciprocal-rank fusion (memgpt's
hybrid before issue 11) and memgpt's hybrid search (normalised-score fusion, ``memgpt.storage.fusion``),
memgpt's hybrid recall@5 per file, and what loading cost per passage (parse and embed, CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.recall_adapter import rrf
from memgpt.config import Config
from memgpt.data.ingest import LoadReport, SourceLoader
from memgpt.data.sources import get_source, visible_passages
from memgpt.embeddings.base import EmbeddingModel
from memgpt.embeddings.local import LocalMiniLM
from memgpt.storage import Storage
from memgpt.storage.base import PassageStore
from memgpt.storage.filters import Filter
from memgpt.storage.fusion import CANDIDATES
from memgpt.types import SearchHit

ROOT = Path(__file__).resolve().parent.parent
SETS = {
    "tuning": ROOT / "bench" / "retrieval_queries.json",
    "held out": ROOT / "bench" / "retrieval_heldout.json",
}
MODES = ("dense", "BM25", "hybrid RRF k=60", "hybrid")
K = 10


def flat(text: str) -> str:
    return " ".join(text.split())


def _ranks(
    model: EmbeddingModel, store: Any, where: Any, queries: list[dict[str, str]]
) -> tuple[dict[str, list[int | None]], list[dict[str, list[SearchHit]]]]:
    """Each mode's rank of the answer passage per question (None past ``K``), and each question's hits by mode."""
    ranks: dict[str, list[int | None]] = {mode: [] for mode in MODES}
    found_hits: list[dict[str, list[SearchHit]]] = []
    for query in queries:
        answer = flat(query["answer"])
        vector = model.embed(query["question"])
        dense = store.search(vector, limit=CANDIDATES, where=where)
        words = store.keyword_search(query["question"], limit=CANDIDATES, where=where)
        results = {
            "dense": dense,
            "BM25": words,
            "hybrid RRF k=60": rrf(dense, words),
            "hybrid": store.search(vector, text=query["question"], limit=CANDIDATES, where=where),
        }
        for mode, hits in results.items():
            rank = _rank(hits, answer)
            ranks[mode].append(rank if rank and rank <= K else None)
        found_hits.append(results)
    return ranks, found_hits


def _rank(hits: list[SearchHit], answer: str) -> int | None:
    return next((i + 1 for i, hit in enumerate(hits) if answer in flat(hit.passage.text)), None)


def _show_misses(
    mode: str, queries: list[dict[str, str]], ranks: list[int | None], hits: list[dict[str, list[SearchHit]]]
) -> None:
    """Each question ``mode`` misses at top 5: where every signal ranked its answer (among its 100
    candidates, "-" when not among them) and the passage ``mode`` ranked first."""
    for query, rank, found in zip(queries, ranks, hits, strict=True):
        if rank is not None and rank <= 5:
            continue
        answer = flat(query["answer"])
        signals = ", ".join(f"{name} {_rank(found[name], answer) or '-'}" for name in MODES)
        top = found[mode][0].passage if found[mode] else None
        print(f"  miss {query['id']}: {query['question']}\n    answer: {answer}\n    ranks: {signals}")
        if top is not None:
            print(f"    first: [{top.metadata.get('section', '')}] {flat(top.text)[:160]}")


def _table(title: str, ranks: dict[str, list[int | None]]) -> None:
    print(f"\n{title}\n")
    print("| mode | recall@5 | recall@10 | MRR@10 |")
    print("|---|---|---|---|")
    for mode, found in ranks.items():
        r5 = sum(1 for r in found if r and r <= 5) / len(found)
        r10 = sum(1 for r in found if r) / len(found)
        mrr = sum(1 / r for r in found if r) / len(found)
        print(f"| {mode} | {r5:.3f} | {r10:.3f} | {mrr:.3f} |")


def _by_file(queries: list[dict[str, str]], ranks: list[int | None]) -> None:
    """memgpt's hybrid recall@5 per document, so a change is seen to help (or hurt) more than one file."""
    found: dict[str, list[int]] = {}
    for query, rank in zip(queries, ranks, strict=True):
        found.setdefault(query["file"], []).append(1 if rank and rank <= 5 else 0)
    parts = [f"{name} {sum(hits)}/{len(hits)}" for name, hits in sorted(found.items(), key=lambda kv: -len(kv[1]))]
    print(f"\nhybrid recall@5 by file: {', '.join(parts)}")


@dataclass
class Loaded:
    """The labelled sets' documents loaded as one source of a temporary home: its store, the filter an agent's
    search of it carries, every passage's text (flattened, by id), and how the load went."""

    store: PassageStore
    where: Filter
    texts: dict[str, str]
    files: list[Path]
    report: LoadReport
    cpu: float  # CPU seconds of the load


@contextmanager
def labelled_documents(model: EmbeddingModel, sets: dict[str, list[dict[str, str]]]) -> Iterator[Loaded]:
    """Load every document the questions of ``sets`` ask about, as `memgpt load` would, into a temporary home."""
    files = sorted({ROOT / "tests" / "data" / q["file"] for queries in sets.values() for q in queries})
    config = Config()
    with tempfile.TemporaryDirectory() as tmp, Storage(config, Path(tmp)) as storage:
        loader = SourceLoader.from_settings(storage, model, config.embedding, user_id=config.user_id)
        cpu = time.process_time()
        report = loader.load("bench", files)
        cpu = time.process_time() - cpu
        if not report.ok:
            raise SystemExit(f"error: loading failed: {report.failures}")
        where = visible_passages(storage, get_source(storage, config.user_id, "bench"))
        store = storage.passages(model.space)
        texts = {p.id: flat(p.text) for batch in store.iterate(where) for p in batch}
        yield Loaded(store, where, texts, files, report, cpu)


def archival(model: EmbeddingModel, misses: str = "") -> None:
    sets = {name: json.loads(path.read_text()) for name, path in SETS.items()}
    with labelled_documents(model, sets) as loaded:
        report, all_texts = loaded.report, list(loaded.texts.values())
        for name, queries in sets.items():
            split = sum(1 for q in queries if not any(flat(q["answer"]) in text for text in all_texts))
            ranks, hits = _ranks(model, loaded.store, loaded.where, queries)
            _table(
                f"### Retrieval quality, {name} set ({len(queries)} labelled questions over {len(loaded.files)} "
                f"files, {report.passages} passages; {split} answers split across passages)",
                ranks,
            )
            _by_file(queries, ranks["hybrid"])
            if misses in ranks:
                _show_misses(misses, queries, ranks[misses], hits)
    seconds, cpu = report.seconds, loaded.cpu
    print(
        f"\nLoading: {report.passages} passages, {1000 * cpu / report.passages:.1f} ms CPU per passage "
        f"(parse {seconds['parse']:.2f} s, embed {seconds['embed']:.2f} s, insert {seconds['insert']:.2f} s wall)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", default="", choices=("", *MODES), help="list the questions MODE misses at top 5")
    args = parser.parse_args()
    archival(LocalMiniLM(), args.misses)


if __name__ == "__main__":
    main()
