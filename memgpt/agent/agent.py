"""The MemGPT step loop.

One turn: the user's message is stored first (it is never lost), then steps run until the model
stops asking for heartbeats. Each step assembles the context window once (system prompt, summary,
core memory, memory statistics last, recent messages), calls the LLM with the tools, runs the tool
calls and stores the whole step in one transaction. The loop is a generator of events, so the CLI,
streaming and a REST server can share it.

A step's side effects happen once. Its messages, core memory edits and heartbeat pause commit together.
Archival passages go to Milvus before that commit, so each is recorded under the step first; a step
that does not commit (an error, Ctrl-C, kill -9) has them removed before the agent's next turn, and
/retry or /pop, which forget steps, delete the passages those steps wrote and give core memory back
the values it had before them. Recall indexing is derived from SQL and idempotent; it runs after the
step, in the background. What a user or MCP tool does elsewhere cannot be undone: a retried step may
call it again.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from memgpt.agent.context import memory_part, statistics_part
from memgpt.agent.events import Event, FunctionCall, FunctionResult, Reply, SystemNotice, Thought
from memgpt.agent.tools import REQUEST_HEARTBEAT, Tool, parse_arguments
from memgpt.agent.window import Window
from memgpt.errors import ContextWindowExceededError, LLMError, MemGPTError, ToolError, UserError, public_message
from memgpt.llm.base import ChatMessage, Completion, EncodedChat, LLMClient, ToolSpec
from memgpt.memory.archival import ArchivalMemory
from memgpt.memory.core import CoreMemory
from memgpt.memory.messages import HEARTBEAT, LOGIN, SEND_MESSAGE, SYSTEM_ALERT, stored, timestamp
from memgpt.memory.recall import RecallMemory
from memgpt.memory.summarize import summarize
from memgpt.storage import Storage
from memgpt.storage.agents import BLOCK, PASSAGE, StepChanges, StepEffect
from memgpt.storage.turns import Fence, Run
from memgpt.tokens import bound_message, bound_tools, count_system, count_tools
from memgpt.types import AgentState, Message, Role, ToolCall, utc_now

logger = logging.getLogger(__name__)

PRESSURE_FRACTION = 0.75  # of the room left for messages: warn the model to save what matters
KEEP_AFTER_EVICTION = 0.5  # after a summary, recent messages fill at most this share of that room
MIN_ROOM = 1024  # tokens a window must leave for messages after the fixed prompt and the answer


def answer_reserve(window: int) -> int:
    """Tokens of a ``window`` kept for the model's answer."""
    return min(4096, window // 8)


def smallest_window(used: int) -> int:
    """The smallest window that still has ``used`` tokens once the answer's room (which grows with the
    window) is taken out of it."""
    window = used + answer_reserve(used)
    while window - answer_reserve(window) < used:
        window += 1
    return window


WINDOW_FIX = "`memgpt run --context-window N`, with a model that has that much"


def window_refusal(
    state: AgentState, fixed: int, functions: int, fix: str = WINDOW_FIX, subject: str | None = None
) -> str | None:
    """Why the agent's context window is too small for its fixed prompt (system prompt, core memory and
    ``functions`` schemas) of ``fixed`` tokens as the server counts them; None when it leaves room. ``fix``
    says how to give it more; ``subject`` names the agent (default: "agent 'its name'")."""
    needed = smallest_window(fixed + MIN_ROOM)
    if state.context_window >= needed:
        return None
    return (
        f"the context window of {subject or f'agent {state.name!r}'} ({state.context_window:,} tokens) is too "
        f"small: its system prompt, core memory and {functions} function schemas take about "
        f"{fixed:,} tokens, leaving too little for the conversation; give it at least {needed:,} ({fix})"
    )


MAX_PAUSE_MINUTES = 360
# A server's prompt count over ours outside this range is counting something else (or is a test double).
RATIO_RANGE = (0.5, 2.0)
# MemGPT's protocol: why the agent gets a step the person did not ask for.
_HIDDEN = "[This is an automated system message hidden from the user] "
FAILED = _HIDDEN + "Function call failed, returning control"
CHAINED = _HIDDEN + "Function called using request_heartbeat=true, returning control"
TIMED_HEARTBEAT = _HIDDEN + "Timed heartbeat: the user has been idle."
USER_HEARTBEAT = _HIDDEN + "Heartbeat sent by the user."
# What a heartbeat the agent never gets says instead, once its turn is cancelled or out of steps: the next turn's
# prompt then does not hand the agent control it never took.
CANCELLED_NOTE = _HIDDEN + "The turn was cancelled before this step ran: control went back to the user"
STOPPED_NOTE = _HIDDEN + "The turn stopped after {steps} steps in a row, before this one: control went back to the user"

PRESSURE_ALERT = (
    "Warning: the conversation history will soon reach its maximum length and be trimmed. Save anything "
    "important from recent messages to core or archival memory now."
)


def unanswered(reason: str, note: str) -> str:
    """What the heartbeat of ``reason`` says once its turn stopped before answering it (``note``): the reason stays
    when it tells something (a function call failed), without the control it handed back; a chained call's says
    nothing the stored call does not."""
    if reason == CHAINED:
        return note
    said = reason.removeprefix(_HIDDEN).removesuffix(", returning control")
    told = note.removeprefix(_HIDDEN)
    return f"{_HIDDEN}{said}; then {told[:1].lower()}{told[1:]}"


# Why a turn ended (Letta's stop reasons of the same meaning).
END_TURN, MAX_STEPS, CANCELLED = "end_turn", "max_steps", "cancelled"


def new_id() -> str:
    return f"message-{uuid.uuid4()}"


def user_message(agent_id: str, text: str, *, alert: bool = False) -> Message:
    """What the person sends (``alert``: an event the agent should know of), as ``Agent.send`` and ``Agent.alert``
    store it: for a turn that stores it itself and then has the agent answer it (``Agent.reply_to``)."""
    return Message(
        id=new_id(),
        agent_id=agent_id,
        role=Role.USER,
        content=text,
        created_at=utc_now(),
        name=SYSTEM_ALERT if alert else "",
    )


def _never() -> bool:
    return False


class Assembled:
    """One step's context: what the LLM is sent, and its size in two measures: a bound (UTF-8 bytes, free;
    see ``memgpt.tokens.bound_text``) and our tokenizer's exact count, taken on first use."""

    def __init__(self, messages: list[ChatMessage], bound: tuple[int, int], count: Callable[[], tuple[int, int]]):
        self.messages = messages
        # At least the fixed part's tokens (the system message and the tool schemas) and the conversation's.
        self.fixed_bound, self.conversation_bound = bound
        self._count = count
        self._counted: tuple[int, int] | None = None

    def _counts(self) -> tuple[int, int]:
        if self._counted is None:
            self._counted = self._count()
        return self._counted

    @property
    def fixed(self) -> int:
        """The system message and the tool schemas, in our tokenizer's count."""
        return self._counts()[0]

    @property
    def conversation(self) -> int:
        """The messages in the window, in our tokenizer's count."""
        return self._counts()[1]

    @property
    def tokens(self) -> int:
        return self.fixed + self.conversation


@dataclass(frozen=True)
class _Statistics:
    key: tuple[object, ...]  # what they were computed for: attached sources, archival writes
    archival: int
    sources: list[str]


@dataclass
class _SystemMessage:
    memory: str  # the prompt, summary and core memory it was built from
    statistics: _Statistics  # and these statistics
    message: ChatMessage
    bound: int  # at least its tokens
    recall_count: int  # and the recall count and time it shows
    at: datetime
    tokens: int | None = None  # counted when first needed

    def stored(self) -> str:
        """As ``StepChanges.last_system`` keeps it."""
        content = self.message["content"]
        return json.dumps({"content": content, "recall": self.recall_count, "at": self.at.isoformat()})


def _system_content(memory: str, statistics: _Statistics, recall_count: int, at: datetime) -> str:
    statistics_text = statistics_part(
        recall_count=recall_count, archival_count=statistics.archival, sources=statistics.sources, now=at
    )
    return memory + "\n" + statistics_text


def _stored_system(text: str | None) -> tuple[str, int, datetime] | None:
    """The content, recall count and time of a stored system message; None for none (or one not understood,
    which is built anew)."""
    if not text:
        return None
    try:
        stored = json.loads(text)
        return str(stored["content"]), int(stored["recall"]), datetime.fromisoformat(stored["at"])
    except (ValueError, TypeError, KeyError):
        return None


class Agent:
    """A loaded agent, the only holder of its ``AgentState`` and the only writer of its messages while
    open. Not thread-safe: one turn at a time. ``close`` it (or use ``with``) to let recall indexing finish."""

    def __init__(
        self,
        state: AgentState,
        *,
        storage: Storage,
        archival: ArchivalMemory,
        recall: RecallMemory | None = None,
        llm: LLMClient,
        tools: Sequence[Tool],
        max_steps: int = 10,
        source_names: Callable[[], list[str]] = list,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.state = state
        self.storage = storage
        self.llm = llm
        self.tools = {tool.name: tool for tool in tools}
        self.max_steps = max_steps
        self.core = CoreMemory(storage.agents.blocks(state.id))
        self.recall = recall or RecallMemory(storage, agent_id=state.id, user_id=state.user_id)
        self.archival = archival
        self.step_id = ""  # the running step's id, under which a tool records what it writes outside SQL
        self._source_names = source_names
        self._clock = clock
        self._paused_until: datetime | bool | None = False
        self._specs: list[ToolSpec] = []
        self._specs_for: tuple[str, ...] | None = None  # the tool names the schemas were built for
        self._tool_bound = 0
        self._tool_tokens: int | None = None  # counted when first needed
        self._window: Window | None = None
        self._recall_count: int | None = None
        self._statistics: _Statistics | None = None
        self._sources_checked = False  # this turn
        # Whether each turn reads the attached sources again (a server process that learns of attachments
        # otherwise turns it off)
        self.recheck_sources = True
        # Whether a tool's failure of ours (storage, embedding...) is written into its tool message by its public
        # line (``public_message``), the detail logged: a server's, whose messages go to the LLM and to its API's
        # clients, which a host, path or pid in them must not reach. The CLI's user is shown all of it.
        self.public_errors = False
        self._archival_writes = 0
        self._system_message: _SystemMessage | None = None  # as last built
        facts = storage.agents.step_facts(state.id)
        # The system message the last step (of any process) was sent, reused while memory is what it was built from
        self._last_system = _stored_system(facts.last_system)
        self._system_stored = self._last_system[0] if self._last_system else None  # the content stored now
        self._ratio = facts.ratio if facts.ratio_model == llm.model else 1.0
        # Sent the memory-pressure alert since the last summary (by any process): it is sent once per summary.
        self._warned = facts.pressure_alerted
        self._ratio_learnt = False
        self._settled = False  # True once no step of this agent can have left uncommitted effects

        # Hooks for whoever runs the turn (the server): the messages of each step once stored, and whether
        # to stop before the next step (checked only between steps, never in the middle of one).
        self.on_commit: Callable[[Sequence[Message]], None] | None = None
        # Called before the commit of a step that ends the turn with its messages: a run returned is recorded as
        # ended, and the turn's lease given back, in that commit (a server turn: one transaction fewer).
        self.finish_turn: Callable[[Sequence[Message]], Run | None] | None = None
        self.stop_requested: Callable[[], bool] = _never
        self._fence: Fence | None = None
        # The message the last turn answers (its first, a user's or an event's) once built, and whether its store
        # returned: a turn that failed says by them whether its message was kept (the chat's one line).
        self.opening: Message | None = None
        self.opening_stored = False

    @property
    def fence(self) -> Fence | None:
        """The server turn's lease on this agent: every write of the turn checks it in its own transaction, so
        a process that stalled past its lease while another took the agent over stores nothing more."""
        return self._fence

    @fence.setter
    def fence(self, fence: Fence | None) -> None:
        self._fence = self.recall.fence = self.archival.fence = fence

    def _tool_specs(self) -> list[ToolSpec]:
        """The functions' schemas and their size's bound, built again when the tools changed (``/mcp attach``
        and ``/mcp detach`` change ``tools`` mid-chat)."""
        names = tuple(self.tools)
        if names != self._specs_for:
            self._specs = [t.spec() for t in self.tools.values()]
            self._tool_bound, self._tool_tokens = bound_tools(self._specs), None
            self._specs_for = names
        return self._specs

    def _tool_count(self) -> int:
        specs = self._tool_specs()
        if self._tool_tokens is None:
            self._tool_tokens = count_tools(self.llm.model, specs)
        return self._tool_tokens

    def close(self, *, wait: bool = True) -> None:
        """Let recall indexing of the last messages finish (bounded; the rest is indexed at the next open);
        ``wait=False``: wait only where another process may index the agent next (``RecallMemory.close``)."""
        self.recall.close(wait=wait)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the AgentContext the tools see -----------------------------------------------------------
    def pause_heartbeats(self, minutes: int) -> str:
        if not 0 <= minutes <= MAX_PAUSE_MINUTES:
            raise ToolError(f"minutes must be between 0 and {MAX_PAUSE_MINUTES}")
        until = self._clock() + timedelta(minutes=minutes)
        self._paused_until = until if minutes else None
        return f"Timed heartbeats paused until {timestamp(until)}." if minutes else "Timed heartbeats resumed."

    def heartbeats_paused(self) -> bool:
        until = self.state.heartbeats_paused_until
        return until is not None and until > self._clock()

    # -- turns ----------------------------------------------------------------------------------
    def send(self, text: str) -> Generator[Event, None, str]:
        """The person's message, then the agent's steps until it waits for the user again; returns why the
        turn ended (END_TURN, MAX_STEPS or CANCELLED)."""
        message = self._message(Role.USER, text)
        self._refuse_oversized(message)
        return (yield from self._turn(message))

    def refuse_oversized(self, message: Message) -> None:
        """UserError when ``message`` is larger than the room the window leaves (``send``'s check), for a turn that
        stores the message itself and then has the agent answer it (the server's, before ``reply_to``)."""
        self._refuse_oversized(message)

    def _refuse_oversized(self, message: Message) -> None:
        """A message the window cannot hold even alone is refused before it is stored or sent: the server
        would only answer that its window is exceeded, and /retry would send the same message again."""
        self._settle()
        built = self._system_message is not None
        context = self.assemble()
        if not built:
            self._system_message = None  # the first step builds it, counting this message among the previous ones
        window = self._in_window()
        if window.size_bound(message) <= self._room(context.fixed_bound):
            return  # the bounds (at least the counts) fit: no tokenizer needed
        room = self._room(context.fixed)
        size = window.size(message)
        if size > room:
            raise UserError(
                f"this message is about {round(size * self._ratio):,} tokens, more than the context window of agent "
                f"{self.state.name!r} ({self.state.context_window:,} tokens) leaves for the conversation (about "
                f"{max(0, round(room * self._ratio)):,}); it was not sent: shorten it, or put the text in a source and "
                "attach that (`memgpt load`; over the API, upload it to a folder)"
            )

    def login(self) -> Iterator[Event]:
        """The first event of a new session: the agent greets the user."""
        last = "Never (first login)" if self._recalled() == 0 else "earlier"
        yield from self._turn(self._message(Role.USER, last, name=LOGIN))

    def heartbeat(self, reason: str) -> Iterator[Event]:
        """A heartbeat: the agent gets a step without a user message."""
        yield from self._turn(self._message(Role.USER, reason, name=HEARTBEAT))

    def timed_heartbeat(self) -> Iterator[Event]:
        """The person has been idle: a step for the agent, unless it paused its heartbeats."""
        if not self.heartbeats_paused():
            yield from self.heartbeat(TIMED_HEARTBEAT)

    def user_heartbeat(self) -> Iterator[Event]:
        """The person asked the agent to take a step (the chat's /heartbeat)."""
        yield from self.heartbeat(USER_HEARTBEAT)

    def alert(self, text: str) -> Generator[Event, None, str]:
        return (yield from self._turn(self._message(Role.USER, text, name=SYSTEM_ALERT)))

    def reply_to(self, opening: Message) -> Generator[Event, None, str]:
        """``send`` (or ``alert``) for a message already stored (``user_message``; the server stores it in the
        transaction that takes the agent's lease): the agent's steps until it waits for the user again."""
        self._settle()
        self._sources_checked = self._sources_checked and not self.recheck_sources
        window = self._in_window()
        # An agent opened after the message was stored read it with its window (and with its recall count), the
        # steps a process that died mid-turn stored after it too (a retry of that turn goes on from them).
        if not window.holds(opening.id):
            window.extend([opening])
            if self._recall_count is not None:
                self._recall_count += 1
        else:
            since = list(window.messages)
            since = since[next(i for i in range(len(since) - 1, -1, -1) if since[i].id == opening.id) + 1 :]
            if _turn_over(since):
                # A process that died after storing the turn's last step, before recording the turn's end (kill -9
                # there, then a retry of the send): the steps stored are the answer, not a second one.
                if self.on_commit is not None:
                    self.on_commit(since)
                return END_TURN
        return (yield from self._chain())

    def memory_warning(self) -> Iterator[Event]:
        """The memory-pressure alert the agent gets near a full context window, on request (/memorywarning)."""
        yield from self.alert(PRESSURE_ALERT)

    def _message(self, role: Role, content: str, *, id: str = "", **fields: object) -> Message:
        return Message(
            id=id or new_id(), agent_id=self.state.id, role=role, content=content, created_at=self._clock(), **fields
        )  # type: ignore[arg-type]

    def _turn(self, opening: Message) -> Generator[Event, None, str]:
        self._settle()
        self._sources_checked = self._sources_checked and not self.recheck_sources
        self.opening, self.opening_stored = opening, False
        self._append([opening])  # stored before any LLM call: never lost
        self.opening_stored = True
        return (yield from self._chain())

    def _chain(self) -> Generator[Event, None, str]:
        heartbeat: Message | None = None
        for step in range(self.max_steps):
            if self.stop_requested():
                if heartbeat is not None:
                    # A cancel from another process is seen by the heartbeat's own (fenced) write, so it is stored.
                    # The note is fenced too (recall carries the turn's fence): a turn cancelled because its lease
                    # was lost (the server's renewer) and taken over meanwhile gets LeaseLostError, not a write.
                    self._replace(replace(heartbeat, content=unanswered(heartbeat.content, CANCELLED_NOTE)))
                return CANCELLED
            reason = yield from self._step()
            if reason is None:
                return END_TURN
            if step == self.max_steps - 1:  # no step answers it
                reason = unanswered(reason, STOPPED_NOTE.format(steps=self.max_steps))
            heartbeat = self._message(Role.USER, reason, name=HEARTBEAT)
            self._append([heartbeat])
        yield SystemNotice(f"stopped after {self.max_steps} steps in a row; send a message to continue", failed=True)
        return MAX_STEPS

    def _append(self, messages: list[Message]) -> None:
        self.recall.append(messages)
        self._in_window().extend(messages)
        self._recall_count = self._recalled() + len(messages)

    # -- what an unfinished step left behind ------------------------------------------------------
    def _settle(self) -> None:
        """Undo what steps that never committed left (a crash in an earlier process, or an error, Ctrl-C or an
        abandoned turn in this one): their archival passages are deleted, core memory and the heartbeat
        pause go back to what is stored."""
        if self._settled:
            return
        effects = self.storage.agents.uncommitted_effects(self.state.id)
        if effects:
            self.archival.remove([e.target for e in effects if e.kind == PASSAGE])
            self._archival_writes += 1
            self.storage.agents.drop_effects(self.state.id, sorted({e.step_id for e in effects}))
            logger.info("removed %d passages of steps that never committed", len(effects))
        self.core = CoreMemory(self.storage.agents.blocks(self.state.id))
        self._paused_until = False
        self._settled = True

    # -- editing history (the chat's /pop, /retry, /rethink, /rewrite) ---------------------------
    def pop(self, count: int) -> int:
        """Delete the newest ``count`` messages, never leaving a function call without its result; what
        the steps among them did is undone (see ``forget``)."""
        self._settle()
        messages = self._in_window().messages
        cut = max(0, len(messages) - count)
        while 0 < cut < len(messages) and messages[cut].role is Role.TOOL:
            cut -= 1
        removed = messages[cut:]
        self.forget(removed)
        return len(removed)

    def retry(self) -> Iterator[Event]:
        """Drop the agent's answer to the last user message (and what its steps did) and let it answer again."""
        self._settle()
        messages = self._in_window().messages
        last_user = max((i for i, m in enumerate(messages) if m.role is Role.USER and not m.name), default=None)
        if last_user is None:
            yield SystemNotice("there is no user message to retry")
            return
        self._sources_checked = False
        self.forget(messages[last_user + 1 :])
        yield from self._chain()

    def forget(self, messages: Sequence[Message]) -> None:
        """Delete messages for good with what their steps did: the archival passages they wrote are deleted and
        the core memory blocks they edited get the values they had before. Index entries go first and SQL
        last, so a crash in between leaves the messages, to be forgotten again."""
        if not messages:
            return
        ids = [m.id for m in messages]
        steps = [m.id for m in messages if m.role is Role.ASSISTANT]
        effects = self.storage.agents.effects(self.state.id, steps)
        order = {step: i for i, step in enumerate(steps)}
        earliest: dict[str, StepEffect] = {}
        for effect in sorted((e for e in effects if e.kind == BLOCK), key=lambda e: order[e.step_id], reverse=True):
            earliest[effect.target] = effect
        blocks = [
            replace(self.core.get(label), value=effect.previous or "")
            for label, effect in earliest.items()
            if label in {b.label for b in self.core.blocks}
        ]
        with self.recall.writing:  # no indexing of these messages while they go
            self.recall.unindex(ids)
            self.archival.remove([e.target for e in effects if e.kind == PASSAGE])
            self.storage.agents.forget_steps(self.state.id, message_ids=ids, step_ids=steps, blocks=blocks)
        self.core.restore(blocks)
        self._in_window().remove(ids)
        self._recall_count = None
        self._system_message = self._last_system = None  # its recall count is out of date
        self._system_stored = None  # forget_steps cleared it
        self._archival_writes += 1

    def _last_assistant(self, *, with_reply: bool = False) -> Message:
        for message in reversed(self._in_window().messages):
            if message.role is Role.ASSISTANT and (
                not with_reply or any(c.name == SEND_MESSAGE for c in message.tool_calls)
            ):
                return message
        raise ToolError("there is no reply to change yet" if with_reply else "there is no thought to change yet")

    def rethink(self, thought: str) -> None:
        """Replace the inner monologue of the latest assistant message."""
        self._replace(replace(self._last_assistant(), content=thought))

    def rewrite(self, text: str) -> None:
        """Replace what the latest send_message said."""
        message = self._last_assistant(with_reply=True)
        calls = tuple(
            replace(c, arguments=json.dumps({"message": text}, ensure_ascii=False)) if c.name == SEND_MESSAGE else c
            for c in message.tool_calls
        )
        self._replace(replace(message, tool_calls=calls))

    def _replace(self, message: Message) -> None:
        self.recall.replace(message)
        self._in_window().replace(message)

    # -- the context window ---------------------------------------------------------------------
    def _in_window(self) -> Window:
        if self._window is None:
            self._window = Window(self.llm.model, self.storage.messages.in_context(self.state.id))
        return self._window

    def _recalled(self) -> int:
        if self._recall_count is None:
            self._recall_count = self.recall.count()
        return self._recall_count

    def _memory_statistics(self) -> _Statistics:
        """Archival count and attached sources, computed again only when the attachments (checked once a
        turn) or the agent's own archival writes changed."""
        known = self._statistics
        if known is not None and self._sources_checked and known.key[-1] == self._archival_writes:
            return known
        key = (*self.storage.attachments.source_ids(self.state.id), self._archival_writes)
        self._sources_checked = True
        if known is None or known.key != key:
            known = _Statistics(key, self.archival.count(), self._source_names())
            self._statistics = known
        return known

    def _system(self) -> _SystemMessage:
        """The system message (with its size). As in MemGPT, it is rebuilt only when memory is modified (core
        memory, the summary, the agent's archival writes, its attached sources), when history is edited and
        when the agent is opened; the memory statistics and the time in it are those of that moment
        (``[last modified: ...]``). So from step to step it stays the same to the byte, and a provider's
        prompt cache can reuse it with the tool schemas and every message after it."""
        memory = memory_part(self.state, self.core.render())
        statistics = self._memory_statistics()
        known = self._system_message
        if known is None or known.memory != memory or known.statistics is not statistics:
            known = self._reused_system(memory, statistics) or self._built_system(
                memory, statistics, self._recalled(), self._clock()
            )
            self._system_message = known
        return known

    def _built_system(
        self, memory: str, statistics: _Statistics, recall_count: int, at: datetime, *, content: str = ""
    ) -> _SystemMessage:
        content = content or _system_content(memory, statistics, recall_count, at)
        message: ChatMessage = EncodedChat(role="system", content=content)  # its JSON text made once
        return _SystemMessage(memory, statistics, message, bound_message(message), recall_count, at)

    def _reused_system(self, memory: str, statistics: _Statistics) -> _SystemMessage | None:
        """The system message an earlier process's last step was sent, while it is what building it now would
        give but for the recall count and time in it (as within a process): memory, archival count and sources
        unchanged. Once memory changed, messages are built anew."""
        if self._last_system is None:
            return None
        content, recall_count, at = self._last_system
        if _system_content(memory, statistics, recall_count, at) == content:
            return self._built_system(memory, statistics, recall_count, at, content=content)
        self._last_system = None
        return None

    def assemble(self) -> Assembled:
        """The context the LLM gets now, assembled once and measured once (its exact count only if asked)."""
        system = self._system()
        window = self._in_window()
        self._tool_specs()

        def count() -> tuple[int, int]:
            if system.tokens is None:
                system.tokens = count_system(self.llm.model, system.message["content"] or "")
            return system.tokens + self._tool_count(), window.tokens()

        return Assembled([system.message, *window.chats()], (system.bound + self._tool_bound, window.bound()), count)

    def context(self) -> list[ChatMessage]:
        return self.assemble().messages

    def context_tokens(self) -> int:
        """The context's size as the LLM server counts it (our count, calibrated by what it reported)."""
        return round(self.assemble().tokens * self._ratio)

    def _reserve(self) -> int:
        """Room left for the model's answer (in the server's tokens)."""
        return answer_reserve(self.state.context_window)

    def _room(self, fixed: int) -> float:
        """What the window leaves for messages after the fixed prompt and the answer, in our tokens."""
        return (self.state.context_window - self._reserve()) / self._ratio - fixed

    def _near_limit(self, context: Assembled) -> bool:
        """Whether the conversation may be past the memory-pressure share of its room: only then do exact
        counts decide anything. (Its tokens are at most its bound, and the room at least what the fixed
        part's bound leaves, so a bound under that share settles it without the tokenizer.)"""
        return context.conversation_bound > PRESSURE_FRACTION * self._room(context.fixed_bound)

    def check_window(self) -> None:
        """Refuse a window the fixed prompt (system prompt, core memory, tool schemas) leaves no room in
        (counted exactly only when its bound alone would be refused)."""
        context = self.assemble()
        functions = len(self._tool_specs())
        refusal = window_refusal(self.state, round(context.fixed_bound * self._ratio), functions)
        if refusal:
            refusal = window_refusal(self.state, round(context.fixed * self._ratio), functions)
        self._system_message = None  # the first step builds it with the statistics of its moment
        if refusal:
            raise UserError(refusal)

    # -- one step -------------------------------------------------------------------------------
    def _step(self) -> Generator[Event, None, str | None]:
        """Returns why to run another step (a heartbeat), or None when the turn is over."""
        context = self.assemble()
        room = self._room(context.fixed) if self._near_limit(context) else None
        if room is not None and context.conversation > room:
            yield from self.summarize()
            context = self.assemble()
        elif room is not None and context.conversation > PRESSURE_FRACTION * room and not self._warned:
            self._alert_pressure()
            yield SystemNotice("memory pressure: the context window is over 75% full")
            context = self.assemble()
        try:
            completion = self.llm.complete(context.messages, self._tool_specs())
        except ContextWindowExceededError:
            yield from self.summarize(force=True)
            context = self.assemble()
            completion = self.llm.complete(context.messages, self._tool_specs())
        self._learn_ratio(context, completion)
        return (yield from self._act(completion))

    def _alert_pressure(self) -> None:
        """Store the memory-pressure alert and that it was sent, in one transaction."""
        alert = self._message(Role.USER, PRESSURE_ALERT, name=SYSTEM_ALERT)
        changes = StepChanges(messages=[stored(alert)], pressure_alerted=True)
        self.storage.agents.commit_step(self.state.id, changes, fence=self._fence)
        self._warned = True
        self._in_window().extend([alert])
        self._recall_count = self._recalled() + 1

    def _learn_ratio(self, context: Assembled, completion: Completion) -> None:
        """Calibrate our token counts from the prompt tokens the server reports for the same request, where
        they matter: near the limit (``_near_limit``; far from it a new process need not build the tokenizer,
        ~0.2 CPU s). That starts before the window fills: the bound passes the warning's share of the room
        while the tokens are a fraction of it (English text takes ~4 bytes a token)."""
        if completion.prompt_tokens <= 0 or not self._near_limit(context):
            return
        ours = context.tokens
        if ours <= 0:
            return
        ratio = completion.prompt_tokens / ours
        if RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1] and abs(ratio - self._ratio) > 0.01 * self._ratio:
            self._ratio, self._ratio_learnt = ratio, True

    def _act(self, completion: Completion) -> Generator[Event, None, str | None]:
        thought = completion.content.strip()
        calls = completion.tool_calls
        self.step_id = new_id()  # also the id of the assistant message this step stores
        if not calls:
            if not thought:
                yield SystemNotice(self._empty_reply(completion), failed=True)
                return None
            # A model that answers without calling send_message still reaches the user.
            yield Reply(thought)
            self._commit([self._message(Role.ASSISTANT, completion.content, id=self.step_id)], last=True)
            return None
        if thought:
            yield Thought(thought)
        self._settled = False  # from here until the commit, tools may leave effects behind
        before = {b.label: b.value for b in self.core.blocks}
        stored = [self._message(Role.ASSISTANT, completion.content, tool_calls=tuple(calls), id=self.step_id)]
        reason: str | None = None
        for call in calls:
            result, ok, chain = yield from self._run(call)
            stored.append(self._message(Role.TOOL, result, tool_call_id=call.id, name=call.name))
            if not ok:
                reason = FAILED
            elif chain and reason is None:
                reason = CHAINED
        self._commit(stored, before, last=reason is None)
        return reason

    def _empty_reply(self, completion: Completion) -> str:
        asked = " (asked twice)" if completion.empty_replies > 1 else ""
        return (
            f"the model sent an empty reply{asked}: no text and no function call, so nothing was stored; "
            "/retry asks again (a model this small may need `memgpt configure --tool-choice send_message`)"
        )

    def _run(self, call: ToolCall) -> Generator[Event, None, tuple[str, bool, bool]]:
        """Runs one call; returns the tool message content, whether it worked, and whether to chain."""
        arguments: dict[str, object] = {}
        try:
            tool = self.tools.get(call.name)
            if tool is None:
                raise ToolError(f"there is no function named {call.name!r}; available: {', '.join(self.tools)}")
            arguments = parse_arguments(call.arguments)
            if not tool.ends_turn:  # a reply is shown as the reply itself
                yield FunctionCall(call.name, arguments)
            text = tool.call(self, arguments)
            ok = True
        except ToolError as exc:
            text, ok = f"Error: {exc}", False
        except MemGPTError as exc:  # storage or embedding trouble inside a tool: the model may retry
            if self.public_errors and public_message(exc) != str(exc):
                logger.warning("tool %s failed: %s: %s", call.name, type(exc).__name__, exc)
            text, ok = f"Error: {public_message(exc) if self.public_errors else exc}", False
        except Exception as exc:
            logger.exception("tool %s raised", call.name)
            text, ok = f"Error: {type(exc).__name__}: {exc}", False
        if ok and call.name == SEND_MESSAGE:
            yield Reply(str(arguments.get("message", "")))
        else:
            yield FunctionResult(call.name, ok, text)
        chain = bool(arguments.get(REQUEST_HEARTBEAT)) and ok
        envelope = {"status": "OK" if ok else "Failed", "message": text, "time": timestamp(self._clock())}
        return json.dumps(envelope, ensure_ascii=False), ok, chain

    def _commit(self, messages: list[Message], before: dict[str, str] | None = None, *, last: bool = False) -> None:
        sent = self._system_message  # the one this step was sent: stored with the step when the agent's row
        # holds another (so a crash never splits the two, and a new process sends it again to the byte)
        unstored = sent.stored() if sent and sent.message["content"] != self._system_stored else None
        changed = [b for b in self.core.blocks if b.label in self.core.changed]
        effects = [StepEffect(self.step_id, BLOCK, b.label, (before or {}).get(b.label)) for b in changed]
        self.storage.agents.commit_step(
            self.state.id,
            StepChanges(
                messages=[stored(m) for m in messages],
                blocks=changed,
                heartbeats_paused_until=self._paused_until,
                step_id=self.step_id if self.archival.last_recorded_step == self.step_id else "",
                effects=effects,
                token_ratio=(self.llm.model, self._ratio) if self._ratio_learnt else None,
                last_system=unstored,
            ),
            fence=self._fence,
            finished=self.finish_turn(messages) if last and self.finish_turn is not None else None,
        )
        if unstored is not None:
            self._system_stored = sent.message["content"] if sent else None
        self._settled = True
        self._ratio_learnt = False
        self.core.changed.clear()
        self._in_window().extend(messages)
        self._recall_count = self._recalled() + len(messages)
        if any(c.name == "archival_memory_insert" for m in messages for c in m.tool_calls):
            self._archival_writes += 1
        if self.on_commit is not None:
            self.on_commit(messages)
        self.recall.sync_later()  # indexed on a background thread: the reply does not wait for embeddings
        if self._paused_until is not False:
            self.state = replace(self.state, heartbeats_paused_until=self._paused_until or None)
            self._paused_until = False

    # -- context window management ----------------------------------------------------------------
    def summarize(self, *, force: bool = False) -> Iterator[Event]:
        """Fold the oldest messages into the summary and take them out of the window (recall keeps them)."""
        window = self._in_window()
        messages = window.messages
        target = KEEP_AFTER_EVICTION * self._room(self.assemble().fixed)
        keep_from = len(messages)
        used = 0
        while keep_from > 0:
            size = window.size(messages[keep_from - 1])
            if used + size > target and keep_from < len(messages):
                break
            used += size
            keep_from -= 1
        if force and keep_from == 0:
            keep_from = len(messages) // 2  # the provider disagrees with our count: halve, keep the newest
        # Never start the window with tool results whose call was evicted.
        while keep_from < len(messages) - 1 and messages[keep_from].role is Role.TOOL:
            keep_from += 1
        evicted = messages[:keep_from]
        if not evicted:
            if force:
                raise LLMError(
                    "the model still reports its context window exceeded with nothing left to summarize: the latest "
                    "message, or the system prompt with core memory, is too long for this model's window"
                )
            return
        summary = summarize(self.llm, self.state.summary, evicted)
        changes = StepChanges(evicted_ids=[m.id for m in evicted], summary=summary, pressure_alerted=False)
        self.storage.agents.commit_step(self.state.id, changes, fence=self._fence)
        self.state = replace(self.state, summary=summary)
        window.evict(len(evicted))
        self._warned = False
        yield SystemNotice(
            f"summarized {len(evicted)} older messages to free the context window; all remain searchable in recall"
        )


def _turn_over(since: Sequence[Message]) -> bool:
    """Whether the steps stored after a turn's message (``since``) ended the turn, by the rule ``_act`` follows: its
    last step called no function, or each call it made worked and asked for no heartbeat (and no heartbeat came
    after it)."""
    last = next((i for i in range(len(since) - 1, -1, -1) if since[i].role is Role.ASSISTANT), None)
    if last is None or any(m.role is Role.USER for m in since[last + 1 :]):
        return False
    step = since[last]
    if not step.tool_calls:
        return bool(step.content.strip())
    results = {m.tool_call_id: m.content for m in since[last + 1 :] if m.role is Role.TOOL}
    for call in step.tool_calls:
        try:
            worked = json.loads(results[call.id]).get("status") == "OK"
            chained = bool(parse_arguments(call.arguments).get(REQUEST_HEARTBEAT))
        except (KeyError, ValueError, AttributeError, ToolError):
            return False
        if not worked or chained:
            return False
    return True
