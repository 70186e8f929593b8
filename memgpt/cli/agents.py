"""Agents from the shell: run (chat), list, delete, attach, detach; personas and humans."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from memgpt.cli.common import (
    JsonOption,
    TurnWait,
    YesOption,
    confirm,
    console,
    embedding_model,
    interactive,
    names_table,
    open_storage,
    shortened,
)
from memgpt.errors import AgentBusyError, NotFoundError, UserError

if TYPE_CHECKING:
    from memgpt.agent.agent import Agent
    from memgpt.agent.manager import NewAgent
    from memgpt.cli.chat import Chat
    from memgpt.config import Config
    from memgpt.llm.base import LLMClient
    from memgpt.storage import Storage
    from memgpt.types import AgentState


def _choose_existing(storage: Storage, user_id: str) -> str | None:
    """The seed's question, asked only at a terminal and only when agents exist; the chosen agent's id."""
    summaries = storage.agents.list(user_id)
    if not summaries or not interactive():
        return None
    import questionary

    if not questionary.confirm("Would you like to select an existing agent?", default=False).ask():
        return None
    names = [s.state.name for s in summaries]
    chosen = questionary.select("Select agent:", choices=names).ask()
    if chosen is None:
        raise typer.Exit(1)
    return next(s.state.id for s in summaries if s.state.name == chosen)


def _check_model(config: Config, model: str) -> None:
    """Refuse ``--model`` when the endpoint lists its models and this is not one of them, before an agent is made
    or switched to it (it kept the model, and every later turn failed); as the server's agent creation does.
    An endpoint that cannot be asked now is left to the turn to report."""
    from dataclasses import replace

    from memgpt.errors import LLMError
    from memgpt.llm import resolve_llm
    from memgpt.llm.probe import check_llm

    try:
        found = check_llm(replace(resolve_llm(config.llm), model=model))
    except LLMError:
        return
    if found.problem:
        raise UserError(f"--model: {found.problem}; nothing was changed")


def _new_agent(
    config: Config, persona: str | None, human: str | None, model: str | None, context_window: int | None
) -> NewAgent:
    from memgpt.agent.manager import NewAgent, default_agent_settings
    from memgpt.config import memgpt_home

    chosen_model, window = default_agent_settings(config, model)
    return NewAgent(
        persona=persona or config.default_persona,
        human=human or config.default_human,
        model=chosen_model,
        context_window=context_window or window,
        embedding=embedding_model(config).space,
        tools_folder=memgpt_home() / "tools",
    )


def _created_banner(state: AgentState) -> None:
    console.print("\n🧬 Creating new agent...", markup=False)
    console.print(f"->  🤖 Using persona profile: '{state.persona}'", markup=False)
    console.print(f"->  🧑 Using human profile: '{state.human}'", markup=False)
    console.print(f"🎉 Created new agent '{state.name}' (id={state.id})", markup=False)


def _resume_banner(storage: Storage, state: AgentState) -> None:
    from rich.markup import escape

    from memgpt.memory.messages import describe, is_conversational

    console.print(f"\n🔁 Using existing agent '{state.name}' (id={state.id})", markup=False)
    for message in storage.messages.last(state.id, 6):
        if is_conversational(message):  # the words as written: "[/]" or "[red]" in them are text, not markup
            shown = escape(shortened(describe(message)))
            console.print(f"[bright_black]{shown}[/]", markup=True, highlight=False)


def _converse(chat: Chat, agent: Agent, *, message: str | None, greet: bool) -> int:
    """One message (--message), the lines piped on stdin, or the interactive chat. Returns the exit code:
    for a message or piped lines, 1 when a turn failed and 130 when one was interrupted (Ctrl-C)."""
    if message is not None:
        chat.handle(message)
        return chat.exit_code
    if not interactive():
        for line in sys.stdin:
            if not chat.handle(line):
                break
        return chat.exit_code
    if greet:
        input("\nHit enter to begin (will request first MemGPT message)\n")
        chat.step(lambda agent: agent.login())
    chat.loop()
    return 0


def _check_run(config: Config) -> None:
    """Before anything is opened: an LLM is configured, and no server holds the home's Milvus Lite file. A server
    owns that file while it runs, so an archival tool call would fail inside the turn; said at once instead, in the
    one line the commands that open Milvus at start say (a home with a Milvus server URI is shared by all)."""
    from memgpt.config import memgpt_home
    from memgpt.llm import resolve_llm
    from memgpt.storage import milvus_target
    from memgpt.storage.milvus.client import refuse_if_served

    resolve_llm(config.llm)
    refuse_if_served(milvus_target(config, memgpt_home()))


def run(
    agent: str | None = typer.Option(None, "--agent", help="Agent to chat with; created if it does not exist."),
    persona: str | None = typer.Option(None, "--persona", help="Persona for a new agent (default sam_pov)."),
    human: str | None = typer.Option(None, "--human", help="Human profile for a new agent (default basic)."),
    model: str | None = typer.Option(None, "--model", help="LLM model (for a new agent, or to switch this one)."),
    context_window: int | None = typer.Option(
        None, "--context-window", help="Context window in tokens (for a new agent, or to change this one's)."
    ),
    first: bool = typer.Option(False, "--first", help="You send the first message (no greeting from the agent)."),
    message: str | None = typer.Option(None, "--message", "-m", help="Send one message, print the turn, exit."),
    heartbeat_minutes: float = typer.Option(
        0, "--heartbeat-minutes", help="Send a timed heartbeat after this many idle minutes (0: never)."
    ),
    attach: list[str] = typer.Option(
        None, "--attach", help="Attach this data source first, as /attach would (repeatable).", show_default=False
    ),
    mcp: list[str] = typer.Option(
        None,
        "--mcp",
        help="Give the agent this MCP server's tools for this run only (repeatable; /mcp attach keeps one).",
        show_default=False,
    ),
) -> None:
    """Chat with an agent in the terminal (or send one message with --message, or lines on stdin)."""
    # No LLM configured, or a server owns the Milvus Lite file: stop with one line before anything is created. A
    # chat (at a terminal, or lines piped in) indexes each turn's messages in recall as it goes, so Milvus (Lite's
    # process, the agent's collection) starts opening and its embedding model loading at once, as for `search` and
    # `load`. One --message, a process that ends after its turn, leaves them to the next search of the agent, which
    # indexes them first (``RecallMemory``), or to the next chat's opening; its prompt's archival count is read from
    # SQL, so Milvus opens and the model loads only if a tool needs them (searching, inserting): ~0.35 CPU s saved a
    # turn that does not.
    eager = message is None
    with (
        open_storage(vectors=eager, check=_check_run) as (storage, config),
        ExitStack() as stack,
    ):
        from memgpt.agent.manager import open_agent, resolve_agent, update_agent
        from memgpt.cli.chat import Chat, Leases
        from memgpt.cli.mcp import chat_servers
        from memgpt.config import memgpt_home
        from memgpt.llm import create_llm

        servers = stack.enter_context(chat_servers(storage, mcp or []))  # stopped before storage closes
        ref = agent if agent is not None else _choose_existing(storage, config.user_id)
        new = _new_agent(config, persona, human, model, context_window)
        if model is not None:
            _check_model(config, model)
        state, created = resolve_agent(storage, config.user_id, ref, new=new, model=model)
        if context_window is not None and context_window != state.context_window:
            state = update_agent(storage, state, context_window=context_window, tools_folder=new.tools_folder)
        if created:
            _created_banner(state)
        else:
            if persona or human:
                console.print("(--persona and --human only apply to new agents)", markup=False)
            _resume_banner(storage, state)
        llm = create_llm(config.llm, model=state.llm_model, context_window=state.context_window)
        # Read before the agent is: a change stored meanwhile (or a turn running now) makes the first turn open it
        # afresh (``Leases``).
        version = storage.turns.settled_version(state.id)

        def opened(stored: AgentState, llm: LLMClient) -> Agent:
            agent, warnings = open_agent(
                storage,
                stored,
                llm=llm,
                embedding=embedding_model(config),
                tools_folder=memgpt_home() / "tools",
                extra_tools=servers.start(stored),
                eager=eager,
            )
            for warning in warnings:
                console.print(f"warning: {warning}", markup=False)
            return agent

        def reopen(old: Agent) -> Agent:
            fresh = storage.agents.by_id(config.user_id, old.state.id)
            if fresh is None:
                raise NotFoundError(f"agent {old.state.name!r} was deleted meanwhile")
            if (fresh.llm_model, fresh.context_window) == (old.state.llm_model, old.state.context_window):
                return opened(fresh, old.llm)
            return opened(fresh, create_llm(config.llm, model=fresh.llm_model, context_window=fresh.context_window))

        loaded = opened(state, llm)
        # Each turn and edit holds the agent's lease, as a `memgpt server` turn does (one turn at a time per agent).
        leases = Leases(config.server.lease_seconds, config.server.busy_wait_seconds, reopen, version)
        chat = Chat(loaded, storage, heartbeat_minutes=heartbeat_minutes, mcp=servers, leases=leases)
        stack.callback(lambda: chat.agent.close())  # before storage closes: recall indexing of the last turn finishes
        for source in attach or []:
            chat.attach(source)
        code = _converse(chat, loaded, message=message, greet=created and not first)
    if code:
        raise typer.Exit(code)


def list_agents(as_json: JsonOption = False) -> None:
    """List agents with their persona, model and memory size."""
    from memgpt.agent.manager import list_agents as summaries_of

    with open_storage() as (storage, config):
        summaries = summaries_of(storage, config.user_id)
    if as_json:
        console.print_json(
            json.dumps(
                [
                    {
                        "name": s.state.name,
                        "id": s.state.id,
                        "persona": s.state.persona,
                        "human": s.state.human,
                        "model": s.state.llm_model,
                        "messages": s.messages,
                        "sources": s.sources,
                        "created_at": s.state.created_at.isoformat(),
                    }
                    for s in summaries
                ]
            )
        )
        return
    if not summaries:
        console.print("No agents yet. Start one with `memgpt run`.", markup=False)
        return
    table = names_table(
        "Name", "Persona", "Human", "Model", "Messages", "Sources", "Created", names=[s.state.name for s in summaries]
    )
    for s in summaries:
        table.add_row(
            s.state.name,
            s.state.persona,
            s.state.human,
            s.state.llm_model,
            str(s.messages),
            str(s.sources),
            s.state.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


def _list_templates(kind: str, as_json: bool) -> None:
    from memgpt.agent.manager import template_names

    with open_storage() as (storage, config):
        found = template_names(storage, config.user_id, kind)
    if as_json:
        console.print_json(json.dumps(found))
        return
    table = names_table("Name", "Text", names=found)
    for name, text in sorted(found.items()):
        table.add_row(name, text if len(text) < 200 else text[:197] + "...")
    console.print(table)


def list_personas(as_json: JsonOption = False) -> None:
    """List personas (shipped and your own)."""
    _list_templates("persona", as_json)


def list_humans(as_json: JsonOption = False) -> None:
    """List human profiles (shipped and your own)."""
    _list_templates("human", as_json)


def _add_template(kind: str, name: str, text: str | None, file: Path | None, yes: bool) -> None:
    from memgpt.agent import prompts
    from memgpt.agent.manager import save_template

    if (text is None) == (file is None):
        raise UserError(f"give the {kind} as --text TEXT or --file FILE (one of them)")
    if file is not None:
        try:
            text = file.expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{file}: cannot read it as UTF-8 text ({exc})") from exc
    with open_storage() as (storage, config):
        name = name.strip()
        # Replacing one (a shipped one is shadowed for every new agent) is a choice, as deleting is: -y or a yes.
        if storage.templates.get(config.user_id, kind, name) is not None:
            question = f"Replace your {kind} {name!r}?"
        elif name in prompts.shipped(kind):
            question = f"Replace the {kind} {name!r} shipped with memgpt (new agents get yours)?"
        else:
            question = ""
        if question and not confirm(question, assume_yes=yes):
            console.print("Nothing changed.")
            return
        saved = save_template(storage, config.user_id, kind, name, text or "")
    console.print(f"Saved {kind} '{saved}'", markup=False)


def add_persona(
    name: str = typer.Option(..., "--name", help="Name of the persona."),
    text: str | None = typer.Option(None, "--text", help="The persona text."),
    file: Path | None = typer.Option(None, "--file", help="A text file with the persona."),
    yes: YesOption = False,
) -> None:
    """Add a persona (replacing one of that name asks first; -y replaces it)."""
    _add_template("persona", name, text, file, yes)


def add_human(
    name: str = typer.Option(..., "--name", help="Name of the human profile."),
    text: str | None = typer.Option(None, "--text", help="The profile text."),
    file: Path | None = typer.Option(None, "--file", help="A text file with the profile."),
    yes: YesOption = False,
) -> None:
    """Add a human profile (replacing one of that name asks first; -y replaces it)."""
    _add_template("human", name, text, file, yes)


def delete_agent(name: str = typer.Argument(..., help="Name of the agent."), yes: YesOption = False) -> None:
    """Delete an agent with its messages and its own archival memories (attached sources stay)."""
    from memgpt.agent.manager import delete_agent as remove
    from memgpt.agent.manager import get_agent

    with open_storage() as (storage, config):
        state = get_agent(storage, config.user_id, name)
        if not confirm(f"Delete agent {state.name!r} and all its memories?", assume_yes=yes):
            console.print("Nothing deleted.")
            return
        # The agent's lease, as the server's delete takes it: a turn running in a `memgpt server` process ends
        # first (waited for up to the server's busy wait), never has the agent deleted under it.
        settings = config.server
        pause = TurnWait(storage.turns, state.id)  # one line while it waits
        try:
            with storage.turns.holding(state.id, settings.lease_seconds, settings.busy_wait_seconds, pause=pause):
                passages = remove(storage, state)
        except AgentBusyError as exc:  # (a server's turn, a chat's, an edit's: the holder's pid as waited for)
            where = pause.where()
            busy = f"agent {state.name!r} is busy with a turn in another memgpt process{where}; nothing deleted"
            raise AgentBusyError(f"{busy}: try again in a moment", exc.retry_after) from None
    console.print(f"Deleted agent {state.name!r} and {passages} archival passages", markup=False)


def attach(
    agent: str = typer.Option(..., "--agent", help="Name of the agent."),
    data_source: str = typer.Option(..., "--data-source", help="Name of the source."),
) -> None:
    """Attach a data source to an agent's archival memory (a link: nothing is copied)."""
    from memgpt.agent.manager import attach_source, get_agent

    with open_storage() as (storage, config):
        state = get_agent(storage, config.user_id, agent)
        source, fresh = attach_source(storage, state, data_source)
    if fresh:
        console.print(f"Attached {source.name} ({source.passages} passages) to agent '{state.name}'", markup=False)
    else:
        console.print(f"{source.name} was already attached to agent '{state.name}'", markup=False)


def detach(
    agent: str = typer.Option(..., "--agent", help="Name of the agent."),
    data_source: str = typer.Option(..., "--data-source", help="Name of the source."),
) -> None:
    """Detach a data source from an agent."""
    from memgpt.agent.manager import detach_source, get_agent

    with open_storage() as (storage, config):
        state = get_agent(storage, config.user_id, agent)
        source = detach_source(storage, state, data_source)
    console.print(f"Detached {source.name} from agent '{state.name}'", markup=False)
