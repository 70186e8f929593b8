"""Ctrl-C during a step that must not be cut in half: held until the step is done."""

from __future__ import annotations

import signal
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

    def note(_signum: int, _frame: object) -> None:
        held.received = True

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield held
    finally:
        # None: the handler was installed outside Python; Python's own is the sane thing to restore.
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
