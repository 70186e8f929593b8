"""Another process writing passages to a Milvus server, for tests/test_milvus_cross_process.py.

    python -m tests.passage_writer URI TOKEN DATABASE METADATA_URL

Reads a number per line from stdin, inserts passage ``p<number>`` of agent ``agent-x`` as an archival write
does (the write, then its mark in the metadata database) and answers ``ok`` once both returned.
"""

from __future__ import annotations

import sys

from memgpt.storage.marks import PassageMarks
from memgpt.storage.milvus import MilvusConnection, MilvusTarget
from memgpt.storage.sql import MetadataStore
from memgpt.types import EmbeddingSpace
from tests.test_milvus_store import DIM, passage

AGENT = "agent-x"


def main() -> None:
    uri, token, database, metadata_url = sys.argv[1:5]
    connection = MilvusConnection(MilvusTarget(uri, token, database=database))
    metadata = MetadataStore(metadata_url)
    marks = PassageMarks(metadata)
    store = connection.passages(EmbeddingSpace("cross-process", DIM))
    print("ready", flush=True)
    for line in sys.stdin:
        number = int(line)
        store.insert([passage(number, agent_id=AGENT, source_id="")])
        marks.record(AGENT, store.write_mark())
        print("ok", flush=True)
    metadata.close()
    connection.close()


if __name__ == "__main__":
    main()
