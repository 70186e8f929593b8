"""One part of a command's start-up, timed inside a new process (see startup_bench.py).

Usage: python bench/_startup_parts.py PART HOME; prints the part's seconds. Parts:
  cli        import the CLI (what `memgpt --help` loads)
  milvus     open Milvus Lite on HOME's file (import pymilvus, start the Lite server, connect)
  model      load the local embedding model (import onnxruntime, create the session)
  sequential milvus, then model: one after the other, as a command did before
  overlapped the model's session built in a thread (load_early) while Storage.open_vectors_early starts
             Milvus Lite and imports pymilvus, then wait for both: as load/search/run do now
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> None:
    part, home = sys.argv[1], Path(sys.argv[2])
    if part == "cli":
        began = time.perf_counter()
        import memgpt.cli.app  # noqa: F401

        print(f"{time.perf_counter() - began:.4f}")
        return
    from memgpt.config import Config
    from memgpt.embeddings.local import _runtime, load_early
    from memgpt.storage import Storage

    storage = Storage(Config(), home)  # SQLite is opened the same way either way: left out
    began = time.perf_counter()
    if part == "overlapped":
        load_early()
        storage.open_vectors_early()
    elif part in ("milvus", "sequential"):
        storage.vectors.ping()
    if part in ("model", "sequential", "overlapped"):
        _runtime()
    if part == "overlapped":
        storage.vectors.ping()
    took = time.perf_counter() - began
    storage.close()
    print(f"{took:.4f}")


if __name__ == "__main__":
    main()
