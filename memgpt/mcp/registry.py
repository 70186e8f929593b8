"""The MCP servers a user has added, kept in ``<home>/mcp.toml``.

The file is written atomically and owner-only (0600), like config.toml, because environment and
header values are usually API keys; nothing here prints or logs them (``masked`` shows the keys
only). It is a file of its own rather than a table in config.toml so that `memgpt configure`, which
rewrites config.toml whole, and `memgpt mcp add/remove` never overwrite each other's edits.
Read at the edges (the CLI) and passed down as ``ServerSpec`` values.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memgpt.errors import ConfigError, NotFoundError, UserError

SERVERS_FILE = "mcp.toml"
MASK = "***"
MAX_NAME = 24
# Letters and digits in runs joined by single '-' or '_': the model sees tools as SERVER__TOOL, and a
# name without "__" (and not ending in '_') keeps that prefix unambiguous.
_NAME = re.compile(r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP token (RFC 9110)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ServerSpec(BaseModel):
    """One MCP server: a command to start (stdio) or a URL (streamable HTTP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    command: str = ""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)  # secret values
    url: str = ""
    headers: dict[str, str] = Field(default_factory=dict)  # secret values
    timeout_seconds: float = Field(default=60.0, gt=0)  # one tool call
    startup_timeout_seconds: float = Field(default=30.0, gt=0)  # start, handshake and tool list

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if len(value) > MAX_NAME or not _NAME.match(value):
            raise ValueError(
                f"a server name must be 1-{MAX_NAME} letters or digits, optionally joined by single '-' or '_' "
                "(e.g. time, github, my-files)"
            )
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not _ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not _HEADER_NAME.match(k)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an HTTP header name")
        if any("\n" in v or "\r" in v for v in value.values()):
            raise ValueError("a header value cannot contain a line break")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> ServerSpec:
        if not self.command and not self.url:
            raise ValueError("give the command that starts the server (after --) or its --url")
        if self.command and self.url:
            raise ValueError("give a command or a URL, not both")
        if self.url and not self.url.lower().startswith(("http://", "https://")):
            raise ValueError(f"the URL must start with http:// or https:// (got {self.url!r})")
        if self.url and (self.args or self.env):
            raise ValueError("--env and command arguments apply to a command, not to --url")
        if self.command and self.headers:
            raise ValueError("--header applies to --url, not to a command")
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command else "http"

    def target(self) -> str:
        """The command line or URL, as shown to the user (environment and headers masked)."""
        if self.url:
            shown = self.url
            if self.headers:
                shown += " (headers: " + ", ".join(f"{k}: {MASK}" for k in self.headers) + ")"
            return shown
        shown = shlex.join([self.command, *self.args])
        if self.env:
            shown += " (env: " + ", ".join(f"{k}={MASK}" for k in self.env) + ")"
        return shown

    def masked(self) -> dict[str, Any]:
        """The spec as JSON-safe data with every environment and header value replaced by ``***``."""
        data = self.model_dump(mode="json")
        data["env"] = dict.fromkeys(self.env, MASK)
        data["headers"] = dict.fromkeys(self.headers, MASK)
        data["transport"] = self.transport
        return data


def servers_path(home: Path) -> Path:
    return home / SERVERS_FILE


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def load_servers(home: Path) -> dict[str, ServerSpec]:
    """Every added server by name; none when the file does not exist yet."""
    path = servers_path(home)
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it or delete it and add the servers again") from exc
    table = data.get("servers", {})
    if not isinstance(table, dict) or set(data) - {"servers"}:
        raise ConfigError(f"{path}: expected only [servers.NAME] tables; fix it or delete it")
    servers: dict[str, ServerSpec] = {}
    for name, fields in table.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"{path}: servers.{name} must be a table")
        try:
            servers[name] = ServerSpec.model_validate({**fields, "name": name})
        except ValidationError as exc:
            raise ConfigError(f"{path}: servers.{name}: {_one_line(exc)}; fix it or remove the server") from exc
    return servers


def save_servers(home: Path, servers: Iterable[ServerSpec]) -> Path:
    import tomli_w

    from memgpt.config import write_private

    table = {s.name: s.model_dump(mode="json", exclude={"name"}, exclude_defaults=True) for s in servers}
    path = servers_path(home)
    write_private(path, tomli_w.dumps({"servers": table}).encode("utf-8"))
    return path


def parse_pairs(pairs: Sequence[str], option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; the error never repeats a value (it may be a secret)."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} takes KEY=VALUE (got something without '=' or without a key)")
        found[key.strip()] = value
    return found


def new_spec(
    name: str,
    *,
    command: Sequence[str] = (),
    url: str = "",
    env: Sequence[str] = (),
    headers: Sequence[str] = (),
    timeout_seconds: float = 60.0,
    startup_timeout_seconds: float = 30.0,
) -> ServerSpec:
    """A validated spec from the `memgpt mcp add` options; a UserError names what to fix."""
    try:
        return ServerSpec(
            name=name,
            command=command[0] if command else "",
            args=list(command[1:]),
            url=url.strip(),
            env=parse_pairs(env, "--env"),
            headers=parse_pairs(headers, "--header"),
            timeout_seconds=timeout_seconds,
            startup_timeout_seconds=startup_timeout_seconds,
        )
    except ValidationError as exc:
        raise UserError(_one_line(exc)) from exc


@contextmanager
def _editing(home: Path) -> Iterator[dict[str, ServerSpec]]:
    """The servers, to change in place; written back when the block ends without an error. Edits wait
    for each other (a lock file beside mcp.toml), so two at once (the CLI and a server's API, two
    admins) never lose one."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    with open(home / f".{SERVERS_FILE}.lock", "a+", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        servers = load_servers(home)
        yield servers
        save_servers(home, servers.values())


def add_server(home: Path, spec: ServerSpec) -> Path:
    with _editing(home) as servers:
        if spec.name in servers:
            raise UserError(
                f"an MCP server named {spec.name!r} exists; remove it first with `memgpt mcp remove {spec.name}`"
            )
        servers[spec.name] = spec
    return servers_path(home)


def replace_server(home: Path, spec: ServerSpec) -> None:
    """Change an added server's settings (its name stays)."""
    with _editing(home) as servers:
        if spec.name not in servers:
            raise NotFoundError(f"no MCP server named {spec.name!r} ({_known(servers)})")
        servers[spec.name] = spec


def remove_server(home: Path, name: str) -> ServerSpec:
    with _editing(home) as servers:
        removed = servers.pop(name, None)
        if removed is None:
            raise NotFoundError(f"no MCP server named {name!r} ({_known(servers)})")
    return removed


def get_server(home: Path, name: str) -> ServerSpec:
    """One added server; NotFoundError naming the others."""
    servers = load_servers(home)
    if name not in servers:
        raise NotFoundError(f"no MCP server named {name!r} ({_known(servers)})")
    return servers[name]


def pick_servers(servers: dict[str, ServerSpec], names: Iterable[str]) -> list[ServerSpec]:
    """The named servers in the order given (each once); NotFoundError for a name not added."""
    picked: dict[str, ServerSpec] = {}
    for name in names:
        if name not in servers:
            raise NotFoundError(
                f"no MCP server named {name!r} ({_known(servers)}); add it with `memgpt mcp add {name} -- COMMAND`"
            )
        picked[name] = servers[name]
    return list(picked.values())


def _known(servers: dict[str, ServerSpec]) -> str:
    return "servers: " + ", ".join(sorted(servers)) if servers else "none added yet"
