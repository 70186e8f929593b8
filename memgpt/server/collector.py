"""The cyclic garbage collector in a long-running `memgpt server` process.

A full (oldest-generation) collection walks every tracked object that is not frozen: under load at 50 clients
that was ~150-170 ms of CPU with the GIL held, once every ~200 turns, landing in whichever thread allocated.
:func:`install` freezes what survived each full collection (``gc.freeze`` in the collector's "stop" callback), so
the next one walks only what was promoted since. Cyclic garbage that became garbage after it was frozen is not
freed by those collections: every ``thaw_seconds`` a timer thread unfreezes everything and runs one full
collection, which frees it (the memory such garbage holds is bounded by what the process makes in that time).

``MEMGPT_GC_STATS=<file>`` (off by default, for measuring): after each full collection, and at each thaw, the
process rewrites ``<file>`` with JSON: collections and CPU seconds per generation so far, and the types of the
objects the full collection had walked (the 20 commonest). The file is rewritten rather than written at exit
because the CLI ends with ``os._exit``.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

STATS_ENV = "MEMGPT_GC_STATS"
THAW_SECONDS = 600.0  # how often frozen survivors are unfrozen and collected once, so their cyclic garbage goes
OLDEST = 2


class Collector:
    """Freezing after each full collection, thawing every ``thaw_seconds``; and, with ``stats``, the counts."""

    def __init__(self, thaw_seconds: float = THAW_SECONDS, stats: Path | None = None) -> None:
        self.thaw_seconds = thaw_seconds
        self.stats = stats
        self.collections = [0, 0, 0]
        self.cpu = [0.0, 0.0, 0.0]
        self.thaws = 0
        self.walked = 0  # objects the last full collection walked
        self._started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        gc.callbacks.append(self._callback)
        self._thread = threading.Thread(target=self._thawing, name="gc-thaw", daemon=True)
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
            self._started = time.thread_time()
            if generation == OLDEST and self.stats is not None:
                self.walked = len(gc.get_objects(OLDEST)) + len(gc.get_objects(1)) + len(gc.get_objects(0))
            return
        self.collections[generation] += 1
        self.cpu[generation] += time.thread_time() - self._started
        if generation == OLDEST:
            if self.stats is not None:
                self._write(types=True)
            gc.freeze()  # what survived stays out of the next full collections' walks, until the next thaw

    def thaw(self) -> None:
        """Unfreeze everything and collect once: cyclic garbage among frozen objects is freed (and what survives
        is frozen again by the callback)."""
        with self._lock:
            gc.unfreeze()
            gc.collect()
            self.thaws += 1
            if self.stats is not None:
                self._write(types=False)

    def _thawing(self) -> None:
        while not self._stop.wait(self.thaw_seconds):
            self.thaw()

    def _write(self, types: bool) -> None:
        assert self.stats is not None
        data: dict[str, Any] = {
            "collections": self.collections,
            "cpu_seconds": [round(seconds, 4) for seconds in self.cpu],
            "thaws": self.thaws,
            "frozen": gc.get_freeze_count(),
            "walked_by_last_full": self.walked,
        }
        if types:
            counts = Counter(type(item).__qualname__ for item in gc.get_objects(OLDEST))
            data["oldest_by_type"] = counts.most_common(20)
        previous = {}
        if self.stats.exists():
            try:
                previous = json.loads(self.stats.read_text())
            except ValueError:
                previous = {}
        if not types and "oldest_by_type" in previous:
            data["oldest_by_type"] = previous["oldest_by_type"]
        temporary = self.stats.with_name(self.stats.name + ".tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(self.stats)


_installed: Collector | None = None


def install(thaw_seconds: float = THAW_SECONDS) -> Collector:
    """Freeze survivors of every full collection in this process from now on (once per process)."""
    global _installed
    if _installed is None:
        stats = os.environ.get(STATS_ENV)
        _installed = Collector(thaw_seconds, Path(stats) if stats else None)
        _installed.start()
    return _installed


def uninstall() -> None:
    """Stop what :func:`install` started (tests that build a worker's app in their own process)."""
    global _installed
    if _installed is not None:
        _installed.close()
        _installed = None
