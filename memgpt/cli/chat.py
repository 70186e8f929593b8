"""The terminal chat of `memgpt run`: showing events, reading input, slash commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from rich.markup import escape

from memgpt.agent.events import Event, FunctionCall, FunctionResult, Reply, SystemNotice, Thought
from memgpt.agent.tools import REQUEST_HEARTBEAT
from memgpt.cli.common import TurnWait, console, err_console, interactive, shortened
from memgpt.errors import AgentBusyError, MemGPTError, ToolError, UserError

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

    from memgpt.agent.agent import Agent
    from memgpt.cli.mcp import ChatServers
    from memgpt.storage import Storage

PROMPT = "> Enter your message: "
TIMED_HEARTBEAT = "the timed heartbeat"  # how a line names it (it is sent after --heartbeat-minutes idle)
HOLDER = "this memgpt run process"  # the process a LeaseLostError names (the server says "this server process")
_MEMORY_VERBS = {
    "archival_memory_search": "searching memory with",
    "conversation_search": "searching memory with",
    "conversation_search_date": "searching memory with",
    "archival_memory_insert": "updating memory with",
    "core_memory_append": "updating memory with",
    "core_memory_replace": "updating memory with",
}


@contextmanager
def _unechoed() -> Iterator[None]:
    """Keys typed at the terminal are not echoed while the block runs (a timed heartbeat's step, which comes
    unasked): the terminal echoed them raw among the agent's output, before the next prompt took them and showed
    them in its line. The terminal keeps them for that prompt; Ctrl-C still interrupts."""
    import sys

    try:
        import termios
    except ImportError:  # Windows
        yield
        return
    try:
        fd = sys.stdin.fileno()
        before = termios.tcgetattr(fd)
    except (termios.error, OSError, ValueError):  # not a terminal
        yield
        return
    quiet = list(before)
    quiet[3] &= ~termios.ECHO  # the local modes; not TCSAFLUSH, which would drop what was typed
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSANOW, before)


def show(event: Event) -> None:
    if isinstance(event, Thought):
        console.print(f"[italic bright_black]💭 {escape(event.text)}[/]")
    elif isinstance(event, Reply):
        console.print(f"[bold yellow]🤖 {escape(event.text)}[/]")
    elif isinstance(event, FunctionCall):
        verb = _MEMORY_VERBS.get(event.name)
        if verb:
            console.print(f"[red]⚡🧠 {escape('[function]')} {verb} {event.name}[/]")
        else:
            args = json.dumps({k: v for k, v in event.arguments.items() if k != REQUEST_HEARTBEAT})
            console.print(f"[red]⚡ {escape('[function]')} running {escape(event.name)}({escape(args)})[/]")
    elif isinstance(event, FunctionResult):
        if not event.ok:
            console.print(f"[red]⚡ {escape('[function]')} {escape(event.name)} failed: {escape(event.text)}[/]")
    elif isinstance(event, SystemNotice) and event.failed:
        err_console.print(f"error: {event.text}", markup=False)
    elif isinstance(event, SystemNotice):
        console.print(f"[bright_black]ℹ {escape(event.text)}[/]")


def play(events: Iterator[Event]) -> bool:
    """Show events as they come, with a spinner while the agent waits for the LLM; whether the turn ended
    without an answer for the user (the step limit, an empty reply)."""
    failed = False
    while True:
        if interactive():
            with console.status("[bright_black]thinking...[/]", spinner="dots"):
                event = next(events, None)
        else:
            event = next(events, None)
        if event is None:
            return failed
        failed = failed or (isinstance(event, SystemNotice) and event.failed)
        show(event)


FAILED, INTERRUPTED = 1, 130  # exit codes of `memgpt run --message` (and of piped lines)
T = TypeVar("T")


@dataclass
class Leases:
    """How the chat takes the agent's lease for each turn and edit, as a `memgpt server` turn does (the database's
    lock, seen by every process): ``TurnStore.holding`` with the server's lease and busy wait. ``version`` is the
    agent's (version, created_at) as the open agent last saw it stored; a lease whose grant is not one past it
    means another process (a server's turn, an edit) changed the agent since, and ``reopen`` opens it afresh."""

    lease_seconds: float
    busy_wait_seconds: float
    reopen: Callable[[Agent], Agent]  # closes nothing: the chat closes the old agent first
    version: tuple[int, datetime | None] | None


@dataclass
class Chat:
    agent: Agent
    storage: Storage
    heartbeat_minutes: float = 0
    mcp: ChatServers | None = None
    exit_code: int = 0  # the worst outcome so far: 0, FAILED or INTERRUPTED
    leases: Leases | None = None  # None: no lease is taken (a chat nobody else can reach)
    unsent: str | None = None  # a typed message the busy agent did not get: put back at the next prompt
    at_prompt: bool = False  # an interactive chat (else --message or piped lines: nothing to put back)
    # Where the line being handled got to: None, no turn or edit started (a command that only reads); False, waiting
    # for the agent's lease (nothing stored); True, the turn or edit runs.
    _held: bool | None = None

    # -- input ----------------------------------------------------------------------------------
    def loop(self) -> None:
        from prompt_toolkit import PromptSession

        session: PromptSession[str] = PromptSession()
        self.at_prompt = True
        while True:
            try:
                line = self._read(session)
            except (EOFError, KeyboardInterrupt):
                console.print("Bye.")
                return
            if line is None:  # as a line: a failure or a Ctrl-C in it is one line, and the chat goes on
                self._attempt(TIMED_HEARTBEAT, self._timed_heartbeat, TIMED_HEARTBEAT)
                continue
            if not self.handle(line):
                return

    def _read(self, session: PromptSession[str]) -> str | None:
        """A line from the user, or None when a timed heartbeat is due first: after a whole interval in which
        the line did not change (a heartbeat waits while the user types). Text left in the line when the
        heartbeat comes (or typed as it came) is put back at the next prompt: typed text is never lost."""
        timeout = self.heartbeat_minutes * 60 if self.heartbeat_minutes > 0 else None

        default, self.unsent = self.unsent or "", None

        async def ask() -> str | None:
            asked = asyncio.ensure_future(session.prompt_async(PROMPT, default=default))
            seen = default
            while True:
                done, _ = await asyncio.wait({asked}, timeout=timeout)
                # Sent already, the prompt still ending (it waits up to 1 s for the terminal's cursor report):
                # cancelled now, the line would be lost.
                if done or (session.app.future is not None and session.app.future.done()):
                    return await asked
                typed = session.default_buffer.text
                if not typed or typed == seen:  # idle for an interval: the heartbeat is due
                    break
                seen = typed
            asked.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                return await asked  # (the line was sent as the heartbeat came: it wins)
            self.unsent = session.default_buffer.text or None  # (the prompt's line outlives it)
            return None

        return asyncio.run(ask())

    def handle(self, line: str) -> bool:
        """Run one message or command; False when the chat should end."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/"):
            return self._attempt(text, lambda: self.command(text), text.split()[0])
        return self._attempt(text, lambda: self.step(lambda agent: agent.send(text)))

    def _timed_heartbeat(self) -> None:
        with contextlib.suppress(AgentBusyError), _unechoed():  # AgentBusyError: another process's turn runs now
            self.step(lambda agent: agent.timed_heartbeat())

    def _attempt(self, text: str, work: Callable[[], bool | None], name: str | None = None) -> bool:
        """Run a message (``name`` None) or a command (``name`` says it); a failure or a Ctrl-C is one line saying
        what it left. False when the chat should end."""
        self._held = None
        self.agent.opening = None
        try:
            return work() is not False
        except AgentBusyError as exc:
            self._not_sent(text, FAILED, f"error: {exc}", name=name)
        except ToolError as exc:
            self._failed(FAILED, f"{exc}")
        except UserError as exc:
            self._failed(FAILED, f"error: {exc}")
        except MemGPTError as exc:
            self._unfinished(text, FAILED, f"error: {exc}", "/retry to try again", name)
        except KeyboardInterrupt:
            if self._held is False:  # while it waited for another process's turn: nothing was stored
                self._not_sent(text, INTERRUPTED, "interrupted while waiting for the agent's turn", name=name)
            else:
                self._unfinished(text, INTERRUPTED, "interrupted", "/retry lets the agent answer it", name)
        return True

    def _unfinished(self, text: str, code: int, why: str, retry: str, name: str | None) -> None:
        """A message or command that failed or was interrupted once started: what it left, as it is."""
        if name is not None:
            if code != INTERRUPTED:
                self._failed(code, why)
            elif self._held is None:  # it took no lease: it only reads
                self._failed(code, f"{why} ({name} changed nothing)")
            else:
                self._failed(code, f"{why} ({name} stopped; what it stored before is kept)")
            return
        saved = self._saved(text)
        if saved is False:  # it failed before its message was stored (the lease, the agent's opening)
            self._not_sent(text, code, why, "saved")
        elif saved:
            self._failed(code, f"{why} (your message is saved; {retry})")
        else:
            self._failed(code, f"{why} (your message may not be saved: the database did not say; /dump shows it)")

    def _saved(self, text: str) -> bool | None:
        """Whether the message ``text``, whose turn failed, is stored; None when the database cannot tell now."""
        agent = self.agent  # (as reopened under the lease: its turn built the message)
        opening = agent.opening
        if opening is None or opening.content != text:
            return False
        if agent.opening_stored:
            return True
        try:  # its store failed: perhaps after the database committed it
            return opening.id in self.storage.messages.by_id(agent.state.id, [opening.id])
        except MemGPTError:
            return None

    def _not_sent(self, text: str, code: int, why: str, what: str = "sent", *, name: str | None = None) -> None:
        """A line the agent never got: said so, and put back at the prompt (a command, ``name``, is said not run)."""
        if name is not None:
            said = f"{name} was not run"
        elif self.at_prompt:
            self.unsent, said = text, f"your message was not {what} (it is back at the prompt)"
        else:
            said = f"your message was not {what}: send it again"
        self._failed(code, f"{why}; {said}")

    def step(self, turn: Callable[[Agent], Iterator[Event]]) -> None:
        """Play a turn of the agent (``turn`` starts it) under the agent's lease."""
        with self._leased():
            self.play(turn(self.agent))

    def edit(self, change: Callable[[Agent], T]) -> T:
        """Make a change of the agent's messages under its lease."""
        with self._leased():
            return change(self.agent)

    @contextmanager
    def _leased(self) -> Iterator[None]:
        """Hold the agent's lease while a turn or edit runs (renewed meanwhile), the open agent made current first
        and its writes fenced by the lease; waits for another process's turn up to the busy wait, one line saying
        so, then AgentBusyError naming that process."""
        leases = self.leases
        self._held = False  # (until it runs: a Ctrl-C meanwhile stored nothing)
        if leases is None:
            self._held = True
            yield
            return
        from memgpt.storage.turns import Fence

        turns, agent_id = self.storage.turns, self.agent.state.id
        pause = TurnWait(turns, agent_id)
        ttl = leases.lease_seconds
        with ExitStack() as stack:
            try:
                held = stack.enter_context(
                    turns.holding(
                        agent_id, ttl, leases.busy_wait_seconds, pause=pause, renew_every=ttl / 3, holder=HOLDER
                    )
                )
            except AgentBusyError as exc:
                busy = f"the agent is busy with a turn in another memgpt process{pause.where()}"
                raise AgentBusyError(busy, exc.retry_after) from None
            grant = held.grant
            if not grant.follows(leases.version):  # changed since by another process: opened afresh
                old = self.agent
                old.close()
                self.agent = leases.reopen(old)
            self._held = True  # (a Ctrl-C from here on may come after the turn stored the message)
            self.agent.fence = Fence(agent_id, held.owner, holder=HOLDER)
            clean = False
            try:
                yield
                clean = True
            finally:
                self.agent.fence = None
                # Under the lease, as a server turn: the last step's recall indexing ends before another process's
                # turn may index the same messages (where the index is shared).
                self.agent.close(wait=False)
                # After a turn that failed, what the open agent holds may differ from what was stored: the next
                # one opens it afresh.
                leases.version = None
                if clean and grant.version is not None:
                    # As stored now, under the lease: the chat's own writes (an attached source, removed messages)
                    # may have moved it, and the open agent holds them.
                    with contextlib.suppress(MemGPTError):  # unread: the next turn opens the agent afresh
                        leases.version = turns.version(agent_id)

    def _failed(self, code: int, line: str) -> None:
        err_console.print(line, markup=False)
        self.exit_code = max(self.exit_code, code)

    def play(self, events: Iterator[Event]) -> None:
        """Show a turn; one that ended without an answer for the user (its one line is on stderr) makes
        `run --message` and piped lines exit 1."""
        if play(events):
            self.exit_code = max(self.exit_code, FAILED)

    # -- slash commands -------------------------------------------------------------------------
    def command(self, text: str) -> bool:
        name, _, argument = text.partition(" ")
        found = next((c for c in COMMANDS if name.lower() in (c.name, *c.aliases)), None)
        if found is None:
            # A failure like any command's: piped lines and --message exit 1, so a script with a mistyped
            # command (its work not done) does not pass for one that ran.
            self._failed(FAILED, unknown_command(name))
            return True
        return found.run(self, argument.strip()) is not False

    def help(self, _: str) -> None:
        lines = []
        for c in COMMANDS:
            also = f" (also {', '.join(c.aliases)})" if c.aliases else ""
            lines.append(f"{c.name} {c.hint}".ljust(19) + c.help + also)
        console.print("\n".join(lines), markup=False)

    def _pick(self, names: list[str], argument: str, question: str, empty: str) -> str | None:
        if argument:
            return argument
        if not names:
            console.print(empty, markup=False)
            return None
        if not interactive():
            raise UserError(f"{question.rstrip(':')}: give the name after the command")
        import questionary

        return questionary.select(question, choices=names).ask()

    def attach(self, argument: str) -> None:
        from rich.progress import Progress

        from memgpt.agent.manager import attach_source
        from memgpt.data.sources import list_sources

        state = self.agent.state
        attached = set(self.storage.attachments.source_ids(state.id))
        names = [s.name for s in list_sources(self.storage, state.user_id) if s.id not in attached]
        name = self._pick(
            names, argument, "Select data source", "No data sources to attach; create one with `memgpt load directory`."
        )
        if name is None:
            return
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("Attaching", total=1)
            # Under the agent's lease, as the chat's other writes: its version moves with it (see ``_leased``).
            source, fresh = self.edit(lambda agent: attach_source(self.storage, agent.state, name))
            progress.advance(task)
        if fresh:
            console.print(f"Attached {source.name} ({source.passages} passages) to archival memory", markup=False)
        else:
            console.print(f"{source.name} was already attached", markup=False)

    def detach(self, argument: str) -> None:
        from memgpt.agent.manager import detach_source
        from memgpt.data.sources import list_sources

        state = self.agent.state
        by_id = {s.id: s.name for s in list_sources(self.storage, state.user_id)}
        names = [by_id[i] for i in self.storage.attachments.source_ids(state.id) if i in by_id]
        name = self._pick(names, argument, "Select data source to detach", "No data sources are attached.")
        if name is not None:
            source = self.edit(lambda agent: detach_source(self.storage, agent.state, name))
            console.print(f"Detached {source.name}", markup=False)

    def mcp_servers(self, argument: str) -> None:
        """/mcp lists the agent's MCP servers; /mcp attach NAME and /mcp detach NAME change them."""
        if self.mcp is None:
            raise UserError("MCP servers are not available in this chat")
        verb, _, name = argument.partition(" ")
        if verb not in ("", "attach", "detach"):
            raise UserError("use /mcp, /mcp attach NAME or /mcp detach NAME")
        if not verb:
            self.mcp.show(self.agent)
            return
        attaching = verb == "attach"
        question = "Select MCP server" + ("" if attaching else " to detach")
        empty = (
            "No MCP servers to attach; add one with `memgpt mcp add NAME -- COMMAND`."
            if attaching
            else "No MCP servers are attached."
        )
        chosen = self._pick(self.mcp.choices(self.agent, attaching), name.strip(), question, empty)
        if chosen is None:
            return
        mcp = self.mcp
        if attaching:
            self.edit(lambda agent: mcp.attach(agent, chosen))
        else:
            self.edit(lambda agent: mcp.detach(agent, chosen))

    def memory(self, _: str) -> None:
        agent = self.agent
        console.print(agent.core.render(), markup=False)
        console.print(
            f"recall: {agent.recall.count()} messages · archival: {agent.archival.count()} passages · context: "
            f"{agent.context_tokens()}/{agent.state.context_window} tokens",
            markup=False,
        )

    def dump(self, argument: str) -> None:
        from memgpt.memory.messages import describe

        count = int(argument) if argument.isdigit() else 10
        for message in self.storage.messages.last(self.agent.state.id, count):
            if message.role.value in ("user", "assistant"):
                console.print(shortened(describe(message)), markup=False)
            else:
                console.print(f"  ↳ {message.name}: {message.content[:300]}", markup=False)

    def save(self, _: str) -> None:
        console.print("Saved (memgpt also saves after every step).")

    def pop(self, argument: str) -> None:
        removed = self.edit(lambda agent: agent.pop(int(argument) if argument.isdigit() else 3))
        console.print(f"Removed {removed} messages", markup=False)

    def rethink(self, argument: str) -> None:
        if not argument:
            raise UserError("/rethink needs the new thought: /rethink TEXT")
        self.edit(lambda agent: agent.rethink(argument))
        console.print("Changed the last thought", markup=False)

    def rewrite(self, argument: str) -> None:
        if not argument:
            raise UserError("/rewrite needs the new reply: /rewrite TEXT")
        self.edit(lambda agent: agent.rewrite(argument))
        console.print("Changed the last reply", markup=False)


@dataclass(frozen=True)
class SlashCommand:
    """One chat command: dispatch and /help both read this table."""

    name: str
    hint: str  # how its argument is written, "" for none
    help: str
    run: Callable[[Chat, str], bool | None]  # returns False to end the chat
    aliases: tuple[str, ...] = ()


def unknown_command(name: str) -> str:
    """One line for a command that is not one: the closest command's name, if any is close, and /help."""
    import difflib

    names = [n for c in COMMANDS for n in (c.name, *c.aliases)]
    close = difflib.get_close_matches(name.lower(), names, n=1)
    guess = f" (did you mean {close[0]}?)" if close else ""
    return f"Unknown command {name}{guess} — type /help to see the commands"


COMMANDS: tuple[SlashCommand, ...] = (
    SlashCommand("/attach", "[SOURCE]", "attach a data source to archival memory", Chat.attach),
    SlashCommand("/detach", "[SOURCE]", "detach a data source", Chat.detach),
    SlashCommand(
        "/mcp", "[VERB NAME]", "list the agent's MCP servers; /mcp attach NAME or /mcp detach NAME", Chat.mcp_servers
    ),
    SlashCommand("/memory", "", "show core memory and memory statistics", Chat.memory),
    SlashCommand("/dump", "[N]", "show the last N messages (default 10)", Chat.dump),
    SlashCommand("/pop", "[N]", "delete the last N messages (default 3)", Chat.pop),
    SlashCommand(
        "/retry", "", "let the agent answer your last message again", lambda c, _: c.step(lambda agent: agent.retry())
    ),
    SlashCommand("/rethink", "TEXT", "replace the agent's last inner thought", Chat.rethink),
    SlashCommand("/rewrite", "TEXT", "replace the agent's last reply", Chat.rewrite),
    SlashCommand(
        "/summarize",
        "",
        "summarize older messages out of the context window now",
        lambda c, _: c.step(lambda agent: agent.summarize(force=True)),
    ),
    SlashCommand(
        "/heartbeat", "", "send the agent a heartbeat", lambda c, _: c.step(lambda agent: agent.user_heartbeat())
    ),
    SlashCommand(
        "/memorywarning",
        "",
        "send the agent a memory-pressure warning",
        lambda c, _: c.step(lambda agent: agent.memory_warning()),
    ),
    SlashCommand("/save", "", "save (memgpt saves after every step anyway)", Chat.save),
    SlashCommand("/help", "", "show these commands", Chat.help),
    SlashCommand("/exit", "", "leave the chat", lambda c, _: False, aliases=("/quit",)),
)
