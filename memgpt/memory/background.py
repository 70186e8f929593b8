"""Catch-up work for many owners at once, on one thread of its own, so no caller waits for it.

Recall indexing uses it, one per process: a step asks for its agent's new messages to be indexed and returns
at once; the thread gathers what every open agent asked for during a short pause and indexes it in one pass
(one embedding call, one Milvus insert), and a search waits for its own agent's work first. The thread starts
at the first request and then waits for the next one.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

# (imported first: its atexit function then runs after ``_close_all``, registered when a batcher's thread starts)
from memgpt import native_calls

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long ``close`` waits for a pass under way by default (one embedding call and one Milvus insert, well under
# a second unless the machine is starved); the process's exit shares ``native_calls.exit_deadline`` instead.
EXIT_WAIT_SECONDS = 30.0


@dataclass
class Outcome:
    """What a pass did with the items it was given: ``finished`` ones have nothing left, ``failed`` ones wait
    for their next request (an unreachable backend is not retried in a loop); the rest had more work than
    the pass could take and go round again."""

    finished: set[Hashable] = field(default_factory=set)
    failed: set[Hashable] = field(default_factory=set)
    # Not done because another process does that work now (it holds the item's claim): they go round again, but
    # a waiter that gives such an item ``patience`` stops waiting for it (``Batcher.wait``).
    elsewhere: set[Hashable] = field(default_factory=set)


class Batcher(Generic[T]):
    """Runs ``work`` on a daemon thread over the items asked for since its last pass, all of them in one call.

    An item is known by ``key(item)``: asking again for an item already waiting changes nothing, so one
    agent's work is never done twice at once. A request waits ``gather`` seconds before its pass begins (the
    step that asked ends first, and other agents' steps join the pass); an ``urgent`` one (a search waiting
    for it) does not. ``work`` returns an ``Outcome``; an exception it raises is logged and fails the
    pass's items. Thread-safe."""

    def __init__(
        self, work: Callable[[list[T]], Outcome], key: Callable[[T], Hashable], name: str, gather: float = 0.0
    ) -> None:
        self._work = work
        self._key = key
        self._name = name
        self._gather = gather
        self._changed = threading.Condition()
        self._waiting: dict[Hashable, T] = {}  # asked for and not begun, in order (urgent ones first)
        self._urgent = False
        self._busy: set[Hashable] = set()  # in the pass under way
        self._finished: dict[Hashable, bool] = {}  # what the last pass said of each (absent: all done)
        self._dropping: set[Hashable] = set()  # withdrawn during a pass: not to go round again
        # Since when passes have found each in another process's hands, and when the last of them began (a wait
        # trusts only a pass begun after it: one begun before may have looked before the claim was let go).
        self._elsewhere: dict[Hashable, tuple[float, float]] = {}
        self._began = 0.0  # when the pass under way took its items
        self._thread: threading.Thread | None = None
        self._closing = False  # the process is exiting: no pass begins any more

    def request(self, item: T, *, urgent: bool = False) -> None:
        """Do ``item``'s work soon, on the background thread; ``urgent``: without the gathering pause, first."""
        key = self._key(item)
        with self._changed:
            # Only the thread's wait for a first item and its gathering pause (for an urgent item) need waking: a
            # wake for each request (a server's every step) cost the thread a GIL switch and a wait set up anew.
            # A pass under way looks at what is waiting when it ends; no other wait ends by an item added.
            wake = urgent or not self._waiting
            if urgent:
                self._waiting = {key: item, **{k: v for k, v in self._waiting.items() if k != key}}
                self._urgent = True
            else:
                self._waiting[key] = item
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
                _running.add(self)
                _close_at_exit()
            if wake:
                self._changed.notify_all()

    def _next(self) -> list[T]:
        """The items of the next pass, once there are some and the gathering pause is over."""
        with self._changed:
            while self._closing or not self._waiting:
                self._changed.wait()
            if self._gather and not self._urgent:
                deadline = time.monotonic() + self._gather
                while not self._urgent and (left := deadline - time.monotonic()) > 0:
                    self._changed.wait(left)
            items = list(self._waiting.values())
            self._waiting.clear()
            self._urgent = False
            self._busy = {self._key(item) for item in items}
            self._began = time.monotonic()
            return items

    def _serve(self) -> None:
        while True:
            items = self._next()
            try:
                outcome = self._work(items)
            except Exception:  # a background thread has no caller to raise to: log it, report the items unfinished
                logger.exception("%s failed", self._name)
                outcome = Outcome(failed={self._key(item) for item in items})
            self._settle(items, outcome)

    def _settle(self, items: Sequence[T], outcome: Outcome) -> None:
        with self._changed:
            now = time.monotonic()
            for item in items:
                key = self._key(item)
                if key in outcome.elsewhere:
                    self._elsewhere[key] = (self._elsewhere.get(key, (now, now))[0], self._began)
                else:
                    self._elsewhere.pop(key, None)
                if key in outcome.failed:
                    self._finished[key] = False
                elif key in outcome.finished:
                    self._finished.pop(key, None)
                elif key not in self._dropping:  # more to do: round again, after what was asked meanwhile
                    self._waiting.setdefault(key, item)
            self._busy = set()
            self._changed.notify_all()

    def _pending(self, key: Hashable) -> bool:
        return key in self._waiting or key in self._busy

    def wait(self, item: T, timeout: float | None = None, *, patience: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: as long as it takes) until ``item`` has no work pending; returns
        whether its last pass finished everything (False as well when the time ran out). ``patience``: wait no
        longer once passes have found the item in another process's hands (``Outcome.elsewhere``) for that many
        seconds (0: at once), the last of them begun after this wait: that process does the work, or this one
        once it lets go."""
        key = self._key(item)
        begun = time.monotonic()
        deadline = None if timeout is None else begun + timeout
        with self._changed:
            while self._pending(key):
                left = None if deadline is None else deadline - time.monotonic()
                seen = self._elsewhere.get(key)
                if patience is not None and seen is not None and seen[1] >= begun:
                    # from this wait's start at the earliest: a claim seen before a withdraw is a new one now
                    given = max(seen[0], begun) + patience - time.monotonic()
                    left = given if left is None else min(left, given)
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            return self._finished.get(key, True)

    def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until nothing is asked for or under way (before the store the work
        writes closes); returns whether it got there. Urgent from here: no gathering pause."""
        deadline = time.monotonic() + timeout
        with self._changed:
            if self._waiting:
                self._urgent = True
                self._changed.notify_all()
            while self._waiting or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def close(self, timeout: float = EXIT_WAIT_SECONDS) -> bool:
        """Begin no more passes and wait up to ``timeout`` seconds for the one under way to end; returns whether
        it did. For the process's exit (``_close_all``): the thread is a daemon, and a daemon thread still in native
        code (ONNX Runtime's ``run``, a gRPC call, both with the GIL let go) when the interpreter finalizes is ended
        by ``pthread_exit`` as it takes the GIL back, an unwind through C++ frames that may not unwind: the process
        aborted ("terminate called without an active exception", exit code 134) after its work was done. What is
        left undone is indexed when its agents are opened again."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            if self._thread is None or not self._thread.is_alive():  # (a forked child has none of its parent's)
                return True
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def withdraw(self, item: T, timeout: float | None = None, *, patience: float | None = None) -> bool:
        """Let ``item``'s pending work finish for up to ``timeout`` seconds (and ``patience``, as ``wait``'s),
        then drop what is left of it (a pass under way ends first: one batch); returns whether everything was
        done. The same key asked for by another item since stays asked for."""
        key = self._key(item)
        with self._changed:
            if key in self._waiting:  # its caller waits: no gathering pause
                self._urgent = True
                self._changed.notify_all()
        done = self.wait(item, timeout, patience=patience)
        with self._changed:
            if self._waiting.get(key) is item:
                del self._waiting[key]
            self._dropping.add(key)
            while key in self._busy:
                self._changed.wait()
            self._dropping.discard(key)
            return done and self._finished.get(key, True)


_running: weakref.WeakSet[Batcher[object]] = weakref.WeakSet()  # the batchers whose thread started
_exit_guard = threading.Lock()
_exit_registered = False


def _close_all() -> None:
    """At exit: every batcher's pass under way ends, or the exit's shared deadline passes (``exit_deadline``: the
    native calls' wait after this one has what is left of it, not as long again). A process that ends with
    ``os._exit`` (``native_calls.exit_without_finalizing``) waits for none: it only stops them beginning another."""
    finalizes = native_calls.finalizes()
    deadline = native_calls.exit_deadline() if finalizes else 0.0
    for batcher in list(_running):
        if not batcher.close(max(0.0, deadline - time.monotonic())) and finalizes:
            logger.warning(
                "%s did not end within %.0f s of the process's exit", batcher._name, native_calls.EXIT_WAIT_SECONDS
            )


def _close_at_exit() -> None:
    """Register ``_close_all`` at exit when the first batcher's thread starts: after the modules storage imports
    registered theirs (a Milvus Lite server's stop), so it runs before them (atexit runs the last one first)."""
    global _exit_registered
    with _exit_guard:
        if not _exit_registered:
            _exit_registered = True
            atexit.register(_close_all)


def _forget_in_child() -> None:
    """A forked child has none of its parent's threads (nor may it take their locks): it waits for none at exit."""
    global _exit_guard
    _exit_guard = threading.Lock()
    _running.clear()


os.register_at_fork(after_in_child=_forget_in_child)
