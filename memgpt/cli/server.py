"""`memgpt server`, and the users and API keys it serves: `memgpt user ...`, `memgpt key ...`."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from memgpt.cli import startup_over
from memgpt.cli.common import JsonOption, console, err_console, home_and_config, names_table, open_storage
from memgpt.errors import UserError

if TYPE_CHECKING:
    from memgpt.config import Config
    from memgpt.storage.users import UserStore


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def _check_free(host: str, port: int) -> None:
    """UserError (one line) when ``host:port`` cannot be listened on, before the home is opened and the banner says
    the server runs: uvicorn found out only after start-up, printed its own error and exited with code 3."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _name, address = found[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed port is free
        try:
            probe.bind(address)
        except OSError as exc:
            why = (
                "the address is in use (another server?); stop it or pick another --port"
                if exc.errno == errno.EADDRINUSE
                else exc.strerror
            )
            raise UserError(f"cannot listen on {host}:{port}: {why}") from None


@contextmanager
def _users() -> Iterator[tuple[UserStore, Config]]:
    """The home's user store (the home's own user always exists in it) and its config."""
    from memgpt.server.state import OWNER_NAME

    with open_storage() as (storage, config):
        storage.users.ensure(config.user_id, OWNER_NAME)
        yield storage.users, config


def listen_address(host: str | None, port: int | None) -> tuple[Path, Config, str, int, bool]:
    """The home, its config, where to listen (the config's host and port unless given) and whether any API
    key exists; a host other than loopback is refused while none does (nothing would keep strangers out)."""
    with _users() as (users, _config):
        has_keys = users.any_active_key()
    home, config = home_and_config()
    host = host or config.server.host
    port = port or config.server.port
    if not _loopback(host) and not has_keys:
        raise UserError(
            f"refusing to listen on {host} while no API key exists: create one first with `memgpt key create` "
            "(or `memgpt user create NAME`), or listen on 127.0.0.1"
        )
    _check_free(host, port)
    return home, config, host, port, has_keys


def serve(
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1, loopback only)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port to listen on (default 8283)."),
    workers: int = typer.Option(
        1, "--workers", min=1, max=64, help="Server processes (on Milvus Lite they share one Lite server)."
    ),
    access_log: bool = typer.Option(
        True, "--access-log/--no-access-log", help="A line on stdout for every request (uvicorn's access log)."
    ),
) -> None:
    """Serve agents over HTTP: Letta's /v1 API (letta-client works) and an OpenAI-compatible endpoint."""
    startup_over()  # a process that runs for days collects its garbage from the start
    import uvicorn

    from memgpt.server.access_log import LOG_CONFIG
    from memgpt.server.app import KEEP_ALIVE_SECONDS, URL_ENV, create_app, freeze_startup, open_state, supervising

    home, config, host, port, has_keys = listen_address(host, port)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    os.environ[URL_ENV] = url

    def serve(target: Any, **options: Any) -> None:
        console.print(
            f"memgpt server on {url} (API docs at {url}/docs, OpenAI-compatible at {url}/openai/v1)", markup=False
        )
        if not has_keys:
            err_console.print(
                "No API keys yet: every request needs one. Create one with `memgpt key create`.", markup=False
            )
        uvicorn.run(
            target,
            host=host,
            port=port,
            log_level="info",
            log_config=LOG_CONFIG,  # uvicorn's, with an access line made for a fraction of its cost
            access_log=access_log,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=config.server.shutdown_seconds,  # then running requests are cut
            **options,
        )

    if workers == 1:
        app = create_app(state=open_state(home, config))  # errors opening the home: one line, before it listens
        freeze_startup()
        serve(app)
        return
    # This process holds the Milvus Lite file and runs its server while uvicorn's workers (each calling
    # create_app) connect to it; the checks of opening the home run first here, in one line.
    with supervising(home, config):
        serve("memgpt.server.app:create_app", workers=workers, factory=True)


# -- users -----------------------------------------------------------------------------------------
def user_create(name: str = typer.Argument(..., help="Name of the new user.")) -> None:
    """Create a server user and print their first API key (shown once)."""
    with _users() as (users, _config):
        user = users.create(name)
        _key, secret = users.create_key(user.id, "first key")
    console.print(f"Created user {user.name!r} (id={user.id})", markup=False)
    console.print(f"API key: {secret}", markup=False)
    console.print("Keep it now: it is not stored and cannot be shown again.", markup=False)


def user_list(as_json: JsonOption = False) -> None:
    """List server users."""
    with _users() as (users, config):
        found = users.list()
        keys = users.keys()
    active = {u.id: sum(1 for k in keys if k.user_id == u.id and k.revoked_at is None) for u in found}
    rows = [
        {
            "name": u.name,
            "id": u.id,
            "owner": u.id == config.user_id,
            "active_keys": active[u.id],
            "created_at": u.created_at.isoformat(),
        }
        for u in found
    ]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    names = [f"{user.name} (owner)" if row["owner"] else user.name for row, user in zip(rows, found, strict=True)]
    table = names_table("Name", "Id", "Keys", "Created", names=names)
    for name, row, user in zip(names, rows, found, strict=True):
        table.add_row(name, user.id, str(row["active_keys"]), user.created_at.astimezone().strftime("%Y-%m-%d %H:%M"))
    console.print(table)


# -- keys ------------------------------------------------------------------------------------------
def key_create(
    user: str | None = typer.Option(None, "--user", help="User name or id (default: you, the home's owner)."),
    name: str = typer.Option("", "--name", help="A label to tell keys apart."),
) -> None:
    """Create an API key (shown once)."""
    with _users() as (users, config):
        owner = users.find(user) if user else users.find(config.user_id)
        key, secret = users.create_key(owner.id, name)
    console.print(f"API key for {owner.name!r}: {secret}", markup=False)
    console.print(f"(id {key.id}) Keep it now: it is not stored and cannot be shown again.", markup=False)


def key_list(
    user: str | None = typer.Option(None, "--user", help="Only this user's keys (name or id)."),
    as_json: JsonOption = False,
) -> None:
    """List API keys (their prefixes; the keys themselves are never stored)."""
    with _users() as (users, _config):
        names = {u.id: u.name for u in users.list()}
        keys = users.keys(users.find(user).id if user else None)
    rows = [
        {
            "id": k.id,
            "user": names.get(k.user_id, k.user_id),
            "name": k.name,
            "prefix": k.prefix,
            "created_at": k.created_at.isoformat(),
            "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
            "revoked": k.revoked_at is not None,
        }
        for k in keys
    ]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    # The id is what `memgpt key revoke` takes: never cut, as names are not.
    table = names_table("Id", "User", "Name", "Key", "Last used", "Status", names=[row["id"] for row in rows])
    for row in rows:
        used = str(row["last_used_at"] or "never")[:16].replace("T", " ")
        table.add_row(
            row["id"], row["user"], row["name"], f"{row['prefix']}...", used, "revoked" if row["revoked"] else "active"
        )
    console.print(table)


def key_revoke(key: str = typer.Argument(..., help="Key id (key-...) or the key's shown prefix (sk-...).")) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    with _users() as (users, _config):
        revoked, newly = users.revoke_key(key.strip(), starts=True)
    if newly:
        console.print(f"Revoked key {revoked.id} ({revoked.prefix}...)", markup=False)
    else:
        when = revoked.revoked_at.isoformat(timespec="seconds") if revoked.revoked_at else "before"
        console.print(f"Key {revoked.id} ({revoked.prefix}...) was already revoked ({when})", markup=False)
