"""Writes that letta-client may send twice: it gives up on a request after its timeout (60 s by default) and sends
it again (twice, by default), saying so in ``X-Stainless-Retry-Count``, while the server may still be working on
the first attempt. A write whose work can outlast that (an API import, a long text added to archival memory) is
recorded as a run, under a lease of its own as a turn is, with its answer kept for ``RETRY_WINDOW``: a retry with
the same body gets the first attempt's answer, waiting while it runs, and nothing is written twice.

An attempt that failed (say, Milvus refused its second batch) or whose process died may have written part of its
work. Its run is kept, unfinished: a retry redoes the work under the same run (``attempt``, with ``again`` set), and
the work derives what it writes from that id (a passage's id from the run and the chunk's position), so the retry
rewrites the same rows instead of adding a second copy.

A retry may overtake its first try, held up before it recorded its run: the retry's run is then recorded as waiting
for it, and the first try answers with that run instead of working (``memgpt.storage.turns.Arrival``, which says
how it is decided and where it holds). When a request arrived is noted by ``Arrivals``, before its body is read."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from memgpt.errors import ConflictError, MemGPTError
from memgpt.server.turns import RETRY_WINDOW, TurnRunner
from memgpt.storage.turns import FINISHED, Arrival, Run, RunExists, new_owner

logger = logging.getLogger(__name__)

# A retry waits this long for the attempt it repeats to end (letta-client gives up on a request at 60 s).
RETRY_WAIT = 45.0

T = TypeVar("T")


ARRIVED = "memgpt.arrived"  # the ASGI scope's key for when this process began to handle the request


class Arrivals:
    """Notes in each HTTP request's scope when this process began to handle it (``time.monotonic()``), before its
    body is read or it waits for a thread: how a first try tells that a retry's run came after it (``Arrival``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[ARRIVED] = time.monotonic()
        await self.app(scope, receive, send)


def arrived(scope: dict[str, Any]) -> float:
    """When this process began to handle the request (now, for a request ``Arrivals`` did not see)."""
    return float(scope.get(ARRIVED) or time.monotonic())


def is_retry(header: str | None) -> bool:
    """Whether ``X-Stainless-Retry-Count`` says the request is a client's retry."""
    count = (header or "0").strip()
    return count.isdigit() and int(count) > 0


class RetriedWrite(Generic[T]):
    """A write recorded under ``key`` (whose runs older than the window are forgotten together) and ``digest``
    (the request: the user, the path and the body); ``answer`` turns its result into stored JSON and back.
    ``arrived`` (``arrived()``) and ``retry`` say when the request arrived and whether it is a client's retry."""

    def __init__(
        self,
        runner: TurnRunner,
        key: str,
        digest: str,
        answer: TypeAdapter[T],
        still_running: str,
        *,
        arrived: float | None = None,
        retry: bool = False,
    ) -> None:
        self.runner, self.turns = runner, runner.state.storage.turns
        self.key, self.digest, self.answer, self.still_running = key, digest, answer, still_running
        self.attempt = f"run-{uuid.uuid4()}"  # the run this request's work is recorded as: an earlier try's to redo
        self.again = False  # whether that run is an earlier try's (which failed or died, perhaps midway)
        # Its run's lease is its own: a first try and its retry are serialized on the digest instead.
        self.arrival = Arrival(time.monotonic() if arrived is None else arrived, retry, RETRY_WINDOW, serialize=True)

    def earlier(self) -> T | None:
        """The answer of the attempt this request retries, waiting while it runs; None when there is none, or when it
        failed or its process died (then nothing of it was answered, and the retry redoes the work as that run)."""
        try:
            run = self.turns.retried_run(self.key, self.digest, RETRY_WINDOW, RETRY_WAIT, own_lease=True)
        except TimeoutError:
            raise ConflictError(self.still_running) from None
        if run is None:
            return None
        if run.status == FINISHED:
            try:
                return self.answer.validate_json(run.response)
            except ValidationError:  # recorded by an earlier memgpt in another shape (an upgrade within the window)
                raise ConflictError(
                    "the write this request retries was made before the server was upgraded: check what it stored"
                    " before sending it again"
                ) from None
        self.attempt, self.again = run.id, True
        return None

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` recorded as this write's run (``attempt``); a failure leaves the run unfinished, so a retry
        redoes the work as the same run."""
        run_id, owner = self.attempt, new_owner()
        # A lease of the server's length, renewed while the work runs: a retry sees a dead attempt within one lease.
        # An earlier try's run is recorded already; its lease is free (released, or its owner died).
        run = None if self.again else Run(run_id, self.key, self.digest)
        ttl = self.runner.timing.lease_ttl
        try:
            taken = self.turns.acquire(run_id, owner, run_id, ttl, run=run, keep=RETRY_WINDOW, arrival=self.arrival)
        except RunExists:  # a retry overtook this first try (it answers with the retry's run), or was overtaken
            earlier = self.earlier()
            return earlier if earlier is not None else self.run(work)  # (failed or died: redone as that run)
        if taken is None:
            raise ConflictError(self.still_running)  # another retry of the same try took it first
        try:
            with self.runner.renewing(run_id, owner):
                result = work()
        except BaseException:
            with contextlib.suppress(MemGPTError):  # the work's own error is the one to tell
                self.turns.release(run_id, owner)
            raise
        stored = self.answer.dump_json(result).decode("utf-8")
        finished = Run(run_id, self.key, self.digest, FINISHED, "done", stored)
        try:
            self.turns.release(run_id, owner, finished=finished)
        except MemGPTError as unrecorded:
            # The work is stored; only its record for a retry is not (the database out of reach). Answer it: a 503
            # told a client that resends on one (curl, any plain HTTP client) to store it a second time. The record
            # is written once the database answers, within the lease; past that the run reads as one that died,
            # and a retry redoes it as the same run, rewriting the same rows.
            logger.info("cannot record the end of run %s now (%s): answered, recorded later", run_id, unrecorded)
            self.turns.release_later(run_id, owner, within=ttl, finished=finished)
        return result
