"""The server's turn threads (``memgpt.server.turns._Threads``): kept for the next turn, never a queue."""

from __future__ import annotations

import functools
import gc
import threading
import time
import weakref
from collections.abc import Callable

from memgpt.server.turns import _Threads


def _wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_turn_after_another_runs_on_the_same_thread() -> None:
    threads = _Threads("turn-test")
    ran: list[int] = []
    done = threading.Event()
    threads.run(lambda: (ran.append(threading.get_ident()), done.set()))
    assert done.wait(5)
    assert _wait_for(lambda: threads._idle == 1)  # the thread waits for the next job
    done.clear()
    threads.run(lambda: (ran.append(threading.get_ident()), done.set()))
    assert done.wait(5)
    assert ran[0] == ran[1]


def test_turns_at_once_each_get_a_thread_of_their_own() -> None:
    threads = _Threads("turn-test")
    release = threading.Event()
    running: set[int] = set()
    guard = threading.Lock()

    def job() -> None:
        with guard:
            running.add(threading.get_ident())
        release.wait(5)

    for _ in range(5):
        threads.run(job)
    assert _wait_for(lambda: len(running) == 5)  # none waits for another to end
    release.set()


def test_an_idle_thread_ends_and_a_job_given_meanwhile_still_runs() -> None:
    threads = _Threads("turn-test", idle=0.05)
    done = threading.Event()
    threads.run(done.set)
    assert done.wait(5)
    assert _wait_for(lambda: threads._idle == 0)  # it ended after its idle time
    for _ in range(50):  # jobs given as idle threads time out are run all the same
        done.clear()
        threads.run(done.set)
        assert done.wait(5)
        time.sleep(0.05)


def test_an_idle_thread_holds_nothing_of_its_last_turn() -> None:
    class Turn:
        pass

    threads = _Threads("turn-test")
    turn = Turn()
    gone = threading.Event()
    weakref.finalize(turn, gone.set)
    done = threading.Event()
    threads.run(functools.partial(lambda t: done.set(), turn))
    assert done.wait(5)
    assert _wait_for(lambda: threads._idle == 1)
    del turn
    gc.collect()
    assert gone.wait(5)  # freed while its thread waits for the next job
    threads.close()


def test_close_ends_the_idle_threads() -> None:
    threads = _Threads("turn-test-close")
    done = threading.Event()
    for _ in range(3):
        done.clear()
        threads.run(done.set)
        assert done.wait(5)
        # Its thread is idle again before the next job: one that has not counted itself so yet (paused on a
        # loaded machine between the job and that) left the next to a new thread, and with three idle threads
        # the two below left one or three idle, never two.
        assert _wait_for(lambda: threads._idle == 1)
    threads.run(lambda: time.sleep(0.2))
    threads.run(lambda: time.sleep(0.2))
    assert _wait_for(lambda: threads._idle == 2)
    threads.close()

    def alive() -> int:
        return sum(t.name == "turn-test-close" for t in threading.enumerate())

    assert _wait_for(lambda: alive() == 0, timeout=2.0)
