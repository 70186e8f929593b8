"""Two processes on one Milvus server: a passage one of them inserted is found by the other's search at
once, though the searching process's Session reads only wait for its own writes (see storage/marks.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from memgpt.storage.filters import eq
from memgpt.storage.marks import PassageMarks
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from memgpt.storage.sql import MetadataStore
from memgpt.types import EmbeddingSpace
from tests.conftest import REPO
from tests.milvus_server import TOKEN
from tests.passage_writer import AGENT
from tests.test_milvus_store import DIM, unit

ROUNDS = 12


def test_a_passage_another_process_inserted_is_found_by_the_next_search(
    milvus_server: str, server_database: str, tmp_path: Path
) -> None:
    metadata_url = f"sqlite:///{tmp_path / 'metadata.sqlite'}"
    metadata = MetadataStore(metadata_url)  # creates the tables for both processes
    connection = MilvusConnection(MilvusTarget(milvus_server, TOKEN, database=server_database))
    store = connection.passages(EmbeddingSpace("cross-process", DIM))
    marks = PassageMarks(metadata)
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.passage_writer", milvus_server, TOKEN, server_database, metadata_url],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "ready"
        assert store.search(unit(0), limit=1) == []  # the first search is Strong; the next ones are Session reads
        missed = []
        for number in range(ROUNDS):
            writer.stdin.write(f"{number}\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "ok"
            store.read_after(marks.newest([AGENT]))  # what ArchivalMemory does before it searches
            hits = store.search(unit(number), limit=1, where=eq("id", f"p{number}"))
            if [hit.passage.id for hit in hits] != [f"p{number}"]:
                missed.append(number)
        assert missed == [], f"the search missed the other process's passages {missed} of {ROUNDS}"
    finally:
        if writer.stdin is not None:
            writer.stdin.close()
        writer.wait(60)
        connection.close()
        metadata.close()
