"""What the cyclic garbage collector costs a long-running `memgpt server` process, for measuring (off by default).

``MEMGPT_GC_STATS=<file>``: the server counts its collections through ``gc.callbacks`` and every
``STATS_SECONDS`` (and after each full collection) rewrites ``<file>`` with JSON: collections, CPU seconds (of the
collecting thread) and unreachable objects freed, per generation, so far; the objects the last full collection
walked and their 20 commonest types; the process's peak RSS. Rewritten as it goes rather than at exit, because the
CLI ends with ``os._exit``.

Measured with it at 50 clients (bench/server_bench.py --backend default, 2026-11-28, busy machine, provisional):
over loads of 1,000 to 10,000 turns no full collection ran at all, young and middle ones cost 0.06 ms a turn
together (~1% of the server's CPU a turn). Freezing what survives each full collection (and unfreezing every few
minutes so that frozen cyclic garbage is still freed) was tried and dropped: there was nothing for it to save.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

STATS_ENV = "MEMGPT_GC_STATS"
STATS_SECONDS = 2.0
OLDEST = 2


class Collector:
    """Counts of the collector's work in this process, written to ``stats``."""

    def __init__(self, stats: Path) -> None:
        self.stats = stats
        self.collections = [0, 0, 0]
        self.cpu = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]  # unreachable objects each generation's collections freed
        self.walked = 0  # objects the last full collection walked
        self.walked_types: list[tuple[str, int]] = []
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        gc.callbacks.append(self._callback)
        self._thread = threading.Thread(target=self._writing, name="gc-stats", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        generation = info["generation"]
        if phase == "start":
            if generation == OLDEST:  # what this collection walks: every generation (frozen objects aside)
                walked = [item for older in range(OLDEST + 1) for item in gc.get_objects(older)]
                self.walked = len(walked)
                self.walked_types = Counter(type(item).__qualname__ for item in walked).most_common(20)
                del walked
            self._started = time.thread_time()
            return
        self.cpu[generation] += time.thread_time() - self._started
        self.collections[generation] += 1
        self.collected[generation] += info["collected"]
        if generation == OLDEST:
            self.write()

    def write(self) -> None:
        data = {
            "collections": self.collections,
            "cpu_seconds": [round(seconds, 4) for seconds in self.cpu],
            "collected": self.collected,
            "frozen": gc.get_freeze_count(),
            "walked_by_last_full": self.walked,
            "walked_types": self.walked_types,
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        temporary = self.stats.with_name(self.stats.name + ".tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(self.stats)

    def _writing(self) -> None:
        while not self._stop.wait(STATS_SECONDS):
            self.write()


_installed: Collector | None = None


def install() -> Collector | None:
    """With ``MEMGPT_GC_STATS`` set, count this process's collections from now on (once per process)."""
    global _installed
    stats = os.environ.get(STATS_ENV)
    if _installed is None and stats:
        _installed = Collector(Path(stats))
        _installed.start()
    return _installed


def uninstall() -> None:
    """Stop what :func:`install` started (tests that build a worker's app in their own process)."""
    global _installed
    if _installed is not None:
        _installed.close()
        _installed = None
