"""Agent turns for the API: one at a time per agent across every server process, each in a worker thread,
streamed step by step or collected, cancellable between steps, and found again by a client's retry.

A turn holds the agent's lease (``storage.turns``) from before the agent is opened until its last step is
stored; a renewer thread keeps the leases of this process's turns alive. The turn runs the same agent loop
as `memgpt run`; each step's messages reach listeners as soon as the step is stored. A client that goes away
only stops listening: the turn runs to its end (or to a cancel). letta-client resends a POST after a timeout,
a 409 or a 5xx with ``X-Stainless-Retry-Count`` >= 1 and the same body: such a retry joins the turn its
first try started (or gets that turn's stored answer) instead of sending the message again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from memgpt.agent.agent import END_TURN, Agent, user_message
from memgpt.agent.manager import open_agent
from memgpt.agent.tools import folder_signature
from memgpt.errors import (
    AgentBusyError,
    BackendError,
    ConfigError,
    LeaseLostError,
    LLMError,
    MemGPTError,
    NotFoundError,
    UnavailableError,
    public_message,
)
from memgpt.llm import create_llm
from memgpt.llm.base import ChatMessage, Completion, LLMClient, ToolChoice, ToolSpec
from memgpt.memory.messages import stored
from memgpt.memory.recall import settle_indexing
from memgpt.server.schemas.messages import LettaResponse, Rendering, StopReasonOut, Usage, letta_messages
from memgpt.storage.turns import (
    BUSY_EDIT,
    FINISHED,
    Arrival,
    Fence,
    Grant,
    LeaseRenewer,
    Run,
    RunExists,
    lease_tries,
    new_owner,
)
from memgpt.types import Message

if TYPE_CHECKING:
    from memgpt.server.state import ServerState

logger = logging.getLogger(__name__)
RETRY_WINDOW = timedelta(minutes=10)  # how long a turn is remembered for a client's retry
PRUNE_EVERY = 60.0  # seconds between forgetting an agent's runs older than RETRY_WINDOW (not at every turn)
KEEP_OPEN = 256  # agents a process keeps open between their turns (the least recently used go first)
# Turns being opened at once (each on a thread of its own, which may wait ``busy_wait`` for a busy agent): past
# this a send is refused at once (503), not given one more waiting thread.
OPENING_LIMIT = 200


@dataclass
class Timing:
    lease_ttl: float = 30.0  # a lease not renewed for this long may be taken over (a host that vanished)
    renew_every: float = 10.0
    busy_wait: float = 5.0  # how long a send waits for the agent's running turn before answering 409
    retry_after: int = 2
    ping_every: float = 20.0  # include_pings: a ping after this long without an item (client read timeout: 60 s)


@dataclass(frozen=True)
class TurnInput:
    user_id: str
    agent_id: str
    text: str
    role: str  # "user", or "system" for an event the agent should know of
    max_steps: int
    digest: str  # of the request, so a retry is recognised
    retry: bool
    rendering: Rendering
    _: KW_ONLY  # (both below default: a positional value meant for one would land in the other)
    # time.monotonic() when this process began to handle the request (``retried.Arrivals``; None: when it started):
    # a first try that a retry overtook answers with the retry's turn (``memgpt.storage.turns.Arrival``)
    arrived: float | None = None
    # Answered once the turn is over (not streamed): ``begin``'s future then gets the turn when it has ended, so the
    # request's event loop wakes once for it, not also when it starts and at each step.
    collected: bool = False


def request_digest(user_id: str, agent_id: str, path: str, body: Any) -> str:
    text = json.dumps({"user": user_id, "agent": agent_id, "path": path, "body": body}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class UsageMeter(LLMClient):
    """Passes calls to ``inner`` and adds up the tokens its answers report."""

    def __init__(self, inner: LLMClient) -> None:
        self.inner = inner
        self.model, self.context_window, self.endpoint = inner.model, inner.context_window, inner.endpoint
        self.supports_tools, self.tool_choice = inner.supports_tools, inner.tool_choice
        self.timeout, self.deadline = inner.timeout, inner.deadline
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0

    @property
    def where(self) -> str:
        return self.inner.where

    def request(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], *, choice: ToolChoice, timeout: float
    ) -> Completion:
        return self.inner.request(messages, tools, choice=choice, timeout=timeout)

    def complete(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> Completion:
        completion = self.inner.complete(messages, tools)
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cached_tokens += completion.cached_tokens
        return completion


LEASE_LOST = "lease_lost"  # a turn's error code when this process lost the agent's lease mid-turn (a 409)
# A turn's error code when something it stands on failed (the metadata database, Milvus, the embedding model): a 503,
# as the same failure outside a turn is.
UNAVAILABLE = "backend_unavailable"
# A turn's error code when the server stopped before the turn ended (``TurnRunner.stop``): a 503 that letta-client
# sends again, and the retry answers the message (its run is left unfinished, as a killed process's is).
SERVER_STOPPING = "server_stopping"
STOPPED_MID_TURN = (
    "the server stopped before the agent answered: your message is stored, and sending this request again (letta-client"
    " does so by itself) gets it answered"
)


# A send refused as the server stops. A retry's first try may have stored its message (a turn the stop cut): it is
# answered when the retry is sent again.
_STOPPING_NEW = "the server is stopping: nothing was stored; send the message again when it is back"
_STOPPING_RETRY = (
    "the server is stopping: nothing more was stored (your message is, if an earlier try stored it); send this request"
    " again when it is back and the message is answered once"
)


# How long the server's stop waits for a turn's last step's commit under way (``Turn.ending``) before it cuts the turn:
# within ``state.STOP_MARGIN``, which answers the requests of the turns it cuts.
SETTLE_SECONDS = 1.0


class _Stopping(Exception):
    """Raised where a turn would begin a step once the server stops (``TurnRunner.stop``)."""


@dataclass
class Turn:
    """One turn: its items (Letta messages) as the steps produce them, then how it ended. Any number of
    listeners follow it, each from the start; the turn itself never waits for them."""

    run_id: str
    agent_id: str
    digest: str
    rendering: Rendering = field(default_factory=Rendering)
    items: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    stop_reason: str | None = None
    error: tuple[str, str] | None = None  # (error_type, message) when it failed
    usage: Usage = field(default_factory=Usage)
    answer: str | None = None  # ``body()`` as JSON text once it ended without an error (built once, also stored)
    cancel: threading.Event = field(default_factory=threading.Event)
    releasing: bool = False  # its lease is being given back: a renewal that finds it gone lost nothing
    cut: bool = False  # ended by the server's stop (``TurnRunner._cut``): its run stays unfinished for a retry
    # Its run's end was recorded (and its lease given back) by its last step's commit (``_Ending``): answered, it ends
    # by itself, and the server's stop leaves it alone (cut, it answered 503 after the answer was stored).
    recorded: bool = False
    # Its last step's commit is under way (``_Ending.finish_turn`` on): the stop waits for it (``SETTLE_SECONDS`` at
    # most) rather than answer 503 for an answer that commit may store.
    ending: bool = False
    # All its steps are stored (its answer is: a last step committed without the run's end, or a turn cancelled or out
    # of steps) and its run's end is to be recorded with its lease: a stop from then on answers it with this and
    # records it (``TurnRunner.stop``).
    answered: tuple[Run, Usage] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=set)
    _when_done: list[Callable[[], None]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def when_done(self, call: Callable[[], None]) -> None:
        """Call ``call`` once the turn has ended (now if it has), on the thread that ends it: its own, or the
        server's stop cutting it while the turn's thread still waits on the LLM."""
        with self._lock:
            if self.stop_reason is None:
                self._when_done.append(call)
                return
        call()

    def failure(self) -> tuple[int, str, str]:
        """A failed turn that answered nothing, as its send answers it: the HTTP status, the error's code and the
        text. A lease lost mid-turn is a conflict (409), as one lost while the send took the lease: its text says
        what is stored. Any other failure came after the user's message was stored."""
        kind, message = self.error or ("internal_error", "the turn failed")
        if kind == LEASE_LOST:
            return 409, kind, message
        if kind == SERVER_STOPPING:
            return 503, kind, message
        status = 502 if self.stop_reason == "llm_api_error" else 503 if kind == UNAVAILABLE else 500
        return status, kind, f"{message} (your message was stored; the agent has not answered it)"

    def step_items(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        """A step's items (its stored messages as Letta messages), as ``add_step`` adds them."""
        step_id = f"step-{uuid.uuid4()}"
        return [
            item.model_dump(mode="json")
            for message in messages
            for item in letta_messages(message, self.rendering, run_id=self.run_id, step_id=step_id)
        ]

    def add_step(
        self,
        messages: Sequence[Message],
        items: list[dict[str, Any]] | None = None,
        *,
        last: tuple[Run, Usage] | None = None,
        recorded: bool = False,
    ) -> None:
        """A step stored: its items (``step_items``, unless built already) reach the listeners. ``last``: the turn's
        last step, whose commit ``recorded`` its run's end (or left it to record: ``answered``), with the items, so
        that the server's stop sees both or neither."""
        if items is None:
            items = self.step_items(messages)
        with self._lock:
            self.items.extend(items)
            self.steps += 1
            if last is not None:
                self.ending = False
                if recorded:
                    self.recorded = True
                else:
                    self.answered = last
        self._notify()

    def finish(self, stop_reason: str, usage: Usage, error: tuple[str, str] | None = None) -> None:
        """End the turn; once only (the first end stands: a turn's thread and the server's stop may both end it)."""
        with self._lock:
            if self.stop_reason is not None:
                return
            self.usage, self.error = usage, error
            self.stop_reason = stop_reason
            calls, self._when_done = self._when_done, []
        self._notify()
        for call in calls:
            call()

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for loop, event in listeners:
            loop.call_soon_threadsafe(event.set)

    async def follow(self, ping_every: float | None = None) -> AsyncIterator[dict[str, Any] | None]:
        """Every item from the first, as they come, until the turn is over; ``None`` is a keep-alive
        after ``ping_every`` seconds without an item (only when asked for)."""
        event = asyncio.Event()
        listener = (asyncio.get_running_loop(), event)
        with self._lock:
            self._listeners.add(listener)
        try:
            sent = 0
            while True:
                with self._lock:
                    fresh, over = self.items[sent:], self.done
                for item in fresh:
                    yield item
                sent += len(fresh)
                if over:
                    return
                try:
                    await asyncio.wait_for(event.wait(), ping_every)
                except TimeoutError:
                    yield None
                event.clear()
        finally:
            with self._lock:
                self._listeners.discard(listener)

    def body(self) -> dict[str, Any]:
        """``response()`` as JSON, built from the items as stored (already LettaMessage dumps) without
        validating them again: a turn's answer is its largest object."""
        with self._lock:
            items = list(self.items)
        stop = StopReasonOut(stop_reason=self.stop_reason or "error")  # type: ignore[arg-type]
        return {"messages": items, "stop_reason": stop.model_dump(mode="json"), "usage": self.usage.model_dump()}

    def response(self) -> LettaResponse:
        return LettaResponse.model_validate(
            {
                "messages": self.items,
                "stop_reason": StopReasonOut(stop_reason=self.stop_reason or "error"),  # type: ignore[arg-type]
                "usage": self.usage,
            }
        )

    @classmethod
    def replay(cls, run: Run) -> Turn:
        """A finished turn from its stored answer (for a retry that arrives after it ended)."""
        stored = json.loads(run.response or "{}")
        turn = cls(run.id, run.agent_id, run.digest, items=list(stored.get("messages", [])))
        error = stored.get("error")
        turn.answer = run.response if run.response and not error else None
        turn.finish(run.stop_reason or "error", Usage(**stored.get("usage", {})), tuple(error) if error else None)
        return turn


class _Threads:
    """Threads for turns, each kept ``idle`` seconds after its turn for the next: a turn goes to an idle one, or
    to a new one when none is idle, so turns never queue. Starting a thread costs ~60 µs of CPU where handing a
    turn to a waiting one costs ~12, and the event loop that starts a thread waits until it runs (under load, until
    it gets the GIL). Daemon threads: stopping the server does not wait for an LLM that hangs (a step is stored
    whole or not)."""

    def __init__(self, name: str, idle: float = 60.0) -> None:
        self._name = name
        self._idle_for = idle
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()  # None: end
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job; each job put in the queue took one of them

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
        # The job goes in a list the thread empties: the Thread's own args would hold it while the thread lives.
        threading.Thread(target=self._serve, args=([job],), name=self._name, daemon=True).start()

    def close(self) -> None:
        """End the idle threads now (each would otherwise wait out its ``idle`` seconds)."""
        with self._lock:
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)

    def _serve(self, first: list[Callable[[], None]]) -> None:
        job: Callable[[], None] | None = first.pop()
        while job is not None:
            try:
                job()
            except Exception:  # a job handles its own errors; this thread must live on for the next
                logger.exception("a %s thread's job failed", self._name)
            job = None  # an idle thread holds nothing of its last turn
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self._idle_for)
            except queue.Empty:
                with self._lock:  # a job put meanwhile was counted against the idle threads: this one takes it
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


@dataclass(frozen=True)
class _Opened:
    """A new turn with its agent opened under its lease (``grant``), and the message it answers, stored with it."""

    turn: Turn
    agent: Agent
    meter: UsageMeter
    owner: str
    opening: Message
    grant: Grant
    tools: Hashable | None  # the user tools folder's signature when the agent may be kept open after the turn


@dataclass
class _Kept:
    """An agent kept open after its turn, as its storage stood at ``version`` (of the lease it ran under)."""

    agent: Agent
    version: int
    created_at: datetime | None
    tools: Hashable  # the user tools folder as it was when the agent was opened


class TurnRunner:
    """The turns of one server process.

    An agent stays open between its turns in the process that ran them (up to KEEP_OPEN agents): opening one
    reads its rows, loads its tools and builds its prompt, several times a turn's own work. It is used again
    only when the lease of the new turn finds the agent's version exactly one past the one its last turn ran
    under: taking the lease moves the version, and so does every write to the agent but a turn's own (blocks,
    fields, messages, attachments, archival passages, from any process, the CLI included). So anything else
    that happened to the agent since, another process's turn too, makes the turn open it afresh."""

    def __init__(self, state: ServerState, timing: Timing | None = None) -> None:
        self.state = state
        settings = state.config.server
        self._timing = timing or Timing(
            lease_ttl=settings.lease_seconds,
            renew_every=settings.lease_seconds / 3,
            busy_wait=settings.busy_wait_seconds,
        )
        self._active: dict[str, tuple[Turn, str]] = {}  # agent id -> (turn, lease owner)
        self._finishing: dict[str, Turn] = {}  # run id -> a done turn whose run's end is left to record
        self._other: dict[str, str] = {}  # leases of other work than turns (an API import): lease id -> owner
        self._guard = threading.Lock()
        self._released = threading.Condition()  # notified when this process gives a lease back
        self._llms: dict[tuple[str, int], LLMClient] = {}  # (model, context window) -> client, shared by turns
        self._pruned: dict[str, float] = {}  # agent id -> when this process last forgot its old runs
        self._kept: OrderedDict[str, _Kept] = OrderedDict()  # agents open between turns, least recently used first
        self._opening_slots = threading.BoundedSemaphore(OPENING_LIMIT)
        self._stopped = threading.Event()  # the server stops: no turn begins another step (``stop``)
        self._stopping = threading.Lock()  # held while ``stop`` runs
        self._threads = _Threads("turn")
        self._renewer = LeaseRenewer(
            lambda lease_id, owner, ttl: self._turns.renew(lease_id, owner, ttl), self._leases,
            lambda: (self.timing.lease_ttl, self.timing.renew_every), self._gone,
        )  # fmt: skip

    @property
    def timing(self) -> Timing:
        return self._timing

    @timing.setter
    def timing(self, timing: Timing) -> None:
        self._timing = timing
        self._renewer.wake()  # its sleep ends early on a new timing

    @property
    def _turns(self) -> Any:
        return self.state.storage.turns

    # -- starting ---------------------------------------------------------------------------------
    def begin(self, request: TurnInput) -> Future[Turn]:
        """``start`` on the turn's own thread (``_Threads``), which then runs the turn: the future gets the turn (or
        the error that kept it from starting) as soon as it runs, or once it ended for a ``collected`` one (a turn
        a retry joins: as soon as it is found). An API request awaits it instead of a thread-pool hop."""
        if self._stopped.is_set():
            raise UnavailableError(_STOPPING_RETRY if request.retry else _STOPPING_NEW)
        if not self._opening_slots.acquire(blocking=False):
            raise UnavailableError(f"this server is opening {OPENING_LIMIT} turns already: send again in a moment")
        started: Future[Turn] = Future()
        started.set_running_or_notify_cancel()  # a client that goes away while it starts cannot cancel it
        try:
            self._threads.run(functools.partial(self._begin, request, started))
        except BaseException:
            self._opening_slots.release()
            raise
        return started

    def start(self, request: TurnInput) -> Turn:
        """The turn for ``request``: a new one, or, for a client's retry, the one its first try started.
        Blocks up to ``busy_wait`` seconds while the agent runs another turn, then raises Busy. Another user's
        agent is a NotFoundError."""
        return self.begin(request).result()

    def _begin(self, request: TurnInput, started: Future[Turn]) -> None:
        try:
            opened = self._opening(request)
        except BaseException as exc:  # noqa: BLE001 - handed to the request waiting for it, which raises it
            started.set_exception(exc)
            return
        finally:
            self._opening_slots.release()
        if isinstance(opened, Turn):
            started.set_result(opened)
            return
        turn = opened.turn
        if request.collected:  # once it ended: by itself, or cut by the server's stop while it waits on the LLM
            turn.when_done(functools.partial(_hand, started, turn))
        else:
            started.set_result(turn)
        try:
            self._run(opened, request)
        finally:
            _hand(started, turn)  # (when it ended without a finish: an error the turn's thread did not expect)

    def _opening(self, request: TurnInput) -> Turn | _Opened:
        """The turn a retry joins, or a new turn with its agent opened under the lease just taken (and the message
        it answers stored with the lease). A first try that a retry overtook (see ``Arrival``) and a retry whose first
        try recorded its run meanwhile go on as a retry does, to the run that stands for the request."""
        for _ in range(3):  # (a run found, then gone before it was joined: forgotten, its agent not opened)
            try:
                return self._opening_once(request)
            except RunExists:
                request = replace(request, retry=True)
        return self._opening_once(request)

    def _opening_once(self, request: TurnInput) -> Turn | _Opened:
        dead: Run | None = None
        if request.retry:
            earlier = self._earlier(request)
            if isinstance(earlier, Turn):
                return earlier
            dead = earlier
        owner = new_owner()
        opening = user_message(request.agent_id, request.text, alert=request.role == "system")
        if dead is not None:
            # Its process died mid-turn: this turn goes on with its run, answering the message it stored.
            run_id, run = dead.id, None
            opening = replace(opening, id=_message_id(run_id))
            kept = self.state.storage.messages.by_id(request.agent_id, [opening.id]).get(opening.id)
        else:
            # The run is recorded with the lease, so the turn is findable (run recorded, turn active) before the agent
            # is opened, which can take a while: a retry that comes meanwhile joins it instead of waiting for the lease.
            run_id, kept = f"run-{uuid.uuid4()}", None
            run = Run(run_id, request.agent_id, request.digest)
            opening = replace(opening, id=_message_id(run_id))  # so that a retry after a crash finds it
        retry = request if request.retry else None
        arrived = time.monotonic() if request.arrived is None else request.arrived
        taken = self._take_lease(
            request.agent_id,
            owner,
            run_id,
            retry=retry,
            run=run,
            user_id=request.user_id,
            message=opening if kept is None else None,
            arrival=Arrival(arrived, request.retry, RETRY_WINDOW) if run is not None else None,
        )
        if isinstance(taken, Turn):
            return taken
        grant, dated = taken
        opening = kept or dated or opening  # as stored: dated when the lease was taken
        turn = Turn(run_id, request.agent_id, request.digest, request.rendering)
        with self._guard:
            self._active[request.agent_id] = (turn, owner)
        try:
            agent, meter, tools = self._open(request, grant)
            # Refused before the LLM sees it (Agent.send's check): the message goes with the run (_not_opened).
            agent.refuse_oversized(opening)
        except BaseException as exc:
            self._not_opened(turn, owner, exc, opening.id)
            raise
        return _Opened(turn, agent, meter, owner, opening, grant, tools)

    def _prune(self, agent_id: str) -> timedelta | None:
        """RETRY_WINDOW when the agent's old runs are due to be forgotten, else None."""
        now = time.monotonic()
        with self._guard:
            if now - self._pruned.get(agent_id, -PRUNE_EVERY) < PRUNE_EVERY:
                return None
            self._pruned[agent_id] = now
        return RETRY_WINDOW

    def _take_lease(
        self,
        agent_id: str,
        owner: str,
        run_id: str,
        retry: TurnInput | None = None,
        run: Run | None = None,
        user_id: str | None = None,
        message: Message | None = None,
        arrival: Arrival | None = None,
    ) -> tuple[Grant, Message | None] | Turn:
        """Take the agent's lease (recording ``run`` and ``message`` with it, the message dated in the transaction
        that takes the lease: after the turn it waited for stored its messages, never before the agent's latest),
        or, for a ``retry``, find the turn its first try started meanwhile. With ``user_id``, another user's agent is
        a NotFoundError (read with the lease, or once while another turn holds it), never a wait. With ``arrival``,
        RunExists when another run stands for the request (a first try's that a retry overtook: taken by it)."""
        keep = self._prune(agent_id) if run is not None else None
        ttl = self.timing.lease_ttl
        checked = user_id is None
        busy = "the agent is busy with another message; send again in a moment (one turn at a time per agent)"
        record = stored(message) if message is not None else None  # (its search text does not hold its date)
        for _ in lease_tries(self.timing.busy_wait, busy, self.timing.retry_after, self._await_release):
            if self._stopped.is_set():  # (a send that waited for the agent: its turn would be cut at once)
                raise UnavailableError(_STOPPING_NEW if message is not None else _STOPPING_RETRY)
            grant = self._turns.acquire(
                agent_id, owner, run_id, ttl, run=run, keep=keep, user_id=user_id, message=record, arrival=arrival
            )
            if grant is not None:  # the message as stored: dated in the transaction that took the lease
                dated = message if message is None or grant.dated is None else replace(message, created_at=grant.dated)
                return grant, dated
            if run is not None and arrival is not None and not arrival.retry:  # a retry's turn, holding the lease?
                taken = self._turns.take_waiting(agent_id, run.digest, arrival)
                if taken is not None:
                    raise RunExists(taken)
            if not checked:
                if not self.state.storage.agents.belongs(user_id or "", agent_id):
                    raise NotFoundError(f"no agent with id {agent_id!r}")
                checked = True
            if retry is not None and isinstance(earlier := self._earlier(retry), Turn):
                return earlier  # (a run whose process died: its lease is taken from the dead by the next try)
        raise AssertionError("lease_tries ends only by raising")  # pragma: no cover

    def _await_release(self, seconds: float) -> None:
        """Wait up to ``seconds``, woken by a release in this process; another process's is polled for."""
        with self._released:
            self._released.wait(seconds)

    def _not_opened(self, turn: Turn, owner: str, exc: BaseException, message: str) -> None:
        """The agent could not be opened: end the turn for retries that joined it, and forget it with the message it
        stored, so that a later retry tries again (the failure may pass) rather than get this answer; free the
        agent."""
        if isinstance(exc, MemGPTError):  # the route's handler logs it (and tells the send's client the same line)
            error = ("internal_error", public_message(exc))
        else:
            error = ("internal_error", f"{type(exc).__name__}: the server log has the details")
        with self._guard:
            if self._active.get(turn.agent_id, (None,))[0] is turn:
                del self._active[turn.agent_id]
        turn.releasing = True
        forget = (turn.run_id, message)
        try:
            try:  # the run and its message go with the lease, in one transaction
                self._release(turn.agent_id, owner, forget=forget)
            except MemGPTError as unreleased:
                # The database out of reach: all three go once it answers, while the lease is still this process's;
                # past that the lease lapses and the run and message stay (a retry of the send answers that message,
                # as for a process that died mid-turn; the agent's next turn sees it).
                logger.info("cannot give back the lease of agent %s now (%s)", turn.agent_id, unreleased)
                self._turns.release_later(
                    turn.agent_id, owner, within=self.timing.lease_ttl, then=self._wake_waiters, forget=forget
                )
        finally:
            turn.finish("error", Usage(), error)

    @contextmanager
    def holding(self, agent_id: str, busy: str = BUSY_EDIT) -> Iterator[None]:
        """Hold the agent's lease for a change that must not interleave with a turn (a block edit, a delete): what
        the CLI and MCP do too (``TurnStore.holding``), with this server's timing."""
        timing = self.timing
        try:
            with self._turns.holding(
                agent_id, timing.lease_ttl, timing.busy_wait, busy=busy, retry_after=timing.retry_after,
                pause=self._await_release,
            ):  # fmt: skip
                yield
        finally:
            with self._released:
                self._released.notify_all()

    @contextmanager
    def renewing(self, lease_id: str, owner: str) -> Iterator[None]:
        """Have the renewer keep a lease of other work than a turn alive (an API import, ``routes.agentfile``) while
        it runs: it lasts ``timing.lease_ttl``, so work whose process died is seen as dead within one lease."""
        with self._guard:
            self._other[lease_id] = owner
        try:
            yield
        finally:
            with self._guard:
                self._other.pop(lease_id, None)

    def _release(
        self, agent_id: str, owner: str, finished: Run | None = None, forget: tuple[str, str] | None = None
    ) -> None:
        try:
            self._turns.release(agent_id, owner, finished=finished, forget=forget)
        finally:
            self._wake_waiters()

    def _finished(self, turn: Turn) -> None:
        """The run's end of ``turn`` was recorded in the background: a retry reads it from the database now."""
        with self._guard:
            self._finishing.pop(turn.run_id, None)

    def _wake_waiters(self) -> None:
        """Wake the sends of this process that wait for a lease (``_await_release``): one was given back."""
        with self._released:
            self._released.notify_all()

    def _open(self, request: TurnInput, grant: Grant) -> tuple[Agent, UsageMeter, Hashable | None]:
        """The agent kept open since its last turn when nothing changed it since (see the class), else opened."""
        tools = self.state.home / "tools"
        with self._guard:
            kept = self._kept.pop(request.agent_id, None)  # one turn at a time uses it
        if (
            kept is not None
            and grant.follows((kept.version, kept.created_at))
            and kept.agent.state.user_id == request.user_id
            and kept.tools == folder_signature(tools)
        ):
            agent = kept.agent
            meter = UsageMeter(agent.llm.inner if isinstance(agent.llm, UsageMeter) else agent.llm)
            agent.llm, agent.max_steps = meter, request.max_steps
            return agent, meter, kept.tools
        state = self.state.storage.agents.by_id(request.user_id, request.agent_id)
        if state is None:
            raise NotFoundError(f"no agent with id {request.agent_id!r}")
        meter = UsageMeter(self._llm(state.llm_model, state.context_window))
        signature = folder_signature(tools)
        servers = self.state.storage.mcp_servers.names(state.id)
        mcp_tools, mcp_warnings = self.state.mcp().tools(servers) if servers else ([], [])
        agent, warnings = open_agent(
            self.state.storage,
            state,
            llm=meter,
            embedding=self.state.embedding(),
            tools_folder=tools,
            extra_tools=mcp_tools,
            max_steps=request.max_steps,
            vectors_at_first_use=True,  # a turn that uses no archival tool runs while Milvus is away
        )
        for warning in mcp_warnings + warnings:
            logger.warning("agent %s: %s", state.id, warning)
        agent.recheck_sources = False  # attaching or detaching a source moves the version: it reopens the agent
        agent.public_errors = True  # a tool's failure of ours reaches the LLM and the API's clients by its public line
        # Kept after the turn only without MCP servers (whose tools may change without the agent knowing).
        return agent, meter, (signature if not servers else None)

    def _keep(self, agent: Agent, grant: Grant, tools: Hashable | None) -> None:
        """Keep the agent open after a turn that ended cleanly under ``grant``."""
        if tools is None or grant.version is None:
            return
        with self._guard:
            self._kept[agent.state.id] = _Kept(agent, grant.version, grant.created_at, tools)
            while len(self._kept) > KEEP_OPEN:
                self._kept.popitem(last=False)

    def _llm(self, model: str, context_window: int) -> LLMClient:
        """The process's client for this model: made once, since each holds an HTTP connection pool whose
        set-up (an SSL context with the system's CA certificates) costs more CPU than a turn's own work."""
        with self._guard:
            client = self._llms.get((model, context_window))
        if client is None:
            try:
                client = create_llm(self.state.config.llm, model=model, context_window=context_window)
            except ConfigError as exc:
                raise LLMError(f"the server's LLM is not configured ({exc})") from exc
            with self._guard:
                client = self._llms.setdefault((model, context_window), client)
        return client

    def _earlier(self, request: TurnInput) -> Turn | Run | None:
        """The turn a retried request's first try started, waiting for it when another process runs it; its run when
        its process died mid-turn (its message is stored: the retry answers that one)."""
        with self._guard:
            active = self._active.get(request.agent_id)
            finishing = [
                t for t in self._finishing.values() if (t.agent_id, t.digest) == (request.agent_id, request.digest)
            ]
        if active is not None and active[0].digest == request.digest:
            return active[0]
        if finishing:  # answered; its run's end is recorded in the background (the database was away)
            return finishing[0]
        try:
            run = self._turns.retried_run(request.agent_id, request.digest, RETRY_WINDOW, self.timing.busy_wait)
        except TimeoutError:
            raise AgentBusyError("the agent is still answering this message in another server process", 2) from None
        if run is None or run.status != FINISHED:
            return run  # none, or its process died mid-turn: its message is stored, the retry answers it
        return Turn.replay(run)

    # -- running ----------------------------------------------------------------------------------
    def _run(self, opened: _Opened, request: TurnInput) -> None:
        turn, agent, meter, owner = opened.turn, opened.agent, opened.meter, opened.owner
        fence = Fence(request.agent_id, owner)
        ending = _Ending(turn, agent, meter, request)
        agent.on_commit, agent.finish_turn = ending.committed, ending.finish_turn
        agent.fence = fence  # should this process stall past the lease, nothing more is stored
        agent.stop_requested = self._stop_requested(turn, fence)
        reason, error = _replied(agent, opened.opening, turn.run_id)
        agent.finish_turn = None
        with turn._lock:
            turn.ending = False  # (its last commit failed, if it did not reach ``_Ending.committed``)
            answered = turn.answered
        ended = ending.ended
        if ended is None and error is not None and (turn.cut or error[0] == SERVER_STOPPING):
            # Stopped by the server's stop (a write after its cut fails on the lease it gave back): no failure is
            # recorded, so the run stays unfinished and a retry answers the message. (A turn that ended by itself
            # meanwhile is recorded below as any other.)
            try:
                agent.close(wait=False)
            finally:
                self._cut(turn, owner)
            return
        if ended is not None:  # its answer is stored (an error after that commit reaches this send alone)
            finished, usage = ended
            text = finished.response
        elif answered is not None:  # its last step is stored, its run's end is recorded below
            finished, usage = answered
            text = finished.response
        else:
            usage = _usage(meter, turn, turn.steps)
            text = _answer(turn, reason, usage, error)
            finished = Run(turn.run_id, request.agent_id, request.digest, FINISHED, reason, text)
            if error is None:  # cancelled or out of steps: all it stored is its answer (a stop from now on gives it)
                with turn._lock:
                    if not turn.cut:
                        turn.answered = (finished, usage)
        turn.answer = None if error else text  # the answer to a send as it goes out, without a second json.dumps
        try:
            # Under the lease: where another process may take the agent's next turn (a shared index), the last
            # step's recall indexing (a background thread) ends before that turn may index the same messages.
            # Else nothing waits for it: this process's indexer gathers every agent's messages into larger passes.
            agent.close(wait=False)
            if error is None:  # else what it holds may differ from what was stored: the next turn opens it afresh
                self._keep(agent, opened.grant, opened.tools)
        finally:
            turn.releasing = True  # (after the wait for recall indexing above, during which the lease must hold)
            try:
                if ended is not None:  # given back by the last step's commit
                    self._wake_waiters()
                else:
                    self._release(request.agent_id, owner, finished)  # the run's answer and the lease: one transaction
            except MemGPTError as exc:
                logger.error("cannot record run %s or release the agent's lease: %s", turn.run_id, exc)
                try:  # the lease alone: else this live process's lease keeps the agent busy until it expires
                    self._release(request.agent_id, owner)
                except MemGPTError:  # the database is out of reach
                    turn.finish(reason, usage, error)  # the client hears now; the lease is given back once it can be,
                    # in the background: this thread is free for the next turn at once
                    self._turns.release_later(
                        request.agent_id,
                        owner,
                        finished=finished,
                        within=self.timing.lease_ttl,
                        then=self._wake_waiters,
                    )
                else:  # the run's end, left "running" with no lease, reads as a died turn that a retry runs again
                    with self._guard:
                        self._finishing[turn.run_id] = turn
                    self._turns.finish_run_later(finished, then=lambda: self._finished(turn))
            # Active (its lease renewed, a client's retry joining it) until its lease is given back; a client's retry
            # in this process joins it (``_finishing``) until the run's answer is recorded.
            with self._guard:
                if self._active.get(request.agent_id, (None,))[0] is turn:
                    del self._active[request.agent_id]
            if not turn.done:
                turn.finish(reason, usage, error)

    def _stop_requested(self, turn: Turn, fence: Fence) -> Callable[[], bool]:
        """What the agent asks before each step of ``turn``: whether it is cancelled (a cancel from another process is
        read by the fenced write every step begins after: the message it answers, or the step before). Once the server
        stops, no step begins: the turn ends as cut (``stop``), its run left for a retry."""

        def requested() -> bool:
            if self._stopped.is_set():
                raise _Stopping
            return turn.cancel.is_set() or fence.cancelled.is_set()

        return requested

    def _leases(self) -> list[tuple[str, str, Turn | None]]:
        """The leases the renewer keeps alive: each running turn's, and those of other work (``renewing``)."""
        with self._guard:
            held: list[tuple[str, str, Turn | None]] = [(a, owner, turn) for a, (turn, owner) in self._active.items()]
            held += [(lease_id, owner, None) for lease_id, owner in self._other.items()]
        return held

    def _gone(self, lease_id: str, owner: str, turn: Turn | None) -> None:
        if self._holds(lease_id, owner, turn):
            _lost(lease_id, turn)

    def _holds(self, lease_id: str, owner: str, turn: Turn | None) -> bool:
        """Whether a lease the renewer found gone was lost: not when its work ended since the renewer listed it (a
        turn that gives its lease back, the import that took it off the list)."""
        if turn is not None:
            return not turn.releasing
        with self._guard:
            return self._other.get(lease_id) == owner

    # -- cancelling -------------------------------------------------------------------------------
    def cancel(self, agent_id: str, run_ids: Sequence[str] | None = None) -> dict[str, str]:
        """Ask the agent's running turn (in any process; only if it is one of ``run_ids`` when given) to stop
        after its current step; returns {run id: "cancelled"}, or {} when nothing runs."""
        running = self._turns.running_run(agent_id)
        if running is None or (run_ids and running not in run_ids):
            return {}
        with self._guard:
            active = self._active.get(agent_id)
        if active is not None and active[0].run_id == running:
            active[0].cancel.set()
        return {running: "cancelled"} if self._turns.request_cancel(agent_id) else {}

    def stop(self, grace: float) -> None:
        """The server stops: running turns get ``grace`` seconds to end by themselves, then each is cut (``_cut``) and
        no turn of this process begins another step or its last step's commit. A turn whose last step is being
        committed is waited for (``SETTLE_SECONDS`` at most: a commit takes milliseconds unless the database is away)
        and one whose answer is stored is answered with it, not cut: a send gets 503 only when its answer is not
        stored as the reply is written (bar a commit still undecided after that wait). A step that ends later is
        stored only if it was being committed as the turn was cut (the lease given back refuses any later write): a
        step is stored whole or not at all. Once; a second caller waits for the first. It was: ask each turn to stop
        after its step and wait for that, and the server waited for an LLM that did not answer as long as its timeout
        allowed."""
        with self._stopping:
            if self._stopped.is_set():
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                with self._guard:
                    if not self._active:
                        break
                time.sleep(0.05)
            self._stopped.set()
            with self._guard:
                running = list(self._active.values())
            # Every cut turn answers first, then the leases go back: each release is a round trip (a connect timeout,
            # 10 s, with PostgreSQL away), and the sends waited for all those before theirs.
            leases: list[tuple[str, str, Run | None]] = []
            settled_by = time.monotonic() + SETTLE_SECONDS
            while running:
                waiting = []
                for turn, owner in running:
                    cut = self._cut_turn(turn, wait=time.monotonic() < settled_by)
                    if cut == "committing":
                        waiting.append((turn, owner))
                    elif cut is not None:
                        leases.append((turn.agent_id, owner, None if cut == "cut" else cut))
                running = waiting
                if running:
                    time.sleep(0.005)
            self._give_back_cut(leases)

    def _cut(self, turn: Turn, owner: str) -> None:
        """End a turn the server's stop interrupts, as a kill would leave it but without the wait: the user's message
        stays stored and the run unfinished, so letta-client's retry of the send (told 503, here once the server is
        back or in another process) answers the message, going on from the steps stored; the lease is given back now,
        so that retry takes the agent at once. Nothing when the turn ended meanwhile, or its end is recorded."""
        if self._cut_turn(turn, wait=False) is not None:
            self._give_back_cut([(turn.agent_id, owner, None)])

    def _cut_turn(self, turn: Turn, *, wait: bool) -> Run | Literal["cut", "committing"] | None:
        """``_cut`` but the lease: the turn answers now, and the lease is then to give back (what it returns, unless
        None: nothing to do, the turn ended or its end is recorded). Cut, it answers 503 ("cut"). A turn whose answer
        is stored answers with it, the run's end to record with the lease (that Run). One whose last step's commit is
        under way is left to it when ``wait`` ("committing"), else cut (that commit's outcome is not known)."""
        with turn._lock:
            if turn.cut or turn.recorded or turn.stop_reason is not None:
                return None
            if turn.ending and wait:
                return "committing"
            answered = turn.answered
            turn.cut = answered is None
        turn.releasing = True  # a renewal that finds the lease gone lost nothing
        with self._guard:
            if self._active.get(turn.agent_id, (None,))[0] is turn:
                del self._active[turn.agent_id]
        if answered is not None:
            finished, usage = answered
            turn.answer = finished.response
            turn.finish(finished.stop_reason or END_TURN, usage)
            return finished
        usage = Usage(step_count=turn.steps, run_ids=[turn.run_id])
        turn.finish("error", usage, (SERVER_STOPPING, STOPPED_MID_TURN))
        return "cut"

    def _give_back_cut(self, leases: Sequence[tuple[str, str, Run | None]]) -> None:
        """Give back the leases of cut turns (agent id, owner, the run's end to record if answered), in order, until
        one fails: that one and the rest are left to the background (``release_later``; ``TurnStore.close`` tries them
        once more, for a bounded time), so the stop waits one round trip to a database that is away, not one per
        turn."""
        for given, (agent_id, owner, finished) in enumerate(leases):
            try:
                self._release(agent_id, owner, finished)
                continue
            except Exception as exc:  # noqa: BLE001 - any failure: the rest must still be handed on
                logger.warning("cannot give back the lease of agent %s as the server stops: %s", agent_id, exc)
            # (else they lapse: at once for this host's next process)
            for agent_left, owner_left, finished_left in leases[given:]:
                self._turns.release_later(
                    agent_left,
                    owner_left,
                    finished=finished_left,
                    within=self.timing.lease_ttl,
                    then=self._wake_waiters,
                )
            return

    def close(self, grace: float = 10.0, settle: float = 5.0) -> None:
        """``stop`` (unless done already), then end this process's turn machinery."""
        self.stop(grace)
        self._renewer.close(wait=False)
        self._threads.close()
        # The turns did not wait for their recall indexing (``_run``): it ends before storage closes (what is left is
        # indexed when the agent is opened again).
        settle_indexing(settle)


class _Ending:
    """The step that ends a server turn records the run's answer and gives the lease back in its own commit (one
    transaction fewer a turn: ``Agent.finish_turn``), unless the agent's recall indexing must end under the lease
    (a shared index: ``TurnRunner._run`` gives it back after that)."""

    def __init__(self, turn: Turn, agent: Agent, meter: UsageMeter, request: TurnInput) -> None:
        self._turn, self._agent, self._meter, self._request = turn, agent, meter, request
        self._last: tuple[Run, Usage, list[dict[str, Any]]] | None = None  # built for that commit
        self._recording = False  # ... which records the run's end
        self.ended: tuple[Run, Usage] | None = None  # ... once it committed it

    def finish_turn(self, messages: Sequence[Message]) -> Run | None:
        """Before the last step's commit (``Agent.finish_turn``): the run's end it records, if it does. A turn the
        server's stop cut stores no more (``_Stopping``); else the stop waits for this commit (``Turn.ending``)."""
        turn, request = self._turn, self._request
        with turn._lock:
            if turn.cut:
                raise _Stopping
            turn.ending = True
        items = turn.step_items(messages)
        usage = _usage(self._meter, turn, turn.steps + 1)
        run = Run(
            turn.run_id,
            request.agent_id,
            request.digest,
            FINISHED,
            END_TURN,
            _answer(turn, END_TURN, usage, None, items),
        )
        self._last = (run, usage, items)
        if self._agent.recall.waits_at_close:  # its end is recorded once the indexing ended (``TurnRunner._run``)
            return None
        turn.releasing = True  # (the renewer may find the lease gone from that commit on)
        self._recording = True
        return run

    def committed(self, messages: Sequence[Message]) -> None:
        """``Agent.on_commit``: the step's items reach the turn's listeners."""
        if self._last is None:
            self._turn.add_step(messages)
            return
        run, usage, items = self._last
        self._last = None
        if self._recording:
            self.ended = (run, usage)
        # (as ``TurnRunner.stop`` reads it: the items and the turn's state together)
        self._turn.add_step(messages, items, last=(run, usage), recorded=self._recording)


def _hand(started: Future[Turn], turn: Turn) -> None:
    """Give a ``collected`` turn to the request waiting for it (``begin``), unless given already."""
    with contextlib.suppress(InvalidStateError):
        started.set_result(turn)


def _replied(agent: Agent, opening: Message, run_id: str) -> tuple[str, tuple[str, str] | None]:
    """Run a turn's steps: its stop reason, and its error (code, one line) if it failed."""
    try:
        return _drain(agent.reply_to(opening)), None
    except _Stopping:
        return "error", (SERVER_STOPPING, STOPPED_MID_TURN)
    except LLMError as exc:
        _failed_turn(run_id, agent, exc)
        return "llm_api_error", ("llm_error", public_message(exc))
    except LeaseLostError as exc:
        return "error", (LEASE_LOST, str(exc))
    except BackendError as exc:
        _failed_turn(run_id, agent, exc)
        return "error", (UNAVAILABLE, public_message(exc))
    except MemGPTError as exc:
        _failed_turn(run_id, agent, exc)
        return "error", ("internal_error", public_message(exc))
    except Exception as exc:
        logger.exception("turn %s of agent %s failed", run_id, agent.state.id)
        return "error", ("internal_error", f"{type(exc).__name__}: the server log has the details")


def _failed_turn(run_id: str, agent: Agent, exc: MemGPTError) -> None:
    """Log what failed the turn: its client is told only the class's line (``public_message``)."""
    logger.warning("turn %s of agent %s failed: %s: %s", run_id, agent.state.id, type(exc).__name__, exc)


def _usage(meter: UsageMeter, turn: Turn, steps: int) -> Usage:
    return Usage(
        prompt_tokens=meter.prompt_tokens,
        completion_tokens=meter.completion_tokens,
        total_tokens=meter.prompt_tokens + meter.completion_tokens,
        cached_input_tokens=meter.cached_tokens,
        step_count=steps,
        run_ids=[turn.run_id],
    )


def _answer(
    turn: Turn, reason: str, usage: Usage, error: tuple[str, str] | None, more: Sequence[dict[str, Any]] = ()
) -> str:
    """The turn's answer as stored with its run (JSON): its items (and ``more``, a step's not added yet)."""
    body = turn.body()
    stop = StopReasonOut(stop_reason=reason)  # type: ignore[arg-type]
    stored = {**body, "messages": [*body["messages"], *more], "stop_reason": stop.model_dump(mode="json")}
    stored["usage"] = usage.model_dump()
    if error:
        stored["error"] = list(error)
    return json.dumps(stored, ensure_ascii=False, separators=(",", ":"))


def _lost(lease_id: str, turn: Turn | None) -> None:
    if turn is None:  # other work (an import) runs on; a retry of it may already have started it again
        logger.error("lease %s was lost while its work ran", lease_id)
        return
    logger.error("agent %s lost the lease of %s; stopping after this step", lease_id, turn.run_id)
    turn.cancel.set()


def _message_id(run_id: str) -> str:
    """The id of the message a run answers, stored with the run: the run's own, so a retry finds it."""
    return f"message-{run_id.removeprefix('run-')}"


def _drain(events: Any) -> str:
    """Run the agent's event generator to its end; returns why the turn ended."""
    while True:
        try:
            next(events)
        except StopIteration as stop:
            return str(stop.value or END_TURN)
