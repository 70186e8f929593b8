"""Agents from the shell: run (chat), list, delete, attach, detach; personas and humans."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from memgpt.cli.common import confirm, console, embedding_model, interactive, names_table, open_storage
from memgpt.errors import UserError

if TYPE_CHECKING:
    from memgpt.config import Config
    from memgpt.storage import Storage
    from memgpt.storage.agents import AgentStore
    from memgpt.types import AgentState


def _store(storage: Storage) -> AgentStore:
    from memgpt.storage.agents import AgentStore

    return AgentStore(storage.metadata)


def _choose_existing(agents: AgentStore, user_id: str) -> AgentState | None:
    """The seed's question, asked only at a terminal and only when agents exist."""
    summaries = agents.list(user_id)
    if not summaries or not interactive():
        return None
    import questionary

    if not questionary.confirm("Would you like to select an existing agent?", default=False).ask():
        return None
    names = [s.state.name for s in summaries]
    chosen = questionary.select("Select agent:", choices=names).ask()
    if chosen is None:
        raise typer.Exit(1)
    return next(s.state for s in summaries if s.state.name == chosen)


def _create(
    agents: AgentStore,
    config: Config,
    user_id: str,
    *,
    name: str | None,
    persona: str | None,
    human: str | None,
    model: str | None,
) -> AgentState:
    from memgpt.agent.manager import create_agent, default_agent_settings, friendly_name

    chosen_model, window = default_agent_settings(config, model)
    persona = persona or config.default_persona
    human = human or config.default_human
    console.print("\n🧬 Creating new agent...", markup=False)
    console.print(f"->  🤖 Using persona profile: '{persona}'", markup=False)
    console.print(f"->  🧑 Using human profile: '{human}'", markup=False)
    state = create_agent(
        agents,
        user_id=user_id,
        name=name or friendly_name(agents.names(user_id)),
        persona=persona,
        human=human,
        model=chosen_model,
        context_window=window,
        embedding=embedding_model(config),
    )
    console.print(f"🎉 Created new agent '{state.name}' (id={state.id})", markup=False)
    return state


def _resume_banner(agents: AgentStore, state: AgentState) -> None:
    from memgpt.memory.recall import describe

    console.print(f"\n🔁 Using existing agent '{state.name}' (id={state.id})", markup=False)
    for message in agents.last_messages(state.id, 6):
        if message.role.value in ("user", "assistant") and not message.name:
            console.print(f"[bright_black]{describe(message)}[/]", markup=True, highlight=False)


def run(
    agent: str | None = typer.Option(None, "--agent", help="Agent to chat with; created if it does not exist."),
    persona: str | None = typer.Option(None, "--persona", help="Persona for a new agent (default sam_pov)."),
    human: str | None = typer.Option(None, "--human", help="Human profile for a new agent (default basic)."),
    model: str | None = typer.Option(None, "--model", help="LLM model (for a new agent, or to switch this one)."),
    first: bool = typer.Option(False, "--first", help="You send the first message (no greeting from the agent)."),
    message: str | None = typer.Option(None, "--message", "-m", help="Send one message, print the turn, exit."),
    heartbeat_minutes: float = typer.Option(
        0, "--heartbeat-minutes", help="Send a timed heartbeat after this many idle minutes (0: never)."
    ),
    attach: list[str] = typer.Option(
        None, "--attach", help="Attach this data source first, as /attach would (repeatable).", show_default=False
    ),
) -> None:
    """Chat with an agent in the terminal (or send one message with --message, or lines on stdin)."""
    from memgpt.agent.manager import get_agent, open_agent
    from memgpt.cli.chat import Chat, play
    from memgpt.config import memgpt_home
    from memgpt.llm import create_llm, resolve_llm

    with open_storage() as (storage, config):
        resolve_llm(config.llm)  # no LLM configured: stop here with one line, before creating anything
        agents = _store(storage)
        state = agents.get(storage.user_id, agent) if agent else _choose_existing(agents, storage.user_id)
        created = state is None
        if state is None:
            state = _create(agents, config, storage.user_id, name=agent, persona=persona, human=human, model=model)
        else:
            if persona or human:
                console.print("(--persona and --human only apply to new agents)", markup=False)
            if model and model != state.llm_model:
                agents.set_model(state.id, model, state.context_window)
                state = get_agent(agents, storage.user_id, state.name)
            _resume_banner(agents, state)
        llm = create_llm(config.llm, model=state.llm_model, context_window=state.context_window)
        loaded, warnings = open_agent(
            storage, agents, state, llm=llm, embedding=embedding_model(config), tools_folder=memgpt_home() / "tools"
        )
        for warning in warnings:
            console.print(f"warning: {warning}", markup=False)
        chat = Chat(loaded, storage, agents, heartbeat_minutes=heartbeat_minutes)
        for source in attach or []:
            chat.attach(source)
        if message is not None:
            chat.handle(message)
            return
        if not interactive():
            for line in sys.stdin:
                if not chat.handle(line):
                    break
            return
        if created and not first:
            input("\nHit enter to begin (will request first MemGPT message)\n")
            play(loaded.login())
        chat.loop()


def list_agents(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List agents with their persona, model and memory size."""
    with open_storage() as (storage, _config):
        summaries = _store(storage).list(storage.user_id)
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

    with open_storage() as (storage, _config):
        found = template_names(_store(storage), storage.user_id, kind)
    if as_json:
        console.print_json(json.dumps(found))
        return
    table = names_table("Name", "Text", names=found)
    for name, text in sorted(found.items()):
        table.add_row(name, text if len(text) < 200 else text[:197] + "...")
    console.print(table)


def list_personas(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List personas (shipped and your own)."""
    _list_templates("persona", as_json)


def list_humans(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List human profiles (shipped and your own)."""
    _list_templates("human", as_json)


def _add_template(kind: str, name: str, text: str | None, file: Path | None) -> None:
    if (text is None) == (file is None):
        raise UserError(f"give the {kind} as --text TEXT or --file FILE (one of them)")
    if file is not None:
        try:
            text = file.expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{file}: cannot read it as UTF-8 text ({exc})") from exc
    if not name.strip() or not (text or "").strip():
        raise UserError(f"the {kind} name and text cannot be empty")
    with open_storage() as (storage, _config):
        _store(storage).save_template(storage.user_id, kind, name.strip(), (text or "").strip())
    console.print(f"Saved {kind} '{name.strip()}'", markup=False)


def add_persona(
    name: str = typer.Option(..., "--name", help="Name of the persona."),
    text: str | None = typer.Option(None, "--text", help="The persona text."),
    file: Path | None = typer.Option(None, "--file", help="A text file with the persona."),
) -> None:
    """Add (or replace) a persona."""
    _add_template("persona", name, text, file)


def add_human(
    name: str = typer.Option(..., "--name", help="Name of the human profile."),
    text: str | None = typer.Option(None, "--text", help="The profile text."),
    file: Path | None = typer.Option(None, "--file", help="A text file with the profile."),
) -> None:
    """Add (or replace) a human profile."""
    _add_template("human", name, text, file)


def delete_agent(
    name: str = typer.Argument(..., help="Name of the agent."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete an agent with its messages and its own archival memories (attached sources stay)."""
    from memgpt.agent.manager import delete_agent as remove
    from memgpt.agent.manager import get_agent

    with open_storage() as (storage, _config):
        agents = _store(storage)
        state = get_agent(agents, storage.user_id, name)
        if not confirm(f"Delete agent {state.name!r} and all its memories?", assume_yes=yes):
            console.print("Nothing deleted.")
            return
        passages = remove(storage, agents, state)
    console.print(f"Deleted agent {state.name!r} and {passages} archival passages", markup=False)


def attach(
    agent: str = typer.Option(..., "--agent", help="Name of the agent."),
    data_source: str = typer.Option(..., "--data-source", help="Name of the source."),
) -> None:
    """Attach a data source to an agent's archival memory (a link: nothing is copied)."""
    from memgpt.agent.manager import attach_source, get_agent

    with open_storage() as (storage, _config):
        agents = _store(storage)
        source, fresh = attach_source(storage, agents, get_agent(agents, storage.user_id, agent), data_source)
    if fresh:
        console.print(f"Attached {source.name} ({source.passages} passages) to agent '{agent}'", markup=False)
    else:
        console.print(f"{source.name} was already attached to agent '{agent}'", markup=False)


def detach(
    agent: str = typer.Option(..., "--agent", help="Name of the agent."),
    data_source: str = typer.Option(..., "--data-source", help="Name of the source."),
) -> None:
    """Detach a data source from an agent."""
    from memgpt.agent.manager import detach_source, get_agent

    with open_storage() as (storage, _config):
        agents = _store(storage)
        source = detach_source(storage, agents, get_agent(agents, storage.user_id, agent), data_source)
    console.print(f"Detached {source.name} from agent '{agent}'", markup=False)
