"""The MemGPT step loop.

One turn: the user's message is stored first (it is never lost), then steps run until the model
stops asking for heartbeats. Each step assembles the context window (system prompt, memory
statistics, summary, core memory, recent messages), calls the LLM with the tools, runs the tool
calls and stores the whole step in one transaction. The loop is a generator of events, so the CLI,
streaming and a REST server can share it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from memgpt.agent.context import system_message
from memgpt.agent.events import Event, FunctionCall, FunctionResult, Reply, SystemNotice, Thought
from memgpt.agent.tools import REQUEST_HEARTBEAT, Tool, parse_arguments
from memgpt.errors import ContextWindowExceededError, LLMError, MemGPTError, ToolError
from memgpt.llm.base import ChatMessage, Completion, LLMClient
from memgpt.memory.archival import ArchivalMemory
from memgpt.memory.core import CoreMemory
from memgpt.memory.messages import HEARTBEAT, LOGIN, SEND_MESSAGE, SYSTEM_ALERT, stored, timestamp, to_chat
from memgpt.memory.recall import RecallMemory
from memgpt.memory.summarize import summarize
from memgpt.storage import Storage
from memgpt.storage.agents import StepChanges
from memgpt.tokens import count_tokens
from memgpt.types import AgentState, Message, Role, ToolCall, utc_now

logger = logging.getLogger(__name__)

PRESSURE_FRACTION = 0.75  # warn the model to save what matters
KEEP_AFTER_EVICTION = 0.5  # after a summary, recent messages fill at most this share of the window
MAX_PAUSE_MINUTES = 360
# MemGPT's protocol: why the agent gets a step the person did not ask for.
_HIDDEN = "[This is an automated system message hidden from the user] "
FAILED = _HIDDEN + "Function call failed, returning control"
CHAINED = _HIDDEN + "Function called using request_heartbeat=true, returning control"
TIMED_HEARTBEAT = _HIDDEN + "Timed heartbeat: the user has been idle."
USER_HEARTBEAT = _HIDDEN + "Heartbeat sent by the user."
PRESSURE_ALERT = (
    "Warning: the conversation history will soon reach its maximum length and be trimmed. Save anything "
    "important from recent messages to core or archival memory now."
)


# Why a turn ended (Letta's stop reasons of the same meaning).
END_TURN, MAX_STEPS, CANCELLED = "end_turn", "max_steps", "cancelled"


def new_id() -> str:
    return f"message-{uuid.uuid4()}"


def _never() -> bool:
    return False


class Agent:
    """A loaded agent, the only holder of its ``AgentState``. Not thread-safe: one turn at a time."""

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
        self._source_names = source_names
        self._clock = clock
        self._paused_until: datetime | bool | None = False
        self._warned = False
        # Hooks for whoever runs the turn (the server): the messages of each step once stored, and whether
        # to stop before the next step (checked only between steps, never in the middle of one).
        self.on_commit: Callable[[Sequence[Message]], None] | None = None
        self.stop_requested: Callable[[], bool] = _never

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
        return (yield from self._turn(self._message(Role.USER, text)))

    def login(self) -> Iterator[Event]:
        """The first event of a new session: the agent greets the user."""
        last = "Never (first login)" if self.recall.count() == 0 else "earlier"
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

    def memory_warning(self) -> Iterator[Event]:
        """The memory-pressure alert the agent gets near a full context window, on request (/memorywarning)."""
        yield from self.alert(PRESSURE_ALERT)

    def _message(self, role: Role, content: str, **fields: object) -> Message:
        return Message(
            id=new_id(), agent_id=self.state.id, role=role, content=content, created_at=self._clock(), **fields
        )  # type: ignore[arg-type]

    def _turn(self, opening: Message) -> Generator[Event, None, str]:
        self.recall.append([opening])  # stored before any LLM call: never lost
        return (yield from self._chain())

    def _chain(self) -> Generator[Event, None, str]:
        for _ in range(self.max_steps):
            if self.stop_requested():
                return CANCELLED
            reason = yield from self._step()
            if reason is None:
                return END_TURN
            self.recall.append([self._message(Role.USER, reason, name=HEARTBEAT)])
        yield SystemNotice(f"stopped after {self.max_steps} steps in a row; send a message to continue")
        return MAX_STEPS

    # -- editing history (the chat's /pop, /retry, /rethink, /rewrite) ---------------------------
    def pop(self, count: int) -> int:
        """Delete the newest ``count`` messages, never leaving a function call without its result."""
        messages = self.storage.messages.in_context(self.state.id)
        cut = max(0, len(messages) - count)
        while 0 < cut < len(messages) and messages[cut].role is Role.TOOL:
            cut -= 1
        removed = [m.id for m in messages[cut:]]
        self.recall.remove(removed)
        return len(removed)

    def retry(self) -> Iterator[Event]:
        """Drop the agent's answer to the last user message and let it answer again."""
        messages = self.storage.messages.in_context(self.state.id)
        last_user = max((i for i, m in enumerate(messages) if m.role is Role.USER and not m.name), default=None)
        if last_user is None:
            yield SystemNotice("there is no user message to retry")
            return
        dropped = [m.id for m in messages[last_user + 1 :]]
        self.recall.remove(dropped)
        yield from self._chain()

    def _last_assistant(self, *, with_reply: bool = False) -> Message:
        for message in reversed(self.storage.messages.in_context(self.state.id)):
            if message.role is Role.ASSISTANT and (
                not with_reply or any(c.name == SEND_MESSAGE for c in message.tool_calls)
            ):
                return message
        raise ToolError("there is no reply to change yet" if with_reply else "there is no thought to change yet")

    def rethink(self, thought: str) -> None:
        """Replace the inner monologue of the latest assistant message."""
        self.recall.replace(replace(self._last_assistant(), content=thought))

    def rewrite(self, text: str) -> None:
        """Replace what the latest send_message said."""
        message = self._last_assistant(with_reply=True)
        calls = tuple(
            replace(c, arguments=json.dumps({"message": text}, ensure_ascii=False)) if c.name == SEND_MESSAGE else c
            for c in message.tool_calls
        )
        self.recall.replace(replace(message, tool_calls=calls))

    # -- one step -------------------------------------------------------------------------------
    def context(self) -> list[ChatMessage]:
        messages = self.storage.messages.in_context(self.state.id)
        system = system_message(
            self.state,
            self.core.render(),
            recall_count=self.recall.count(),
            archival_count=self.archival.count(),
            sources=self._source_names(),
            now=self._clock(),
        )
        return [system, *(to_chat(m) for m in messages)]

    def context_tokens(self) -> int:
        return count_tokens(self.llm.model, self.context(), [t.spec() for t in self.tools.values()])

    def _reserve(self) -> int:
        """Room left for the model's answer."""
        return min(4096, self.state.context_window // 8)

    def _step(self) -> Generator[Event, None, str | None]:
        """Returns why to run another step (a heartbeat), or None when the turn is over."""
        specs = [t.spec() for t in self.tools.values()]
        tokens = self.context_tokens()
        if tokens + self._reserve() > self.state.context_window:
            yield from self.summarize()
        elif tokens > PRESSURE_FRACTION * self.state.context_window and not self._warned:
            self._warned = True
            self.recall.append([self._message(Role.USER, PRESSURE_ALERT, name=SYSTEM_ALERT)])
            yield SystemNotice("memory pressure: the context window is over 75% full")
        try:
            completion = self.llm.complete(self.context(), specs)
        except ContextWindowExceededError:
            yield from self.summarize(force=True)
            completion = self.llm.complete(self.context(), specs)
        return (yield from self._act(completion))

    def _act(self, completion: Completion) -> Generator[Event, None, str | None]:
        thought = completion.content.strip()
        calls = completion.tool_calls
        if not calls:
            # A model that answers without calling send_message still reaches the user.
            if thought:
                yield Reply(thought)
            self._commit([self._message(Role.ASSISTANT, completion.content)])
            return None
        if thought:
            yield Thought(thought)
        stored = [self._message(Role.ASSISTANT, completion.content, tool_calls=tuple(calls))]
        reason: str | None = None
        for call in calls:
            result, ok, chain = yield from self._run(call)
            stored.append(self._message(Role.TOOL, result, tool_call_id=call.id, name=call.name))
            if not ok:
                reason = FAILED
            elif chain and reason is None:
                reason = CHAINED
        self._commit(stored)
        return reason

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
            text, ok = f"Error: {exc}", False
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

    def _commit(self, messages: list[Message]) -> None:
        changed = [b for b in self.core.blocks if b.label in self.core.changed]
        self.storage.agents.commit_step(
            self.state.id,
            StepChanges(
                messages=[stored(m) for m in messages], blocks=changed, heartbeats_paused_until=self._paused_until
            ),
        )
        self.core.changed.clear()
        if self.on_commit is not None:
            self.on_commit(messages)
        self.recall.sync()
        if self._paused_until is not False:
            self.state = replace(self.state, heartbeats_paused_until=self._paused_until or None)
            self._paused_until = False

    # -- context window management ----------------------------------------------------------------
    def summarize(self, *, force: bool = False) -> Iterator[Event]:
        """Fold the oldest messages into the summary and take them out of the window (recall keeps them)."""
        messages = self.storage.messages.in_context(self.state.id)
        specs = [t.spec() for t in self.tools.values()]
        target = int(self.state.context_window * KEEP_AFTER_EVICTION)
        base = count_tokens(self.llm.model, self.context()[:1], specs)
        keep_from = len(messages)
        used = base
        while keep_from > 0:
            size = count_tokens(self.llm.model, [to_chat(messages[keep_from - 1])])
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
        self.storage.agents.commit_step(
            self.state.id, StepChanges(evicted_ids=[m.id for m in evicted], summary=summary)
        )
        self.state = replace(self.state, summary=summary)
        self._warned = False
        yield SystemNotice(
            f"summarized {len(evicted)} older messages to free the context window; all remain searchable in recall"
        )
