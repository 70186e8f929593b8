"""The `memgpt` command line: one module per noun, heavy imports inside commands."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import threading
from typing import NoReturn

# The longest the cyclic garbage collector stays off for start-up (see :func:`_pause_collection`), should a
# command never say that its start-up is over.
STARTUP_COLLECTION_PAUSE = 5.0
_collection = threading.Lock()
_collection_paused = False
_collection_timer: threading.Timer | None = None


def main() -> None:
    """The `memgpt` executable. The command modules are imported here, so that a Ctrl-C while they
    load (most of a second) ends as cleanly as one during a command; so does one while memgpt.interrupts
    loads (it imports dataclasses, and with it inspect: tens of milliseconds)."""
    try:
        from memgpt.interrupts import keep_lost_interrupts

        keep_lost_interrupts()
        from memgpt.cli.app import main as run
    except KeyboardInterrupt:
        interrupted()
    run()


def executable() -> NoReturn:
    """The installed `memgpt` (and `python -m memgpt`): :func:`main`, then the end of the process without
    the interpreter's teardown. By then every command has closed what it opened (Milvus Lite, SQLite), and
    tearing down the ~1,200 modules a search or a load imports (numpy, onnxruntime, gRPC, pandas...) took
    ~0.4 s after the answer was printed, before the shell prompt came back. What Python's own exit does
    that matters is kept, in its order: threads that are not daemons are waited for, then the atexit
    functions run, then the output is flushed."""
    _pause_collection()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    try:
        # What Python's exit does first: the thread-exit hooks (an idle concurrent.futures pool's workers end
        # through them), then waiting for every thread that is not a daemon.
        threading._shutdown()  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted\n")
        code = 130
    native_calls = sys.modules.get("memgpt.native_calls")  # (imported only if a command embedded or indexed)
    if native_calls is not None:
        native_calls.exit_without_finalizing()  # (the recall indexer's exit asks it too)
    try:
        atexit._run_exitfuncs()  # then the atexit functions; nothing public runs them otherwise
    except KeyboardInterrupt:
        code = 130
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`memgpt ... | head`): nothing to keep
            stream.flush()
    os._exit(code)


def _pause_collection() -> None:
    """Turn Python's cyclic garbage collector off until :func:`startup_over`. Start-up imports ~800 modules
    (SQLAlchemy, pymilvus, gRPC, numpy, onnxruntime, pydantic...), whose objects live as long as the process: with
    the collector on, `run --message` ran ~280 young and 2 full collections over them, ~0.13 CPU s with the GIL
    held, freeing almost nothing. Only the executable pauses it (tests call :func:`main` in their own process), and
    a timer turns it back on after ``STARTUP_COLLECTION_PAUSE`` seconds should a command never call
    :func:`startup_over`."""
    global _collection_paused, _collection_timer
    with _collection:
        if _collection_paused or not gc.isenabled():
            return
        gc.disable()
        _collection_paused = True
        _collection_timer = threading.Timer(STARTUP_COLLECTION_PAUSE, startup_over)
        _collection_timer.daemon = True
        _collection_timer.start()


def startup_over() -> None:
    """The command's imports are done and its work begins: the garbage collector runs again (if the executable
    paused it), first freezing what start-up made (modules, classes, the stores just opened) so that no later
    collection walks those objects again. Called by every command before its work, more than once at no cost."""
    global _collection_paused, _collection_timer
    with _collection:
        if not _collection_paused:
            return
        # Said over only once the collector runs: a Ctrl-C landing before would otherwise leave it off for good
        # (the timer's call would find start-up over); freezing and enabling twice costs nothing.
        gc.freeze()
        gc.enable()
        _collection_paused = False
        if _collection_timer is not None:
            _collection_timer.cancel()  # no-op when it is the timer that calls
            _collection_timer = None


def _exit_code(code: object) -> int:
    """What Python makes of ``sys.exit(code)``: None is 0, a number is itself, anything else is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def interrupted() -> NoReturn:
    """How every Ctrl-C ends that no command handled itself: one line and the shell's code for SIGINT, or for
    SIGTERM (143 = 128 + 15) when it was a SIGTERM taken as Ctrl-C, e.g. one while `memgpt load` opens the home."""
    sys.stderr.write("Interrupted\n")
    interrupts = sys.modules.get("memgpt.interrupts")  # not imported yet: no SIGTERM was taken as Ctrl-C
    sys.exit(143 if interrupts is not None and interrupts.termination_received() else 130)
