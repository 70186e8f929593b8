"""Which process owns a piece of work, and whether that process still lives.

Work that outlives a request (a file being loaded) records its owner as ``host:pid:nonce``. Another
process may take the work over only when the owner is gone: a dead process on this machine, or, for
owners on other machines (which cannot be asked), no sign of life for a while.
"""

from __future__ import annotations

import os
import socket
import uuid

_NONCE = uuid.uuid4().hex[:12]  # tells this process from an earlier one that had the same pid


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_NONCE}"


def is_mine(owner: str) -> bool:
    return owner == this_process()


def is_local(owner: str) -> bool:
    """``owner`` runs (or ran) on this machine."""
    return owner.partition(":")[0] == socket.gethostname()


def is_dead(owner: str) -> bool:
    """True when ``owner`` is a process of this machine that no longer runs (or an empty owner). Owners on
    other machines are never known to be dead."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text, _, nonce = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return nonce != _NONCE  # our pid, but an earlier process's nonce: that process is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, run by another OS user
    return False
