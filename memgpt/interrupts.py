"""Ctrl-C during a step that must not be cut in half: held until the step is done; SIGTERM taken as Ctrl-C."""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class HeldInterrupts:
    received: bool = False


@contextmanager
def interrupts_held() -> Iterator[HeldInterrupts]:
    """Within the block, Ctrl-C (SIGINT) is recorded instead of raised; the caller decides what to do
    after it. Only the main thread receives signals, so elsewhere this changes nothing."""
    held = HeldInterrupts()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return

    def note(signum: int, _frame: object) -> None:
        held.received = True
        if signum == signal.SIGTERM:  # held, yet the command still ends with SIGTERM's code
            _termination.received = True

    previous = signal.signal(signal.SIGINT, note)
    terminating = signal.getsignal(signal.SIGTERM) is _terminated  # SIGTERM is a Ctrl-C here: held as well
    if terminating:
        signal.signal(signal.SIGTERM, note)
    try:
        yield held
    finally:
        # None: the handler was installed outside Python; Python's own is the sane thing to restore.
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if terminating:
            signal.signal(signal.SIGTERM, _terminated)


@dataclass
class Termination:
    received: bool = False


_termination = Termination()


def _terminated(_signum: int, _frame: object) -> None:
    _termination.received = True
    raise KeyboardInterrupt


def termination_received() -> bool:
    """Whether a SIGTERM was taken as Ctrl-C (by :func:`terminate_as_interrupt`, or held by
    :func:`interrupts_held` within it): the command that it ends then exits with SIGTERM's code, 143."""
    return _termination.received


@contextmanager
def terminate_as_interrupt() -> Iterator[Termination]:
    """Within the block, SIGTERM (``kill``, a service manager's stop, a CI job's timeout) ends the work as Ctrl-C
    does, a KeyboardInterrupt in the main thread, so it gets Ctrl-C's clean-up rather than an end mid-write;
    ``received`` says whether it came. SIGTERM's own action (the end of the process) is restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield Termination()
        return
    _termination.received = False
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield _termination
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def keep_lost_interrupts() -> None:
    """Python loses a Ctrl-C whose KeyboardInterrupt is raised inside a finaliser (a ``__del__`` or a weakref
    callback, as SQLAlchemy's are): it prints "Exception ignored in ..." and goes on as if the key was never
    pressed (a load interrupted that way ran to its end and exited 0). Such an interrupt is delivered to the
    main thread again, where it ends the command (or is recorded by :func:`interrupts_held`) as any other."""
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # As if SIGINT arrived again, from another thread once this hook has returned (raised in the hook,
            # it would be lost the same way); in another finaliser it comes back here and goes round again.
            again = threading.Timer(0.01, _thread.interrupt_main)
            again.daemon = True
            try:
                again.start()
                return
            except RuntimeError:  # the interpreter is ending: no new thread; say it as Python would
                pass
        previous(unraisable)

    sys.unraisablehook = hook
