"""Child processes as tests see them in /proc: stopping one (SIGSTOP) and knowing when it really is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any


def thread_states(pid: int) -> list[str]:
    """The state letter (R, S, D, T, Z, ...) of each thread of process ``pid`` in /proc; [] once it is gone."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
    return states


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, reaped children's included) used so far by process ``pid`` and every live process
    under it; 0.0 once it is gone."""
    tree, parents = {pid}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # a process that ended meanwhile
            continue
        parents[int(stat.parent.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    grew = True
    while grew:
        below = {child for child, (parent, _) in parents.items() if parent in tree}
        grew = not below <= tree
        tree |= below
    return sum(parents[p][1] for p in tree if p in parents) / os.sysconf("SC_CLK_TCK")


def stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state T)."""
    states = thread_states(pid)
    return bool(states) and all(state == "T" for state in states)


def stop(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGSTOP ``process`` and wait until every thread of it is stopped.

    kill() returns before that. The kernel wakes one thread (the main one, unless it has a signal pending) to take
    the signal; only once that thread runs does it ask the others to stop, and each stops when it is next
    scheduled. Until then the other threads run on: on a loaded machine a `memgpt server`'s step thread (not its
    main thread) got the result of a write the test let go right after kill() and committed its step before the
    process stopped (CI: tests/test_server_fencing.py, "waited 60 s for A's transaction to idle")."""
    os.kill(process.pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not stopped(process.pid):
        code = process.poll()
        assert code is None, f"process {process.pid} ended (code {code}) instead of stopping"
        assert time.monotonic() < deadline, f"waited {timeout} s for process {process.pid} to stop"
        time.sleep(0.005)
