"""A piece of catch-up work run on a thread of its own whenever asked, so the caller never waits for it.

Recall indexing uses it: a step asks for its messages to be indexed and returns at once; a search waits
for the work to finish first. The thread starts at the first request and then waits for the next one
(waking a waiting thread is cheap; starting one took milliseconds on a busy machine); ``close`` ends it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Background:
    """Runs ``work`` on a daemon thread after each ``request``, once more if asked again meanwhile.

    ``work`` takes a function saying whether to stop early (``close`` was called) and returns whether it
    finished everything; an exception it raises is logged and counts as not finished. Thread-safe.
    """

    def __init__(self, work: Callable[[Callable[[], bool]], bool], name: str) -> None:
        self._work = work
        self._name = name
        self._changed = threading.Condition()
        self._wanted = False  # asked for and not begun yet
        self._running = False  # a pass is under way
        self._finished = True  # what the last pass returned
        self._closed = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Do the work soon, on the background thread."""
        with self._changed:
            if self._closed:
                return
            self._wanted = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            else:
                self._changed.notify_all()

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._wanted and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                self._wanted, self._running = False, True
            try:
                finished = self._work(self._stopping)
            except Exception:  # a background thread has no caller to raise to: log it, report it unfinished
                logger.exception("%s failed", self._name)
                finished = False
            with self._changed:
                self._running = False
                self._finished = finished
                if not finished:
                    self._wanted = False  # an unreachable backend is tried again at the next request, not in a loop
                self._changed.notify_all()

    def _stopping(self) -> bool:
        return self._closed

    def _pending(self) -> bool:
        return self._running or (self._wanted and self._thread is not None and not self._closed)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) until no work is pending; returns
        whether the last pass finished everything (False as well when the time ran out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._pending():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            return self._finished

    def close(self, timeout: float | None = None) -> bool:
        """Let pending work finish for up to ``timeout`` seconds, then stop after the current step of it
        (``work`` checks the stop function between batches) and end the thread; returns whether
        everything was done."""
        done = self.wait(timeout)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return done
