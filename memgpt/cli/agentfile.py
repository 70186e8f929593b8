"""Agent Files from the shell: `memgpt export agent NAME -o F.af` and `memgpt import F.af`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from memgpt.cli.common import JsonOption, console, embedding_model, home_and_config, open_storage, warn
from memgpt.errors import InputFileError

if TYPE_CHECKING:
    from memgpt.agent.agentfile import ImportedAgent


def export_agent(
    name: str = typer.Argument(..., help="Name (or id) of the agent."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default: NAME.af)."),
    scrub_messages: bool = typer.Option(False, "--scrub-messages", help="Leave the conversation out."),
) -> None:
    """Export an agent to an Agent File (.af, Letta's format) with its memory, messages and sources."""
    from memgpt.agent.agentfile import export_agent as export
    from memgpt.agent.agentfile import export_text
    from memgpt.agent.manager import get_agent
    from memgpt.config import write_private

    home, _ = home_and_config()
    with open_storage() as (storage, config):
        state = get_agent(storage, config.user_id, name)
        document = export(
            storage, state, chunk_size=config.embedding.chunk_size, scrub_messages=scrub_messages, home=home
        )
    target = output or Path(f"{state.name}.af")
    try:
        write_private(target, export_text(document).encode("utf-8"))  # it holds the whole conversation
    except OSError as exc:
        raise InputFileError(str(target), f"cannot write it ({exc.strerror or exc})") from exc
    agent = document["agents"][0]
    passages = len(document["memgpt"]["archival_passages"]["agent-0"])
    console.print(
        f"Exported agent {state.name!r} to {target}: {len(agent['messages'])} messages, {passages} archival "
        f"passages, {len(document['sources'])} sources with {len(document['files'])} files",
        markup=False,
    )
    mcp = document["memgpt"]["agents"]["agent-0"]["mcp_servers"]
    if mcp:
        console.print(
            f"MCP servers (commands and URLs, without their secrets): {', '.join(mcp)}", markup=False, highlight=False
        )


def import_file(
    path: Path = typer.Argument(..., help="The agent file (.af) to import."),
    name: str | None = typer.Option(None, "--name", help="Name the agent this instead of the file's name."),
    copy_suffix: bool = typer.Option(False, "--copy-suffix", help="Add '_copy' to the name, as Letta does."),
    on_clash: str = typer.Option(
        "suffix", "--on-clash", help="When the name is taken: 'suffix' (name_2, ...) or 'error'."
    ),
    strip_messages: bool = typer.Option(False, "--strip-messages", help="Leave the conversation out."),
    as_json: JsonOption = False,
) -> None:
    """Import the agents of an Agent File (.af), Letta's or memgpt's: a new agent each, all or nothing."""
    from memgpt.agent.agentfile import ImportOptions, import_agent_file, import_settings
    from memgpt.agent.agentfile_format import read_agent_file
    from memgpt.cli.progress import ProgressListener, load_progress
    from memgpt.errors import UserError

    if on_clash not in ("suffix", "error"):
        raise UserError(f"--on-clash is 'suffix' or 'error', not {on_clash!r}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(str(path), f"cannot read it ({exc.strerror or exc})") from exc
    document = read_agent_file(data, str(path))
    options = ImportOptions(name=name, copy_suffix=copy_suffix, on_clash=on_clash, strip_messages=strip_messages)  # type: ignore[arg-type]
    home, _ = home_and_config()
    with open_storage() as (storage, config):
        model = embedding_model(config)
        storage.open_vectors_early(model.load_early)
        settings = import_settings(home, config, model)
        # An import writes its agents' rows before their passages: a Milvus it cannot use (a server owns the
        # Lite file) must stop it before anything is written, not leave an import to take back.
        storage.passages(settings.embedding.space)
        with load_progress() as progress:
            imported = import_agent_file(
                storage,
                document,
                user_id=config.user_id,
                settings=settings,
                options=options,
                listener=ProgressListener(progress),
            )
    if as_json:
        console.print_json(json.dumps([_as_dict(i) for i in imported]))
        return
    for agent in imported:
        _report(agent)


def _as_dict(agent: ImportedAgent) -> dict[str, object]:
    return {
        "id": agent.state.id,
        "name": agent.state.name,
        "messages": agent.messages,
        "archival_passages": agent.passages,
        "files": {f.file_name: f.status.value for f in agent.files},
        "tools_mapped": agent.tools_mapped,
        "tools_without_equivalent": agent.tools_without_equivalent,
        "custom_tools_not_installed": agent.custom_tools,
        "mcp_servers_attached": agent.mcp_servers,
        "notes": agent.notes,
    }


def _report(agent: ImportedAgent) -> None:
    state = agent.state
    console.print(
        f"Imported agent {state.name!r} (id={state.id}): {agent.messages} messages, {agent.passages} archival "
        f"passages, {len(agent.files)} files",
        markup=False,
    )
    mapped = [f"{letta} -> {', '.join(ours)}" for letta, ours in agent.tools_mapped.items() if [letta] != ours]
    if mapped:
        console.print(f"Tools mapped to MemGPT's: {'; '.join(mapped)}", markup=False)
    if agent.tools_without_equivalent:
        warn(f"tools memgpt has no equivalent of (left out): {', '.join(agent.tools_without_equivalent)}")
    if agent.custom_tools:
        warn(
            f"custom tools not installed: {', '.join(agent.custom_tools)} (they carry code, which memgpt never runs "
            "from an agent file; review it and save it in ~/.memgpt/tools/ to use it)"
        )
    if agent.mcp_servers:
        console.print(f"MCP servers attached: {', '.join(agent.mcp_servers)}", markup=False)
    for note in agent.notes:
        warn(note)
