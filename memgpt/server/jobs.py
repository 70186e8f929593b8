"""Background loads of uploaded files: an upload is answered at once (pending), then loaded here, one
file at a time per process, by the same loader as `memgpt load`; its row in the files table shows the
progress (``folders.files.retrieve`` polls it).

Each loading file names the process that loads it. On start, a process takes over the loads whose process
is gone (a crash, kill -9, a stop while files were queued): an upload is loaded again from its stored copy
(the loader's ids make that idempotent), a `memgpt load` file is marked as an error to load again.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from memgpt.data.filerecords import INTERRUPTED
from memgpt.data.files import load_file
from memgpt.data.ingest import LoadListener
from memgpt.errors import BackendError, MemGPTError
from memgpt.owners import is_dead, is_local, this_process
from memgpt.types import FileStatus, utc_now

if TYPE_CHECKING:
    from memgpt.server.state import ServerState

logger = logging.getLogger(__name__)
STALE = timedelta(minutes=10)  # a load on another machine with no progress for this long is taken over
# How often a running process looks for loads whose process died since (another server process, killed): without
# it such a load waited, shown as loading, until some server process started again.
SWEEP_SECONDS = 30.0
SWEEP_THREAD = "memgpt-load-sweep"
CANCEL_WAIT_SECONDS = 60.0
CLI_INTERRUPTED = "the load was interrupted; run the same `memgpt load` again"
# A load that ended without its row saying how (the metadata database was out of reach, so the file still shows as
# loading) is tried again after this many seconds, doubled each time up to RETRY_MAX_DELAY, RETRY_ATTEMPTS times.
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 30.0
RETRY_ATTEMPTS = 30


class _Stopped(BackendError):
    """Raised inside a load (between embedding batches) to stop it: its file is being deleted, or the
    server is shutting down."""


class _Watch(LoadListener):
    """Stops the load at the next batch once asked to."""

    def __init__(self, jobs: FileJobs, file_id: str) -> None:
        self.jobs = jobs
        self.file_id = file_id

    def _check(self) -> None:
        if self.jobs.should_stop(self.file_id):
            raise _Stopped("the load was stopped")

    def file_started(self, path: Path) -> None:
        self._check()

    def passages_planned(self, count: int) -> None:
        self._check()

    def passages_embedded(self, count: int) -> None:
        self._check()


class FileJobs:
    """This process's queue of file loads (one worker: embedding keeps the CPU busy anyway)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memgpt-load")
        self._guard = threading.Condition()
        self._queued: set[str] = set()
        self._cancelled: set[str] = set()
        self._running: str | None = None
        self._stopping = False
        self._timers: set[threading.Timer] = set()
        self._swept = threading.Event()  # set: the sweeper ends
        self._sweeper: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> int:
        """Take over the loads whose process is gone, then again every ``SWEEP_SECONDS`` while this process runs;
        returns how many were queued again now."""
        queued = self._take_over()
        self._sweeper = threading.Thread(target=self._sweep, name=SWEEP_THREAD, daemon=True)
        self._sweeper.start()
        return queued

    def _sweep(self) -> None:
        while not self._swept.wait(SWEEP_SECONDS):
            try:
                self._take_over()
            except Exception as exc:  # noqa: BLE001 - the database away, say: the next sweep tries again
                logger.warning("cannot look for file loads a stopped process left: %s", exc)

    def _take_over(self) -> int:
        with self._guard:
            if self._stopping:
                return 0
        files = self.state.storage.files
        me = this_process()
        queued = 0
        for record in files.unfinished():
            stale = utc_now() - record.updated_at > STALE
            gone = is_dead(record.job_owner) or (not is_local(record.job_owner) and stale)
            if not gone or not files.claim(record.id, me, previous=record.job_owner):
                continue
            if record.stored and Path(record.path).is_file():
                files.update(record.id, status=FileStatus.PENDING, chunks_embedded=0)
                self.submit(record.id)
                queued += 1
            else:
                reason = CLI_INTERRUPTED if not record.stored else "the uploaded file was lost; upload it again"
                files.update(record.id, status=FileStatus.ERROR, error_message=reason, job_owner="")
        if queued:
            logger.info("loading %d file(s) an earlier server process did not finish", queued)
        return queued

    def stop(self) -> None:
        """Stop the running load at its next batch and drop the queue; unfinished loads stay recorded as
        this process's, so the next start takes them over."""
        with self._guard:
            self._stopping = True
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()
        self._swept.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=CANCEL_WAIT_SECONDS)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- work -----------------------------------------------------------------------------------
    def submit(self, file_id: str, attempt: int = 0) -> None:
        with self._guard:
            self._queued.add(file_id)
        self._pool.submit(self._run, file_id, attempt)

    def should_stop(self, file_id: str) -> bool:
        with self._guard:
            return self._stopping or file_id in self._cancelled

    def cancel(self, file_ids: list[str]) -> None:
        """Make sure none of these files is being loaded (before they are deleted): queued ones will not
        start, a running one stops at its next batch and is waited for."""
        wanted = set(file_ids)
        if not wanted:
            return
        with self._guard:
            self._cancelled |= wanted & (self._queued | {self._running})  # only what this process will load
            self._guard.wait_for(lambda: self._running not in wanted, timeout=CANCEL_WAIT_SECONDS)

    def _run(self, file_id: str, attempt: int = 0) -> None:
        with self._guard:
            self._queued.discard(file_id)
            if self._stopping or file_id in self._cancelled:
                self._cancelled.discard(file_id)
                return
            self._running = file_id
        try:
            self._load(file_id, again=attempt > 0)
        except MemGPTError as exc:
            logger.warning("loading file %s failed: %s", file_id, exc)
        except Exception:
            logger.exception("loading file %s failed", file_id)
            self._fail(file_id, "internal error while loading; the server log has the details")
        finally:
            with self._guard:
                self._running = None
                stopped = self._stopping or file_id in self._cancelled
                self._cancelled.discard(file_id)
                self._guard.notify_all()
        if not stopped and self._unsettled(file_id):
            self._again_later(file_id, attempt + 1)

    def _unsettled(self, file_id: str) -> bool:
        """Whether a load that ended left its file's row saying it still loads here: its end could not be recorded
        (the metadata database was out of reach), and nobody else would ever load it while this process lives."""
        try:
            record = self.state.storage.files.get(file_id)
        except MemGPTError:
            return True
        return record is not None and not record.status.finished and record.job_owner == this_process()

    def _again_later(self, file_id: str, attempt: int) -> None:
        if attempt > RETRY_ATTEMPTS:
            logger.error("gave up loading file %s after %d tries", file_id, RETRY_ATTEMPTS)
            self._fail(file_id, "the load failed while the server's storage was out of reach; upload the file again")
            return
        delay = min(RETRY_FIRST_DELAY * 2 ** (attempt - 1), RETRY_MAX_DELAY)
        logger.warning("loading file %s again in %g s (its end could not be stored)", file_id, delay)

        def again() -> None:
            with self._guard:
                self._timers.discard(timer)
                if self._stopping:
                    return
            self.submit(file_id, attempt)

        timer = threading.Timer(delay, again)
        timer.daemon = True
        with self._guard:
            if self._stopping:
                return
            self._timers.add(timer)
        timer.start()

    def _load(self, file_id: str, *, again: bool = False) -> None:
        storage = self.state.storage
        record = storage.files.get(file_id)
        if record is None or record.status.finished or record.job_owner != this_process():
            return  # deleted, done, or taken over by another process meanwhile
        # Again: from its stored copy, as a load a dead process left (the loader's ids make that idempotent).
        pending = {"status": FileStatus.PENDING, "chunks_embedded": 0}
        if again and not storage.files.update(file_id, if_owner=this_process(), **pending):
            return  # taken over by another process since it was read
        source = storage.metadata.source_with_id(record.source_id)
        if source is None:
            return
        model = self.state.embedding()
        if source.space != model.space:
            self._fail(file_id, f"folder {source.name!r} was embedded with {source.space}, not {model.space}")
            return
        # keep_owner: a load that stops early leaves the row this process's (the loader marks it failed), so that the
        # writes below can be fenced by the owner: a sweep elsewhere may have taken the load over meanwhile.
        report = load_file(
            storage,
            model,
            source,
            record,
            settings=self.state.config.embedding,
            listener=_Watch(self, file_id),
            keep_owner=True,
            public_errors=True,  # the row's error_message is its clients': no host, path or pid in it
        )
        if not (report.aborted or report.interrupted):
            return
        if report.aborted and self.should_stop(file_id) and self._stopping:
            # Shut down midway: queue it for the next start (the loader had marked it as failed).
            storage.files.update(file_id, if_owner=this_process(), status=FileStatus.PENDING, error_message="")
        elif report.storage_away and not self.should_stop(file_id):
            # Milvus (or the metadata database) went away midway: the upload is kept, so the load is tried again
            # (``_unsettled``, then ``_again_later``, which gives up after RETRY_ATTEMPTS) rather than left failed for
            # the user to upload again; the row says why meanwhile.
            again = f"{report.aborted}; trying again"
            storage.files.update(file_id, if_owner=this_process(), status=FileStatus.PENDING, error_message=again)
        else:  # failed for good (or cancelled): let the row go, saying why
            self._fail(file_id, report.aborted or INTERRUPTED)

    def _fail(self, file_id: str, reason: str) -> None:
        """Record that this process's load of the file failed, unless another process has taken the load over."""
        try:
            self.state.storage.files.update(
                file_id, if_owner=this_process(), status=FileStatus.ERROR, error_message=reason, job_owner=""
            )
        except MemGPTError as exc:
            logger.warning("could not record that loading file %s failed: %s", file_id, exc)
