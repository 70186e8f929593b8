"""The root `memgpt` command. Verb groups mirror the seed: `memgpt load directory`,
`memgpt list sources`, `memgpt delete source`."""

from __future__ import annotations

import copy
import sys

import typer

from memgpt import __version__
from memgpt.cli import agentfile as agentfile_cli
from memgpt.cli import agents as agents_cli
from memgpt.cli import config as config_cli
from memgpt.cli import mcp as mcp_cli
from memgpt.cli import server as server_cli
from memgpt.cli import sources as sources_cli

app = typer.Typer(
    name="memgpt",
    help="Stateful LLM agents with tiered memory; archival memory and data sources in Milvus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
load_app = typer.Typer(help="Load data into a source (stored in Milvus).", no_args_is_help=True)
list_app = typer.Typer(help="List agents, sources, personas or humans.", no_args_is_help=True)
delete_app = typer.Typer(help="Delete an agent or a source.", no_args_is_help=True)
add_app = typer.Typer(help="Add a persona or a human profile.", no_args_is_help=True)
user_app = typer.Typer(help="Users of `memgpt server` (each with their own agents and sources).", no_args_is_help=True)
key_app = typer.Typer(help="API keys of `memgpt server` users.", no_args_is_help=True)
mcp_app = typer.Typer(
    help="MCP servers whose tools agents use (/mcp attach NAME), and memgpt's memory served over MCP.",
    no_args_is_help=True,
)
export_app = typer.Typer(help="Export an agent to an Agent File (.af).", no_args_is_help=True)

app.command("configure")(config_cli.configure)
app.command("migrate")(config_cli.migrate)
app.command("run")(agents_cli.run)
app.command("attach")(agents_cli.attach)
app.command("detach")(agents_cli.detach)
app.command("search")(sources_cli.search)
app.command("import")(agentfile_cli.import_file)
export_app.command("agent")(agentfile_cli.export_agent)
app.command("server")(server_cli.serve)
user_app.command("create")(server_cli.user_create)
user_app.command("list")(server_cli.user_list)
key_app.command("create")(server_cli.key_create)
key_app.command("list")(server_cli.key_list)
key_app.command("revoke")(server_cli.key_revoke)
load_app.command("directory")(sources_cli.load_directory)
list_app.command("agents")(agents_cli.list_agents)
list_app.command("sources")(sources_cli.list_sources)
list_app.command("personas")(agents_cli.list_personas)
list_app.command("humans")(agents_cli.list_humans)
delete_app.command("agent")(agents_cli.delete_agent)
delete_app.command("source")(sources_cli.delete_source)
add_app.command("persona")(agents_cli.add_persona)
add_app.command("human")(agents_cli.add_human)
mcp_app.command("add")(mcp_cli.add)
mcp_app.command("list")(mcp_cli.list_servers)
mcp_app.command("remove")(mcp_cli.remove)
mcp_app.command("serve")(mcp_cli.serve)
app.add_typer(load_app, name="load")
app.add_typer(list_app, name="list")
app.add_typer(delete_app, name="delete")
app.add_typer(add_app, name="add")
app.add_typer(user_app, name="user")
app.add_typer(key_app, name="key")
app.add_typer(mcp_app, name="mcp")
app.add_typer(export_app, name="export")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"memgpt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Stateful LLM agents with tiered memory; archival memory and data sources in Milvus."""


def command_words(arguments: list[str]) -> list[str]:
    """The words of ``arguments`` that name the command (["load", "directory"]), none of its values."""
    groups = {info.name for info in app.registered_groups}
    words: list[str] = []
    for argument in arguments:
        if argument.startswith("-"):
            break
        words.append(argument)
        if len(words) == (2 if words[0] in groups else 1):
            break
    return words


def app_for(arguments: list[str]) -> typer.Typer:
    """The app to run for ``arguments``. When their words name a command (`search`, `load directory`), a copy of
    :data:`app` that holds only that one: typer turns every registered command into click's form, options and
    all, on each start (~10 CPU ms for memgpt's ~30 commands, of which one runs). A group named without one of
    its commands (`memgpt list --help`, `memgpt list sourcs`) is kept whole, and so is the app when no command
    is named (`memgpt --help`, a misspelt command): what they list and suggest is unchanged."""
    return _only(app, command_words(arguments))


def _only(found: typer.Typer, words: list[str]) -> typer.Typer:
    if not words:
        return found
    commands = [info for info in found.registered_commands if info.name == words[0]]
    groups = [copy.copy(info) for info in found.registered_groups if info.name == words[0]]
    if not commands and not groups:
        return found
    for group in groups:
        if group.typer_instance is not None:
            group.typer_instance = _only(group.typer_instance, words[1:])
    named = copy.copy(found)  # shallow: the settings and the callback are shared, the two lists are new
    named.registered_commands, named.registered_groups = commands, groups
    return named


def main() -> None:
    """Entry point: domain errors become one line on stderr and exit code 1, never a traceback;
    Ctrl-C becomes "Interrupted" and exit code 130."""
    from memgpt.cli import interrupted
    from memgpt.cli.common import name_command
    from memgpt.errors import MemGPTError

    name_command(command_words(sys.argv[1:]))
    try:
        app_for(sys.argv[1:])()
    except MemGPTError as exc:
        from memgpt.cli.common import err_console

        err_console.print(f"error: {exc}", markup=False)
        sys.exit(1)
    except SystemExit as exc:
        # Typer turns a KeyboardInterrupt into a silent exit 130; a command that handled Ctrl-C itself
        # (and said so) exits 130 without one.
        if exc.code == 130 and exc.__context__ is not None and isinstance(exc.__context__.__cause__, KeyboardInterrupt):
            interrupted()
        raise
    except KeyboardInterrupt:
        interrupted()
