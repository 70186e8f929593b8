"""Calls into C++ (ONNX Runtime) that a finalizing interpreter must not cut.

When the interpreter finalizes, a daemon thread taking the GIL back after a native call that let it go is ended by
``pthread_exit``; ONNX Runtime's Python binding takes the GIL back in a destructor, where the forced unwind may not
pass: the process aborted ("terminate called without an active exception", exit code 134) after its work was done.
Any daemon thread can be inside such a call at exit: a server's turn thread embedding a query or passages, the
recall indexer's. So such calls run inside :func:`guarded`, and the process's exit (an atexit function) lets none
begin in a daemon thread any more and waits for those under way until ``exit_deadline`` (``EXIT_WAIT_SECONDS`` from the
first exit function's wait, which the recall indexer's shares). A daemon thread
that would begin one waits instead, for good: the process is ending. The atexit function is registered when this
module is imported (with the embedding model's), before the recall indexer's (``memory.background``, registered
when its thread starts), so it runs after that one: an indexing pass under way ends with all its embedding calls.

(Calls into Rust through PyO3 -- tiktoken, tokenizers -- and gRPC's were tried and did not abort: they are not
guarded.)
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

# How long the process's exit waits, in all, for the native calls under way and the recall indexer's pass (an
# embedding call is well under a second unless the machine is starved).
EXIT_WAIT_SECONDS = 30.0

_changed = threading.Condition()
_inside = 0  # calls under way
_closing = False  # the process is exiting: no daemon thread begins a call
_finalizes = True
_exit_deadline: float | None = None


def exit_deadline() -> float:
    """When (``time.monotonic``) the process's exit stops waiting for work under way: ``EXIT_WAIT_SECONDS`` after the
    first of its atexit functions that asks (the recall indexer's ``_close_all``, then ``_wait_at_exit``), so that
    they share that wait rather than each waiting as long."""
    global _exit_deadline
    if _exit_deadline is None:  # (atexit functions run one at a time, on one thread)
        _exit_deadline = time.monotonic() + EXIT_WAIT_SECONDS
    return _exit_deadline


@contextmanager
def guarded() -> Iterator[None]:
    """Run a native call that a finalizing interpreter could cut (see the module)."""
    global _inside
    with _changed:
        if _closing and threading.current_thread().daemon:
            while True:  # the process is ending: this thread begins nothing more
                _changed.wait()
        _inside += 1
    try:
        yield
    finally:
        with _changed:
            _inside -= 1
            _changed.notify_all()


def exit_without_finalizing() -> None:
    """The process ends with ``os._exit`` (the CLI's executable) after its atexit functions: no finalization cuts
    its daemon threads, so its exit does not wait for their calls (it still lets none begin), nor for the recall
    indexer's pass (``memory.background`` asks ``finalizes``)."""
    global _finalizes
    _finalizes = False


def finalizes() -> bool:
    """Whether the process's exit finalizes the interpreter (not ``exit_without_finalizing``): then what runs at
    exit waits for work under way in daemon threads, until ``exit_deadline``."""
    return _finalizes


def _wait_at_exit() -> bool:
    """Let no daemon thread begin a call, and wait until ``exit_deadline`` for those under way; returns whether
    none is left."""
    global _closing
    deadline = exit_deadline() if _finalizes else time.monotonic()
    with _changed:
        _closing = True
        while _inside:
            left = deadline - time.monotonic()
            if left <= 0:
                if _finalizes:
                    logger.warning(
                        "%d native calls did not end within %.0f s of the process's exit", _inside, EXIT_WAIT_SECONDS
                    )
                return False
            _changed.wait(left)
    return True


def _forget_in_child() -> None:
    """A forked child has none of its parent's threads (nor may it take their locks)."""
    global _changed, _inside, _exit_deadline
    _changed = threading.Condition()
    _inside = 0
    _exit_deadline = None


atexit.register(_wait_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
