"""The real `memgpt` command, killed with SIGKILL at one point of an agent step: the crash tests' child.

    CRASH_AT=<point> [CRASH_AFTER=n] python -m tests.crash_child run --agent A --message ...

The process kills itself (kill -9: no cleanup, no flush, no atexit) the (n+1)-th time it passes the
point. The points wrap memgpt's own functions from outside, so memgpt carries no test hooks:

    llm_request      the LLM request is about to be sent (the user's message is stored)
    llm_answered     the LLM answered, nothing of the step has run yet
    archival_written an archival passage is in Milvus, the step is not committed
    step_committed   a step's SQL transaction committed, the next step has not begun
    end_unrecorded   a server turn's last step committed without its run's end, left to record after the turn as
                     where the recall index is shared (``RecallMemory.waits_at_close``), which is not recorded yet
    recall_indexing  a recall indexing pass wrote to Milvus, SQL does not know yet (background thread)
    forgetting       /retry or /pop deleted the dropped steps' passages from Milvus, not their rows from SQL
    collection_made  a new Milvus collection exists, its indexes are not made yet (the connecting thread)
    collection_primed a new collection's primer row is written, not deleted yet (see schema.PRIMER_ID)
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _kill_on_pass(point: str, after: int) -> Callable[[], None]:
    passes = 0

    def passed() -> None:
        nonlocal passes
        passes += 1
        if passes > after:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return passed


def _around(owner: type, name: str, passed: Callable[[], None], *, before: bool = False,
            when: Callable[..., bool] = lambda *a, **k: True) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before and when(*args, **kwargs):
            passed()
        result = original(*args, **kwargs)
        if not before and when(*args, **kwargs):
            passed()
        return result

    setattr(owner, name, wrapped)


def arm(point: str, after: int) -> None:
    from memgpt.llm.openai_compat import OpenAICompatible
    from memgpt.memory.archival import ArchivalMemory
    from memgpt.storage.agents import AgentStore
    from memgpt.storage.milvus.store import MilvusPassageStore

    passed = _kill_on_pass(point, after)
    if point == "llm_request":
        _around(OpenAICompatible, "request", passed, before=True)
    elif point == "llm_answered":
        _around(OpenAICompatible, "request", passed)
    elif point == "archival_written":
        _around(MilvusPassageStore, "insert", passed, when=lambda _self, rows: rows[0].kind == "archival")
    elif point == "step_committed":
        _around(AgentStore, "commit_step", passed, when=lambda _self, _agent, changes, **_: bool(changes.messages))
    elif point == "end_unrecorded":
        from memgpt.memory.recall import RecallMemory

        RecallMemory.waits_at_close = property(lambda _self: True)  # type: ignore[method-assign,assignment]
        _around(AgentStore, "commit_step", passed, when=lambda _self, _agent, changes, **_: bool(changes.messages))
    elif point == "recall_indexing":
        _around(MilvusPassageStore, "insert", passed, when=lambda _self, rows: rows[0].kind == "recall")
    elif point == "forgetting":
        _around(ArchivalMemory, "remove", passed, when=lambda _self, ids: bool(ids))
    elif point == "collection_made":
        from pymilvus import MilvusClient

        _around(MilvusClient, "create_index", passed, before=True)
    elif point == "collection_primed":
        from pymilvus import MilvusClient

        from memgpt.storage.milvus.schema import PRIMER_ID

        _around(MilvusClient, "delete", passed, before=True, when=lambda *_a, **k: k.get("ids") == [PRIMER_ID])
    else:
        raise SystemExit(f"unknown CRASH_AT point {point!r}")


if __name__ == "__main__":
    arm(os.environ["CRASH_AT"], int(os.environ.get("CRASH_AFTER", "0")))
    from memgpt.cli.app import main

    sys.argv = ["memgpt", *sys.argv[1:]]
    main()
