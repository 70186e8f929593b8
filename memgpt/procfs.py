"""Reading a process's state from Linux's /proc, for telling a live process from a dead, stopped or stuck one."""

from __future__ import annotations

import os
from pathlib import Path


def stat_fields(pid: int, thread: int | None = None) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` (or of one of its threads') after the command name, which may hold
    spaces and parentheses: the state letter first, as ``proc(5)`` numbers them from field 3. None when it
    cannot be read (no such process or thread, or no /proc)."""
    path = Path(f"/proc/{pid}/stat") if thread is None else Path(f"/proc/{pid}/task/{thread}/stat")
    try:
        text = path.read_text()
    except OSError:
        return None
    _, closed, rest = text.rpartition(")")
    return rest.split() if closed else None


def lock_holders(paths: list[Path]) -> list[int]:
    """The processes other than this one that hold a write lock (POSIX ``fcntl``, as SQLite takes them) on any of
    ``paths``, from ``/proc/locks``, in the order listed; [] when none or no /proc."""
    inodes = set()
    for path in paths:
        try:
            found = path.stat()
        except OSError:
            continue
        inodes.add((os.major(found.st_dev), os.minor(found.st_dev), found.st_ino))
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    holders: list[int] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[3] != "WRITE":  # (a "->" line: a waiter, not a holder)
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            where = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if where in inodes and pid > 0 and pid != os.getpid() and pid not in holders:
            holders.append(pid)
    return holders


def describe(pid: int) -> tuple[str, bool]:
    """A process's command line (shortened) and whether it is stopped (SIGSTOP, Ctrl-Z, a debugger)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        command = " ".join(raw.replace("\0", " ").split())  # (one line: a ``python -c`` script holds newlines)
    except OSError:
        command = ""
    fields = stat_fields(pid)
    stopped = bool(fields) and fields[0] in ("T", "t")
    return (command[:77] + "..." if len(command) > 80 else command) or "?", stopped
