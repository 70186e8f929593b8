"""Reading a process's state from Linux's /proc, for telling a live process from a dead, stopped or stuck one."""

from __future__ import annotations

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
