"""Connecting to Milvus Lite or a Milvus server, and learning what the deployment can do."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from memgpt.config import display_path, is_server_uri, read_only_message
from memgpt.errors import StorageError, StorageLockedError, StorageUnavailable
from memgpt.storage.milvus import lite
from memgpt.storage.milvus.deferred import deferred_imports

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
# HNSW search breadth on servers: measured with an agent's filter (1/5 of the passages), see bench/.
HNSW_EF = 128


@dataclass(frozen=True)
class Capabilities:
    """What the connected Milvus supports, so callers never branch on the deployment's name."""

    version: str
    bm25: bool  # full-text (BM25) search, hence hybrid search
    partition_key: bool

    @classmethod
    def of_server(cls, version: str) -> Capabilities:
        found = _VERSION.search(version)
        numbers = tuple(int(n or 0) for n in found.groups()) if found else (0, 0, 0)
        # Partition keys exist since 2.2.9, but 2.3's upsert files rows under the wrong key (seen on 2.3.5:
        # a filter on the key then finds nothing), so memgpt uses them from 2.4 on.
        return cls(version, bm25=numbers >= (2, 5, 0), partition_key=numbers >= (2, 4, 0))


@dataclass(frozen=True)
class MilvusTarget:
    """Where passages live and what that deployment can do."""

    uri: str
    token: str = ""
    database: str = ""
    # Milvus Lite only: the socket (``unix:...``) of the file's server when another process runs it (the
    # supervisor of `memgpt server --workers N`, which holds the file's lock): connect there, start nothing.
    lite_server: str = ""

    @property
    def is_lite(self) -> bool:
        return not is_server_uri(self.uri)

    @property
    def starts_lite(self) -> bool:
        """Whether this process must hold the Lite file and start its server itself (not a served one)."""
        return self.is_lite and not self.lite_server

    @property
    def index_params(self) -> dict[str, Any]:
        # Milvus Lite 2.5 offers FLAT, IVF_FLAT and AUTOINDEX, but ignores nlist/nprobe/ef: measured here on
        # text embeddings, AUTOINDEX and IVF are exact up to ~95k rows and then silently approximate
        # (recall@10 0.84 with an agent's filter at 100k, nothing raises it). FLAT is always exact.
        # A server gets HNSW: milliseconds at millions of vectors, recall tunable with ef.
        if self.is_lite:
            return {"index_type": "FLAT", "metric_type": "COSINE"}
        return {"index_type": "HNSW", "metric_type": "COSINE", "params": {"M": 16, "efConstruction": 200}}

    def search_params(self, limit: int) -> dict[str, Any]:
        if self.is_lite:
            return {"metric_type": "COSINE"}
        return {"metric_type": "COSINE", "params": {"ef": max(HNSW_EF, 2 * limit)}}

    def search_consistency(self, caught_up: bool) -> dict[str, Any]:
        """Read options for searches. A server's Strong read waits for the next time tick (tens to
        hundreds of ms), so only a store's first search is Strong -- it sees everything written before
        this process opened it -- and later ones are Session: they see this process's own writes
        (pymilvus passes their timestamp) without the wait. Milvus Lite is always consistent."""
        if self.is_lite:
            return {}
        return {"consistency_level": "Session" if caught_up else "Strong"}


@dataclass(frozen=True)
class LockWait:
    """How a command waits for another memgpt command that holds its Milvus Lite file: up to ``seconds``, told to
    the user once per holder through ``notify`` (one line). Servers and `memgpt mcp serve` over stdio hold the
    file for as long as they run, so they are never waited for: refused at once, with what to do instead."""

    seconds: float
    notify: Callable[[str], None]
    longer: str = ""  # how to wait longer, told when the wait ran out


class _LiteLocks:
    """memgpt's own per-file lock for Milvus Lite, shared by every connection in this process.

    milvus-lite locks ``.<name>.lock`` itself, but a process that fails to open the file deletes that
    lock file on its way out, letting a third process in. Our lock file is never deleted, and a
    ``flock`` on it is held for as long as this process has the database open.

    ``_guard`` covers only the table of held files, never a wait: a thread waiting for a file another process
    holds waits under that file's own gate, so other threads take and let go of other files meanwhile.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, tuple[IO[str], int]] = {}
        self._gates: dict[str, threading.Lock] = {}  # one a file: its opening and its last release

    def _held_again(self, key: str) -> bool:
        """Count one more hold on ``key`` if this process holds it already (the caller holds ``_guard``)."""
        if key not in self._held:
            return False
        handle, count = self._held[key]
        self._held[key] = (handle, count + 1)
        return True

    def acquire(self, db_file: Path) -> None:
        key = str(db_file)
        with self._guard:
            if self._held_again(key):
                return
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:  # a second thread opening this file waits for the first (a flock of ours would refuse it)
            with self._guard:
                if self._held_again(key):
                    return
            path = db_file.parent / f".{db_file.name}.memgpt.lock"
            handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open
            try:
                _lock_or_wait(handle, db_file, path)
                handle.truncate(0)  # say who holds it, for the message another process prints
                handle.write(json.dumps({"pid": os.getpid(), "holder": _holder}))
                handle.flush()
            except BaseException:  # a Ctrl-C while waiting included
                handle.close()
                raise
            with self._guard:
                self._held[key] = (handle, 1)

    def release(self, db_file: Path) -> None:
        key = str(db_file)
        with self._guard:
            if key not in self._held:
                return
            handle, count = self._held[key]
            if count > 1:
                self._held[key] = (handle, count - 1)
                return
            gate = self._gates[key]
        with gate:  # no thread of this process takes the file again before it is let go
            with self._guard:
                if key not in self._held:
                    return
                handle, count = self._held.pop(key)
                if count > 1:
                    self._held[key] = (handle, count - 1)
                    return
            try:
                _stop_lite_server(db_file)
            finally:
                handle.truncate(0)  # no note of a holder that has gone (see _holder_of)
                handle.flush()
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()


_lite_locks = _LiteLocks()
# What this process is, as other processes are told when they find the Lite file taken; a server says so.
_holder = ""
# How this process waits for a Lite file another memgpt command holds (see command_holding); None: it does not.
_waiting: LockWait | None = None
_LOCK_POLL_SECONDS = 0.1
STDIO_MCP_HOLDER = "memgpt mcp serve"  # what `memgpt mcp serve` over stdio announces itself as


def announce_holder(description: str) -> None:
    """Describe this process to others that find its Milvus Lite file locked (e.g. a server's URL)."""
    global _holder
    _holder = description


@contextlib.contextmanager
def command_holding(description: str, wait: LockWait | None) -> Iterator[None]:
    """While this lasts, a Milvus Lite file this process takes is described to others as ``description`` (a
    command, e.g. "memgpt load directory"), and a file another memgpt command holds is waited for as ``wait``
    says. What was announced before is restored at the end (a command run inside a test's process)."""
    global _holder, _waiting
    previous = _holder, _waiting
    _holder, _waiting = description, wait
    try:
        yield
    finally:
        _holder, _waiting = previous


def _lock_or_wait(handle: IO[str], db_file: Path, lock_path: Path) -> None:
    """Take the ``flock`` on ``handle``, waiting for another memgpt command that holds it as :data:`_waiting`
    says (nothing is waited for without it, nor for a server); raises the one line that says who holds it.
    A holder writes its note only after taking the lock: until the note names a live process, who holds it is
    not known yet, and it is read again (up to :data:`_NOTE_SECONDS`) before anything is told or refused."""
    waiting = _waiting
    deadline: float | None = None
    unknown_until: float | None = None
    told: tuple[object, str] | None = None
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            # Only a lock held by another process is waited for, not one the file system cannot take (ENOLCK).
            held = isinstance(exc, BlockingIOError)
            pid, holder = _holder_of(lock_path)
            now = time.monotonic()
            if held and pid is None:
                unknown_until = now + _NOTE_SECONDS if unknown_until is None else unknown_until
                if now < unknown_until:
                    time.sleep(_LOCK_POLL_SECONDS)
                    continue
            if waiting is None or waiting.seconds <= 0 or not held or _holds_while_running(holder):
                raise StorageLockedError(_locked_message(db_file, pid, holder)) from exc
            deadline = now + waiting.seconds if deadline is None else deadline
            if now >= deadline:
                raise StorageLockedError(_still_locked_message(db_file, pid, holder, waiting)) from exc
        if (pid, holder) != told:  # once, and again should another command take the file meanwhile
            who = _who(pid, holder, pid_first=True)
            waiting.notify(f"waiting for the other memgpt command{who} to finish — Ctrl-C to stop")
            told = (pid, holder)
        time.sleep(_LOCK_POLL_SECONDS)


# How long a lock held by a process whose note is not there yet (or is a dead process's) is read again: a holder
# writes its note right after taking the lock, so this only bounds a holder that never writes one.
_NOTE_SECONDS = 2.0


def _holder_of(lock_path: Path) -> tuple[int | None, str]:
    """The pid and description the process holding the lock wrote into it: None and "" where there is no note
    yet, or the note is a process's that has ended (one killed while holding it left it behind)."""
    try:
        note = json.loads(lock_path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        note = {}
    pid = note.get("pid") if isinstance(note, dict) else None
    if not isinstance(pid, int) or isinstance(pid, bool) or not _alive(pid):
        return None, ""
    return pid, str(note.get("holder") or "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # PermissionError: alive, as another user's
    return pid > 0


def _holds_while_running(holder: str) -> bool:
    """A server, or `memgpt mcp serve` over stdio: it holds the file until stopped, so waiting would not help."""
    return holder.startswith(("memgpt server", STDIO_MCP_HOLDER))


def refuse_if_served(target: MilvusTarget) -> None:
    """Raise the one line :func:`_locked_message` says when a server (or `memgpt mcp serve` over stdio) holds
    ``target``'s Milvus Lite file, read from its lock's note without opening Milvus: for a command that opens the
    file only when it needs it (`memgpt run --message`), which would otherwise start and fail inside a turn."""
    if not target.starts_lite:
        return
    db_file = Path(target.uri)
    lock_path = db_file.parent / f".{db_file.name}.memgpt.lock"
    pid, holder = _holder_of(lock_path)
    if pid is None or pid == os.getpid() or not _holds_while_running(holder):
        return
    try:  # the note is a holder's that still holds the lock (not one a killed process left to a reused pid)
        with open(lock_path, encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StorageLockedError(_locked_message(db_file, pid, holder)) from None
    except OSError:
        return  # no lock file, or one the file system cannot lock: opening the file says what is wrong


def _who(pid: object, holder: str, *, pid_first: bool = False) -> str:
    """`` (memgpt run, pid 12)`` (`` (pid 12: memgpt run)`` in the line that says it waits), `` (pid 12)``, or
    nothing: the process that holds a Lite file, as far as its note tells."""
    if holder:
        return f" (pid {pid}: {holder})" if pid_first else f" ({holder}, pid {pid})"
    return f" (pid {pid})" if pid else ""


def _seconds(seconds: float) -> str:
    """A wait as said to the user: 60 s, 1.5 s, 0.4 s (not "0 s" for a wait under one)."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.2g}"


def _still_locked_message(db_file: Path, pid: object, holder: str, waiting: LockWait) -> str:
    longer = f", {waiting.longer}," if waiting.longer else ""
    return (
        f"another memgpt process{_who(pid, holder)} is still using {display_path(db_file)} after "
        f"{_seconds(waiting.seconds)} s — try "
        f"again once it has finished{longer} or configure a Milvus server URI "
        "(`memgpt configure --milvus-uri http://host:19530`) so several processes can share the data"
    )


def _locked_message(db_file: Path, pid: object, holder: str) -> str:
    where = display_path(db_file)
    if holder.startswith("memgpt server"):
        return (
            f"a {holder} (pid {pid}) owns {where} while it runs: use its API, stop it, or configure a Milvus server "
            "URI (`memgpt configure --milvus-uri http://host:19530`) so several processes can share the data"
        )
    if holder.startswith(STDIO_MCP_HOLDER):
        return (
            f"{STDIO_MCP_HOLDER} (pid {pid}), the MCP server an MCP client such as Claude Desktop or Cursor started, "
            f"holds {where} until that client quits it: quit the client (or turn memgpt off in its MCP settings) "
            "and try again, or configure a Milvus server URI (`memgpt configure --milvus-uri http://host:19530`) so "
            "several processes can share the data"
        )
    return f"another memgpt process{_who(pid, holder)} is using {where} — close it or use a Milvus server"


def _stop_lite_server(db_file: Path) -> None:
    """Stop this process's Milvus Lite server for ``db_file``; closing a client does not."""
    lite.servers.stop(db_file)


class _DropLiteIteratorNotice(logging.Filter):
    """pymilvus warns on every iterator over Milvus Lite that it uses a client-side timestamp; harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


def connect(target: MilvusTarget, starting: LiteStart | None = None) -> Any:
    """A ``MilvusClient`` for ``target``, with failures turned into one actionable message. ``starting`` is
    the Milvus Lite start :func:`start_lite` began, if the caller began one."""
    pymilvus_logger = logging.getLogger("pymilvus.client.iterator.query_iterator")
    if not any(isinstance(f, _DropLiteIteratorNotice) for f in pymilvus_logger.filters):
        pymilvus_logger.addFilter(_DropLiteIteratorNotice())
    import_client_modules()
    if not target.is_lite:
        return _client(target)
    if target.lite_server:
        _check_served(target)
        return _client(target)
    db_file = Path(target.uri)
    _check_writable(db_file)
    _lite_locks.acquire(db_file)  # before anything slow: a second process is told at once
    starting = starting or _start_lite_server(db_file)
    try:
        return _client(target, starting)
    except BaseException:
        starting.join()
        _lite_locks.release(db_file)
        raise


def import_client_modules() -> None:
    """Import pymilvus (and the gRPC modules it loads on first use) here, before any thread of ours uses them.

    A thread must never import while the main thread does: a Ctrl-C that lands inside Python's import
    machinery can leave an import lock held, which the main thread may take again but no other thread
    can (seen: `memgpt load` hung for good, its main thread and two connecting threads each waiting on
    an import lock, after a Ctrl-C during start-up). Imported modules are found without any lock.
    """
    import importlib

    _import_pymilvus()
    # gRPC imports these when the first channel is made; tests/test_background_open.py checks the list.
    modules = ["pymilvus", "pymilvus.exceptions", "grpc._channel", "grpc._interceptor", "grpc._simple_stubs"]
    modules += ["grpc.experimental"]
    for name in modules:
        importlib.import_module(name)


def _import_pymilvus() -> None:
    """Import pymilvus without the ``load_dotenv()`` its settings module runs: that would put the variables of
    a ``.env`` file (in the working folder when run from a REPL, a notebook or a debugger, else in any folder
    above the installed package) into this process's environment, where memgpt would take, say, its
    OPENAI_API_KEY for the user's. python-dotenv's own switch is set just for the import. pandas and requests
    are left out until used (see :mod:`memgpt.storage.milvus.deferred`)."""
    import importlib
    import sys

    if "pymilvus" in sys.modules:
        return
    chosen = os.environ.get(_NO_DOTENV)
    os.environ[_NO_DOTENV] = "1"
    try:
        with deferred_imports():
            importlib.import_module("pymilvus")
    finally:
        if chosen is None:
            os.environ.pop(_NO_DOTENV, None)
        else:
            os.environ[_NO_DOTENV] = chosen


_NO_DOTENV = "PYTHON_DOTENV_DISABLED"  # python-dotenv >= 1.2


def start_lite(target: MilvusTarget) -> LiteStart | None:
    """Start the Milvus Lite server process of ``target`` now, in a thread (nothing for a server): for a
    caller that holds the file (:func:`reserve`) and will import pymilvus next. The process then boots on
    the other core while pymilvus is imported, instead of after it; pass the thread to :func:`connect`."""
    if not target.starts_lite:
        return None
    return _start_lite_server(Path(target.uri))


class LiteStart(threading.Thread):
    """Starts the Milvus Lite server of a file and waits until it listens: the caller meanwhile imports
    pymilvus and creates nothing that needs the server. :meth:`server` hands it over (or raises why not)."""

    def __init__(self, db_file: Path) -> None:
        super().__init__(name="milvus-lite-start", daemon=True)
        self.db_file = db_file
        self._environ = dict(os.environ)  # taken here: the caller's thread may change it while this one starts
        self._server: lite.LiteServer | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        with _sigint_blocked():
            try:
                self._server = lite.servers.start(self.db_file, LITE_START_SECONDS, self._environ)
            except BaseException as exc:  # noqa: BLE001 - raised by server() in the thread that waits for it
                self._error = exc

    def server(self) -> lite.LiteServer:
        self.join()
        if self._error is not None:
            raise self._error
        if self._server is None:
            raise StorageError(f"Milvus Lite for {display_path(self.db_file)} was never started")
        return self._server


def _start_lite_server(db_file: Path) -> LiteStart:
    """Start the Milvus Lite server process in a thread, which waits until it listens while the caller goes
    on (the modules it needs are imported already: see :func:`import_client_modules`)."""
    lite.binary_dir()  # here, not in the thread: see import_client_modules
    starting = LiteStart(db_file)
    starting.start()
    return starting


LITE_START_SECONDS = 600.0  # the most a Milvus Lite process alive and busy may take to listen (lite.py)
LITE_ANSWER_SECONDS = 60.0  # then the most it may take to answer its first call


def _client(target: MilvusTarget, starting: LiteStart | None = None) -> Any:
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    # Milvus Lite is a local socket: client keepalive pings only earn "too_many_pings" GOAWAYs from it
    # during long loads (seen here mid-way through a 5 MB load), so they are turned off there.
    # gRPC also gives up on a connection the server has not greeted within 20 s (its minimum connect timeout),
    # well inside the first call's LITE_ANSWER_SECONDS: a Milvus Lite process starved of CPU may take longer.
    options: dict[str, Any] = {}
    if target.is_lite:
        options["grpc_options"] = {
            "grpc.keepalive_time_ms": 2**31 - 1,
            "grpc.keepalive_permit_without_calls": 0,
            "grpc.min_reconnect_backoff_ms": int(LITE_ANSWER_SECONDS * 1000),
        }
    elif target.database:
        options["db_name"] = target.database
    uri = starting.server().uri if starting is not None else (target.lite_server or target.uri)
    # A local Milvus Lite process cannot be "unreachable", only slow to start: on a loaded machine (load
    # average ~30 on 2 cores) it took over 10 s, and a 10 s wait reported a healthy file as in use or damaged.
    timeout = LITE_ANSWER_SECONDS if target.is_lite else 10
    try:
        with _sigint_blocked() if target.is_lite else contextlib.nullcontext():
            return MilvusClient(uri=uri, token=target.token, timeout=timeout, **options)
    except MilvusException as exc:
        where = display_path(target.uri)
        if target.is_lite:
            raise StorageLockedError(
                f"cannot open {where}: Milvus Lite did not answer within {timeout:.0f} s — another program may be "
                "using the file, it may be damaged, or the machine is overloaded; close other programs or use a "
                "Milvus server"
            ) from exc
        refused = _refused_credentials(exc)
        if refused is not None:
            problem = "it refused the token" if target.token else "it needs a token"
            raise StorageError(
                f"cannot connect to Milvus at {where}: {problem} ({refused}); give one it accepts, user:password or "
                "an API key (--milvus-token, or `memgpt migrate --token`)"
            ) from exc
        raise StorageUnavailable(f"cannot connect to Milvus at {where}: {_reason(exc)}") from exc


def _refused_credentials(exc: BaseException) -> str | None:
    """The server's reason when connecting failed because it refused the credentials, else None. pymilvus says
    only "Fail connecting to server ..., illegal connection params or server unavailable" (the words of a server
    that is down); the gRPC error it raised from, in the exception's chain, says UNAUTHENTICATED and why."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        code = getattr(cause, "code", None)
        status = code() if callable(code) else None
        if getattr(status, "name", None) == "UNAUTHENTICATED":
            details = getattr(cause, "details", None)
            said = details() if callable(details) else None
            return str(said or "unauthenticated").strip()
        cause = cause.__cause__ or cause.__context__
    return None


def _check_writable(db_file: Path) -> None:
    """Milvus Lite writes its file and lock files beside it; read-only, it fails with a C++ assertion or
    a PermissionError on a lock file, so that is checked first and said plainly."""
    remedy = "make it writable, or choose another Milvus Lite file with `memgpt configure`"
    try:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = read_only_message(db_file, "the Milvus Lite database", remedy)
        raise StorageError(reason or f"cannot create the folder of {display_path(db_file)}: {exc.strerror}") from exc
    reason = read_only_message(db_file, "the Milvus Lite database", remedy)
    if reason:
        raise StorageError(reason)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT while pymilvus starts the Milvus Lite server process, which inherits the mask.

    A terminal's Ctrl-C goes to the whole foreground process group, and the server (a child in the
    same group) died of it: every later Milvus call failed, including the clean-up of an interrupted
    load. The server ends when memgpt releases the file anyway. A Ctrl-C meanwhile stays pending and
    reaches memgpt as soon as the block ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# What says Milvus was out of reach rather than that it refused the call, by code, never by message: gRPC's status
# codes (an RpcError's code(); pymilvus keeps it as the code of the MilvusException it raises after its retries),
# and the integer code 2, pymilvus's Status.CONNECT_FAILED ("Fail connecting to server ...", raised when its
# reconnect after a cut finds no server) and Milvus's own "service unavailable" (merr).
_AWAY_GRPC = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
_AWAY_CODE = 2


def _unreachable(exc: BaseException) -> bool:
    """Milvus was out of reach (see ``_AWAY_GRPC`` and ``_AWAY_CODE``, anywhere in the exception's chain, or pymilvus's
    own MilvusUnavailableException), rather than the call refused (DataNotMatch, a schema error, a wrong dimension,
    a text too long): only then may the same call succeed later."""
    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:
        cause = chain.pop()
        if cause is None or id(cause) in seen:
            continue
        seen.add(id(cause))
        if type(cause).__name__ == "MilvusUnavailableException":
            return True
        code = getattr(cause, "code", None)
        code = code() if callable(code) else code  # grpc.RpcError.code() or MilvusException.code
        if getattr(code, "name", None) in _AWAY_GRPC:  # a grpc.StatusCode
            return True
        if isinstance(code, int) and code == _AWAY_CODE:
            return True
        # Both links: pymilvus re-raises with ``raise e from e``, whose __cause__ is the exception itself.
        chain += [cause.__cause__, cause.__context__]
    return False


def _reason(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return str(message).strip().splitlines()[0] if message else type(exc).__name__


class HeldLogs(logging.Filter):
    """Holds back what one pymilvus logger logs in a thread during a call of pymilvus whose failure memgpt
    handles, so that a handled failure is said once, in memgpt's own line, not again as pymilvus's ERROR or
    WARNING with a traceback. Only the thread that asked, only during that call; the caller says them after all
    (:meth:`emit`) when it does not handle the failure. A call held inside another's hands what it says after
    all on to the outer one, and logs them at DEBUG (:meth:`handled`) when it handles it. ``level``: the records
    held (below it pass, e.g. pymilvus's retry lines)."""

    def __init__(self, logger_name: str, *, level: int = logging.NOTSET) -> None:
        super().__init__()
        self.logger_name = logger_name
        self.level = level
        self._held: dict[int, list[logging.LogRecord]] = {}
        self._installed = False
        self._guard = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        held = self._held.get(threading.get_ident())
        if held is None or record.levelno < self.level:
            return True
        held.append(record)
        return False

    @contextlib.contextmanager
    def held(self, into: list[logging.LogRecord]) -> Iterator[None]:
        with self._guard:
            if not self._installed:
                logging.getLogger(self.logger_name).addFilter(self)
                self._installed = True
        thread = threading.get_ident()
        outer = self._held.get(thread)
        self._held[thread] = into
        try:
            yield
        finally:
            if outer is None:
                del self._held[thread]
            else:
                self._held[thread] = outer

    @staticmethod
    def emit(records: list[logging.LogRecord]) -> None:
        for record in records:
            logging.getLogger(record.name).handle(record)

    @staticmethod
    def handled(records: list[logging.LogRecord]) -> None:
        for record in records:
            logger.debug("handled here, as pymilvus logged it: %s", record.getMessage(), exc_info=record.exc_info)


# pymilvus 3's connection manager logs "Connection recovery failed" as a WARNING with a traceback on every call
# made while a Milvus server is down, and its error handler the call's ERROR, a traceback in its text ("RPC error:
# [query], ...", logger pymilvus.decorators), before the call's own error, which memgpt says in one line (a
# StorageError). Both are held during every call (the ERRORs only: its retry lines pass); see ``_said_by_memgpt``.
_connection_logs = HeldLogs("pymilvus.client.connection_manager")
call_logs = HeldLogs("pymilvus.decorators", level=logging.ERROR)


def _said_by_memgpt(held: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """What of ``held`` (logged by pymilvus during a call that failed) memgpt's StorageError says: the failed
    recovery of a server out of reach, and then the call's ERROR too (the server was out of reach: the StorageError
    says what failed and why). The call's ERROR of a server that answered (a refusal, a bad request) is left."""
    recovery = [r for r in held if r.name == _connection_logs.logger_name and r.msg == "Connection recovery failed"]
    if not recovery:
        return []
    return recovery + [r for r in held if r.name == call_logs.logger_name]


@contextlib.contextmanager
def milvus_errors(action: str) -> Iterator[None]:
    """A pymilvus error becomes a StorageError saying what failed. What pymilvus logged of that failure (see
    ``_said_by_memgpt``) is then not logged beside it but at DEBUG; anything else it logged is, and all it logged
    during any other outcome is said as it would have been."""
    from pymilvus.exceptions import MilvusException

    held: list[logging.LogRecord] = []
    try:
        with _connection_logs.held(held), call_logs.held(held):
            yield
    except MilvusException as exc:
        said = _said_by_memgpt(held)
        HeldLogs.handled(said)
        HeldLogs.emit([r for r in held if r not in said])
        kind = StorageUnavailable if _unreachable(exc) else StorageError
        raise kind(f"Milvus failed to {action}: {_reason(exc)}") from exc
    except BaseException:
        HeldLogs.emit(held)
        raise
    HeldLogs.emit(held)


# milvus-lite 2.5.1 answers no version call; it has BM25 and no partitions.
LITE = Capabilities("milvus-lite 2.5", bm25=True, partition_key=False)


def detect(client: Any, target: MilvusTarget) -> Capabilities:
    if target.is_lite:
        return LITE
    with milvus_errors("read the server version"):
        found = Capabilities.of_server(str(client.get_server_version()))
    if not found.bm25:
        logger.warning(
            "Milvus %s at %s has no BM25 full-text search: archival and recall search use dense vectors only",
            found.version,
            display_path(target.uri),
        )
    return found


def reserve(target: MilvusTarget) -> None:
    """Take this process's hold on a Milvus Lite file now (nothing to do for a server), so that a file
    another process holds, or a read-only one, is reported before a connection is opened in the
    background. Each reservation is undone by one :func:`release`. A served Lite file (``lite_server``) is
    held by the process that serves it."""
    if target.starts_lite:
        db_file = Path(target.uri)
        _check_writable(db_file)
        _lite_locks.acquire(db_file)


def release(target: MilvusTarget) -> None:
    """Give up this process's hold on a Milvus Lite file (nothing to do for a server)."""
    if target.starts_lite:
        _lite_locks.release(Path(target.uri))


@contextlib.contextmanager
def serve_lite(target: MilvusTarget, on_end: Callable[[int | None], None]) -> Iterator[str]:
    """Run the Milvus Lite server of ``target``'s file for other processes (`memgpt server --workers N`): this
    process takes the file's lock (other memgpt commands are told who holds it: see :func:`announce_holder`)
    and starts the server; yields its socket (``unix:...``) for them to connect to (``lite_server``), and
    stops it at the end. Should the server end before (a crash, a kill), ``on_end`` is called with its exit
    code, from a thread of its own. Killed, this process lets go of the lock and the server ends by itself;
    the next start removes the socket it left (``lite.LiteServer``)."""
    if not target.starts_lite:
        raise StorageError(f"{display_path(target.uri)} is not a Milvus Lite file this process can serve")
    reserve(target)
    stopping = threading.Event()
    try:
        server = _start_lite_server(Path(target.uri)).server()

        def watch() -> None:
            code = server.wait()
            if not stopping.is_set():
                on_end(code)

        threading.Thread(target=watch, name="milvus-lite-watch", daemon=True).start()
        yield server.uri
    finally:
        stopping.set()
        release(target)  # the last hold: stops the server


def _check_served(target: MilvusTarget) -> None:
    """A served Lite file's server must be listening: else it is said at once (its supervisor ended or is
    ending), rather than after the minute a starting server is given to answer."""
    path = Path(target.lite_server.removeprefix("unix:"))
    if lite.connects(path, 2.0) is False:
        raise StorageError(
            f"the Milvus Lite server of {display_path(target.uri)} does not answer at {path}: the `memgpt server` "
            "that runs it has stopped; start it again"
        )
